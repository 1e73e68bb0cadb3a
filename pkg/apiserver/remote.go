package apiserver

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/run"
	"github.com/ursamesh/ursa/pkg/servingcert"
)

// The API is served twice, as Kuma does: over plain HTTP on api.addr (5681)
// for the CP's own host, and over HTTPS on api.tlsAddr (5682) for everyone.
// User tokens, and the tokens POST /tokens/... hand out, cross the network
// only over the second: on the plain port a caller from another host gets
// the open paths alone (health, metrics, the CA certificates, among them
// /api/ca.pem with which it verifies the HTTPS port).

// CASecret is the GlobalSecret holding the CA of the API's self-signed
// certificate.
const CASecret = "api-server-tls"

// validateTLS checks the api.tls* settings.
func (c Config) validateTLS() []error {
	var errs []error
	if _, port, err := net.SplitHostPort(c.TLSAddr); err != nil {
		errs = append(errs, fmt.Errorf("api.tlsAddr: %q is not host:port", c.TLSAddr))
	} else if c.TLSAddr == c.Addr && port != "0" {
		errs = append(errs, fmt.Errorf("api.tlsAddr: %q is api.addr too; give HTTPS its own port (5682 by default)", c.TLSAddr))
	}
	return append(errs, servingcert.CheckSettings("api", c.TLSCert, c.TLSKey, c.TLSSAN)...)
}

// Certificate returns the HTTPS port's certificate: api.tlsCert and
// api.tlsKey, or a leaf for this host's names and api.tlsSan signed by a CA
// kept in the store (GlobalSecret CASecret, made on the first start) and
// named commonName. Its CAHandler is what GET /api/ca.pem serves.
func Certificate(ctx context.Context, st servingcert.Store, c Config, commonName string) (*servingcert.Serving, error) {
	cert, err := servingcert.Load(ctx, st, servingcert.Options{Secret: CASecret, CommonName: commonName,
		CertFile: c.TLSCert, KeyFile: c.TLSKey, Listen: c.TLSAddr, SANs: c.TLSSAN})
	if err != nil {
		return nil, fmt.Errorf("api tls: %w", err)
	}
	return cert, nil
}

// Listeners are the API's bound ports: bind them before New, whose refusals
// on the plain port name the HTTPS one (Deps.TLSAddr).
type Listeners struct {
	Plain, TLS net.Listener
}

// Listen binds api.addr and api.tlsAddr.
func Listen(c Config) (Listeners, error) {
	plain, err := net.Listen("tcp", c.Addr)
	if err != nil {
		return Listeners{}, fmt.Errorf("api: %w", err)
	}
	secure, err := net.Listen("tcp", c.TLSAddr)
	if err != nil {
		plain.Close()
		return Listeners{}, fmt.Errorf("api tls: %w", err)
	}
	return Listeners{Plain: plain, TLS: secure}, nil
}

// Close closes both listeners, for a start that fails before Serve.
func (l Listeners) Close() {
	l.Plain.Close()
	l.TLS.Close()
}

// Serve adds the two servers of handler to r: "api" on the plain port and
// "api-tls" on the HTTPS one, with cert; each stops within grace when r's
// context ends. Failed handshakes (a client that does not trust cert) are
// logged to log at debug level: the client reports them.
func Serve(r *run.Runner, l Listeners, handler http.Handler, cert *servingcert.Serving, grace time.Duration, log *zap.Logger) {
	plain := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute}
	secure := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute}
	if errLog, err := zap.NewStdLogAt(log, zap.DebugLevel); err == nil {
		secure.ErrorLog = errLog
	}
	r.Add("api", run.HTTPServer(plain, l.Plain, grace))
	r.Add("api-tls", run.HTTPServer(secure, tls.NewListener(l.TLS, cert.TLSConfig()), grace))
}

// refusePlain answers a caller from another host on the plain port, for
// anything but the open paths. It reads nothing of the request but its
// Host, to name the HTTPS address as the caller reached this one.
func (s *server) refusePlain(r *http.Request) *apiError {
	s.Log.Warn("refused a call from another host on the plain HTTP port; it must use HTTPS (a user token it sent crossed the network in clear)",
		zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.String("remote", r.RemoteAddr))
	return &apiError{status: http.StatusForbidden, title: "Forbidden",
		details: fmt.Sprintf("this port serves plain HTTP to the control plane's own host only: from another host, use %s "+
			"and verify it with the CA certificate served at /api/ca.pem (ursactl --api-server %[1]s --ca-cert-file F). "+
			"If this request carried a user token, it crossed the network unencrypted: consider it exposed "+
			"(ursactl generate user-token-signing-key revokes every token signed before)", s.httpsURL(r))}
}

// httpsURL is https://HOST:PORT for a caller that reached this server at
// r.Host: the HTTPS port's, on the host the caller named when that is a
// plain name or address.
func (s *server) httpsURL(r *http.Request) string {
	port := "5682"
	if _, p, err := net.SplitHostPort(s.TLSAddr); err == nil && p != "" && p != "0" {
		port = p
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(r.Host); err == nil {
		host = h
	}
	if servingcert.CheckSAN(host) != nil {
		host = "HOST" // not echoed: it is whatever the caller sent
	}
	return "https://" + net.JoinHostPort(host, port)
}
