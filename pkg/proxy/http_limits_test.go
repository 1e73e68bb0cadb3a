package proxy

import (
	"bufio"
	"fmt"
	"io"
	"maps"
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
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/xds"
)

// TestHTTPHeaderLimits: Envoy's bounds on a request's head, its own (60
// KiB, 100 fields) and an HCM's (max_request_headers_kb,
// common_http_protocol_options.max_headers_count), as its codecs count
// them. Over HTTP/1.1 the size is the head as it came (Balsa's); a
// request at a bound is served, one past it gets 431 and the connection
// ends, and a head that does not end is not read past the bound. Over
// HTTP/2 the size is the fields' names and values, the pseudo-headers'
// included, and a request past either bound has its stream reset. Nothing
// past a bound reaches the backend.
func TestHTTPHeaderLimits(t *testing.T) {
	var served atomic.Int32
	// The backend's answer has a few fields: a request's many are not
	// echoed past the response's bound.
	app := serveH1H2(t, func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		w.Write([]byte("ok"))
	})
	for _, tc := range []struct {
		name   string
		change func(*hcm.HttpConnectionManager)
		size   int
		fields int
	}{
		{"envoy-defaults", nil, 60 << 10, 100},
		{"set", func(h *hcm.HttpConnectionManager) {
			h.MaxRequestHeadersKb = wrapperspb.UInt32(2)
			h.CommonHttpProtocolOptions = &core.HttpProtocolOptions{MaxHeadersCount: wrapperspb.UInt32(8)}
		}, 2 << 10, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newProxy(t)
			logPath := filepath.Join(t.TempDir(), "access.log")
			l := withObs(t, outboundHTTPListener("out", "out"), []*accesslogv3.AccessLog{fileLogger(t, logPath, "%RESPONSE_CODE% %RESPONSE_FLAGS%\n")}, nil)
			if tc.change != nil {
				l = withHCM(t, l, tc.change)
			}
			apply(t, p, nil, nil, []*listener.Listener{l}, []*cluster.Cluster{staticHTTPCluster("app", false, app)}, nil,
				routeConfig("out", routeTo("app", nil, timed(toCluster("app")))))
			addr := boundAddr(t, p, "out")
			// HTTP/1.1, by hand: head(fields) is a request with Host and
			// fields; sized(n) one whose head is n bytes.
			head := func(fields string) string { return "GET / HTTP/1.1\r\nHost: svc\r\n" + fields + "\r\n" }
			sized := func(n int) string {
				return head("X-Big: " + strings.Repeat("b", n-len(head("X-Big: \r\n"))) + "\r\n")
			}
			many := func(n int) string { // n fields, Host included
				var b strings.Builder
				for i := range n - 1 {
					fmt.Fprintf(&b, "X-N%d: 1\r\n", i)
				}
				return head(b.String())
			}
			for _, h1 := range []struct {
				what, head string
				over       bool
			}{
				{"size at the bound", sized(tc.size), false},
				{"size past it", sized(tc.size + 1), true},
				{"fields at the bound", many(tc.fields), false},
				{"fields past it", many(tc.fields + 1), true},
			} {
				before := served.Load()
				rc := dialRaw(t, addr)
				go io.WriteString(rc.c, h1.head+"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
				resp, body := rc.response(http.MethodGet)
				switch {
				case !h1.over && resp.StatusCode != http.StatusOK:
					t.Errorf("HTTP/1.1, %s: %d %q", h1.what, resp.StatusCode, body)
				case h1.over && (resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || body != "Request Header Fields Too Large" || !resp.Close):
					t.Errorf("HTTP/1.1, %s: %d %q close=%t, want 431 and the end", h1.what, resp.StatusCode, body, resp.Close)
				case h1.over && served.Load() != before:
					t.Errorf("HTTP/1.1, %s: the backend saw the request", h1.what)
				case h1.over:
					if n, err := rc.br.Read(make([]byte, 1)); n != 0 || err == nil {
						t.Errorf("HTTP/1.1, %s: the connection goes on", h1.what)
					}
				default:
					if resp, _ := rc.response(http.MethodGet); resp.StatusCode != http.StatusOK {
						t.Errorf("HTTP/1.1, %s: the next request got %d", h1.what, resp.StatusCode)
					}
				}
			}
			// A head past the bound and a buffer is not read on: the
			// answer comes before the head ends.
			rc := dialRaw(t, addr)
			rc.c.SetReadDeadline(time.Now().Add(3 * time.Second))
			go io.WriteString(rc.c, strings.TrimSuffix(sized(tc.size+8<<10), "\r\n\r\n"))
			if resp, body := rc.response(http.MethodGet); resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || body != "Request Header Fields Too Large" || !resp.Close {
				t.Errorf("HTTP/1.1, a head past the reader's bound: %d %q close=%t", resp.StatusCode, body, resp.Close)
			}

			// HTTP/2 (h2c). Go's client sends the four pseudo-headers,
			// User-Agent and Accept-Encoding besides these.
			h2 := func(headers http.Header) (int, error) {
				req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
				maps.Copy(req.Header, headers)
				resp, err := h2cClient().Do(req)
				if err != nil {
					return 0, err
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp.StatusCode, nil
			}
			// The size of everything but X-Big's value.
			rest := len(":authority") + len(addr) + len(":method") + len("GET") + len(":path") + len("/") + len(":scheme") + len("http") +
				len("user-agent") + len("Go-http-client/2.0") + len("accept-encoding") + len("gzip") + len("x-big")
			before := served.Load()
			if code, err := h2(http.Header{"X-Big": {strings.Repeat("b", tc.size-rest)}}); code != http.StatusOK {
				t.Errorf("HTTP/2, size at the bound: %d %v", code, err)
			}
			if code, err := h2(http.Header{"X-Big": {strings.Repeat("b", tc.size-rest+1)}}); err == nil {
				t.Errorf("HTTP/2, size past it: %d, want the stream reset", code)
			}
			fields := http.Header{}
			for i := range tc.fields - 6 {
				fields.Set(fmt.Sprintf("X-N%d", i), "1")
			}
			if code, err := h2(fields); code != http.StatusOK {
				t.Errorf("HTTP/2, fields at the bound: %d %v", code, err)
			}
			fields.Set("X-Past", "1")
			if code, err := h2(fields); err == nil {
				t.Errorf("HTTP/2, fields past it: %d, want the stream reset", code)
			}
			if n := served.Load() - before; n != 2 {
				t.Errorf("HTTP/2: the backend saw %d requests, want the 2 within the bounds", n)
			}
			// Each refusal is logged as Envoy's codec errors are: the
			// 431s (two read whole, one not) and the HTTP/2 resets.
			testutil.Until(t, 10*time.Second, "the access log's refusals", func() bool {
				b, _ := os.ReadFile(logPath)
				return strings.Count(string(b), "431 DPE\n") == 3 && strings.Count(string(b), "0 DPE\n") == 2
			})
		})
	}
}

