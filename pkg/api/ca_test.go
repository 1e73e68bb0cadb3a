package api

import (
	"strings"
	"testing"
	"time"
)

// TestMeshCAWithANextRoot: while a root is being replaced, proxies trust
// both roots and enforce both roots' lists with the intermediates'; a
// proxyless application, with nothing revoked, trusts both roots; the copy
// KDS carries to a zone holds neither root's key; a next key without its
// certificate is refused.
func TestMeshCAWithANextRoot(t *testing.T) {
	const (
		root, next   = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n", "-----BEGIN CERTIFICATE-----\nAQ==\n-----END CERTIFICATE-----\n"
		rootCRL, nxt = "-----BEGIN X509 CRL-----\nAA==\n-----END X509 CRL-----\n", "-----BEGIN X509 CRL-----\nAQ==\n-----END X509 CRL-----\n"
		interCRL     = "-----BEGIN X509 CRL-----\nAg==\n-----END X509 CRL-----\n"
		key          = "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"
	)
	ca := &MeshCA{Meta: Meta{Type: "MeshCA", Mesh: "default", Name: "ca"}, CertPEM: root, KeyPEM: key, CRLPEM: rootCRL,
		Intermediates: []Intermediate{{Zone: "zone-1", Serial: "1", NotAfter: time.Now().Add(time.Hour), CRLPEM: interCRL}}}
	if ca.Rotating() || ca.TrustBundle() != root || ca.CRLBundle() != rootCRL+interCRL || ca.ProxylessTrust(time.Now()) != root {
		t.Fatal("a root alone: wrong bundles")
	}
	ca.NextCertPEM, ca.NextKeyPEM, ca.NextCRLPEM = next, key, nxt
	if err := Validate(ca); err != nil {
		t.Fatal(err)
	}
	if !ca.Rotating() || ca.TrustBundle() != root+next || ca.CRLBundle() != rootCRL+nxt+interCRL || ca.ProxylessTrust(time.Now()) != root+next {
		t.Fatalf("with a next root: trust %q, lists %q", ca.TrustBundle(), ca.CRLBundle())
	}
	d, _ := Lookup("MeshCA")
	sent := d.Redact(ca).(*MeshCA)
	if sent.KeyPEM != "" || sent.NextKeyPEM != "" || sent.NextCertPEM != next || sent.NextCRLPEM != nxt || ca.NextKeyPEM == "" {
		t.Fatal("KDS's copy: a key is carried, the next root is lost, or the original was changed")
	}
	bad := DeepCopy(ca).(*MeshCA)
	bad.NextCertPEM = ""
	if err := Validate(bad); err == nil || !strings.Contains(err.Error(), "nextCertPEM") {
		t.Fatalf("a next key without its certificate: %v", err)
	}
}
