package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/testutil"
)

// fastPathProxy is a proxy whose outbound:svc routes everything to a
// backend with handler h (HTTP/1.1), and its address.
func fastPathProxy(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	app := backend(t, "app", h)
	url := plainHTTP(t, newProxy(t), routeConfig("outbound:svc", routeTo("default", nil, toCluster("app"))), nil, staticHTTPCluster("app", false, app))
	return strings.TrimPrefix(url, "http://")
}

// rawConn is a client connection that writes requests by hand and reads
// responses as they come.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (r *rawConn) send(s string) {
	r.t.Helper()
	if _, err := io.WriteString(r.c, s); err != nil {
		r.t.Fatal(err)
	}
}

// response reads one response to a method; its body read to the end.
func (r *rawConn) response(method string) (*http.Response, string) {
	r.t.Helper()
	resp, err := http.ReadResponse(r.br, &http.Request{Method: method})
	if err != nil {
		r.t.Fatalf("reading the response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		r.t.Fatalf("reading the body: %v", err)
	}
	return resp, string(b)
}

// TestH1FastPathFraming: the fast path frames responses as HTTP/1.1 says
// (Content-Length when the upstream sent one, chunked when it streamed,
// no body for HEAD and 204), passes chunked request bodies on, serves
// pipelined requests in order on one connection, and honours
// Connection: close.
func TestH1FastPathFraming(t *testing.T) {
	addr := fastPathProxy(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/stream":
			for i := range 3 {
				fmt.Fprintf(w, "part%d;", i)
				w.(http.Flusher).Flush()
			}
		case "/echo":
			b, err := io.ReadAll(r.Body)
			if err != nil {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			w.Write(b)
		case "/none":
			w.WriteHeader(http.StatusNoContent)
		case "/sized":
			w.Header().Set("Content-Length", "5")
			w.Write([]byte("sized"))
		}
	})
	c := dialRaw(t, addr)

	c.send("GET /stream HTTP/1.1\r\nHost: svc\r\n\r\n")
	resp, body := c.response("GET")
	if resp.StatusCode != 200 || len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" || body != "part0;part1;part2;" {
		t.Fatalf("streamed: %d %v %q", resp.StatusCode, resp.TransferEncoding, body)
	}

	c.send("POST /echo HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
	resp, body = c.response("POST")
	if resp.StatusCode != 200 || resp.ContentLength != 11 || body != "hello world" {
		t.Fatalf("chunked request body: %d %d %q", resp.StatusCode, resp.ContentLength, body)
	}

	c.send("HEAD /sized HTTP/1.1\r\nHost: svc\r\n\r\n")
	resp, body = c.response("HEAD")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Length") != "5" || body != "" {
		t.Fatalf("HEAD: %d %v %q", resp.StatusCode, resp.Header, body)
	}

	c.send("GET /none HTTP/1.1\r\nHost: svc\r\n\r\n")
	resp, body = c.response("GET")
	if resp.StatusCode != 204 || body != "" || len(resp.TransferEncoding) != 0 {
		t.Fatalf("204: %d %v %q", resp.StatusCode, resp.TransferEncoding, body)
	}

	// Three requests in one write: three responses, in order, on the
	// same connection.
	c.send("GET /sized HTTP/1.1\r\nHost: svc\r\n\r\nPOST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabcGET /stream HTTP/1.1\r\nHost: svc\r\n\r\n")
	for i, want := range []string{"sized", "abc", "part0;part1;part2;"} {
		if resp, body := c.response("GET"); resp.StatusCode != 200 || body != want {
			t.Fatalf("pipelined %d: %d %q, want %q", i, resp.StatusCode, body, want)
		}
	}

	c.send("GET /sized HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
	resp, body = c.response("GET")
	if resp.StatusCode != 200 || !resp.Close || body != "sized" {
		t.Fatalf("Connection: close: %d close=%t %q", resp.StatusCode, resp.Close, body)
	}
	if n, err := c.br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after Connection: close the connection is open: %d %v", n, err)
	}

	// Expect: 100-continue: the interim response, then the body goes.
	c = dialRaw(t, addr)
	c.send("POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
	if line, err := c.br.ReadString('\n'); err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("100-continue: %q %v", line, err)
	}
	c.br.ReadString('\n')
	c.send("ping")
	if resp, body := c.response("POST"); resp.StatusCode != 200 || body != "ping" {
		t.Fatalf("after 100-continue: %d %q", resp.StatusCode, body)
	}

	// A header past 1 MiB: 431 and the end.
	c = dialRaw(t, addr)
	c.send("GET / HTTP/1.1\r\nHost: svc\r\nX-Big: " + strings.Repeat("a", 2<<20) + "\r\n\r\n")
	if resp, _ := c.response("GET"); resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("huge header: %d", resp.StatusCode)
	}

	// A Host that is no host (a space, a slash): 400 and the end, as
	// net/http's server answers.
	c = dialRaw(t, addr)
	c.send("GET / HTTP/1.1\r\nHost: svc/evil x\r\n\r\n")
	if resp, _ := c.response("GET"); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("invalid Host: %d", resp.StatusCode)
	}

	// A request line that is not HTTP: 400 and the end.
	c = dialRaw(t, addr)
	c.send("NOT HTTP\r\n\r\n")
	if resp, _ := c.response("GET"); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("garbage: %d", resp.StatusCode)
	}
}

