package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// rawUpstream serves HTTP/1.1 on a loopback port with answer, which is
// given each request (and its number on its connection, from 0) and
// returns the bytes to write back; it reads each request's body first.
func rawUpstream(t *testing.T, answer func(r *http.Request, nth int) string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				br := bufio.NewReader(c)
				for nth := 0; ; nth++ {
					r, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, r.Body)
					if _, err := io.WriteString(c, answer(r, nth)); err != nil {
						return
					}
				}
			}(c)
		}
	}()
	return ln.Addr().String()
}

// TestEnvoyExtraBytesAfterResponseAreNotTheNextResponse: an upstream that
// sends more bytes after a response than its framing says (a body longer
// than its Content-Length) must not have them read as the answer to the
// next request put on that pooled connection, which may be another
// caller's. Envoy's HTTP/1 client codec treats data after a complete
// response as a protocol error ("extraneous data after response
// complete") and closes the connection.
func TestEnvoyExtraBytesAfterResponseAreNotTheNextResponse(t *testing.T) {
	p := newProxy(t)
	up := rawUpstream(t, func(r *http.Request, nth int) string {
		if r.URL.Path == "/first" {
			return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" +
				"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Injected: yes\r\n\r\nsmuggled"
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhonest"
	})
	url := plainHTTP(t, p, routeConfig("outbound:svc", routeTo("all", nil, toCluster("svc"))), nil, staticHTTPCluster("svc", false, up))
	// Two callers, each on its own connection.
	resp, body := get(t, h1Client(), url+"/first")
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("first: %d %q", resp.StatusCode, body)
	}
	resp, body = get(t, h1Client(), url+"/second")
	if body != "honest" || resp.Header.Get("X-Injected") != "" {
		t.Fatalf("another caller's request got the bytes the upstream left after the first response: %d %q (X-Injected %q)",
			resp.StatusCode, body, resp.Header.Get("X-Injected"))
	}
}

