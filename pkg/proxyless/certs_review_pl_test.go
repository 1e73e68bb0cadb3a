package proxyless

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/ursamesh/ursa/pkg/api"
)

type reviewCA struct {
	cert *x509.Certificate
	key  crypto.Signer
	pem  []byte
}

func reviewCert(t *testing.T, tmpl *x509.Certificate, parent *reviewCA, pub crypto.PublicKey, signer crypto.Signer) *reviewCA {
	t.Helper()
	p, k := tmpl, signer
	if parent != nil {
		p, k = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p, pub, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &reviewCA{cert: c, key: signer, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func reviewKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestReviewPLRevokedIntermediateStillTrusted: the root revoked a zone's
// intermediate (a disabled zone, or `ursactl zone rotate-ca
// --revoke-previous` after a key leak). Sidecars enforce the CRL; grpc-go's
// xDS credentials verify peers only against ca.pem (x509 Verify against
// km.Roots, internal/credentials/xds/handshake_info.go:287) and take no
// CRL. When the mesh-ca secret a proxyless node got trusted the root, a
// certificate minted with the revoked intermediate's key was accepted by
// every proxyless server and client of the mesh. Proxyless nodes now get
// the intermediates the root has not revoked as their trust anchors
// (api.MeshCA.ProxylessTrust): the revoked one's leaves fail, the live
// one's pass, through what the agent writes.
func TestReviewPLRevokedIntermediateStillTrusted(t *testing.T) {
	now := time.Now()
	rootKey := reviewKey(t)
	root := reviewCert(t, &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}, nil, rootKey.Public(), rootKey)
	inter := func(serial int64, name string) *reviewCA {
		k := reviewKey(t)
		c := reviewCert(t, &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
			MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}, root, k.Public(), rootKey)
		c.key = k
		return c
	}
	good, revoked := inter(2, "zone-1"), inter(3, "zone-2")
	leaf := func(ca *reviewCA, serial int64, svc string, pub crypto.PublicKey) *reviewCA {
		u, _ := url.Parse("spiffe://default/" + svc)
		return reviewCert(t, &x509.Certificate{SerialNumber: big.NewInt(serial), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}, ca, pub, ca.key)
	}
	dir := t.TempDir()
	key, err := LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	mine := leaf(good, 10, "billing", key.Public())
	crlDER, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: now.Add(-time.Minute),
		NextUpdate: now.Add(time.Hour), RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: revoked.cert.SerialNumber, RevocationTime: now}}},
		root.cert, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	crl := pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: crlDER})
	mesh := &api.MeshCA{CertPEM: string(root.pem), CRLPEM: string(crl), Intermediates: []api.Intermediate{
		{Zone: "zone-1", Serial: "2", NotAfter: good.cert.NotAfter, CertPEM: string(good.pem)},
		{Zone: "zone-2", Serial: "3", NotAfter: revoked.cert.NotAfter, CertPEM: string(revoked.pem), RevokedAt: now},
	}}
	secrets := []*tlsv3.Secret{
		{Name: "identity", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: append(append([]byte{}, mine.pem...), good.pem...)}}}}},
		{Name: "mesh-ca", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: []byte(mesh.ProxylessTrust(now))}}}}},
	}
	id, ok, err := identityOf(secrets, key, now)
	if err != nil || !ok {
		t.Fatalf("identity: %v %v", ok, err)
	}
	if err := id.write(dir); err != nil {
		t.Fatal(err)
	}

	// What grpc-go's xDS credentials do with the files (server side of a
	// proxyless server: the caller's chain, ClientAuth).
	caPEM, _ := os.ReadFile(filepath.Join(dir, CAFile))
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	attacker := leaf(revoked, 99, "web", reviewKey(t).Public())
	inters := x509.NewCertPool()
	inters.AddCert(revoked.cert)
	if _, err := attacker.cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Fatalf("a caller certificate (%v) issued by intermediate serial %v, which the mesh-ca CRL revokes, verifies against the ca.pem the agent wrote; files in %s: %v",
			attacker.cert.URIs, revoked.cert.SerialNumber, dir, listDir(dir))
	}
	// A peer of the live intermediate, presenting its chain as grpc-go does.
	peer := leaf(good, 11, "web", reviewKey(t).Public())
	chain := x509.NewCertPool()
	chain.AddCert(good.cert)
	if _, err := peer.cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: chain, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("a peer of the live intermediate: %v", err)
	}
	// Nothing revoked (no root list): the root, as before.
	if got := (&api.MeshCA{CertPEM: string(root.pem), Intermediates: mesh.Intermediates[:1]}).ProxylessTrust(now); got != string(root.pem) {
		t.Fatalf("trust without a revocation list: %q, want the root", got)
	}
}

func listDir(dir string) []string {
	es, _ := os.ReadDir(dir)
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}