// TestH1ClientGoesAway: a caller that disconnects in the middle of its
// request body, or of the response's, costs the proxy the exchange only:
// the backend sees its request end, and the proxy serves the next caller.
func TestH1ClientGoesAway(t *testing.T) {
	var uploadEnded, downloadEnded atomic.Bool
	addr := fastPathProxy(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/upload":
			if _, err := io.Copy(io.Discard, r.Body); err != nil {
				uploadEnded.Store(true)
			}
		case "/download":
			w.Header().Set("Content-Length", strconv.Itoa(64<<20))
			chunk := make([]byte, 32<<10)
			for range 2048 {
				if _, err := w.Write(chunk); err != nil {
					downloadEnded.Store(true)
					return
				}
			}
		default:
			io.WriteString(w, "ok")
		}
	})
	c := dialRaw(t, addr)
	c.send("POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 100000\r\n\r\nonly a little")
	c.c.Close()
	testutil.Until(t, 10*time.Second, "the backend's request body to end", uploadEnded.Load)

	c = dialRaw(t, addr)
	c.send("GET /download HTTP/1.1\r\nHost: svc\r\n\r\n")
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("download: %v %v", resp, err)
	}
	io.ReadFull(resp.Body, make([]byte, 100<<10))
	c.c.Close()
	testutil.Until(t, 10*time.Second, "the backend's response to end", downloadEnded.Load)

	c = dialRaw(t, addr)
	c.send("GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
	if resp, body := c.response("GET"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("after: %d %q", resp.StatusCode, body)
	}
}

// TestH1UpstreamClosesPooledConn: a backend that closes every connection
// right after its response (without saying so) costs no request: a GET
// is sent again on a fresh connection, a POST gets a connection checked
// first.
func TestH1UpstreamClosesPooledConn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var conns, closed atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer closed.Add(1)
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				b, _ := io.ReadAll(req.Body)
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(b)+len(req.Method), req.Method+string(b))
			}()
		}
	}()
	url := plainHTTP(t, newProxy(t), routeConfig("outbound:svc", routeTo("default", nil, toCluster("closer"))), nil,
		staticHTTPCluster("closer", false, ln.Addr().String()))
	client := h1Client()
	for i := range 20 {
		// The server's close has happened (as it would have after any
		// pause): what the probe before a POST must notice. A close racing
		// the next request is the race of every keep-alive client, which
		// a POST loses (as with net/http's Transport).
		testutil.Eventually(t, 5*time.Second, "the server to close its connections", func() error {
			if c, n := closed.Load(), conns.Load(); c != n {
				return fmt.Errorf("%d of %d closed", c, n)
			}
			return nil
		})
		method, body, want := http.MethodGet, "", "GET"
		if i%2 == 1 {
			method, body, want = http.MethodPost, "data"+strconv.Itoa(i), "POST"+"data"+strconv.Itoa(i)
		}
		req, _ := http.NewRequest(method, url+"/", strings.NewReader(body))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != want {
			t.Fatalf("request %d (%s): %d %q", i, method, resp.StatusCode, b)
		}
	}
	if n := conns.Load(); n < 20 {
		t.Fatalf("%d upstream connections for 20 requests on closing connections", n)
	}
}