// TestHTTPResponseHeaderLimits: Envoy's bounds on an upstream response's
// head, its own (80 KiB over HTTP/1.1, 60 KiB over HTTP/2; 100 fields)
// and a cluster's (common_http_protocol_options' max_response_headers_kb
// and max_headers_count), as its codecs count them: over HTTP/1.1 the
// head as it came, past it 503, past the count 502; over HTTP/2 the
// fields' names and values (:status's included), 503 past either. Each
// refusal is the protocol error's; the request is not sent again, and an
// HTTP/1.1 connection that brought a refused head is not used again. A
// head that does not end is not read on.
func TestHTTPResponseHeaderLimits(t *testing.T) {
	// h1 answers /size/N with a head of N bytes, /count/N with N fields,
	// /body/... the same with a body, /endless with a head that does not
	// end; conn says which connection served each path.
	var mu sync.Mutex
	hits, conn := map[string]int{}, map[string]int{}
	answer := func(path string) string {
		parts := strings.Split(strings.TrimPrefix(path, "/"), "/")
		status, fields, extra := "HTTP/1.1 204 No Content\r\n", "", ""
		if parts[0] == "body" {
			status, fields, extra, parts = "HTTP/1.1 200 OK\r\n", "Content-Length: 2\r\n", "ok", parts[1:]
		}
		n, _ := strconv.Atoi(parts[len(parts)-1])
		switch parts[0] {
		case "size":
			fixed := len(status) + len(fields) + len("X-Big: \r\n") + len("\r\n")
			fields += "X-Big: " + strings.Repeat("b", n-fixed) + "\r\n"
		case "count":
			for i := strings.Count(fields, "\n"); i < n; i++ {
				fields += fmt.Sprintf("X-N%d: 1\r\n", i)
			}
		}
		return status + fields + "\r\n" + extra
	}
	h1, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h1.Close() })
	go func() {
		for id := 1; ; id++ {
			c, err := h1.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					mu.Lock()
					hits[req.URL.Path]++
					conn[req.URL.Path] = id
					mu.Unlock()
					if req.URL.Path == "/endless" {
						io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Big: ")
						for range 1024 {
							if _, err := io.WriteString(c, strings.Repeat("b", 1024)); err != nil {
								return
							}
						}
						time.Sleep(20 * time.Second)
						return
					}
					if _, err := io.WriteString(c, answer(req.URL.Path)); err != nil {
						return
					}
				}
			}()
		}
	}()
	// h2 answers /size/N with a header of N bytes of names and values
	// (:status's included), /count/N with N fields (:status included).
	h2 := serveH1H2(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits["h2"+r.URL.Path]++
		mu.Unlock()
		h := w.Header()
		h["Date"] = nil
		kind, arg, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		n, _ := strconv.Atoi(arg)
		switch kind {
		case "size":
			h.Set("X-Big", strings.Repeat("b", n-len(":status")-len("204")-len("x-big")))
		case "count":
			for i := range n - 1 {
				h.Set(fmt.Sprintf("X-N%d", i), "1")
			}
		}
		w.WriteHeader(http.StatusNoContent)
	})
	const protocolError = "upstream connect error or disconnect/reset before headers. reset reason: protocol error"
	for _, tc := range []struct {
		name         string
		h2           bool
		kb, count    uint32 // the cluster's, 0 for none
		size, fields int
	}{
		{"h1-envoy-defaults", false, 0, 0, 80 << 10, 100},
		{"h2-envoy-defaults", true, 0, 0, 60 << 10, 100},
		{"h1-set", false, 2, 8, 2 << 10, 8},
		{"h2-set", true, 2, 8, 2 << 10, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := staticHTTPCluster("app", tc.h2, h1.Addr().String())
			if tc.h2 {
				c = staticHTTPCluster("app", true, h2)
			}
			if tc.kb != 0 {
				c = withCommonOptions(c, &core.HttpProtocolOptions{MaxResponseHeadersKb: wrapperspb.UInt32(tc.kb), MaxHeadersCount: wrapperspb.UInt32(tc.count)})
			}
			p := newProxy(t)
			apply(t, p, nil, nil, []*listener.Listener{outboundHTTPListener("out", "out")}, []*cluster.Cluster{c}, nil,
				routeConfig("out", routeTo("app", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}, timed(toCluster("app")))))
			base := "http://" + boundAddr(t, p, "out")
			get(t, h1Client(), base+"/warm") // the connection each request below finds is a reused one
			tooMany := http.StatusBadGateway
			if tc.h2 {
				tooMany = http.StatusServiceUnavailable
			}
			cases := []struct {
				path   string
				status int
			}{
				{fmt.Sprintf("/size/%d", tc.size), http.StatusNoContent},
				{fmt.Sprintf("/size/%d", tc.size+1), http.StatusServiceUnavailable},
				{fmt.Sprintf("/count/%d", tc.fields), http.StatusNoContent},
				{fmt.Sprintf("/count/%d", tc.fields+1), tooMany},
				// Past what the reader or the Transport takes at all.
				{fmt.Sprintf("/size/%d", tc.size+32<<10), http.StatusServiceUnavailable},
			}
			if !tc.h2 {
				cases = append(cases, []struct {
					path   string
					status int
				}{
					{fmt.Sprintf("/body/size/%d", tc.size), http.StatusOK},
					{fmt.Sprintf("/body/size/%d", tc.size+1), http.StatusServiceUnavailable},
					{fmt.Sprintf("/body/count/%d", tc.fields+1), http.StatusBadGateway},
					{"/endless", http.StatusServiceUnavailable},
				}...)
			}
			for i, want := range cases {
				resp, body := get(t, h1Client(), base+want.path)
				if resp.StatusCode != want.status || want.status >= 500 && body != protocolError {
					t.Errorf("%s: %d %q, want %d", want.path, resp.StatusCode, body, want.status)
				}
				key := want.path
				if tc.h2 {
					key = "h2" + key
				}
				mu.Lock()
				n, refusedOn := hits[key], conn[key]
				hits[key] = 0
				mu.Unlock()
				if n != 1 {
					t.Errorf("%s: the backend saw it %d times, want once", want.path, n)
				}
				if want.status < 500 || tc.h2 {
					continue
				}
				// The connection that brought the refused head is not used
				// again.
				probe := fmt.Sprintf("/probe/%d", i)
				get(t, h1Client(), base+probe)
				mu.Lock()
				probedOn := conn[probe]
				mu.Unlock()
				if probedOn == refusedOn {
					t.Errorf("%s: the next request went on the connection that brought the refused head", want.path)
				}
			}
		})
	}
}

