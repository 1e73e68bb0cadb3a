package mtls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
)

func parseLeaf(t *testing.T, chainPEM []byte) (*x509.Certificate, *x509.CertPool) {
	t.Helper()
	block, rest := pem.Decode(chainPEM)
	if block == nil {
		t.Fatal("no certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AppendCertsFromPEM(rest)
	return leaf, inter
}

// TestSubjectOfDataplane: a Dataplane's certificate names each distinct
// service of its inbounds as a SPIFFE ID and every tag as ursa://tag/value,
// and x509 parses them back as written.
func TestSubjectOfDataplane(t *testing.T) {
	dp := &api.Dataplane{Meta: api.Meta{Mesh: "default", Name: "billing-1"}, Networking: api.DataplaneNetworking{Inbound: []api.Inbound{
		{Port: 1, Tags: map[string]string{api.TagService: "billing", api.TagZone: "zone-1", "version": "v1"}},
		{Port: 2, Tags: map[string]string{api.TagService: "billing", api.TagZone: "zone-1", "version": "v2", "example.com/team": "Pay_ments"}},
		{Port: 3, Tags: map[string]string{api.TagService: "admin", "a..b": "lost"}},
	}}}
	sub := SubjectOf(dp)
	if !slices.Equal(sub.Services, []string{"admin", "billing"}) {
		t.Fatalf("services %v", sub.Services)
	}
	ca, _ := NewCA("default", time.Now())
	s, err := SignerFromMeshCA(ca)
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.Issue(sub, nil, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := parseLeaf(t, id.CertPEM)
	var got []string
	for _, u := range leaf.URIs {
		got = append(got, u.String())
	}
	want := []string{"spiffe://default/admin", "spiffe://default/billing",
		"ursa://example.com/team/Pay_ments", "ursa://ursa.io/service/admin", "ursa://ursa.io/service/billing",
		"ursa://ursa.io/zone/zone-1", "ursa://version/v1", "ursa://version/v2"}
	if !slices.Equal(got, want) {
		t.Fatalf("URI SANs\n got %q\nwant %q", got, want)
	}
	if leaf.Subject.CommonName != "admin" {
		t.Fatalf("common name %q", leaf.Subject.CommonName)
	}
	if sub.Key() == SubjectOf(&api.Dataplane{Meta: dp.Meta, Networking: api.DataplaneNetworking{Inbound: dp.Networking.Inbound[:2]}}).Key() {
		t.Fatal("different subjects share a key")
	}
}

// TestSignerChain: a signer below the root (a zone's intermediate) issues
// a chain the root alone verifies.
func TestSignerChain(t *testing.T) {
	now := time.Now()
	ca, _ := NewCA("default", now)
	root, _ := SignerFromMeshCA(ca)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "zone-1"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true, URIs: []*url.URL{{Scheme: "spiffe", Host: "default"}}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Cert, &key.PublicKey, root.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	inter := &Signer{Cert: cert, Key: key, ChainPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
	id, err := inter.Issue(Subject{Mesh: "default", Services: []string{"web"}}, nil, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	leaf, intermediates := parseLeaf(t, id.CertPEM)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(ca.CertPEM))
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Fatalf("chain through the intermediate: %v", err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots}); err == nil {
		t.Fatal("the leaf verified without its intermediate")
	}
}

// TestIssueForCSR: the signer certifies the key of a CSR, with the SANs it
// is given, never those the CSR asks for, and returns no key.
func TestIssueForCSR(t *testing.T) {
	key, csr, err := NewKeyAndCSR("default.web-1")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ParseCSR(csr)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := NewCA("default", time.Now())
	s, _ := SignerFromMeshCA(ca)
	id, err := s.Issue(Subject{Mesh: "default", Services: []string{"web"}}, pub, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(id.KeyPEM) != 0 {
		t.Fatal("a key came with a certificate for a CSR")
	}
	leaf, _ := parseLeaf(t, id.CertPEM)
	if !SameKey(leaf, key) {
		t.Fatal("the certificate is not for the CSR's key")
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if SameKey(leaf, other) {
		t.Fatal("SameKey with another key")
	}

	// The CSR asks for billing: it gets nothing of it.
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{{Scheme: "spiffe", Host: "default", Path: "/billing"}}}, key)
	pub, err = ParseCSR(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	id, _ = s.Issue(Subject{Mesh: "default", Services: []string{"web"}}, pub, time.Hour, time.Now())
	leaf, _ = parseLeaf(t, id.CertPEM)
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://default/web" {
		t.Fatalf("SANs %v: the CSR's request leaked in", leaf.URIs)
	}
}

// TestParseCSRRefuses: what is not a small, self-signed ECDSA request is
// refused with a reason.
func TestParseCSRRefuses(t *testing.T) {
	_, good, _ := NewKeyAndCSR("x")
	block, _ := pem.Decode(good)
	tampered := slices.Clone(block.Bytes)
	tampered[len(tampered)-5] ^= 0xff
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, rsaKey)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	p224DER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, p224)
	enc := func(typ string, b []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}) }
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "not PEM"},
		{"not pem", []byte("hello"), "not PEM"},
		{"too big", append(slices.Clone(good), make([]byte, MaxCSRSize)...), "more than the 4096 allowed"},
		{"certificate", enc("CERTIFICATE", block.Bytes), `"CERTIFICATE" block`},
		{"two blocks", append(slices.Clone(good), good...), "more than one PEM block"},
		{"garbage", enc("CERTIFICATE REQUEST", []byte{1, 2, 3}), "CSR:"},
		{"bad signature", enc("CERTIFICATE REQUEST", tampered), "CSR"},
		{"rsa", enc("CERTIFICATE REQUEST", rsaDER), "key RSA is not supported"},
		{"p224", enc("CERTIFICATE REQUEST", p224DER), "key ECDSA P-224 is not supported"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCSR(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseCSR: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// FuzzParseCSR: any input is parsed or refused, never crashes, and what is
// accepted is a key whose request verified.
func FuzzParseCSR(f *testing.F) {
	_, good, _ := NewKeyAndCSR("default.web-1")
	f.Add(good)
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		pub, err := ParseCSR(b)
		if err == nil && pub == nil {
			t.Fatal("accepted without a key")
		}
		if err == nil && len(b) > MaxCSRSize {
			t.Fatal("accepted an oversized CSR")
		}
	})
}

