// Package servingcert gives a control plane's TLS servers (the global's KDS,
// the zone's xDS) their certificate: the pair the user gives, or else a leaf
// made at each start for this process's names and addresses, signed by a
// self-signed CA kept in the store, so that every restart and every replica
// is verified by the same CA certificate, the one clients download.
package servingcert

import (
	"bytes"
	"context"
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
	"net/http"
	"sync"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// Store is what Load needs of a store: the CA is created once and read by
// everyone after.
type Store interface {
	Get(ctx context.Context, key api.Key) (api.Resource, error)
	Create(ctx context.Context, r api.Resource) (api.Resource, error)
}

// Options say where a server's certificate comes from.
type Options struct {
	// Secret names the GlobalSecret that holds the CA (PEM certificate,
	// then PEM key). Required unless CertFile and KeyFile are given.
	Secret string
	// CommonName is the subject of a CA made here.
	CommonName string
	// CertFile and KeyFile, when given, are served as they are, and
	// CertFile's certificates are what clients are told to trust.
	CertFile, KeyFile string
	// Listen is the address the server binds (host:port); its host, or
	// every address of this host's interfaces when it binds all of them,
	// goes into the leaf's names.
	Listen string
	// SANs are further DNS names or IP addresses the leaf names (checked
	// with CheckSAN).
	SANs []string
}

// Leaf lifetimes: a leaf is made at each start and renewed, while the
// process runs, once it is past renewAfter of its life.
const (
	leafLifetime = 365 * 24 * time.Hour
	renewAfter   = leafLifetime * 2 / 3
	caLifetime   = 10 * 365 * 24 * time.Hour
)

// Serving is a TLS server's certificate. It is safe for concurrent use.
type Serving struct {
	caPEM []byte
	names Names

	// When the CA is ours, the leaf is re-issued as it ages; otherwise
	// fixed holds the user's pair.
	fixed *tls.Certificate
	ca    *x509.Certificate
	caKey crypto.Signer
	now   func() time.Time
	mu    sync.Mutex
	leaf  *tls.Certificate
	renew time.Time
}

// Load returns the certificate the options describe. A CA is made and stored
// under o.Secret on the first start; racing starts agree on the first one
// stored. A stored certificate that cannot sign (not a CA) is an error, not
// replaced: clients hold it as their trust anchor.
func Load(ctx context.Context, st Store, o Options) (*Serving, error) {
	if o.CertFile != "" || o.KeyFile != "" {
		return fromFiles(o.CertFile, o.KeyFile)
	}
	if o.Secret == "" {
		return nil, errors.New("serving certificate: no CA secret name")
	}
	names, err := NamesFor(o.Listen, o.SANs)
	if err != nil {
		return nil, err
	}
	data, err := loadCA(ctx, st, o.Secret, o.CommonName)
	if err != nil {
		return nil, err
	}
	ca, caKey, caPEM, err := parseCA(data)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: stored CA %s: %w", o.Secret, err)
	}
	s := &Serving{caPEM: caPEM, names: names, ca: ca, caKey: caKey, now: time.Now}
	if _, err := s.current(); err != nil {
		return nil, err
	}
	return s, nil
}

func fromFiles(certFile, keyFile string) (*Serving, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("serving certificate: give both a certificate and a key file, or neither")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	// What clients are told to trust is the file's certificates alone: the
	// file may hold the key too (one PEM file for both), and ca.pem is
	// served to anyone.
	var certPEM []byte
	for _, der := range cert.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return &Serving{caPEM: certPEM, fixed: &cert}, nil
}

// loadCA reads the stored CA pair, making and storing one if there is none.
func loadCA(ctx context.Context, st Store, secret, commonName string) ([]byte, error) {
	key := api.Key{Type: "GlobalSecret", Name: secret}
	r, err := st.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		data, gerr := newCA(commonName)
		if gerr != nil {
			return nil, fmt.Errorf("serving certificate: make CA: %w", gerr)
		}
		_, err = st.Create(ctx, &api.GlobalSecret{Meta: api.Meta{Type: "GlobalSecret", Name: secret}, Data: data})
		if err == nil || errors.Is(err, store.ErrAlreadyExists) {
			r, err = st.Get(ctx, key) // another replica may have won the race
		}
	}
	if err != nil {
		return nil, fmt.Errorf("serving certificate: CA %s: %w", secret, err)
	}
	gs, ok := r.(*api.GlobalSecret)
	if !ok {
		return nil, fmt.Errorf("serving certificate: CA %s: stored as %T", secret, r)
	}
	return gs.Data, nil
}

// parseCA reads a PEM certificate and key, checks that the certificate may
// sign others, and returns it with the certificate's PEM alone.
func parseCA(data []byte) (*x509.Certificate, crypto.Signer, []byte, error) {
	pair, err := tls.X509KeyPair(data, data)
	if err != nil {
		return nil, nil, nil, err
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, nil, nil, err
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, nil, nil, errors.New("the certificate is not a CA (IsCA with CertSign)")
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil, nil, fmt.Errorf("key of type %T cannot sign", pair.PrivateKey)
	}
	return cert, signer, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: pair.Certificate[0]}), nil
}

// newCA makes an ECDSA P-256 CA, as PEM certificate then PEM key.
func newCA(commonName string) ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return append(out, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})...), nil
}

func serialNumber() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
}

// current returns the leaf, issuing a new one when it is due.
func (s *Serving) current() (*tls.Certificate, error) {
	if s.fixed != nil {
		return s.fixed, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if s.leaf != nil && now.Before(s.renew) {
		return s.leaf, nil
	}
	leaf, err := s.issue(now)
	if err != nil {
		if s.leaf != nil {
			return s.leaf, nil // the old one serves until a new one can be made
		}
		return nil, err
	}
	s.leaf, s.renew = leaf, now.Add(renewAfter)
	return leaf, nil
}

// issue signs a fresh key for this process's names, valid until the CA
// expires at the latest.
func (s *Serving) issue(now time.Time) (*tls.Certificate, error) {
	// Checked first: past the CA's expiry every handshake comes here, and
	// should not make a key to throw away.
	notAfter := now.Add(leafLifetime)
	if notAfter.After(s.ca.NotAfter) {
		notAfter = s.ca.NotAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("serving certificate: the CA %q expired on %s", s.ca.Subject.CommonName, s.ca.NotAfter.Format(time.DateOnly))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: s.names.DNS[0]},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     s.names.DNS,
		IPAddresses:  s.names.IPs(),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.ca, &key.PublicKey, s.caKey)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: sign: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// TLSConfig returns a server configuration that serves the certificate,
// renewed as it ages.
func (s *Serving) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.current()
		},
	}
}

// Certificate returns the certificate served now.
func (s *Serving) Certificate() (*tls.Certificate, error) { return s.current() }

// CAPEM is what clients should trust: the CA's certificate, or the given
// certificate file's contents.
func (s *Serving) CAPEM() []byte { return bytes.Clone(s.caPEM) }

// Names are the leaf's subject alternative names; empty for a given pair.
func (s *Serving) Names() Names { return s.names }

// CAHandler serves CAPEM, as GET /kds/ca.pem or /xds/ca.pem do. It is public:
// a client needs it before it has any credential.
func (s *Serving) CAHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(s.caPEM)
	})
}
