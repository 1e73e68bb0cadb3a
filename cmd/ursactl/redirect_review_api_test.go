package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/tokens"
)

// rvCert makes a CA and a leaf for host, and returns the leaf pair and the
// CA's PEM.
func rvCert(t *testing.T, host string) (tls.Certificate, []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "review CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
}

// TestTokenNotSentInClearAfterRedirect: ursactl "will not send a token over
// http:// to any host but loopback" (README). An https:// API server (here a
// real API server behind a front that answers with a redirect to http://,
// as a misconfigured load balancer does) must not make it send the token in
// clear to the same host: curl drops credentials on a scheme or port change
// (CVE-2022-27776). The name cp.example is dialled on loopback only.
func TestTokenNotSentInClearAfterRedirect(t *testing.T) {
	st := store.NewMemory(0)
	users := tokens.NewUserIssuer(st, zaptest.NewLogger(t))
	ctx := context.Background()
	if err := users.EnsureKey(ctx); err != nil {
		t.Fatal(err)
	}
	token, err := users.Issue(ctx, "ada", "admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}); err != nil {
		t.Fatal(err)
	}
	h, err := apiserver.New(apiserver.Deps{Store: st, Log: zaptest.NewLogger(t), Mode: apiserver.ModeGlobal,
		Registry: prometheus.NewRegistry(), Users: users, RequireTokenOnLocalhost: true, AllowRemoteHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	// HTTPS: the front redirects to plain http on the same host name.
	cert, caPEM := rvCert(t, "cp.example")
	secure := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://cp.example"+r.URL.RequestURI(), http.StatusMovedPermanently)
	}))
	secure.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	secure.StartTLS()
	defer secure.Close()
	// Plain http: what reaches it crossed the network in clear.
	var mu sync.Mutex
	var inClear []string
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inClear = append(inClear, r.Header.Get("Authorization"))
		mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	defer plain.Close()

	// cp.example:443 and :80 are these two loopback servers.
	dt := http.DefaultTransport.(*http.Transport)
	old := dt.DialContext
	t.Cleanup(func() { dt.DialContext = old })
	var d net.Dialer
	dt.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		switch addr {
		case "cp.example:443":
			return d.DialContext(ctx, network, secure.Listener.Addr().String())
		case "cp.example:80":
			return d.DialContext(ctx, network, plain.Listener.Addr().String())
		}
		return nil, errors.New("test dials only cp.example")
	}
	dir := t.TempDir()
	caFile, tokenFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ada.token")
	os.WriteFile(caFile, caPEM, 0o600)
	os.WriteFile(tokenFile, []byte(token), 0o600)

	res := ursactl(t, nil, "", "--api-server", "https://cp.example", "--ca-cert-file", caFile, "--token-file", tokenFile, "get", "meshes")
	t.Logf("ursactl exit %d\nstdout: %s\nstderr: %s", res.code, res.stdout, res.stderr)
	if res.code == 0 || !strings.Contains(res.stderr, "another origin: not followed") {
		t.Errorf("a redirect from https to http: exit %d, stderr %q; want it refused, named", res.code, res.stderr)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, auth := range inClear {
		if strings.Contains(auth, token) {
			t.Fatalf("the user token was sent over plain http to cp.example after an https->http redirect (Authorization: Bearer %s...)", token[:20])
		}
	}
}