// TestH1UpstreamKeepsConns: requests in a row reuse one upstream
// connection.
func TestH1UpstreamKeepsConns(t *testing.T) {
	var conns atomic.Int64
	app := backend(t, "app", nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() { // counts connections on their way to the backend
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				up, err := net.Dial("tcp", app)
				if err != nil {
					c.Close()
					return
				}
				go func() { io.Copy(up, c); up.Close() }()
				io.Copy(c, up)
				c.Close()
			}()
		}
	}()
	url := plainHTTP(t, newProxy(t), routeConfig("outbound:svc", routeTo("default", nil, toCluster("app"))), nil,
		staticHTTPCluster("app", false, ln.Addr().String()))
	client := h1Client()
	for range 10 {
		if resp, body := get(t, client, url+"/x"); resp.StatusCode != 200 || body != "app GET /x" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d upstream connections for 10 requests in a row", n)
	}
}

// TestHTTP10: HTTP/1.0 as Envoy's HCM takes it. Without
// http_protocol_options.accept_http_10 a request gets 426 and the
// connection closes, the backend never called; with it, the response
// streams and the connection closes after it (no keep-alive asked), a
// request without a Host gets default_host_for_http_10, and without that
// 400. HTTP/1.1 is served either way.
func TestHTTP10(t *testing.T) {
	var hits atomic.Int64
	app := backend(t, "app", func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		for i := range 3 {
			fmt.Fprintf(w, "part%d;", i)
			w.(http.Flusher).Flush()
		}
		fmt.Fprintf(w, "host=%s", r.Host)
	})
	serve := func(change func(*hcm.HttpConnectionManager)) string {
		p := newProxy(t)
		rc := routeConfig("outbound:svc", routeTo("default", nil, toCluster("app")))
		l := withHCM(t, outboundHTTPListener("outbound:svc", rc.GetName()), change)
		apply(t, p, nil, nil, []*listener.Listener{l}, []*cluster.Cluster{staticHTTPCluster("app", false, app)}, nil, rc)
		return boundAddr(t, p, "outbound:svc")
	}
	ask := func(addr, req string) (*http.Response, string, bool) {
		t.Helper()
		c := dialRaw(t, addr)
		c.send(req)
		resp, body := c.response("GET")
		n, err := c.br.Read(make([]byte, 1))
		return resp, body, n == 0 && err == io.EOF
	}

	refusing := serve(func(h *hcm.HttpConnectionManager) { h.HttpProtocolOptions = nil })
	resp, body, closed := ask(refusing, "GET / HTTP/1.0\r\nHost: svc\r\n\r\n")
	if resp.StatusCode != http.StatusUpgradeRequired || resp.Proto != "HTTP/1.1" || body != "Upgrade Required" || !closed || hits.Load() != 0 {
		t.Fatalf("HTTP/1.0 not accepted: %s %d %q closed=%t, %d backend calls", resp.Proto, resp.StatusCode, body, closed, hits.Load())
	}
	if resp, body, _ := ask(refusing, "GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"); resp.StatusCode != 200 || resp.Proto != "HTTP/1.1" || body != "part0;part1;part2;host=svc" {
		t.Fatalf("HTTP/1.1 where HTTP/1.0 is not accepted: %s %d %q", resp.Proto, resp.StatusCode, body)
	}

	accepting := serve(func(h *hcm.HttpConnectionManager) {
		h.HttpProtocolOptions = &core.Http1ProtocolOptions{AcceptHttp_10: true}
	})
	if resp, body, closed := ask(accepting, "GET / HTTP/1.0\r\nHost: svc\r\n\r\n"); resp.StatusCode != 200 || resp.Proto != "HTTP/1.0" || body != "part0;part1;part2;host=svc" || !resp.Close || !closed {
		t.Fatalf("HTTP/1.0 accepted: %s %d %q close=%t closed=%t", resp.Proto, resp.StatusCode, body, resp.Close, closed)
	}
	if resp, body, _ := ask(accepting, "GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"); resp.StatusCode != 200 || resp.Proto != "HTTP/1.1" || body != "part0;part1;part2;host=svc" {
		t.Fatalf("HTTP/1.1 where HTTP/1.0 is accepted: %s %d %q", resp.Proto, resp.StatusCode, body)
	}
	hits.Store(0)
	if resp, _, closed := ask(accepting, "GET / HTTP/1.0\r\n\r\n"); resp.StatusCode != http.StatusBadRequest || !closed || hits.Load() != 0 {
		t.Fatalf("HTTP/1.0 without a Host and no default: %d closed=%t, %d backend calls", resp.StatusCode, closed, hits.Load())
	}

	defaulting := serve(func(h *hcm.HttpConnectionManager) {
		h.HttpProtocolOptions = &core.Http1ProtocolOptions{AcceptHttp_10: true, DefaultHostForHttp_10: "billing.mesh"}
	})
	if resp, body, _ := ask(defaulting, "GET / HTTP/1.0\r\n\r\n"); resp.StatusCode != 200 || body != "part0;part1;part2;host=billing.mesh" {
		t.Fatalf("HTTP/1.0 without a Host, with a default: %d %q", resp.StatusCode, body)
	}
	if resp, body, _ := ask(defaulting, "GET / HTTP/1.0\r\nHost: svc\r\n\r\n"); resp.StatusCode != 200 || body != "part0;part1;part2;host=svc" {
		t.Fatalf("HTTP/1.0 with a Host and a default: %d %q", resp.StatusCode, body)
	}
}

