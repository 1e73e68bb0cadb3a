package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ursamesh/ursa/pkg/client"
)

const (
	defaultAPIServer = "http://127.0.0.1:5681"
	envAPIServer     = "URSA_API_SERVER"
	envTokenFile     = "URSA_TOKEN_FILE"
	envToken         = "URSA_TOKEN"
	envCACertFile    = "URSA_CA_CERT_FILE"
	requestTimeout   = 30 * time.Second
)

// app is what every command shares: the streams, the environment, the clock,
// and the client made from the global flags before a command runs.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	now            func() time.Time

	apiServer  string
	tokenFile  string
	caCertFile string
	client     *client.Client
}

// usageError marks a wrong command line, which exits with exitUsage.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// errReported says that the command has already printed why it failed.
var errReported = errors.New("failed")

// connect resolves the global flags (a flag beats its environment variable,
// which beats the default) and makes the client. The user token is the
// --token-file's, else URSA_TOKEN itself, else URSA_TOKEN_FILE's.
func (a *app) connect(cmd *cobra.Command) error {
	flags := cmd.Flags()
	if v := a.getenv(envAPIServer); v != "" && !flags.Changed("api-server") {
		a.apiServer = v
	}
	u, err := url.Parse(a.apiServer)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usageError{fmt.Errorf("api server %q is not valid: want a URL such as %s", a.apiServer, defaultAPIServer)}
	}
	token, err := a.token(flags.Changed("token-file"))
	if err != nil {
		return err
	}
	transport, err := a.transport(flags.Changed("ca-cert-file"))
	if err != nil {
		return err
	}
	if token != "" {
		if u.Scheme == "http" && !isLoopbackHost(u.Hostname()) {
			return usageError{fmt.Errorf("refusing to send a user token over plain http to %s, where anyone on the path could read it: "+
				"use https://%s:5682 and --ca-cert-file F (the CA is served at %s/api/ca.pem)", u.Host, u.Hostname(), a.apiServer)}
		}
		transport = bearer{token: token, scheme: u.Scheme, host: u.Host, next: transport}
	}
	a.client = client.New(a.apiServer, &http.Client{Transport: transport, Timeout: requestTimeout, CheckRedirect: sameOrigin})
	return nil
}

// transport is http.DefaultTransport, verifying HTTPS servers with the CA
// certificates of --ca-cert-file (else URSA_CA_CERT_FILE) in place of the
// system's roots when one is given.
func (a *app) transport(flagGiven bool) (http.RoundTripper, error) {
	file := a.caCertFile
	if !flagGiven {
		file = a.getenv(envCACertFile)
	}
	if file == "" {
		return http.DefaultTransport, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("CA certificate file %s holds no PEM certificate", file)
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
	return t, nil
}

// token returns the user token to send, or "" for none.
func (a *app) token(flagGiven bool) (string, error) {
	file := a.tokenFile
	if !flagGiven {
		if v := strings.TrimSpace(a.getenv(envToken)); v != "" {
			return v, nil
		}
		file = a.getenv(envTokenFile)
	}
	if file == "" {
		return "", nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("read token file: %w", err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("token file %s is empty", file)
	}
	return token, nil
}

// isLoopbackHost reports whether host (a URL's, without port) names this
// machine: plain HTTP to it never leaves the host.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// bearer adds a bearer token to every request to the API server's host, and
// to no other: a redirect elsewhere does not carry it.
type bearer struct {
	token  string
	scheme string // the API server's, as given
	host   string // the API server's host:port
	next   http.RoundTripper
}

// RoundTrip implements http.RoundTripper; it does not modify req. A
// request to another origin (an https server's redirect to http on the
// same host, say) goes without the token.
func (b bearer) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Host != b.host || req.URL.Scheme != b.scheme {
		return b.next.RoundTrip(req)
	}
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(req)
}

// sameOrigin refuses a redirect to another scheme or host: an API server
// that sends its callers elsewhere is misconfigured or not the one meant,
// and a request that left https for http would lose what https gave it.
func sameOrigin(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	if first := via[0].URL; req.URL.Scheme != first.Scheme || req.URL.Host != first.Host {
		return fmt.Errorf("the API server redirected to %s://%s, another origin: not followed (check --api-server)", req.URL.Scheme, req.URL.Host)
	}
	return nil
}

// rangeArgs is cobra.RangeArgs (cobra.ExactArgs when lo == hi) whose error
// is a usage error.
func rangeArgs(lo, hi int) cobra.PositionalArgs {
	check := cobra.RangeArgs(lo, hi)
	if lo == hi {
		check = cobra.ExactArgs(lo)
	}
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}
