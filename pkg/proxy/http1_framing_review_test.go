package proxy

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestEnvoyResponseFramedTwiceRefusedAtOnce: an upstream response framed
// by both Transfer-Encoding and Content-Length whose head net/http's
// parser reads (bare LFs, or longer than the read buffer) is a 503 at
// once, as the fast parser's is: the proxy does not first read the body
// the upstream streams (here it sends one chunk and holds the connection
// open, as a streaming or a stalled upstream does).
func TestEnvoyResponseFramedTwiceRefusedAtOnce(t *testing.T) {
	p := newProxy(t)
	heads := map[string]string{
		"/lf":   "HTTP/1.1 200 OK\nContent-Length: 5\nTransfer-Encoding: chunked\n\n",
		"/long": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Pad: " + strings.Repeat("p", 5000) + "\r\nContent-Length: 5\r\n\r\n",
	}
	// The rest of the body never comes: rawUpstream waits for a next
	// request on the connection.
	up := rawUpstream(t, func(r *http.Request, _ int) string { return heads[r.URL.Path] + "5\r\nhello\r\n" })
	url := plainHTTP(t, p, routeConfig("outbound:svc", routeTo("all", nil, toCluster("svc"))), nil, staticHTTPCluster("svc", false, up))
	for _, path := range []string{"/lf", "/long"} {
		start := time.Now()
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url + path)
		if err != nil {
			t.Errorf("%s: %v after %v; Envoy answers 503 as soon as it has the head", path, err, time.Since(start).Round(time.Millisecond))
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || time.Since(start) > 2*time.Second {
			t.Errorf("%s: %d after %v, want 503 at once", path, resp.StatusCode, time.Since(start).Round(time.Millisecond))
		}
	}
}

// TestEnvoyUnfinishedHeadFramedTwiceIsNotAnswered: a caller that sends
// part of a head net/http's parser reads (bare LFs, or past the read
// buffer) and closes its side gets no reply, as with any unfinished head
// (and as from Envoy): the recorded part naming both framings is not a
// request to answer 400.
func TestEnvoyUnfinishedHeadFramedTwiceIsNotAnswered(t *testing.T) {
	p := newProxy(t)
	app := backend(t, "app", nil)
	url := plainHTTP(t, p, routeConfig("outbound:svc", routeTo("all", nil, toCluster("svc"))), nil, staticHTTPCluster("svc", false, app))
	pad := "X-Pad: " + strings.Repeat("p", 5000) + "\r\n"
	for _, tc := range []struct{ name, head string }{
		{"bare LFs, framed once", "POST /x HTTP/1.1\nHost: svc\nTransfer-Encoding: chunked\n"},
		{"bare LFs", "POST /x HTTP/1.1\nHost: svc\nContent-Length: 5\nTransfer-Encoding: chunked\n"},
		{"past the buffer", "POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n" + pad},
	} {
		c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, tc.head)
		c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(c)
		c.Close()
		if len(b) > 0 {
			t.Errorf("%s: an unfinished head answered %q, want the connection closed", tc.name, strings.SplitN(string(b), "\r\n", 2)[0])
		}
	}
}

// TestEnvoyFramedTwiceOtherCodingRefused: Envoy's codec checks for two
// framings before the coding (any Transfer-Encoding with a Content-Length
// is 400, before an unsupported coding's 501), however the head is read.
func TestEnvoyFramedTwiceOtherCodingRefused(t *testing.T) {
	p := newProxy(t)
	app := backend(t, "app", nil)
	url := plainHTTP(t, p, routeConfig("outbound:svc", routeTo("all", nil, toCluster("svc"))), nil, staticHTTPCluster("svc", false, app))
	pad := "X-Pad: " + strings.Repeat("p", 5000) + "\r\n"
	for _, tc := range []struct {
		name, head string
		want       int
	}{
		{"short", "POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nTransfer-Encoding: gzip\r\n\r\n", 400},
		{"bare LFs", "POST /x HTTP/1.1\nHost: svc\nContent-Length: 5\nTransfer-Encoding: gzip\n\n", 400},
		{"past the buffer", "POST /x HTTP/1.1\r\nHost: svc\r\n" + pad + "Content-Length: 5\r\nTransfer-Encoding: gzip\r\n\r\n", 400},
		{"bare LFs, framed once", "POST /x HTTP/1.1\nHost: svc\nTransfer-Encoding: gzip\n\n", 501},
	} {
		resp, _ := rawExchange(t, strings.TrimPrefix(url, "http://"), tc.head+"hello")
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, resp.StatusCode, tc.want)
		}
	}
}
