// Package mtls is each mesh's built-in certificate authority: making the CA,
// issuing short-lived workload certificates whose URI SAN is the service's
// SPIFFE ID, and knowing when to rotate them. Private keys never leave the
// values returned here: nothing in this package logs them.
package mtls

import (
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
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("mesh %s CA: %w", mesh, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "ursa mesh " + mesh, Organization: []string{"ursa"}},
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

// Identity is a workload certificate and its key, in PEM.
type Identity struct {
	CertPEM   []byte
	KeyPEM    []byte
	NotBefore time.Time
	NotAfter  time.Time
}

// RenewAt is when an identity should be replaced: at half its lifetime, so
// a renewal that fails has the other half to succeed.
func (id Identity) RenewAt() time.Time {
	return id.NotBefore.Add(id.NotAfter.Sub(id.NotBefore) / 2)
}

// Issue signs, with the mesh's CA, a certificate for service valid for
// ttl, whose URI SAN is spiffe://<mesh>/<service> and which serves both as a
// TLS server and a client certificate.
func Issue(ca *api.MeshCA, service string, ttl time.Duration, now time.Time) (Identity, error) {
	pair, err := tls.X509KeyPair([]byte(ca.CertPEM), []byte(ca.KeyPEM))
	if err != nil {
		return Identity{}, fmt.Errorf("mesh %s CA: %w", ca.Mesh, err)
	}
	caCert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return Identity{}, err
	}
	if service == "" {
		return Identity{}, errors.New("issue: service is required")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Identity{}, err
	}
	id := &url.URL{Scheme: "spiffe", Host: ca.Mesh, Path: "/" + service}
	notBefore := now.Add(-time.Minute)
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: service, Organization: []string{"ursa"}},
		URIs:         []*url.URL{id},
		NotBefore:    notBefore,
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, pair.PrivateKey)
	if err != nil {
		return Identity{}, fmt.Errorf("issue %s: %w", id, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Identity{}, err
	}
	return Identity{
		CertPEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		NotBefore: notBefore,
		NotAfter:  now.Add(ttl),
	}, nil
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