// rawExchange writes req on a new connection to addr and reads one
// response (for req's method).
func rawExchange(t *testing.T, addr, req string) (*http.Response, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	method, _, _ := strings.Cut(req, " ")
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestEnvoyChunkedWithContentLengthRefused: a request with both
// Transfer-Encoding: chunked and Content-Length (RFC 9112 §6.3: "ought to
// be handled as an error", the request-smuggling shape) gets 400 from
// Envoy's HTTP/1 codec unless http_protocol_options.allow_chunked_length
// is set, which the built-in proxy neither takes nor runs: also when the
// head is longer than the connection's read buffer (4 KiB) or its lines
// end in bare LFs, which net/http's parser reads instead of the fast one.
// The same heads framed one way are served, body and all.
func TestEnvoyChunkedWithContentLengthRefused(t *testing.T) {
	p := newProxy(t)
	var reached atomic.Int64
	bodies := make(chan string, 8)
	app := backend(t, "app", func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		b, _ := io.ReadAll(r.Body)
		bodies <- string(b)
	})
	url := plainHTTP(t, p, routeConfig("outbound:svc", routeTo("all", nil, toCluster("svc"))), nil, staticHTTPCluster("svc", false, app))
	pad := "X-Pad: " + strings.Repeat("p", 5000) + "\r\n"
	for _, tc := range []struct {
		name, head string
		refused    bool
	}{
		{"short", "POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", true},
		{"past the buffer", "POST /x HTTP/1.1\r\nHost: svc\r\n" + pad + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", true},
		{"past the buffer, Content-Length after", "POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n" + pad + "content-length: 5\r\n\r\n", true},
		{"bare LFs", "POST /x HTTP/1.1\nHost: svc\nContent-Length: 5\nTransfer-Encoding: chunked\n\n", true},
		{"past the buffer, chunked only", "POST /x HTTP/1.1\r\nHost: svc\r\n" + pad + "Transfer-Encoding: chunked\r\n\r\n", false},
		{"bare LFs, chunked only", "POST /x HTTP/1.1\nHost: svc\nTransfer-Encoding: chunked\n\n", false},
	} {
		before := reached.Load()
		resp, _ := rawExchange(t, strings.TrimPrefix(url, "http://"), tc.head+"3\r\nabc\r\n0\r\n\r\n")
		switch {
		case tc.refused && (resp.StatusCode != 400 || reached.Load() != before):
			t.Errorf("%s: TE+CL request: status %d, reached the application %d times; Envoy answers 400 and forwards nothing", tc.name, resp.StatusCode, reached.Load()-before)
		case !tc.refused && resp.StatusCode != 200:
			t.Errorf("%s: status %d, want 200", tc.name, resp.StatusCode)
		case !tc.refused:
			if b := <-bodies; b != "abc" {
				t.Errorf("%s: the application read %q, want the chunked body %q", tc.name, b, "abc")
			}
		}
	}
}

// TestEnvoyResponseFramedTwiceRefused: an upstream response framed by
// both Transfer-Encoding and Content-Length is a protocol error to Envoy's
// codec: the caller gets 503 (UPE), not the body as either framing reads
// it; also when its head is longer than the read buffer, or its lines end
// in bare LFs. Framed one way, the same long head is served.
func TestEnvoyResponseFramedTwiceRefused(t *testing.T) {
	p := newProxy(t)
	pad := "X-Pad: " + strings.Repeat("p", 5000) + "\r\n"
	heads := map[string]string{
		"/short": "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
		"/long":  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + pad + "Content-Length: 5\r\n\r\n",
		"/lf":    "HTTP/1.1 200 OK\nContent-Length: 5\nTransfer-Encoding: chunked\n\n",
		"/once":  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" + pad + "\r\n",
	}
	up := rawUpstream(t, func(r *http.Request, _ int) string {
		return heads[r.URL.Path] + "5\r\nhello\r\n0\r\n\r\n"
	})
	url := plainHTTP(t, p, routeConfig("outbound:svc", routeTo("all", nil, toCluster("svc"))), nil, staticHTTPCluster("svc", false, up))
	for _, path := range []string{"/short", "/long", "/lf", "/once"} {
		resp, b := get(t, http.DefaultClient, url+path)
		switch {
		case path == "/once" && (resp.StatusCode != 200 || string(b) != "hello"):
			t.Errorf("%s: a long head framed one way: %d %q, want 200 %q", path, resp.StatusCode, b, "hello")
		case path != "/once" && resp.StatusCode != http.StatusServiceUnavailable:
			t.Errorf("%s: a response framed both ways: %d; Envoy answers 503 (UPE)", path, resp.StatusCode)
		}
	}
}

// TestEnvoyConnectionNominatingForwardedHeadersRefused: Envoy's HTTP/1
// codec refuses (400) a request whose Connection header nominates
// X-Forwarded-For, -Host or -Proto (Utility::sanitizeConnectionHeader,
// "an attacker could nominate an X-Forwarded* header, and its removal may
// mask the origin of the incoming request"), or nominates 10 headers or
// more. The built-in proxy instead removes the nominated header, the
// X-Forwarded-Proto its own HCM just set included.
func TestEnvoyConnectionNominatingForwardedHeadersRefused(t *testing.T) {
	p := newProxy(t)
	seen := make(chan string, 4)
	app := backend(t, "app", func(w http.ResponseWriter, r *http.Request) { seen <- r.Header.Get("X-Forwarded-Proto") })
	url := plainHTTP(t, p, routeConfig("outbound:svc", routeTo("all", nil, toCluster("svc"))), nil, staticHTTPCluster("svc", false, app))
	resp, _ := rawExchange(t, strings.TrimPrefix(url, "http://"),
		"GET /x HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive, X-Forwarded-Proto\r\n\r\n")
	if resp.StatusCode != 400 {
		proto := ""
		select {
		case proto = <-seen:
		default:
		}
		t.Fatalf("Connection: X-Forwarded-Proto: status %d (app saw X-Forwarded-Proto %q); Envoy answers 400", resp.StatusCode, proto)
	}
}

// TestEnvoyExpectContinueNotForwarded: with proxy_100_continue off (the
// HCM's default, which the built-in proxy runs: it answers 100 Continue
// itself), Envoy's HCM takes Expect: 100-continue out of the request
// (ConnectionManagerImpl::ActiveStream::decodeHeaders: "request_headers_->removeExpect()"),
// so the upstream is not asked for a 100 it will not be waited for.
func TestEnvoyExpectContinueNotForwarded(t *testing.T) {
	p := newProxy(t)
	got := make(chan string, 1)
	up := rawUpstream(t, func(r *http.Request, nth int) string {
		got <- r.Header.Get("Expect")
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	})
	url := plainHTTP(t, p, routeConfig("outbound:svc", routeTo("all", nil, toCluster("svc"))), nil, staticHTTPCluster("svc", false, up))
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	br := bufio.NewReader(c)
	line, _ := br.ReadString('\n')
	if !strings.HasPrefix(line, "HTTP/1.1 100") {
		t.Fatalf("first line %q, want the proxy's 100 Continue", line)
	}
	io.WriteString(c, "hello")
	if e := <-got; e != "" {
		t.Fatalf("the upstream was sent Expect: %q", e)
	}
}

// TestEnvoyGRPCWebIsNotGRPC: Envoy answers a request as gRPC (200 with
// grpc-status) only when its content-type is application/grpc or
// application/grpc+... (Grpc::Common::hasGrpcContentType: "something
// like application/grpc-web is not gRPC"). A grpc-web request that
// matches no route gets Envoy's plain 404.
func TestEnvoyGRPCWebIsNotGRPC(t *testing.T) {
	p := newProxy(t)
	app := backend(t, "app", nil)
	rc := routeConfig("outbound:svc", routeTo("only", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Path{Path: "/only"}}, toCluster("svc")))
	url := plainHTTP(t, p, rc, nil, staticHTTPCluster("svc", false, app))
	resp, _ := get(t, h1Client(), url+"/pkg.Svc/Method", "Content-Type", "application/grpc-web+proto")
	if resp.StatusCode != 404 || resp.Header.Get("Grpc-Status") != "" {
		t.Fatalf("grpc-web request with no route: %d grpc-status %q; Envoy answers a plain 404", resp.StatusCode, resp.Header.Get("Grpc-Status"))
	}
}

