package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// TestMutualTLS: two identities issued by one mesh CA complete a real mTLS
// handshake over loopback, each seeing the other's SPIFFE ID; a certificate
// from another mesh's CA is refused.
func TestMutualTLS(t *testing.T) {
	now := time.Now()
	ca, err := NewCA("default", now)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewCA("other", now)
	web, err := Issue(ca, "web", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	billing, _ := Issue(ca, "billing", time.Hour, now)
	intruder, _ := Issue(other, "web", time.Hour, now)
	if got := web.RenewAt(); !got.Equal(now.Add(30 * time.Minute)) {
		t.Fatalf("renew at %v, want half an hour from now", got)
	}
	// The shortest lifetime a zone allows, a minute, is renewed half a
	// minute on, not at once (its NotBefore is a minute back).
	if short, _ := Issue(ca, "web", time.Minute, now); !short.RenewAt().Equal(now.Add(30 * time.Second)) {
		t.Fatalf("a one-minute identity renews at %v, want 30 s from now", short.RenewAt())
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(ca.CertPEM))
	cert := func(id Identity) tls.Certificate {
		c, err := tls.X509KeyPair(id.CertPEM, id.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert(billing)}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peers := make(chan string, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if err := tc.Handshake(); err != nil {
				peers <- "refused"
				c.Close()
				continue
			}
			id, _ := SpiffeIDOf(tc.ConnectionState().PeerCertificates[0])
			peers <- id
			io.WriteString(c, "ok")
			c.Close()
		}
	}()
	dial := func(id Identity) error {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{Certificates: []tls.Certificate{cert(id)}, RootCAs: pool,
			InsecureSkipVerify: true, // verified below by SPIFFE ID, as a sidecar does
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				leaf, err := x509.ParseCertificate(raw[0])
				if err != nil {
					return err
				}
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
					return err
				}
				if id, _ := SpiffeIDOf(leaf); id != "spiffe://default/billing" {
					t.Errorf("server identity %s", id)
				}
				return nil
			}})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = io.ReadAll(c)
		return err
	}
	if err := dial(web); err != nil {
		t.Fatalf("web -> billing: %v", err)
	}
	if got := <-peers; got != "spiffe://default/web" {
		t.Fatalf("billing saw %q", got)
	}
	dial(intruder)
	if got := <-peers; got != "refused" {
		t.Fatalf("a certificate from another mesh's CA was accepted as %q", got)
	}
	var _ net.Conn
	if strings.Contains(string(web.CertPEM), "PRIVATE") {
		t.Fatal("key material in the certificate PEM")
	}
}
