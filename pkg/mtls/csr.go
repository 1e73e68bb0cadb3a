package mtls

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
)

// MaxCSRSize bounds a CSR a proxy presents, in bytes of PEM: an ECDSA
// P-384 request with a long common name takes well under 1 KiB.
const MaxCSRSize = 4096

// NewKeyAndCSR makes, where it will be used, an ECDSA P-256 key and a
// certificate request for it in PEM, as a data plane does (the built-in
// proxy, which links no Ursa package, has its own: proxy.NewKey). The
// request names nothing the control plane believes (it decides the SANs
// from the registered Dataplane): it only proves the key is held.
func NewKeyAndCSR(commonName string) (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("make a key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: commonName}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("make a CSR: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// ParseCSR reads a certificate request a proxy presents, in PEM: exactly
// one CERTIFICATE REQUEST block, at most MaxCSRSize bytes, signed by the
// key it carries, an ECDSA P-256 or P-384 key. It returns that public key;
// nothing else of the request is used.
func ParseCSR(b []byte) (crypto.PublicKey, error) {
	if len(b) > MaxCSRSize {
		return nil, fmt.Errorf("CSR is %d bytes, more than the %d allowed", len(b), MaxCSRSize)
	}
	block, rest := pem.Decode(b)
	if block == nil {
		return nil, errors.New("CSR is not PEM")
	}
	if block.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("CSR is a PEM %q block, want CERTIFICATE REQUEST", block.Type)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("CSR: more than one PEM block")
	}
	req, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CSR: %w", err)
	}
	pub, ok := req.PublicKey.(*ecdsa.PublicKey)
	if !ok || (pub.Curve != elliptic.P256() && pub.Curve != elliptic.P384()) {
		return nil, fmt.Errorf("CSR: key %s is not supported: use ECDSA P-256 or P-384", keyName(req))
	}
	if err := req.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR: signature: %w", err)
	}
	return pub, nil
}

func keyName(req *x509.CertificateRequest) string {
	if pub, ok := req.PublicKey.(*ecdsa.PublicKey); ok {
		return "ECDSA " + pub.Curve.Params().Name
	}
	return req.PublicKeyAlgorithm.String()
}

// SameKey reports whether a certificate certifies key's public half.
func SameKey(cert *x509.Certificate, key crypto.Signer) bool {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(cert.PublicKey)
}