// TestAbsoluteForm: a request in absolute form (as to a forward proxy) is
// taken, as Envoy takes it by default (allow_absolute_url, here set to
// true): its URL's host is its authority, and the upstream gets the path.
func TestAbsoluteForm(t *testing.T) {
	app := backend(t, "app", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.Host, r.RequestURI)
	})
	p := newProxy(t)
	rc := routeConfig("outbound:svc", routeTo("default", nil, toCluster("app")))
	l := withHCM(t, outboundHTTPListener("outbound:svc", rc.GetName()), func(h *hcm.HttpConnectionManager) {
		h.HttpProtocolOptions = &core.Http1ProtocolOptions{AllowAbsoluteUrl: wrapperspb.Bool(true)}
	})
	apply(t, p, nil, nil, []*listener.Listener{l}, []*cluster.Cluster{staticHTTPCluster("app", false, app)}, nil, rc)
	c := dialRaw(t, boundAddr(t, p, "outbound:svc"))
	c.send("GET http://billing.mesh/x?y=1 HTTP/1.1\r\nHost: other\r\n\r\n")
	if resp, body := c.response("GET"); resp.StatusCode != 200 || body != "billing.mesh /x?y=1" {
		t.Fatalf("absolute form: %d %q", resp.StatusCode, body)
	}
}

