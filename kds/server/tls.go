package server

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
	"fmt"
	"math/big"
	"net"
	"os"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// tlsSecretName is the GlobalSecret holding the self-signed KDS key pair.
const tlsSecretName = "kds-server-tls"

// Certificate returns the KDS server's key pair and its certificate in PEM:
// the files given, or else the self-signed pair kept in the store, made on
// the first start so that every replica and every restart serves the same.
func Certificate(ctx context.Context, st store.Store, certFile, keyFile string) (tls.Certificate, []byte, error) {
	if certFile != "" || keyFile != "" {
		if certFile == "" || keyFile == "" {
			return tls.Certificate{}, nil, errors.New("kds tls: give both a certificate and a key, or neither")
		}
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return tls.Certificate{}, nil, fmt.Errorf("kds tls: %w", err)
		}
		certPEM, err := os.ReadFile(certFile)
		return cert, certPEM, err
	}
	key := api.Key{Type: "GlobalSecret", Name: tlsSecretName}
	r, err := st.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		data, gerr := selfSigned()
		if gerr != nil {
			return tls.Certificate{}, nil, gerr
		}
		_, err = st.Create(ctx, &api.GlobalSecret{Meta: api.Meta{Type: "GlobalSecret", Name: tlsSecretName}, Data: data})
		if err == nil || errors.Is(err, store.ErrAlreadyExists) {
			r, err = st.Get(ctx, key) // another replica may have won the race
		}
	}
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("kds tls: %w", err)
	}
	data := r.(*api.GlobalSecret).Data
	cert, err := tls.X509KeyPair(data, data)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("kds tls: stored key pair: %w", err)
	}
	var certPEM []byte
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			certPEM = append(certPEM, pem.EncodeToMemory(b)...)
		}
	}
	return cert, certPEM, nil
}

// selfSigned makes an ECDSA key pair and a ten-year certificate for the
// loopback names and this host's name, as PEM (certificate, then key).
func selfSigned() ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, err
	}
	names := []string{"localhost"}
	if h, err := os.Hostname(); err == nil && h != "" {
		names = append(names, h)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "ursa global control plane (KDS)"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              names,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
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