// FuzzTagURI: a tag that gets a URI SAN comes back whole from it.
func FuzzTagURI(f *testing.F) {
	f.Add("ursa.io/service", "billing")
	f.Add("version", "v1")
	f.Add("example.com/team", "a/b%c d")
	f.Add("a..b", "x")
	f.Fuzz(func(t *testing.T, name, value string) {
		u, ok := TagURI(name, value)
		if !ok {
			return
		}
		n, v, ok := ParseTagURI(u.String())
		if !ok || n != name || v != value {
			t.Fatalf("%q=%q written %q read back %q=%q (%v)", name, value, u, n, v, ok)
		}
		back, err := url.Parse(u.String())
		if err != nil || back.String() != u.String() {
			t.Fatalf("%q does not round-trip through url.URL: %v", u, err)
		}
	})
}

// TestTagURIValidTags: every tag the API accepts is written and read back,
// and one x509 refuses to parse is left out, not written.
func TestTagURIValidTags(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		ok          bool
	}{
		{"ursa.io/service", "billing", true},
		{"version", "v1", true},
		{"Version_2", "A-b_c.d", true},
		{"example.com/a..b", "x", true},
		{"a..b", "x", false},
	} {
		_, ok := TagURI(tc.name, tc.value)
		if ok != tc.ok {
			t.Fatalf("TagURI(%q, %q) ok %v", tc.name, tc.value, ok)
		}
		if !ok {
			continue
		}
		if err := api.Validate(&api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "m", Name: "d"}, Networking: api.DataplaneNetworking{Address: "127.0.0.1",
			Inbound: []api.Inbound{{Port: 1, Tags: map[string]string{api.TagService: "s", tc.name: tc.value}}}}}); err != nil {
			t.Fatalf("%q=%q is not a valid tag: %v", tc.name, tc.value, err)
		}
		ca, _ := NewCA("m", time.Now())
		s, _ := SignerFromMeshCA(ca)
		id, err := s.Issue(Subject{Mesh: "m", Services: []string{"s"}, Tags: []Tag{{tc.name, tc.value}}}, nil, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ := parseLeaf(t, id.CertPEM)
		if n, v, ok := ParseTagURI(leaf.URIs[1].String()); !ok || n != tc.name || v != tc.value {
			t.Fatalf("read back %q=%q from %s", n, v, leaf.URIs[1])
		}
	}
}

// BenchmarkIssue is one identity's CPU cost on one core: a key made here
// and signed ("cp-key"), or a proxy's CSR checked and its key signed
// ("csr"). x509.CreateCertificate verifies each signature it makes, so a
// signature costs a sign and a verify.
func BenchmarkIssue(b *testing.B) {
	ca, _ := NewCA("default", time.Now())
	s, _ := SignerFromMeshCA(ca)
	sub := Subject{Mesh: "default", Services: []string{"billing"}, Tags: []Tag{{api.TagService, "billing"}, {api.TagZone, "zone-1"}, {"version", "v1"}}}
	_, csr, _ := NewKeyAndCSR("default.billing-1")
	b.Run("cp-key", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Issue(sub, nil, time.Hour, time.Now()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("csr", func(b *testing.B) {
		for b.Loop() {
			pub, err := ParseCSR(csr)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.Issue(sub, pub, time.Hour, time.Now()); err != nil {
				b.Fatal(err)
			}
		}
	})
}