// FuzzH1Serve: whatever bytes a caller sends, the fast path answers or
// closes, without a crash or a hang, and a well-formed request still gets
// the backend's answer.
func FuzzH1Serve(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: svc\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabcGET / HTTP/1.1\r\nHost: svc\r\n\r\n",
		"HEAD / HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"PRI * HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: svc\r\nContent-Length: -1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\nzz\r\n",
		// Framed two ways past the read buffer, and in bare LFs
		// (TestEnvoyChunkedWithContentLengthRefused).
		"POST /x HTTP/1.1\r\nHost: svc\r\nX-Pad: " + strings.Repeat("p", 5000) + "\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST /x HTTP/1.1\nHost: svc\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\r\n\r\nGET / HTTP/1.1\nHost: svc\n\n",
		// Each took a second or two once (TestH1CallerBodyErrors).
		"POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n3\r\xf4abc\r\n0\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: svc\r\nX-Foo : bar\r\nContent-Length: 3\r\n\r\nabc",
		"POST /x HTTP/1.1\r\nHost: svc\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n3\r\xf4abc\r\n0\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\nabc",
		// Trailer names and header bounds (TestH1CallerBodyErrors,
		// TestHTTPHeaderLimits).
		"POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-U : 1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: svc\r\n" + strings.Repeat("X-N: 1\r\n", 101) + "\r\n",
		// HTTP/1.0 (taken, with a default host) and every trailer going on
		// (TestHTTP10, TestH1Trailers).
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\nHost: svc\r\n\r\n",
		"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: svc\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	app := backend(f, "app", nil)
	p, err := New(zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(p.Close)
	rc := routeConfig("outbound:svc", routeTo("default", nil, toCluster("app")))
	l := withHCM(f, outboundHTTPListener("outbound:svc", rc.GetName()), func(h *hcm.HttpConnectionManager) {
		h.HttpProtocolOptions = &core.Http1ProtocolOptions{AcceptHttp_10: true, DefaultHostForHttp_10: "svc", EnableTrailers: true}
	})
	apply(f, p, nil, nil, []*listener.Listener{l}, []*cluster.Cluster{staticHTTPCluster("app", false, app)}, nil, rc)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { ln.Close() })
	f.Fuzz(func(t *testing.T, in []byte) {
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		server, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			p.serveHTTPConn("outbound:svc", server, netip.AddrPort{}, nil)
		}()
		// The caller sends its bytes and ends its side: the proxy answers
		// what it can and closes, whatever state the bytes left it in.
		client.SetDeadline(time.Now().Add(5 * time.Second))
		go func() {
			client.Write(in)
			client.(*net.TCPConn).CloseWrite()
		}()
		io.Copy(io.Discard, io.LimitReader(client, 1<<20))
		client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("the connection's goroutine did not end for %q", in)
		}
	})
}