// BenchmarkHeaderBounds is what the bounds on a request's and a
// response's head cost a request in one sidecar over HTTP/1.1: the
// reader's bound (headBound), the request's check and the count of the
// response's fields, on heads like a client's and an application's.
func BenchmarkHeaderBounds(b *testing.B) {
	p := newProxy(b)
	apply(b, p, nil, nil, []*listener.Listener{outboundHTTPListener("out", "out")}, nil, nil, routeConfig("out"))
	chain := chainNow(p.cfg.Load(), "out", netip.AddrPort{})
	c := &Cluster{HTTP: HTTP1}
	br := bufio.NewReader(nil)
	r := &http.Request{ProtoMajor: 1, Host: "billing.mesh", Header: http.Header{"User-Agent": {"curl/8.5"}, "Accept": {"*/*"},
		"X-Request-Id": {"6a714892-8c12-41bb-898e-ec7ca45c5ea4"}, "X-Forwarded-Proto": {"http"}}}
	resp := http.Header{"Content-Type": {"text/plain"}, "Content-Length": {"128"}, "Date": {"Sun, 06 Dec 2026 21:42:17 GMT"}}
	b.ReportAllocs()
	for b.Loop() {
		p.headBound("out", netip.AddrPort{}, br)
		if large, many := chain.headerTooLarge(r, 180); large || many {
			b.Fatal("a small head past the bounds")
		}
		// As h1Pool.readHead checks a response (its size is its length
		// as read).
		_, n := c.responseHeaderLimits()
		if _, fields := headerLoad(resp); fields > n {
			b.Fatal("a small response past the bounds")
		}
	}
}