// retryRoute is a route to svc retried on 5xx with per-try timeout
// perTry (0: none) within timeout.
func retryRoute(perTry, timeout time.Duration, retries uint32) *route.RouteConfiguration {
	a := toCluster("svc")
	a.Timeout = durationpb.New(timeout)
	a.RetryPolicy = &route.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(retries), RetryHostPredicate: previousHosts(),
		RetryBackOff: &route.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond), MaxInterval: durationpb.New(2 * time.Millisecond)}}
	if perTry > 0 {
		a.RetryPolicy.PerTryTimeout = durationpb.New(perTry)
	}
	return routeConfig("outbound:svc", routeTo("all", nil, a))
}

// TestEnvoyFragmentInPathRefused: Envoy rejects a request whose path
// has a #fragment with 400 (runtime guard
// envoy.reloadable_features.http_reject_path_with_fragment, on by
// default; RFC 3986 §3.5, RFC 9112 §3.2: a request target has no
// fragment). The built-in proxy instead forwards it with the '#'
// escaped: the upstream is asked for another resource (/a%23frag).
func TestEnvoyFragmentInPathRefused(t *testing.T) {
	p := newProxy(t)
	seen := make(chan string, 2)
	up := rawUpstream(t, func(r *http.Request, nth int) string {
		seen <- r.RequestURI
		return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	})
	url := plainHTTP(t, p, routeConfig("outbound:svc", routeTo("all", nil, toCluster("svc"))), nil, staticHTTPCluster("svc", false, up))
	resp, _ := rawExchange(t, strings.TrimPrefix(url, "http://"), "GET /a#frag HTTP/1.1\r\nHost: svc\r\n\r\n")
	if resp.StatusCode != 400 {
		got := ""
		select {
		case got = <-seen:
		default:
		}
		t.Fatalf("GET /a#frag: %d, the upstream was asked for %q; Envoy answers 400", resp.StatusCode, got)
	}
}

// TestEnvoyProxyAuthorizationPasses: Envoy's HCM takes only Connection,
// Upgrade, Keep-Alive, Proxy-Connection and Transfer-Encoding (and TE
// but trailers) out of a request (ConnectionManagerUtility::
// mutateRequestHeaders), and the same but TE out of a response: a meshed
// forward proxy's Proxy-Authorization and Proxy-Authenticate go through.
func TestEnvoyProxyAuthorizationPasses(t *testing.T) {
	p := newProxy(t)
	seen := make(chan string, 1)
	app := backend(t, "app", func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Get("Proxy-Authorization")
		w.Header().Set("Proxy-Authenticate", `Basic realm="squid"`)
		w.WriteHeader(407)
	})
	url := plainHTTP(t, p, routeConfig("outbound:svc", routeTo("all", nil, toCluster("svc"))), nil, staticHTTPCluster("svc", false, app))
	resp, _ := get(t, h1Client(), url+"/", "Proxy-Authorization", "Basic dXNlcjpwdw==")
	if got := <-seen; got == "" || resp.Header.Get("Proxy-Authenticate") == "" {
		t.Fatalf("Proxy-Authorization reached the app as %q, Proxy-Authenticate reached the caller as %q; Envoy passes both", got, resp.Header.Get("Proxy-Authenticate"))
	}
}