// TestH1CallerBodyErrors: a request whose own body fails is the caller's
// doing, as with Envoy's codec errors. A body HTTP cannot frame (a bad
// chunk) gets 400 at once, flagged DPE, and its connection closes; a
// caller gone mid-body is logged DC. Neither is retried (the route
// retries 5xx) nor waits for an upstream answer that cannot come, to an
// HTTP/1.1 or an HTTP/2 upstream, and the proxy serves the next request.
func TestH1CallerBodyErrors(t *testing.T) {
	// By path: an upstream may see a request begin after the proxy has
	// answered it (its head and first chunk go before the bad part).
	var mu sync.Mutex
	requests := map[string]int{}
	seen := func(path string) int {
		mu.Lock()
		defer mu.Unlock()
		return requests[path]
	}
	app := backend(t, "app", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests[r.URL.Path]++
		mu.Unlock()
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	})
	retried := toCluster("app")
	retried.RetryPolicy = &route.RetryPolicy{RetryOn: "5xx,reset", NumRetries: wrapperspb.UInt32(3)}
	rc := routeConfig("outbound:svc", routeTo("default", nil, retried))
	logPath := filepath.Join(t.TempDir(), "access.log")
	l := withObs(t, outboundHTTPListener("outbound:svc", rc.GetName()), []*accesslogv3.AccessLog{fileLogger(t, logPath, "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%\n")}, nil)
	p := newProxy(t)
	apply(t, p, nil, nil, []*listener.Listener{l}, []*cluster.Cluster{staticHTTPCluster("app", false, app)}, nil, rc)
	addr := boundAddr(t, p, "outbound:svc")

	for _, bad := range []string{
		// The fuzzer's: a chunk size line with a byte no size has.
		"POST /bad-chunk HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n3\r\xf4abc\r\n0\r\n\r\n",
		// A GET whose chunked body begins with no size at all.
		"GET /bad-get HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
		// The same with trailers announced (net/http's writer sends it).
		"POST /bad-trailer HTTP/1.1\r\nHost: svc\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n3\r\xf4abc\r\n0\r\n\r\n",
		// A trailer name with a space, which net/http's parser takes too,
		// announced or not.
		"POST /bad-trailer-name HTTP/1.1\r\nHost: svc\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T : 1\r\n\r\n",
		"POST /bad-unannounced HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-U : 1\r\n\r\n",
		// A header name with a space, which net/http's parser takes (its
		// 400 is the reader's, before any request: logged without one).
		"POST /bad-name HTTP/1.1\r\nHost: svc\r\nX-Foo : bar\r\nContent-Length: 3\r\n\r\nabc",
	} {
		c := dialRaw(t, addr)
		path := strings.Fields(bad)[1]
		start := time.Now()
		c.send(bad)
		resp, body := c.response(http.MethodGet)
		if resp.StatusCode != http.StatusBadRequest || body != "Bad Request" || !resp.Close {
			t.Errorf("%q: %d %q (close %t), want 400 Bad Request and the connection closed", bad, resp.StatusCode, body, resp.Close)
		}
		if took := time.Since(start); took > 900*time.Millisecond {
			t.Errorf("%q: answered after %s: it waited for an upstream answer", bad, took)
		}
		if n := seen(path); n > 1 {
			t.Errorf("%q: the backend saw it %d times: a caller's bad body was retried", bad, n)
		}
		if _, err := c.br.ReadByte(); err != io.EOF {
			t.Errorf("%q: after the 400 the connection reads %v, want it closed", bad, err)
		}
	}
	// The same to an HTTP/2 upstream (through net/http's transport).
	h2 := strings.TrimPrefix(plainHTTP(t, newProxy(t), rc, nil, staticHTTPCluster("app", true, app)), "http://")
	c := dialRaw(t, h2)
	c.send("POST /bad-chunk HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n3\r\xf4abc\r\n0\r\n\r\n")
	if resp, body := c.response(http.MethodGet); resp.StatusCode != http.StatusBadRequest || body != "Bad Request" || !resp.Close {
		t.Errorf("a bad chunk to an HTTP/2 upstream: %d %q (close %t)", resp.StatusCode, body, resp.Close)
	}

	c = dialRaw(t, addr)
	c.send("POST /gone HTTP/1.1\r\nHost: svc\r\nContent-Length: 100000\r\n\r\nonly a little")
	c.c.Close()
	// A caller that ends its side with its body short gets no answer (no
	// 200 the upstream never sent): the connection just ends.
	c = dialRaw(t, addr)
	c.send("POST /short HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\nabc")
	c.c.(*net.TCPConn).CloseWrite()
	if b, err := io.ReadAll(c.br); err != nil || len(b) != 0 {
		t.Errorf("a body cut short: the proxy answered %q (%v), want nothing", b, err)
	}
	// The same in the trailers of a chunked body.
	c = dialRaw(t, addr)
	c.send("POST /short-trailer HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n")
	c.c.(*net.TCPConn).CloseWrite()
	if b, err := io.ReadAll(c.br); err != nil || len(b) != 0 {
		t.Errorf("trailers cut short: the proxy answered %q (%v), want nothing", b, err)
	}

	c = dialRaw(t, addr)
	c.send("GET /after HTTP/1.1\r\nHost: svc\r\n\r\n")
	if resp, body := c.response(http.MethodGet); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("the next request: %d %q", resp.StatusCode, body)
	}
	testutil.Until(t, 10*time.Second, "the access log's lines", func() bool {
		b, _ := os.ReadFile(logPath)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		slices.Sort(lines)
		return slices.Equal(lines, []string{"- 400 DPE", "/after 200 -", "/bad-chunk 400 DPE", "/bad-get 400 DPE", "/bad-trailer 400 DPE", "/bad-trailer-name 400 DPE", "/bad-unannounced 400 DPE", "/gone 0 DC", "/short 0 DC", "/short-trailer 0 DC"})
	})
}

