package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestReviewPerTryTimeoutArmedAtBodyEndIsHonoured: a per-try timeout armed
// at the end of the request's body (not at the attempt's start) must still
// end an attempt to an HTTP/1.1 upstream that does not answer, whatever
// the route's timeout (none, or longer) and whatever the body's framing.
// Before 03a05cb the per-try deadline was on the connection from the
// start, so each of these got 504 after ~200 ms.
func TestReviewPerTryTimeoutArmedAtBodyEndIsHonoured(t *testing.T) {
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		body    func() io.Reader
	}{
		{"no-route-timeout/chunked", 0, func() io.Reader { return &slowBody{parts: 1, gap: 10 * time.Millisecond} }},
		{"no-route-timeout/content-length", 0, func() io.Reader { return strings.NewReader("hello") }},
		{"route-timeout/content-length", 10 * time.Second, func() io.Reader { return strings.NewReader("hello") }},
		{"route-timeout/chunked", 10 * time.Second, func() io.Reader { return &slowBody{parts: 1, gap: 10 * time.Millisecond} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newProxy(t)
			app := backend(t, "app", func(w http.ResponseWriter, r *http.Request) {
				n, _ := io.Copy(io.Discard, r.Body)
				time.Sleep(1500 * time.Millisecond)
				fmt.Fprintf(w, "got %d", n)
			})
			url := plainHTTP(t, p, retryRoute(200*time.Millisecond, tc.timeout, 0), nil, staticHTTPCluster("svc", false, app))
			req, _ := http.NewRequest("POST", url+"/slow", tc.body())
			start := time.Now()
			resp, err := h1Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if took := time.Since(start); resp.StatusCode != 504 || took > time.Second {
				t.Fatalf("POST to a backend that answers after 1.5 s, per-try timeout 200 ms, route timeout %v: %d %q after %v, want 504 after ~200 ms",
					tc.timeout, resp.StatusCode, b, took.Round(time.Millisecond))
			}
		})
	}
}