// TestEnvoyRetryBodyUpToBufferLimit: Envoy keeps a request's body for
// retries up to the decoder buffer limit (the listener's
// per_connection_buffer_limit_bytes, 1 MiB by default;
// Router::Filter::setDecoderFilterCallbacks), and gives up retrying only
// past it. A 200 KiB POST that gets a 503 is retried.
func TestEnvoyRetryBodyUpToBufferLimit(t *testing.T) {
	p := newProxy(t)
	var calls atomic.Int64
	app := backend(t, "app", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		if calls.Add(1) == 1 {
			w.WriteHeader(503)
			return
		}
		fmt.Fprintf(w, "got %d", n)
	})
	url := plainHTTP(t, p, retryRoute(0, 10*time.Second, 2), nil, staticHTTPCluster("svc", false, app))
	payload := bytes.Repeat([]byte("x"), 200<<10)
	resp, err := h1Client().Post(url+"/upload", "application/octet-stream", bytes.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("200 KiB POST after a 503: %d %q after %d calls; Envoy retries bodies up to 1 MiB", resp.StatusCode, b, calls.Load())
	}
}

// TestEnvoyPerTryTimeoutIgnoredOnceResponseStarted: Envoy ignores the
// per-try timeout once it has begun the response downstream
// (UpstreamRequest::onPerTryTimeout: "If we've sent anything downstream,
// ignore the per try timeout and let the response continue up to the
// global timeout"). A response whose head comes at once and whose body
// streams for longer than per_try_timeout reaches the caller whole.
func TestEnvoyPerTryTimeoutIgnoredOnceResponseStarted(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%t", h2), func(t *testing.T) {
			p := newProxy(t)
			app := backend(t, "app", func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(200)
				for i := range 6 {
					fmt.Fprintf(w, "part%d;", i)
					w.(http.Flusher).Flush()
					time.Sleep(150 * time.Millisecond)
				}
			})
			url := plainHTTP(t, p, retryRoute(200*time.Millisecond, 10*time.Second, 1), nil, staticHTTPCluster("svc", h2, app))
			resp, err := h1Client().Get(url + "/stream")
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := "part0;part1;part2;part3;part4;part5;"
			if err != nil || string(b) != want {
				t.Fatalf("status %d, body %q (read error %v); Envoy streams the whole body (%q) past the per-try timeout", resp.StatusCode, b, err, want)
			}
		})
	}
}

// slowBody sends parts, one every gap.
type slowBody struct {
	parts int
	gap   time.Duration
}

func (b *slowBody) Read(p []byte) (int, error) {
	if b.parts == 0 {
		return 0, io.EOF
	}
	time.Sleep(b.gap)
	b.parts--
	return copy(p, "chunk;"), nil
}

// TestEnvoyPerTryTimeoutFromRequestEnd: Envoy starts an attempt's
// per-try timer once the request has come whole (UpstreamRequest::
// setupPerTryTimeout, called when the downstream's end_stream has been
// encoded upstream), as its route timeout. An upload that takes longer
// than per_try_timeout to a backend that answers at once is not cut off;
// a backend slower than it, after the upload, still is (504).
func TestEnvoyPerTryTimeoutFromRequestEnd(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("h2=%t", h2), func(t *testing.T) {
			p := newProxy(t)
			app := backend(t, "app", func(w http.ResponseWriter, r *http.Request) {
				n, _ := io.Copy(io.Discard, r.Body)
				if r.URL.Path == "/slow" {
					time.Sleep(time.Second)
				}
				fmt.Fprintf(w, "got %d", n)
			})
			url := plainHTTP(t, p, retryRoute(200*time.Millisecond, 10*time.Second, 0), nil, staticHTTPCluster("svc", h2, app))
			for _, tt := range []struct {
				path string
				want int
			}{{"/fast", 200}, {"/slow", 504}} {
				req, _ := http.NewRequest("POST", url+tt.path, &slowBody{parts: 5, gap: 100 * time.Millisecond})
				resp, err := h1Client().Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tt.want {
					t.Fatalf("a 0.5 s upload to %s under a 200 ms per-try timeout: %d %q, want %d", tt.path, resp.StatusCode, b, tt.want)
				}
			}
		})
	}
}