// TestH1Trailers: trailers cross an HTTP/1 codec only where Envoy's
// would carry them. Envoy's HTTP/1 codec drops them unless its
// enable_trailers is set, and then parses every one, announced or not:
// the HCM's for an HTTP/1 caller, the cluster's for an HTTP/1.1 upstream.
// HTTP/2 carries them always. Each case sends two trailers, X-T announced
// in a Trailer header or not and X-U never; the backend answers with the
// trailers it got and a trailer of its own, X-R, which the caller gets
// back where the codecs on the way carry it. Retries replay the body
// with its trailers. Go's HTTP/2 server (the proxy's, and the backend's)
// keeps only the trailers a request declared when it began: where that
// decides, the expectations say so.
func TestH1Trailers(t *testing.T) {
	var mu sync.Mutex
	attempts := map[string]int{}
	app := serveH1H2(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		key := r.Proto + r.Host + r.URL.Path
		mu.Lock()
		attempts[key]++
		first := attempts[key] == 1
		mu.Unlock()
		if strings.HasPrefix(r.URL.Path, "/retry") && first {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		var got []string
		for k, vs := range r.Trailer {
			if len(vs) > 0 {
				got = append(got, k+"="+vs[0])
			}
		}
		slices.Sort(got)
		w.Header().Set("X-Got-Trailers", strings.Join(got, ","))
		w.Header().Set("Trailer", "X-R")
		io.WriteString(w, "body")
		w.(http.Flusher).Flush() // no Content-Length: the caller's response is chunked, with room for trailers
		w.Header().Set("X-R", "2")
	})
	retried := toCluster("app")
	retried.RetryPolicy = &route.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(1)}
	for _, up := range []string{"h1", "h1+trailers", "h2"} {
		for _, down := range []string{"h1", "h1+trailers", "h2c"} {
			p := newProxy(t)
			c := staticHTTPCluster("app", up == "h2", app)
			if up == "h1+trailers" {
				c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsKey: xds.MustAny(&upstreamhttp.HttpProtocolOptions{
					UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
						ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &core.Http1ProtocolOptions{EnableTrailers: true}}}}})}
			}
			rc := routeConfig("outbound:svc", routeTo("default", nil, retried))
			l := withHCM(t, outboundHTTPListener("outbound:svc", rc.GetName()), func(h *hcm.HttpConnectionManager) {
				h.HttpProtocolOptions = &core.Http1ProtocolOptions{EnableTrailers: down == "h1+trailers"}
			})
			apply(t, p, nil, nil, []*listener.Listener{l}, []*cluster.Cluster{c}, nil, rc)
			addr := boundAddr(t, p, "outbound:svc")
			for _, path := range []string{"/a", "/u", "/retry-a", "/retry-u"} {
				announced, retry := strings.HasSuffix(path, "a"), strings.HasPrefix(path, "/retry")
				// What the proxy holds of the caller's trailers: all from
				// an HTTP/1 caller whose HCM takes them, the announced ones
				// from an HTTP/2 caller (Go's HTTP/2 server keeps no
				// other), none otherwise.
				var held []string
				switch {
				case down == "h1+trailers":
					held = []string{"X-T=1", "X-U=secret"}
				case down == "h2c" && announced:
					held = []string{"X-T=1"}
				}
				// What of it reaches the backend: nothing past an HTTP/1.1
				// cluster without enable_trailers, all past one with it;
				// through HTTP/2, what the request declared when it began
				// (Go's HTTP/2 server again): from an HTTP/1 caller, the
				// announced ones on a first attempt, all it holds on a
				// retry (the body, trailers and all, is in by then).
				got := held
				switch {
				case up == "h1":
					got = nil
				case up == "h2" && down == "h1+trailers" && !retry && announced:
					got = []string{"X-T=1"}
				case up == "h2" && down == "h1+trailers" && !retry:
					got = nil
				}
				want, wantBack := strings.Join(got, ","), ""
				if down != "h1" && up != "h1" {
					wantBack = "2"
				}
				host := up + "-" + down // each case's own retries
				var resp *http.Response
				var body string
				if down == "h2c" {
					req, _ := http.NewRequest(http.MethodPost, "http://"+addr+path, nil)
					req.Host = host
					req.Trailer = http.Header{}
					if announced {
						req.Trailer["X-T"] = nil
					}
					req.Body = &trailingBody{r: strings.NewReader("abc"), set: func() {
						req.Trailer.Set("X-T", "1")
						req.Trailer.Set("X-U", "secret")
					}}
					req.ContentLength = -1
					var err error
					if resp, err = h2cClient().Do(req); err != nil {
						t.Fatalf("%s → %s %s: %v", down, up, path, err)
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					body = string(b)
				} else {
					announce := ""
					if announced {
						announce = "Trailer: X-T\r\n"
					}
					rc := dialRaw(t, addr)
					rc.send("POST " + path + " HTTP/1.1\r\nHost: " + host + "\r\n" + announce + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\nX-U: secret\r\n\r\n")
					resp, body = rc.response(http.MethodPost)
				}
				if got, back := resp.Header.Get("X-Got-Trailers"), resp.Trailer.Get("X-R"); resp.StatusCode != http.StatusOK || body != "body" || got != want || back != wantBack {
					t.Errorf("caller %s, upstream %s, %s: %d %q, the upstream got trailers %q, want %q; the caller got X-R %q, want %q",
						down, up, path, resp.StatusCode, body, got, want, back, wantBack)
				}
			}
		}
	}
}

