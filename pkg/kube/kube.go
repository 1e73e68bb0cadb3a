// Package kube is a small Kubernetes REST client on net/http and
// encoding/json: a base URL, a bearer token (or client certificate) and the
// cluster's CA, from a kubeconfig file or a pod's service-account files. It
// speaks JSON to any API path and turns a failed request into a
// *StatusError. Ursa does not link client-go; pkg/leader's Lease elector
// and the Kubernetes store (pkg/store/kubernetes) use this client.
//
// It imports no other Ursa package (test/layering_test.go).
package kube

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// Client talks to one apiserver. It is safe for concurrent use.
type Client struct {
	base  string // no trailing slash
	http  *http.Client
	token *tokenSource
}

// New returns a client for cfg. It refuses a config without a CA or without
// credentials: Ursa never talks to an apiserver it cannot authenticate.
func New(cfg *Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	base := strings.TrimRight(cfg.Server, "/")
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(cfg.CAPEM) {
		return nil, errors.New("kube: the CA holds no PEM certificate")
	}
	tlsCfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if len(cfg.CertPEM) > 0 {
		cert, err := tls.X509KeyPair(cfg.CertPEM, cfg.KeyPEM)
		if err != nil {
			return nil, fmt.Errorf("kube: client certificate: %w", err)
		}
		tlsCfg.Certificates = []tls.Certificate{cert}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsCfg
	// Every request and watch shares one HTTP/2 connection: a ping on an
	// idle one, and a limit on waiting for an answer's headers, find a
	// connection that died without a word (as client-go's health check
	// does), instead of leaving watches and requests blocked on it.
	tr.ResponseHeaderTimeout = 30 * time.Second
	tr.HTTP2 = &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second}
	c := &Client{base: base, http: &http.Client{Transport: tr}}
	if cfg.Token != "" || cfg.TokenFile != "" {
		c.token = &tokenSource{token: cfg.Token, file: cfg.TokenFile}
	}
	return c, nil
}

// StatusError is a request the apiserver answered with a status other than
// 2xx: its HTTP code and, when the body was a metav1.Status, its reason
// ("Conflict", "NotFound", "AlreadyExists", ...) and message.
type StatusError struct {
	Method, Path string
	Code         int
	Reason       string
	Message      string
}

func (e *StatusError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Code)
	}
	return fmt.Sprintf("kube: %s %s: %d %s", e.Method, e.Path, e.Code, msg)
}

// IsConflict reports whether err is a 409: an update whose resourceVersion
// is stale, or a create of a name that exists.
func IsConflict(err error) bool { return Code(err) == http.StatusConflict }

// IsNotFound reports whether err is a 404.
func IsNotFound(err error) bool { return Code(err) == http.StatusNotFound }

// Code returns the HTTP code of a *StatusError in err's chain, 0 when there
// is none.
func Code(err error) int {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// ErrTransport marks a request that got no answer, or an answer cut short:
// the apiserver could not be reached or the connection failed. Callers may
// retry it; a *StatusError is an answer.
var ErrTransport = errors.New("no answer from the apiserver")

// maxBody bounds what Do reads of one answer.
const maxBody = 32 << 20

// Do sends in (JSON-encoded, unless nil) to path, escaped, with any query
// (e.g. "/apis/coordination.k8s.io/v1/namespaces/ns/leases/x") and decodes the
// answer into out (unless nil). A non-2xx answer is a *StatusError; no
// answer is an error wrapping ErrTransport; an answer that does not decode
// into out is an error naming the path.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("kube: encode %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	return c.do(ctx, method, path, "application/json", body, out)
}

// do sends body, of contentType, and decodes the answer into out, as Do.
func (c *Client) do(ctx context.Context, method, path, contentType string, body io.Reader, out any) error {
	resp, err := c.send(ctx, method, path, contentType, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fmt.Errorf("kube: %s %s: read answer: %w: %w", method, path, ErrTransport, err)
	}
	if resp.StatusCode/100 != 2 {
		return statusError(method, path, resp.StatusCode, b)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("kube: decode %s %s: %w", method, path, err)
	}
	return nil
}

// Stream GETs path (escaped, with its query, e.g. "...?watch=1") and returns
// the body of a 2xx answer unread, for the caller to read as it arrives and
// close: a watch. Its errors are Do's.
func (c *Client) Stream(ctx context.Context, path string) (io.ReadCloser, error) {
	resp, err := c.send(ctx, http.MethodGet, path, "", nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
		return nil, statusError(http.MethodGet, path, resp.StatusCode, b)
	}
	return resp.Body, nil
}

// send makes one request with the client's credentials.
func (c *Client) send(ctx context.Context, method, path, contentType string, body io.Reader) (*http.Response, error) {
	// path is already escaped and may carry a query (?labelSelector=...).
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("kube: %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	if c.token != nil {
		tok, err := c.token.get()
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("kube: %s %s: %w: %w", method, path, ErrTransport, err)
	}
	return resp, nil
}

// statusError is the *StatusError of a non-2xx answer whose body is b
// (a metav1.Status, or anything else).
func statusError(method, path string, code int, b []byte) *StatusError {
	se := &StatusError{Method: method, Path: path, Code: code}
	var st struct {
		Reason  string `json:"reason"`
		Message string `json:"message"`
	}
	if json.Unmarshal(b, &st) == nil {
		se.Reason, se.Message = st.Reason, st.Message
	}
	return se
}

// tokenSource re-reads a token file now and then: a pod's projected
// service-account token is rotated by the kubelet (hourly by default).
type tokenSource struct {
	token, file string

	mu   sync.Mutex
	read time.Time
}

const tokenReread = time.Minute

func (s *tokenSource) get() (string, error) {
	if s.file == "" {
		return s.token, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.token != "" && time.Since(s.read) < tokenReread {
		return s.token, nil
	}
	b, err := os.ReadFile(s.file)
	if err != nil {
		if s.token != "" { // keep the last good one through a brief hiccup
			return s.token, nil
		}
		return "", fmt.Errorf("kube: read token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("kube: token file %s is empty", s.file)
	}
	s.token, s.read = tok, time.Now()
	return s.token, nil
}
