package proxyless

import (
	"bytes"
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
	"os"
	"path/filepath"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// LoadOrCreateKey returns the key in dir's KeyFile, or makes an ECDSA P-256
// key and writes it there (0600) when there is none: the key outlives the
// agent, so that an application still running with it keeps a
// certificate for it across the agent's restarts.
func LoadOrCreateKey(dir string) (crypto.Signer, error) {
	path := filepath.Join(dir, KeyFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		key, err := parseKey(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w (remove it to make a new key)", path, err)
		}
		return key, nil
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("read key: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("make a key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode the key: %w", err)
	}
	if err := writeAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	return key, nil
}

// parseKey reads a PEM private key (PKCS #8 or SEC 1 EC).
func parseKey(b []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("not a PEM private key")
	}
	if k, err := x509.ParsePKCS8PrivateKey(block.Bytes); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
		return nil, fmt.Errorf("a %T key cannot sign", k)
	}
	k, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("not a PKCS #8 or EC private key: %w", err)
	}
	return k, nil
}

// CSR is a certificate request for key (PEM), which proves to the CP that
// the agent holds it: the CP decides the identity from the Dataplane.
func CSR(nodeID string, key crypto.Signer) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: nodeID}}, key)
	if err != nil {
		return nil, fmt.Errorf("make a CSR: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// identity is what the agent writes: the chain, the key when the CP made
// it (nil: the agent's own), the mesh's root, and the leaf's expiry.
type identity struct {
	chain, key, ca []byte
	notAfter       time.Time
	uri            string
}

// identityOf reads the SDS secrets the CP sends a proxyless node: the
// "identity" chain (for key, unless the secret carries its own key) and
// the "mesh-ca" root, which must verify the chain now. ok is false when
// either has not come yet.
func identityOf(secrets []*tlsv3.Secret, key crypto.Signer, now time.Time) (id identity, ok bool, err error) {
	var tc *tlsv3.TlsCertificate
	var vc *tlsv3.CertificateValidationContext
	for _, s := range secrets {
		switch s.GetName() {
		case "identity":
			if tc = s.GetTlsCertificate(); tc == nil {
				return id, false, errors.New(`secret "identity" is not a TLS certificate`)
			}
		case "mesh-ca":
			if vc = s.GetValidationContext(); vc == nil {
				return id, false, errors.New(`secret "mesh-ca" is not a validation context`)
			}
		}
	}
	if tc == nil || vc == nil {
		return id, false, nil
	}
	id.chain = tc.GetCertificateChain().GetInlineBytes()
	certs, err := parseCerts(id.chain)
	if err != nil {
		return id, false, fmt.Errorf("identity: %w", err)
	}
	leaf := certs[0]
	if k := tc.GetPrivateKey().GetInlineBytes(); len(k) > 0 {
		if _, err := tls.X509KeyPair(id.chain, k); err != nil {
			return id, false, fmt.Errorf("identity: its key: %w", err)
		}
		id.key = k
	} else if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(leaf.PublicKey) {
		return id, false, errors.New("identity: the certificate is for another key than this agent's")
	}
	id.ca = vc.GetTrustedCa().GetInlineBytes()
	roots, err := parseCerts(id.ca)
	if err != nil {
		return id, false, fmt.Errorf("mesh-ca: %w", err)
	}
	pool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, c := range roots {
		pool.AddCert(c)
	}
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return id, false, fmt.Errorf("identity does not verify against mesh-ca: %w", err)
	}
	id.notAfter = leaf.NotAfter
	if len(leaf.URIs) > 0 {
		id.uri = leaf.URIs[0].String()
	}
	return id, true, nil
}

// parseCerts reads one or more PEM certificates, and nothing else.
func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	rest := bytes.TrimSpace(b)
	for len(rest) > 0 {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("not PEM")
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("a PEM %q block, want CERTIFICATE", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
		rest = bytes.TrimSpace(rest)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate")
	}
	return out, nil
}

// write puts the identity in dir: the root first, then the key (when the
// CP made it), then the chain, each replaced whole (renamed into place),
// so that the file watcher never reads half a file. It reads the chain and
// key together and keeps its last good pair while they disagree.
func (id identity) write(dir string) error {
	if err := writeAtomic(filepath.Join(dir, CAFile), id.ca, 0o644); err != nil {
		return err
	}
	if id.key != nil {
		if err := writeAtomic(filepath.Join(dir, KeyFile), id.key, 0o600); err != nil {
			return err
		}
	}
	return writeAtomic(filepath.Join(dir, CertFile), id.chain, 0o644)
}

// writeAtomic writes b to a temporary file beside path and renames it over
// path.
func writeAtomic(path string, b []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(f.Name()) // after a successful rename, there is nothing left to remove
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