// trailingBody is a request body that sets its request's trailers when
// it ends, as a streaming client does.
type trailingBody struct {
	r   io.Reader
	set func()
}

func (b *trailingBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF && b.set != nil {
		b.set()
		b.set = nil
	}
	return n, err
}

func (b *trailingBody) Close() error { return nil }

// TestTooLargeHeadLingers: a caller still sending when its head went past
// the bound reads the 431 whole: the proxy answers, then reads away what
// comes for a while before it closes, so the close does not reset the
// connection under the answer (as Envoy's codec drains before it closes).
func TestTooLargeHeadLingers(t *testing.T) {
	app := serveH1H2(t, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) })
	p := newProxy(t)
	apply(t, p, nil, nil, []*listener.Listener{withHCM(t, outboundHTTPListener("out", "out"), func(h *hcm.HttpConnectionManager) {
		h.MaxRequestHeadersKb = wrapperspb.UInt32(2)
	})}, []*cluster.Cluster{staticHTTPCluster("app", false, app)}, nil, routeConfig("out", routeTo("app", nil, timed(toCluster("app")))))
	for i := range 5 {
		c, err := net.Dial("tcp", boundAddr(t, p, "out"))
		if err != nil {
			t.Fatal(err)
		}
		// A head past 2 KiB that goes on for 256 KiB more: the proxy has
		// answered long before the caller stops sending.
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: svc\r\nX-Big: "+strings.Repeat("b", 256<<10)); err != nil {
			t.Fatalf("round %d: write: %v", i, err)
		}
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || !strings.HasPrefix(string(got), "HTTP/1.1 431 Request Header Fields Too Large\r\n") {
			t.Fatalf("round %d: %q, %v", i, got, err)
		}
	}
}
