// Package mtls is each mesh's built-in certificate authority: making the CA,
// issuing short-lived workload certificates whose URI SAN is the service's
// SPIFFE ID, and knowing when to rotate them. Private keys never leave the
// values returned here: nothing in this package logs them.
package mtls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
)

// CAName is the name of every mesh's MeshCA resource.
const CAName = "ca"

// NewCA makes a mesh's CA: an ECDSA P-256 key and a ten-year self-signed
// certificate whose URI SAN is spiffe://<mesh>.
func NewCA(mesh string, now time.Time) (*api.MeshCA, error) {
	return newRoot(mesh, "ursa mesh "+mesh, now)
}

// newRoot is NewCA with the root's common name.
func newRoot(mesh, commonName string, now time.Time) (*api.MeshCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("mesh %s CA: %w", mesh, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"ursa"}},
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: mesh}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("mesh %s CA: %w", mesh, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &api.MeshCA{
		Meta:    api.Meta{Type: "MeshCA", Mesh: mesh, Name: CAName},
		CertPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		KeyPEM:  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})),
	}, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

// Identity is a workload certificate, with the chain of the CA that issued
// it, and its key when the control plane made it, in PEM.
type Identity struct {
	// CertPEM is the leaf followed by the issuing CA's chain up to (not
	// including) the mesh's root.
	CertPEM []byte
	// KeyPEM is empty when the proxy made its own key (a CSR).
	KeyPEM []byte
	// NotBefore is backdated (a minute before IssuedAt) for clocks behind
	// the CP's.
	NotBefore time.Time
	NotAfter  time.Time
	IssuedAt  time.Time
	// Serial is the leaf's serial number: it names this issuance.
	Serial *big.Int
}

// RenewAt is when an identity should be replaced: halfway from its issue
// to its end, so that a renewal that fails has the other half to succeed.
// (Halfway from NotBefore, backdated a minute, would be at once for the
// shortest lifetime allowed, one minute: a certificate signed at every
// generation.)
func (id Identity) RenewAt() time.Time {
	from := id.IssuedAt
	if from.IsZero() {
		from = id.NotBefore
	}
	return from.Add(id.NotAfter.Sub(from) / 2)
}

// Signer issues workload certificates: a CA certificate, its key, and the
// chain a workload presents with its leaf. Today a mesh's root signs
// (SignerFromMeshCA); a zone's intermediate CA can sign just the same, with
// its own certificate in ChainPEM. A Signer is safe for concurrent use.
type Signer struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// ChainPEM is the signer's certificate and any intermediates up to
	// (not including) the root; empty when the signer is the root.
	ChainPEM []byte
}

// SignerFromMeshCA is the mesh's root CA as the signer: nothing goes in the
// chain, since peers trust the root itself.
func SignerFromMeshCA(ca *api.MeshCA) (*Signer, error) {
	pair, err := tls.X509KeyPair([]byte(ca.CertPEM), []byte(ca.KeyPEM))
	if err != nil {
		return nil, fmt.Errorf("mesh %s CA: %w", ca.Mesh, err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("mesh %s CA: %w", ca.Mesh, err)
	}
	key, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("mesh %s CA: key of type %T cannot sign", ca.Mesh, pair.PrivateKey)
	}
	return &Signer{Cert: cert, Key: key}, nil
}

// Issue signs a certificate for sub valid for ttl from now, usable as a TLS
// server and client certificate, whose URI SANs are sub's (URIs). It
// certifies pub, a key the proxy made and proved it holds (a CSR); when
// pub is nil it makes an ECDSA P-256 key and returns it too.
func (s *Signer) Issue(sub Subject, pub crypto.PublicKey, ttl time.Duration, now time.Time) (Identity, error) {
	uris := sub.URIs()
	if len(sub.Services) == 0 {
		return Identity{}, errors.New("issue: at least one service is required")
	}
	var keyPEM []byte
	if pub == nil {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return Identity{}, fmt.Errorf("issue %s: %w", uris[0], err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return Identity{}, fmt.Errorf("issue %s: %w", uris[0], err)
		}
		pub, keyPEM = &key.PublicKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	}
	notBefore := now.Add(-time.Minute)
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: sub.Services[0], Organization: []string{"ursa"}},
		URIs:         uris,
		NotBefore:    notBefore,
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if tmpl.NotAfter.After(s.Cert.NotAfter) {
		tmpl.NotAfter = s.Cert.NotAfter // never past its issuer
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.Cert, pub, s.Key)
	if err != nil {
		return Identity{}, fmt.Errorf("issue %s: %w", uris[0], err)
	}
	chain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return Identity{
		CertPEM:   append(chain, s.ChainPEM...),
		KeyPEM:    keyPEM,
		NotBefore: notBefore,
		NotAfter:  tmpl.NotAfter,
		IssuedAt:  now,
		Serial:    tmpl.SerialNumber,
	}, nil
}

// Issue signs, with the mesh's root CA, a certificate for one service and
// no other tag, with a key it makes. Tests and benchmarks use it; the zone
// issues per instance with a Signer.
func Issue(ca *api.MeshCA, service string, ttl time.Duration, now time.Time) (Identity, error) {
	s, err := SignerFromMeshCA(ca)
	if err != nil {
		return Identity{}, err
	}
	if service == "" {
		return Identity{}, errors.New("issue: service is required")
	}
	return s.Issue(Subject{Mesh: ca.Mesh, Services: []string{service}}, nil, ttl, now)
}

// SpiffeIDOf returns the SPIFFE ID in a certificate's URI SANs.
func SpiffeIDOf(cert *x509.Certificate) (string, error) {
	for _, u := range cert.URIs {
		if u.Scheme == "spiffe" {
			return u.String(), nil
		}
	}
	return "", errors.New("certificate has no spiffe:// URI SAN")
}
