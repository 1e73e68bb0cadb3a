package proxy

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/mtls"
)

// zoneCAs is a mesh root and an intermediate per zone, as the global's
// authority makes them, with the root's record of them (its CRL bundle).
func zoneCAs(t testing.TB, now time.Time, zones ...string) (*api.MeshCA, map[string]*api.ZoneCA) {
	t.Helper()
	root, err := mtls.NewCA("default", now)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, z := range zones {
		want[z] = true
	}
	puts, _, _, err := mtls.Timing{}.Plan(root, nil, want, now)
	if err != nil {
		t.Fatal(err)
	}
	cas := map[string]*api.ZoneCA{}
	for _, p := range puts[1:] {
		cas[p.GetMeta().Name] = p.(*api.ZoneCA)
	}
	return puts[0].(*api.MeshCA), cas
}

// issueFrom is a workload identity issued by a zone's intermediate: the
// leaf followed by the intermediate, as a zone's proxies present it.
func issueFrom(t *testing.T, ca *api.ZoneCA, service string, now time.Time) *tls.Certificate {
	t.Helper()
	id, err := mtls.Issue(&api.MeshCA{Meta: api.Meta{Mesh: ca.Mesh}, CertPEM: ca.CertPEM, KeyPEM: ca.KeyPEM}, service, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	chain := append(id.CertPEM[:len(id.CertPEM):len(id.CertPEM)], ca.CertPEM...)
	pair, err := tls.X509KeyPair(chain, id.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &pair
}

func revocations(t *testing.T, root *api.MeshCA) *Revocations {
	t.Helper()
	r, err := ParseRevocations([]byte(root.CRLBundle()))
	if err != nil || r == nil {
		t.Fatalf("bundle: %v", err)
	}
	return r
}

// TestRevokedIntermediateIsRefused: a zone-1 proxy and a zone-2 proxy,
// each with a certificate from its zone's intermediate, trust each other
// through the mesh root, both ways. Once the root's CRL revokes zone-2's
// intermediate, zone-1 refuses zone-2's certificates as an upstream and as
// a caller, and still admits its own zone's.
func TestRevokedIntermediateIsRefused(t *testing.T) {
	now := time.Now()
	root, cas := zoneCAs(t, now, "zone-1", "zone-2")
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(root.CertPEM))

	billing := newProxy(t) // in zone-2
	if err := billing.Apply(&Config{Identity: issueFrom(t, cas["zone-2"], "billing", now), Roots: roots, Revoked: revocations(t, root),
		Listeners: map[string]*Listener{"in": {Name: "in", Addr: anyPort, TLS: true, Routes: []Route{{Cluster: "app", Weight: 1}}}},
		Clusters:  map[string]*Cluster{"app": {Name: "app", ConnectTimeout: time.Second, Overprovisioning: 140, Endpoints: []Endpoint{{Addr: echoServer(t, "billing"), Weight: 1}}}},
	}); err != nil {
		t.Fatal(err)
	}
	web := newProxy(t) // in zone-1
	toBilling := &Cluster{Name: "billing", TLS: true, SNI: "billing", ConnectTimeout: time.Second, Overprovisioning: 140,
		Endpoints: []Endpoint{{Addr: boundAddr(t, billing, "in"), Weight: 1}}}
	webCfg := func(r *Revocations) *Config {
		return &Config{Identity: issueFrom(t, cas["zone-1"], "web", now), Roots: roots, Revoked: r,
			Listeners: map[string]*Listener{"in": {Name: "in", Addr: anyPort, TLS: true, Routes: []Route{{Cluster: "app", Weight: 1}}}},
			Clusters: map[string]*Cluster{toBilling.Name: toBilling,
				"app": {Name: "app", ConnectTimeout: time.Second, Overprovisioning: 140, Endpoints: []Endpoint{{Addr: echoServer(t, "web"), Weight: 1}}}}}
	}
	cfg := webCfg(revocations(t, root))
	if err := web.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	callBilling := func(cfg *Config) error {
		up, err := web.connect(cfg, toBilling, 3)
		if err != nil {
			return err
		}
		defer up.Close()
		up.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintln(up, "hi")
		line, err := bufio.NewReader(up).ReadString('\n')
		if err == nil && line != "billing hi\n" {
			err = fmt.Errorf("answer %q", line)
		}
		return err
	}
	callWeb := func(as *tls.Certificate) error {
		c, err := tls.Dial("tcp", boundAddr(t, web, "in"), &tls.Config{Certificates: []tls.Certificate{*as}, InsecureSkipVerify: true})
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintln(c, "hi")
		_, err = bufio.NewReader(c).ReadString('\n')
		return err
	}
	if err := callBilling(cfg); err != nil {
		t.Fatalf("zone-1 -> zone-2 through both intermediates: %v", err)
	}
	fromZone2, fromZone1 := issueFrom(t, cas["zone-2"], "billing", now), issueFrom(t, cas["zone-1"], "other", now)
	if err := callWeb(fromZone2); err != nil {
		t.Fatalf("a zone-2 caller at a zone-1 proxy: %v", err)
	}

	// zone-2 disabled: its intermediate revoked.
	puts, _, _, err := mtls.Timing{}.Plan(root, cas, map[string]bool{"zone-1": true}, now.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	cfg = webCfg(revocations(t, puts[0].(*api.MeshCA)))
	if err := web.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if err := callBilling(cfg); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("zone-1 reached an upstream whose intermediate is revoked: %v", err)
	}
	if err := callWeb(fromZone2); err == nil {
		t.Fatal("a zone-1 proxy admitted a caller whose intermediate is revoked")
	}
	if err := callWeb(fromZone1); err != nil {
		t.Fatalf("a zone-1 caller was refused after another zone's revocation: %v", err)
	}
}

// TestRevocationsAsEnvoy: once lists are given, a chain through a CA
// without its own list is refused, as is one whose list expired; without
// lists, nothing is checked; what is not CRL PEM is refused whole.
func TestRevocationsAsEnvoy(t *testing.T) {
	now := time.Now()
	root, cas := zoneCAs(t, now, "zone-1")
	leaf, _ := x509.ParseCertificate(issueFrom(t, cas["zone-1"], "web", now).Certificate[0])
	chain := []*x509.Certificate{leaf, mustCert(t, cas["zone-1"].CertPEM), mustCert(t, root.CertPEM)}

	if err := revocations(t, root).Check(chain, now); err != nil {
		t.Fatalf("the full bundle refused a good chain: %v", err)
	}
	onlyRoot, _ := ParseRevocations([]byte(root.CRLPEM))
	if err := onlyRoot.Check(chain, now); err == nil || !strings.Contains(err.Error(), "no revocation list") {
		t.Fatalf("a chain through a CA without a list: %v", err)
	}
	if err := revocations(t, root).Check(chain, now.Add(mtls.CRLValidity+time.Hour)); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("an expired list: %v", err)
	}
	var none *Revocations
	if err := none.Check(chain, now); err != nil {
		t.Fatal(err)
	}
	if r, err := ParseRevocations(nil); r != nil || err != nil {
		t.Fatalf("no lists: %v %v", r, err)
	}
	for _, bad := range []string{"junk", root.CertPEM, root.CRLPEM + "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"} {
		if _, err := ParseRevocations([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func mustCert(t testing.TB, certPEM string) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode([]byte(certPEM))
	if b == nil {
		t.Fatal("no PEM")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// FuzzParseRevocations feeds the proxy what a validation context's `crl`
// may hold: parsing never panics, and what it accepts, checking a chain
// against never panics either.
func FuzzParseRevocations(f *testing.F) {
	now := time.Now()
	root, cas := zoneCAs(f, now, "zone-1")
	f.Add([]byte(root.CRLBundle()))
	f.Add([]byte(root.CRLPEM))
	f.Add([]byte(root.CRLPEM[:len(root.CRLPEM)/2]))
	f.Add([]byte(cas["zone-1"].CertPEM))
	f.Add([]byte("-----BEGIN X509 CRL-----\n-----END X509 CRL-----\n"))
	chain := []*x509.Certificate{mustCert(f, cas["zone-1"].CertPEM), mustCert(f, root.CertPEM)}
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := ParseRevocations(in)
		if err != nil {
			return
		}
		r.Check(chain, now)
	})
}