// TestH1HeadersKeptApartUnderLoad: the fast path's header maps go round
// the connections through a pool (headerSet); requests in flight at once
// on many connections, through a sidecar pair over mTLS, each get their
// own: every response carries its own request's header back, and its own
// response header, never another's.
func TestH1HeadersKeptApartUnderLoad(t *testing.T) {
	sc := newSidecars(t)
	v1 := backend(t, "v1", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Id-Back", r.Header.Get("X-Id"))
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, r.Header.Get("X-Id"))
	})
	apply(t, sc.server, sc.billing, sc.roots,
		[]*listener.Listener{inboundHTTPListener("inbound:v1", "billing", "localhost:v1", "spiffe://default/web")},
		[]*cluster.Cluster{staticHTTPCluster("localhost:v1", false, v1)}, nil)
	in1 := boundAddr(t, sc.server, "inbound:v1")
	apply(t, sc.client, sc.web, sc.roots, []*listener.Listener{outboundHTTPListener("outbound:billing", "outbound:billing")},
		[]*cluster.Cluster{mtlsHTTPCluster("billing-v1", "billing", false)},
		[]*endpoint.ClusterLoadAssignment{assignment("billing-v1", in1)},
		routeConfig("outbound:billing", routeTo("all", nil, toCluster("billing-v1"))))
	url := "http://" + boundAddr(t, sc.client, "outbound:billing") + "/"
	const conns, each = 24, 40
	var wg sync.WaitGroup
	errs := make(chan string, conns)
	for i := range conns {
		wg.Go(func() {
			c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}}
			defer c.CloseIdleConnections()
			for j := range each {
				id := fmt.Sprintf("c%d-r%d-%s", i, j, strings.Repeat("x", j%7))
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				req.Header.Set("X-Id", id)
				for k := range j % 5 { // a varying number of fields
					req.Header.Set(fmt.Sprintf("X-Pad-%d", k), id)
				}
				resp, err := c.Do(req)
				if err != nil {
					errs <- err.Error()
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) != id || resp.Header.Get("X-Id-Back") != id || resp.Header.Get("X-Echo-X-Id") != id {
					errs <- fmt.Sprintf("request %s: body %q, X-Id-Back %q, X-Echo-X-Id %q", id, b, resp.Header.Get("X-Id-Back"), resp.Header.Get("X-Echo-X-Id"))
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// TestH1StopKeepsTheCallerLeaving: once the caller has left, the long-past
// deadline that ends its exchange stays when the exchange moves the
// connection's deadline to the route's after a per-try one (the answer
// began): the read that follows fails at once instead of waiting out the
// route's timeout. For the connection's own watch (sc) and a context's (f)
// that ran first.
func TestH1StopKeepsTheCallerLeaving(t *testing.T) {
	readFailsAtOnce := func(t *testing.T, c net.Conn) {
		t.Helper()
		done := make(chan error, 1)
		go func() {
			_, err := c.Read(make([]byte, 1))
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("read: %v; want the deadline's error", err)
			}
		case <-time.After(5 * time.Second):
			c.SetDeadline(aLongTimeAgo)
			<-done
			t.Fatal("the caller's leaving was undone: the read waited for the route's deadline")
		}
	}
	t.Run("sc", func(t *testing.T) {
		sc, _ := sysPair(t)
		pc := &h1Conn{Conn: sc}
		scratch := &h1Scratch{}
		scratch.attach(pc)
		scratch.callerGone()
		h1Stop{sc: scratch}.moveDeadline(pc, time.Now().Add(time.Minute))
		readFailsAtOnce(t, sc)
	})
	t.Run("f", func(t *testing.T) {
		sc, _ := sysPair(t)
		pc := &h1Conn{Conn: sc}
		ctx, cancel := context.WithCancel(context.Background())
		ran := make(chan struct{})
		stop := h1Stop{f: context.AfterFunc(ctx, func() { pc.SetDeadline(aLongTimeAgo); close(ran) }), watch: ctx}
		cancel()
		<-ran
		stop.moveDeadline(pc, time.Now().Add(time.Minute))
		readFailsAtOnce(t, sc)
	})
}