// TestEnvoyUnsupportedTransferEncodingIs501: a request body in a transfer
// coding other than chunked alone ("gzip, chunked") is one Envoy's HTTP/1
// codec does not implement: 501 (RFC 9112 §6.1: a server that receives
// a transfer coding it does not understand should answer 501), not 400.
func TestEnvoyUnsupportedTransferEncodingIs501(t *testing.T) {
	p := newProxy(t)
	app := backend(t, "app", nil)
	url := plainHTTP(t, p, routeConfig("outbound:svc", routeTo("all", nil, toCluster("svc"))), nil, staticHTTPCluster("svc", false, app))
	resp, _ := rawExchange(t, strings.TrimPrefix(url, "http://"),
		"POST /x HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
	if resp.StatusCode != 501 {
		t.Fatalf("Transfer-Encoding: gzip, chunked: %d; Envoy answers 501", resp.StatusCode)
	}
}

// TestEnvoyLoadReportsCountRequests: an HTTP cluster's load report counts
// requests, as Envoy's LRS does (upstream_rq_*), not connections: twenty
// requests over one kept-alive connection are twenty issued, a 503 among
// them an error. (Connections counted, a zone's HTTP traffic read as idle
// in ursactl inspect services and zone drill.)
func TestEnvoyLoadReportsCountRequests(t *testing.T) {
	p := newProxy(t)
	var n atomic.Int64
	app := backend(t, "app", func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 20 {
			w.WriteHeader(503)
		}
	})
	url := plainHTTP(t, p, routeConfig("outbound:svc", routeTo("all", nil, toCluster("svc"))), nil, staticHTTPCluster("svc", false, app))
	client := h1Client()
	for range 20 {
		resp, err := client.Get(url + "/")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	var issued, errs uint64
	for k, c := range p.load.snapshot() {
		if k.cluster == "svc" {
			issued, errs = issued+c.issued, errs+c.errors
		}
	}
	if issued != 20 || errs != 1 {
		t.Fatalf("load report of cluster svc: %d issued, %d errors; want 20 requests, 1 error", issued, errs)
	}
}

// TestEnvoyResponseFieldNameWithSpaceRefused: a response field whose
// name has a space before its colon is a protocol error to Envoy's codec
// (llhttp: invalid header token), so the caller gets 503 (UPE). net/http's
// parser takes such a field (go.dev/issue/34540) with the space in its
// name; the proxy must not forward the response without it as if nothing
// were wrong. The upstream connection is not reused after it.
func TestEnvoyResponseFieldNameWithSpaceRefused(t *testing.T) {
	p := newProxy(t)
	up := rawUpstream(t, func(r *http.Request, _ int) string {
		switch r.URL.Path {
		case "/space":
			return "HTTP/1.1 200 OK\r\nX-Foo : bar\r\nContent-Length: 5\r\n\r\nhello"
		case "/space-lf":
			return "HTTP/1.1 200 OK\nX-Foo : bar\nContent-Length: 5\n\nhello"
		}
		return "HTTP/1.1 200 OK\r\nX-Foo: bar\r\nContent-Length: 5\r\n\r\nhello"
	})
	url := plainHTTP(t, p, routeConfig("outbound:svc", routeTo("all", nil, toCluster("svc"))), nil, staticHTTPCluster("svc", false, up))
	for _, path := range []string{"/space", "/space-lf", "/fine"} {
		resp, b := get(t, http.DefaultClient, url+path)
		switch {
		case path == "/fine" && (resp.StatusCode != 200 || string(b) != "hello" || resp.Header.Get("X-Foo") != "bar"):
			t.Errorf("%s: %d %q %v, want 200 %q with X-Foo", path, resp.StatusCode, b, resp.Header, "hello")
		case path != "/fine" && resp.StatusCode != http.StatusServiceUnavailable:
			t.Errorf("%s: a field name with a space: %d %q; Envoy answers 503 (UPE)", path, resp.StatusCode, b)
		}
	}
}

// TestEnvoyResponseTrailerNameWithSpaceResets: a chunked response whose
// trailer is named with a space before its colon is a protocol error to
// Envoy's codec once the body has gone downstream: the response is reset
// (an HTTP/1.1 caller's ends without its last chunk), not finished without
// that trailer. The same response with a well-formed trailer ends as sent.
func TestEnvoyResponseTrailerNameWithSpaceResets(t *testing.T) {
	p := newProxy(t)
	up := rawUpstream(t, func(r *http.Request, _ int) string {
		name := "X-T"
		if r.URL.Path == "/space" {
			name = "X-T "
		}
		return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n" + name + ": 1\r\n\r\n"
	})
	url := plainHTTP(t, p, routeConfig("outbound:svc", routeTo("all", nil, toCluster("svc"))), nil, staticHTTPCluster("svc", false, up))
	for _, path := range []string{"/space", "/fine"} {
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := c.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case path == "/fine" && (err != nil || string(b) != "hello"):
			t.Errorf("%s: %q %v, want %q", path, b, err, "hello")
		case path == "/space" && err == nil:
			t.Errorf("%s: the response ended normally (%q) after an upstream trailer Envoy's codec refuses; want it reset", path, b)
		}
	}
}
