package kube

import (
	"bufio"
	"context"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// tlsServer is a TLS server on loopback playing an apiserver, and a client
// of it.
func tlsServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *Client) {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	c, err := New(&Config{Server: srv.URL, CAPEM: ca, Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	return srv, c
}

// TestStream: a 2xx answer's body is handed over as it arrives (the first
// line before the server ends the answer); a non-2xx is a *StatusError with
// the Status's reason, as Do's.
func TestStream(t *testing.T) {
	release := make(chan struct{})
	_, c := tlsServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer t" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if r.URL.Query().Get("resourceVersion") == "1" {
			w.WriteHeader(http.StatusGone)
			_, _ = io.WriteString(w, `{"kind":"Status","reason":"Expired","message":"too old resource version","code":410}`)
			return
		}
		_, _ = io.WriteString(w, `{"type":"ADDED","object":{}}`+"\n")
		w.(http.Flusher).Flush()
		<-release
	})
	defer close(release)
	ctx := context.Background()
	body, err := c.Stream(ctx, "/api/v1/pods?watch=1")
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	line, err := bufio.NewReader(body).ReadString('\n')
	if err != nil || line != `{"type":"ADDED","object":{}}`+"\n" {
		t.Fatalf("first line %q, %v", line, err)
	}

	_, err = c.Stream(ctx, "/api/v1/pods?watch=1&resourceVersion=1")
	var se *StatusError
	if !errors.As(err, &se) || se.Code != http.StatusGone || se.Reason != "Expired" || Code(err) != http.StatusGone {
		t.Fatalf("stream from a compacted revision = %v, want a 410 StatusError", err)
	}
	if errors.Is(err, ErrTransport) {
		t.Fatalf("an answer is not a transport error: %v", err)
	}
}

// TestErrTransport: a request nobody answers wraps ErrTransport, for Do and
// Stream alike.
func TestErrTransport(t *testing.T) {
	srv, c := tlsServer(t, func(w http.ResponseWriter, r *http.Request) {})
	srv.Close()
	ctx := context.Background()
	if err := c.Do(ctx, http.MethodGet, "/api", nil, nil); !errors.Is(err, ErrTransport) || Code(err) != 0 {
		t.Fatalf("do against a closed server = %v, want ErrTransport", err)
	}
	if _, err := c.Stream(ctx, "/api?watch=1"); !errors.Is(err, ErrTransport) {
		t.Fatalf("stream against a closed server = %v, want ErrTransport", err)
	}
}
