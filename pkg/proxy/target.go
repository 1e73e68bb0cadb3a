package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/grpc/credentials"
)

// Target is where a proxy reaches its zone CP's xDS server.
type Target struct {
	// Address is host:port, as dialed.
	Address string
	// Host is the address's host: the name (or IP address) the server's
	// certificate must carry, and the TLS server name.
	Host string
	// TLS is false only for a grpc:// (plaintext) address.
	TLS bool
}

// ParseTarget reads a --cp-address: grpcs://HOST:PORT, or grpc://HOST:PORT
// (plaintext) when allowPlaintext, which the user asks for as insecure.
func ParseTarget(s string, allowPlaintext bool) (Target, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return Target{}, fmt.Errorf("%q: give a scheme, as in grpcs://HOST:PORT", s)
	}
	var t Target
	switch scheme {
	case "grpcs":
		t.TLS = true
	case "grpc":
		if !allowPlaintext {
			return Target{}, fmt.Errorf("%q: grpc:// is plaintext, which would hand this proxy's keys to anyone on the path and trust any server; "+
				"use grpcs://HOST:PORT with --ca-cert-file (the zone CP serves its CA at /xds/ca.pem), or add --xds-insecure for a local experiment", s)
		}
	default:
		return Target{}, fmt.Errorf("%q: unknown scheme %q; use grpcs://HOST:PORT", s, scheme)
	}
	if i := strings.IndexAny(rest, "/?#@ \t\r\n"); i >= 0 {
		return Target{}, fmt.Errorf("%q: only HOST:PORT may follow %s://, not %q", s, scheme, rest[i:])
	}
	host, port, err := net.SplitHostPort(rest)
	if err != nil {
		return Target{}, fmt.Errorf("%q: %w; use %s://HOST:PORT", s, err, scheme)
	}
	if host == "" {
		return Target{}, fmt.Errorf("%q: no host", s)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return Target{}, fmt.Errorf("%q: port %q is not a number from 1 to 65535", s, port)
	}
	if strings.Contains(host, "%") {
		return Target{}, fmt.Errorf("%q: an IPv6 zone cannot be verified against a certificate; use an address or name without %%", s)
	}
	t.Address, t.Host = rest, host
	return t, nil
}

// ClientTLS returns the configuration that verifies the zone CP's
// certificate for host: against the PEM certificates in caFile, or the
// system's roots when caFile is empty. An unreadable file, or one without a
// certificate, is an error.
func ClientTLS(host, caFile string) (*tls.Config, error) {
	// The session cache lets a reconnect resume (TLS 1.3 PSK with a fresh
	// key exchange): the CP skips its signature and the proxy the chain
	// verification, which is most of a handshake when a whole zone's
	// proxies reconnect at once.
	cfg := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	if caFile == "" {
		return cfg, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read the CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate (fetch the zone CP's /xds/ca.pem)", caFile)
	}
	cfg.RootCAs = pool
	return cfg, nil
}

// ClientTLSPEM is ClientTLS with the CA's PEM itself rather than a file:
// an injected sidecar gets it in its environment.
func ClientTLSPEM(host string, caPEM []byte) (*tls.Config, error) {
	cfg, _ := ClientTLS(host, "")
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("the CA holds no PEM certificate (the zone CP's /xds/ca.pem)")
	}
	cfg.RootCAs = pool
	return cfg, nil
}

// verifyFailure returns the certificate verification error of the last
// failed handshake, if it was one: the server is not who the proxy trusts,
// which retrying will not change.
func verifyFailure(err error) *tls.CertificateVerificationError {
	var v *tls.CertificateVerificationError
	if errors.As(err, &v) {
		return v
	}
	return nil
}

// handshakes wraps client credentials to keep the last handshake error,
// which gRPC reports only as text.
type handshakes struct {
	credentials.TransportCredentials
	last *lastError
}

type lastError struct {
	mu  sync.Mutex
	err error
}

func (l *lastError) set(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.err = err
}

// take returns the error and forgets it.
func (l *lastError) take() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.err
	l.err = nil
	return err
}

func (h handshakes) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	c, info, err := h.TransportCredentials.ClientHandshake(ctx, authority, conn)
	if err != nil {
		h.last.set(err)
	}
	return c, info, err
}

func (h handshakes) Clone() credentials.TransportCredentials {
	return handshakes{TransportCredentials: h.TransportCredentials.Clone(), last: h.last}
}
