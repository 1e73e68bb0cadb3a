package proxy

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	commonfault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/xds"
)

// isUUID4 reports whether s is a random (version 4) UUID in its text form.
func isUUID4(s string) bool {
	u, err := uuid.Parse(s)
	return err == nil && len(s) == 36 && u.Version() == 4 && u.Variant() == uuid.RFC4122
}

// TestHCMHeaders: what Envoy's HTTP connection manager and router do to
// every request and response on their own, through a sidecar pair (h1 and
// h2c from the caller, HTTP/2 over mTLS between the sidecars) and through
// an outbound sidecar alone: the application gets an X-Request-Id (a new
// UUID, or the caller's) and X-Forwarded-Proto; the x-envoy-* headers that
// would steer the router are taken out of what the caller sent; the
// outbound router tells the next hop its timeout (the per-try one when it
// is shorter) and, on a rewrite, the original path; responses say how long
// the upstream took.
func TestHCMHeaders(t *testing.T) {
	sc := newSidecars(t)
	app := backend(t, "app", nil)
	apply(t, sc.server, sc.billing, sc.roots, []*listener.Listener{inboundHTTPListener("inbound:billing", "billing", "localhost:app", "spiffe://default/web")},
		[]*cluster.Cluster{staticHTTPCluster("localhost:app", false, app)}, nil)
	in := boundAddr(t, sc.server, "inbound:billing")
	direct := timed(toCluster("direct"))
	direct.RetryPolicy = &route.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(1), PerTryTimeout: durationpb.New(2500 * time.Millisecond)}
	legacy := timed(toCluster("direct"))
	legacy.PrefixRewrite = "/api/"
	apply(t, sc.client, sc.web, sc.roots, []*listener.Listener{outboundHTTPListener("outbound:billing", "outbound:billing")},
		[]*cluster.Cluster{mtlsHTTPCluster("billing", "billing", true), staticHTTPCluster("direct", false, app)},
		[]*endpoint.ClusterLoadAssignment{assignment("billing", in)},
		routeConfig("outbound:billing",
			routeTo("legacy", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/legacy/"}}, legacy),
			routeTo("direct", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/direct"}}, direct),
			routeTo("pair", nil, timed(toCluster("billing")))))
	base := "http://" + boundAddr(t, sc.client, "outbound:billing")
	steering := []string{"x-envoy-retry-on", "5xx", "x-envoy-max-retries", "0", "x-envoy-upstream-rq-timeout-ms", "1",
		"x-envoy-expected-rq-timeout-ms", "1", "x-envoy-force-trace", "1", "x-envoy-internal", "true", "x-envoy-custom", "kept"}
	for name, c := range map[string]*http.Client{"h1": h1Client(), "h2c": h2cClient()} {
		t.Run(name, func(t *testing.T) {
			ids := map[string]bool{}
			for _, path := range []string{"/pair", "/direct"} {
				resp, _ := get(t, c, base+path, steering...)
				if resp.StatusCode != 200 {
					t.Fatalf("%s: %d", path, resp.StatusCode)
				}
				h := resp.Header
				id := h.Get("X-Echo-X-Request-Id")
				if !isUUID4(id) || ids[id] {
					t.Errorf("%s: the application got X-Request-Id %q (seen before: %t), want a new random UUID", path, id, ids[id])
				}
				ids[id] = true
				if got := h.Get("X-Echo-X-Forwarded-Proto"); got != "http" {
					t.Errorf("%s: X-Forwarded-Proto %q, want http (the caller's connection)", path, got)
				}
				for _, k := range []string{"Retry-On", "Max-Retries", "Upstream-Rq-Timeout-Ms", "Force-Trace", "Internal"} {
					if v, ok := h["X-Echo-X-Envoy-"+k]; ok {
						t.Errorf("%s: the caller's X-Envoy-%s reached the application: %q", path, k, v)
					}
				}
				if got := h.Get("X-Echo-X-Envoy-Custom"); got != "kept" {
					t.Errorf("%s: X-Envoy-Custom %q: only the headers that steer the router go", path, got)
				}
				// The inbound sidecar takes the outbound one's expected
				// timeout out, as Envoy's does, and its own route has none.
				want := ""
				if path == "/direct" {
					want = "2500" // the per-try timeout, shorter than the route's 15 s
				}
				if got := h.Get("X-Echo-X-Envoy-Expected-Rq-Timeout-Ms"); got != want {
					t.Errorf("%s: X-Envoy-Expected-Rq-Timeout-Ms %q, want %q", path, got, want)
				}
				if ms, err := strconv.Atoi(h.Get("X-Envoy-Upstream-Service-Time")); err != nil || ms < 0 || ms > 10_000 {
					t.Errorf("%s: X-Envoy-Upstream-Service-Time %q", path, h.Get("X-Envoy-Upstream-Service-Time"))
				}
			}
			resp, _ := get(t, c, base+"/pair", "x-request-id", "caller-chosen")
			if got := resp.Header.Get("X-Echo-X-Request-Id"); got != "caller-chosen" {
				t.Errorf("the caller's X-Request-Id became %q", got)
			}
			resp, body := get(t, c, base+"/legacy/x?y=%2F")
			if body != "app GET /api/x" || resp.Header.Get("X-Echo-X-Envoy-Original-Path") != "/legacy/x?y=%2F" || resp.Header.Get("X-Echo-X-Envoy-Expected-Rq-Timeout-Ms") != "15000" {
				t.Errorf("rewrite: %q, X-Envoy-Original-Path %q, expected timeout %q", body,
					resp.Header.Get("X-Echo-X-Envoy-Original-Path"), resp.Header.Get("X-Echo-X-Envoy-Expected-Rq-Timeout-Ms"))
			}
		})
	}
}

// TestHCMHeaderSettings: generate_request_id off, the router's
// suppress_envoy_headers, and each server_header_transformation (the
// helpers' listeners have the CP's, PASS_THROUGH), on an outbound sidecar
// to an application that names itself in Server; the proxy's own replies
// (404: no route; 400 and 431 to a head it cannot read) get the Server
// header too.
func TestHCMHeaderSettings(t *testing.T) {
	app := backend(t, "app", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/anonymous" {
			w.Header()["Server"] = nil // net/http writes none then
		} else {
			w.Header().Set("Server", "app/1.0")
		}
		w.Write([]byte("ok"))
	})
	suppressing := &hcm.HttpFilter{Name: "envoy.filters.http.router", ConfigType: &hcm.HttpFilter_TypedConfig{
		TypedConfig: xds.MustAny(&routerv3.Router{SuppressEnvoyHeaders: true})}}
	for _, tc := range []struct {
		name   string
		change func(*hcm.HttpConnectionManager)
		// server is the Server header wanted from the app that names
		// itself, from the one that does not, and on a 404.
		server      [3]string
		requestID   bool
		envoyHeader bool
	}{
		{"envoy-defaults", func(h *hcm.HttpConnectionManager) { h.ServerHeaderTransformation = hcm.HttpConnectionManager_OVERWRITE },
			[3]string{"envoy", "envoy", "envoy"}, true, true},
		{"named", func(h *hcm.HttpConnectionManager) {
			h.ServerHeaderTransformation, h.ServerName = hcm.HttpConnectionManager_OVERWRITE, "ursa"
		}, [3]string{"ursa", "ursa", "ursa"}, true, true},
		{"append-if-absent", func(h *hcm.HttpConnectionManager) {
			h.ServerHeaderTransformation = hcm.HttpConnectionManager_APPEND_IF_ABSENT
		}, [3]string{"app/1.0", "envoy", "envoy"}, true, true},
		{"pass-through", func(h *hcm.HttpConnectionManager) {
			h.ServerHeaderTransformation = hcm.HttpConnectionManager_PASS_THROUGH
		}, [3]string{"app/1.0", "", ""}, true, true},
		{"no-request-id", func(h *hcm.HttpConnectionManager) { h.GenerateRequestId = wrapperspb.Bool(false) }, [3]string{"app/1.0", "", ""}, false, true},
		{"suppress-envoy-headers", func(h *hcm.HttpConnectionManager) { h.HttpFilters = []*hcm.HttpFilter{suppressing} }, [3]string{"app/1.0", "", ""}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newProxy(t)
			legacy := timed(toCluster("app"))
			legacy.PrefixRewrite = "/"
			apply(t, p, nil, nil, []*listener.Listener{withHCM(t, outboundHTTPListener("out", "out"), tc.change)},
				[]*cluster.Cluster{staticHTTPCluster("app", false, app)}, nil,
				routeConfig("out", routeTo("legacy", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/legacy/"}}, legacy),
					routeTo("app", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/a"}}, timed(toCluster("app")))))
			base := "http://" + boundAddr(t, p, "out")
			for i, path := range []string{"/app", "/anonymous", "/none"} {
				resp, _ := get(t, h1Client(), base+path)
				if got := resp.Header.Get("Server"); got != tc.server[i] {
					t.Errorf("%s: Server %q, want %q", path, got, tc.server[i])
				}
			}
			// The proxy's raw replies to a head it cannot read too: no
			// Host, a bad Host, a header too large.
			for _, bad := range []string{"GET / HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
				"GET / HTTP/1.1\r\nHost: svc\r\nX-Big: " + strings.Repeat("x", 1<<20+8<<10) + "\r\n\r\n"} {
				rc := dialRaw(t, boundAddr(t, p, "out"))
				go io.WriteString(rc.c, bad) // the proxy may answer (and close) before it is all written
				if resp, _ := rc.response(http.MethodGet); resp.StatusCode/100 != 4 || resp.Header.Get("Server") != tc.server[2] {
					t.Errorf("%.30q: %d with Server %q, want a 4xx with %q", bad, resp.StatusCode, resp.Header.Get("Server"), tc.server[2])
				}
			}
			resp, _ := get(t, h1Client(), base+"/app")
			if got := isUUID4(resp.Header.Get("X-Echo-X-Request-Id")); got != tc.requestID {
				t.Errorf("X-Request-Id %q: generated %t, want %t", resp.Header.Get("X-Echo-X-Request-Id"), got, tc.requestID)
			}
			envoyHeaders := map[string]bool{
				"X-Envoy-Expected-Rq-Timeout-Ms": resp.Header.Get("X-Echo-X-Envoy-Expected-Rq-Timeout-Ms") == "15000",
				"X-Envoy-Upstream-Service-Time":  resp.Header.Get("X-Envoy-Upstream-Service-Time") != "",
			}
			resp, _ = get(t, h1Client(), base+"/legacy/app")
			envoyHeaders["X-Envoy-Original-Path"] = resp.Header.Get("X-Echo-X-Envoy-Original-Path") == "/legacy/app"
			for k, got := range envoyHeaders {
				if got != tc.envoyHeader {
					t.Errorf("%s: present %t, want %t", k, got, tc.envoyHeader)
				}
			}
			if got := resp.Header.Get("X-Echo-X-Forwarded-Proto"); got != "http" {
				t.Errorf("X-Forwarded-Proto %q", got)
			}
		})
	}
}

// TestHCMHeaderRefusals: a server name that is not a header value, and a
// transformation the proxy does not know, are NACKed with the field named.
func TestHCMHeaderRefusals(t *testing.T) {
	for _, tc := range []struct {
		change func(*hcm.HttpConnectionManager)
		want   string
	}{
		{func(h *hcm.HttpConnectionManager) { h.ServerName = "bad\r\nname" }, "HttpConnectionManager.ServerName"},
		{func(h *hcm.HttpConnectionManager) { h.ServerHeaderTransformation = 7 }, "HttpConnectionManager.ServerHeaderTransformation"},
		{func(h *hcm.HttpConnectionManager) { h.PreserveExternalRequestId = true }, "preserve_external_request_id"},
		{func(h *hcm.HttpConnectionManager) { h.MaxRequestHeadersKb = wrapperspb.UInt32(0) }, "HttpConnectionManager.MaxRequestHeadersKb"},
		{func(h *hcm.HttpConnectionManager) { h.MaxRequestHeadersKb = wrapperspb.UInt32(2048) }, "max_request_headers_kb 2048"},
		{func(h *hcm.HttpConnectionManager) {
			h.CommonHttpProtocolOptions = &core.HttpProtocolOptions{MaxHeadersCount: wrapperspb.UInt32(0)}
		}, "HttpProtocolOptions.MaxHeadersCount"},
		{func(h *hcm.HttpConnectionManager) {
			h.CommonHttpProtocolOptions = &core.HttpProtocolOptions{IdleTimeout: durationpb.New(time.Minute)}
		}, "common_http_protocol_options.idle_timeout"},
		{func(h *hcm.HttpConnectionManager) {
			h.HttpProtocolOptions = &core.Http1ProtocolOptions{AcceptHttp_10: true, AllowAbsoluteUrl: wrapperspb.Bool(false)}
		}, "http_protocol_options.allow_absolute_url false"},
		{func(h *hcm.HttpConnectionManager) {
			h.HttpProtocolOptions = &core.Http1ProtocolOptions{AcceptHttp_10: true, HeaderKeyFormat: &core.Http1ProtocolOptions_HeaderKeyFormat{}}
		}, "Http1ProtocolOptions.HeaderKeyFormat"},
		{func(h *hcm.HttpConnectionManager) {
			h.HttpProtocolOptions = &core.Http1ProtocolOptions{AcceptHttp_10: true, DefaultHostForHttp_10: "a b"}
		}, `default_host_for_http_10 "a b"`},
	} {
		l := withHCM(t, outboundHTTPListener("out", "out"), tc.change)
		_, err := translate([]*listener.Listener{l}, nil, nil, nil, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.want, err)
		}
	}
}

// BenchmarkHCMHeaders is what the HCM's and router's headers cost a
// request in the caller's sidecar (a new X-Request-Id, X-Forwarded-Proto,
// the route's expected timeout, the service time) and in the callee's
// (the service time), on a header like a client's: "headers" less
// "scaffolding" (the same maps and request, made alone).
func BenchmarkHCMHeaders(b *testing.B) {
	hh := hcmHeaders{requestID: true, envoyHeaders: true, server: hcm.HttpConnectionManager_PASS_THROUGH}
	rt := &HTTPRoute{Timeout: 15 * time.Second, expectedTimeout: "15000"}
	u, _ := url.Parse("/orders/1")
	start := time.Now()
	for _, headers := range []bool{true, false} {
		b.Run(map[bool]string{true: "headers", false: "scaffolding"}[headers], func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				h := http.Header{"Host": {"billing.mesh"}, "User-Agent": {"curl/8.5"}, "Accept": {"*/*"}}
				r := &http.Request{Header: h, URL: u}
				resp := http.Header{"Content-Type": {"text/plain"}, "Content-Length": {"128"}}
				if !headers {
					continue
				}
				hh.request(h, false)
				hh.timeout(h, rt)
				hh.upstream(r, rt)
				hh.upstreamResponse(resp, start, true)
				hh.response(resp)
				// The callee's sidecar.
				hh.request(h, true)
				hh.upstreamResponse(resp, start, true)
			}
		})
	}
}

// TestRouterHeaderTimes: the router's times count as Envoy's do. A retry
// tells the upstream the time the route has left, not the per-try timeout
// again; X-Envoy-Upstream-Service-Time runs from when the request reached
// the router (after a fault delay) or its body ended.
func TestRouterHeaderTimes(t *testing.T) {
	var mu sync.Mutex
	var expected []string
	app := backend(t, "app", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		expected = append(expected, r.Header.Get("X-Envoy-Expected-Rq-Timeout-Ms"))
		first := len(expected) == 1
		mu.Unlock()
		if first && r.URL.Path == "/retried" {
			time.Sleep(700 * time.Millisecond) // past the per-try timeout
		}
		io.WriteString(w, "ok")
	})
	retried := toCluster("app")
	retried.Timeout = durationpb.New(time.Second)
	retried.RetryPolicy = &route.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(1), PerTryTimeout: durationpb.New(500 * time.Millisecond)}
	rc := routeConfig("outbound:svc",
		routeTo("retried", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/retried"}}, retried),
		routeTo("app", nil, timed(toCluster("app"))))
	url := plainHTTP(t, newProxy(t), rc, nil, staticHTTPCluster("app", false, app))
	delay := &faultv3.HTTPFault{Delay: &commonfault.FaultDelay{FaultDelaySecifier: &commonfault.FaultDelay_FixedDelay{FixedDelay: durationpb.New(500 * time.Millisecond)}}}
	delayed := plainHTTP(t, newProxy(t), rc, []*faultv3.HTTPFault{delay}, staticHTTPCluster("app", false, app))

	if resp, body := get(t, h1Client(), url+"/retried"); resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("retried: %d %q", resp.StatusCode, body)
	}
	mu.Lock()
	got := slices.Clone(expected)
	mu.Unlock()
	if len(got) != 2 || got[0] != "500" {
		t.Fatalf("the attempts' X-Envoy-Expected-Rq-Timeout-Ms: %q, want 500 then what the second's 1 s has left", got)
	}
	if left, err := strconv.Atoi(got[1]); err != nil || left >= 500 || left < 1 {
		t.Errorf("the retry was told %q ms: the route's 1 s less the first attempt's 500 ms and more", got[1])
	}
	serviceTime := func(resp *http.Response) int {
		t.Helper()
		ms, err := strconv.Atoi(resp.Header.Get("X-Envoy-Upstream-Service-Time"))
		if err != nil {
			t.Fatalf("X-Envoy-Upstream-Service-Time %q", resp.Header.Get("X-Envoy-Upstream-Service-Time"))
		}
		return ms
	}
	start := time.Now()
	resp, _ := get(t, h1Client(), delayed+"/app")
	if took := time.Since(start); took < 500*time.Millisecond || serviceTime(resp) >= 400 {
		t.Errorf("after a 500 ms fault delay (the request took %s) the upstream's time was %d ms: it starts at the router", took, serviceTime(resp))
	}
	post, err := h1Client().Post(url+"/app", "text/plain", strings.NewReader(strings.Repeat("b", 64<<10)))
	if err != nil {
		t.Fatal(err)
	}
	post.Body.Close()
	if post.StatusCode != 200 || serviceTime(post) > 5000 {
		t.Errorf("a POST: %d, service time %d", post.StatusCode, serviceTime(post))
	}
}

// TestRouterHeadersMore: a host rewrite says the Host it replaced; a
// circuit breaker's 503 says the upstream was overloaded; a 101 gets the
// Server header as the proxy's other responses do; a request that came
// over TLS without X-Forwarded-Proto gets https.
func TestRouterHeadersMore(t *testing.T) {
	t.Run("original-host", func(t *testing.T) {
		app := backend(t, "app", nil)
		a := timed(toCluster("app"))
		a.HostRewriteSpecifier = &route.RouteAction_HostRewriteLiteral{HostRewriteLiteral: "billing.internal"}
		url := plainHTTP(t, newProxy(t), routeConfig("outbound:svc", routeTo("app", nil, a)), nil, staticHTTPCluster("app", false, app))
		req, _ := http.NewRequest(http.MethodGet, url+"/x", nil)
		req.Host = "billing.mesh"
		resp, err := h1Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("X-Echo-X-Envoy-Original-Host"); got != "billing.mesh" {
			t.Errorf("X-Envoy-Original-Host %q, want billing.mesh", got)
		}
	})
	t.Run("overloaded", func(t *testing.T) {
		slow := newSlowBackend(t)
		c := staticHTTPCluster("app", false, slow.addr)
		c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{MaxRequests: wrapperspb.UInt32(1)}}}
		_, _, url := httpProxyTo(t, c)
		done := make(chan struct{})
		go func() { defer close(done); get(t, h1Client(), url) }()
		testutil.Until(t, 10*time.Second, "the first request at the backend", func() bool { return slow.held() == 1 })
		resp, _ := get(t, h1Client(), url)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("X-Envoy-Overloaded") != "true" {
			t.Errorf("over max_requests: %d, X-Envoy-Overloaded %q", resp.StatusCode, resp.Header.Get("X-Envoy-Overloaded"))
		}
		slow.release()
		<-done
	})
	t.Run("server-on-101", func(t *testing.T) {
		up := backend(t, "up", func(w http.ResponseWriter, r *http.Request) {
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nServer: app\r\n\r\n")
			brw.Flush()
		})
		p := newProxy(t)
		apply(t, p, nil, nil, []*listener.Listener{withHCM(t, outboundHTTPListener("out", "out"), func(h *hcm.HttpConnectionManager) {
			h.ServerHeaderTransformation, h.ServerName = hcm.HttpConnectionManager_OVERWRITE, "ursa"
		})}, []*cluster.Cluster{staticHTTPCluster("up", false, up)}, nil, routeConfig("out", routeTo("up", nil, toCluster("up"))))
		rc := dialRaw(t, boundAddr(t, p, "out"))
		rc.send("GET / HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		resp, err := http.ReadResponse(rc.br, nil) // the head alone: what follows is the upgraded stream
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Server") != "ursa" {
			t.Errorf("upgrade: %d, Server %q, want 101 from ursa", resp.StatusCode, resp.Header.Get("Server"))
		}
	})
	t.Run("https", func(t *testing.T) {
		sc := newSidecars(t)
		app := backend(t, "app", nil)
		apply(t, sc.server, sc.billing, sc.roots, []*listener.Listener{inboundHTTPListener("inbound:billing", "billing", "localhost:app", "spiffe://default/web")},
			[]*cluster.Cluster{staticHTTPCluster("localhost:app", false, app)}, nil)
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			Certificates: []tls.Certificate{*sc.web}, RootCAs: sc.roots, InsecureSkipVerify: true}}}
		resp, _ := get(t, c, "https://"+boundAddr(t, sc.server, "inbound:billing")+"/")
		if got := resp.Header.Get("X-Echo-X-Forwarded-Proto"); resp.StatusCode != 200 || got != "https" {
			t.Errorf("over mTLS: %d, X-Forwarded-Proto %q, want https", resp.StatusCode, got)
		}
	})
}

// TestHCMStreamIdleTimeout: the HCM's stream_idle_timeout ends a request
// that sees no activity for as long (504, "stream timeout", as the
// route's idle_timeout does) unless its route sets its own, 0 turning it
// off; unset, it is Envoy's 5 minutes.
func TestHCMStreamIdleTimeout(t *testing.T) {
	app := backend(t, "app", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(time.Second):
			io.WriteString(w, "late")
		case <-r.Context().Done():
		}
	})
	own := toCluster("app")
	own.IdleTimeout = durationpb.New(0)
	p := newProxy(t)
	apply(t, p, nil, nil, []*listener.Listener{withHCM(t, outboundHTTPListener("out", "out"), func(h *hcm.HttpConnectionManager) {
		h.StreamIdleTimeout = durationpb.New(150 * time.Millisecond)
	})}, []*cluster.Cluster{staticHTTPCluster("app", false, app)}, nil,
		routeConfig("out", routeTo("own", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/own"}}, own), routeTo("hcm", nil, toCluster("app"))))
	base := "http://" + boundAddr(t, p, "out")
	start := time.Now()
	if resp, body := get(t, h1Client(), base+"/idle"); resp.StatusCode != http.StatusGatewayTimeout || body != "stream timeout" || time.Since(start) > 900*time.Millisecond {
		t.Errorf("idle past the HCM's 150 ms: %d %q after %s", resp.StatusCode, body, time.Since(start))
	}
	if resp, body := get(t, h1Client(), base+"/own"); resp.StatusCode != 200 || body != "late" {
		t.Errorf("a route whose idle_timeout is 0: %d %q", resp.StatusCode, body)
	}
	cfg, err := translate([]*listener.Listener{withHCM(t, outboundHTTPListener("out", "out"), func(h *hcm.HttpConnectionManager) { h.StreamIdleTimeout = nil })}, nil, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Listeners["out"].HTTP.StreamIdle; got != 5*time.Minute {
		t.Errorf("stream_idle_timeout unset: %s, want Envoy's 5m", got)
	}
}

// TestStreamTimeoutWhileSending: an idle timeout that fires while the
// caller is still sending its request's body answers 408, as Envoy's
// (after the request came whole: 504, TestHCMStreamIdleTimeout), and the
// HTTP/1.1 connection closes after it.
func TestStreamTimeoutWhileSending(t *testing.T) {
	app := backend(t, "app", nil) // reads the body to its end
	idle := toCluster("app")
	idle.IdleTimeout = durationpb.New(150 * time.Millisecond)
	url := plainHTTP(t, newProxy(t), routeConfig("outbound:svc", routeTo("idle", nil, idle)), nil, staticHTTPCluster("app", false, app))
	rc := dialRaw(t, strings.TrimPrefix(url, "http://"))
	rc.send("POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 100\r\n\r\nhalf of it") // and no more
	start := time.Now()
	resp, body := rc.response(http.MethodPost)
	if resp.StatusCode != http.StatusRequestTimeout || body != "stream timeout" || !resp.Close || time.Since(start) > 900*time.Millisecond {
		t.Errorf("idle while sending: %d %q (Connection: close %t) after %s, want 408 stream timeout after 150 ms, closing",
			resp.StatusCode, body, resp.Close, time.Since(start))
	}
	if _, err := rc.br.ReadByte(); err != io.EOF {
		t.Errorf("the connection after a stalled upload's 408: %v, want it closed", err)
	}
	// The same over h2c: the stream's body, not the connection, stops.
	pr, pw := io.Pipe()
	defer pw.Close()
	go io.WriteString(pw, "half of it") // and no more
	req, _ := http.NewRequest(http.MethodPost, url+"/upload", pr)
	req.ContentLength = 100
	start = time.Now()
	h2resp, err := h2cClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	h2body, _ := io.ReadAll(h2resp.Body)
	h2resp.Body.Close()
	if h2resp.StatusCode != http.StatusRequestTimeout || string(h2body) != "stream timeout" || time.Since(start) > 900*time.Millisecond {
		t.Errorf("h2c, idle while sending: %d %q after %s, want 408 stream timeout after 150 ms", h2resp.StatusCode, h2body, time.Since(start))
	}
}

// TestStreamIdleAndTheBody: a request body that keeps coming keeps its
// stream alive (each chunk resets the idle timeout, as Envoy's); an
// HTTP/2 caller's whole body ends the request, so its route timeout runs
// from there and the service time is given.
func TestStreamIdleAndTheBody(t *testing.T) {
	app := backend(t, "app", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/slow" {
			time.Sleep(1500 * time.Millisecond)
		}
		fmt.Fprintf(w, "%d", n)
	})
	idle := toCluster("app")
	idle.IdleTimeout = durationpb.New(400 * time.Millisecond)
	short := toCluster("app")
	short.Timeout = durationpb.New(200 * time.Millisecond)
	url := plainHTTP(t, newProxy(t), routeConfig("outbound:svc",
		routeTo("short", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/slow"}}, short),
		routeTo("idle", nil, idle)), nil, staticHTTPCluster("app", false, app))

	trickle := func(w io.WriteCloser) {
		for range 12 { // 600 ms in all, a byte every 50
			time.Sleep(50 * time.Millisecond)
			if _, err := w.Write([]byte("x")); err != nil {
				return
			}
		}
		w.Close()
	}
	for name, c := range map[string]*http.Client{"h1": h1Client(), "h2c": h2cClient()} {
		pr, pw := io.Pipe()
		go trickle(pw)
		req, _ := http.NewRequest(http.MethodPost, url+"/upload", pr)
		req.ContentLength = 12
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "12" {
			t.Errorf("%s: an upload that keeps coming past the 400 ms idle timeout: %d %q", name, resp.StatusCode, body)
		}
	}

	start := time.Now()
	req, _ := http.NewRequest(http.MethodPost, url+"/slow", strings.NewReader("12345"))
	resp, err := h2cClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusGatewayTimeout || time.Since(start) > time.Second {
		t.Errorf("h2c POST past its 200 ms route timeout: %d after %s", resp.StatusCode, time.Since(start))
	}
	resp, body := func() (*http.Response, string) {
		req, _ := http.NewRequest(http.MethodPost, url+"/upload", strings.NewReader("12345"))
		resp, err := h2cClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}()
	if body != "5" || resp.Header.Get("X-Envoy-Upstream-Service-Time") == "" {
		t.Errorf("h2c POST: %q, X-Envoy-Upstream-Service-Time %q", body, resp.Header.Get("X-Envoy-Upstream-Service-Time"))
	}
}

// TestTraceDecisionThroughASidecar: a sidecar tracing half of the
// requests decides by their X-Request-Id and marks it for the hops after:
// the application sees a sampled ID marked (9) with a sampled traceparent,
// and an unsampled one as it came, with an unsampled traceparent.
func TestTraceDecisionThroughASidecar(t *testing.T) {
	spans := startSpanStore(t)
	app := backend(t, "app", nil)
	p := newProxy(t)
	l := withObs(t, outboundHTTPListener("outbound:svc", "outbound:svc"), nil, otelTracing(t, "tracing:c", "web", 50))
	cfg, err := translate([]*listener.Listener{l}, []*cluster.Cluster{staticHTTPCluster("svc", false, app), collectorCluster("tracing:c", spans.addr)},
		nil, nil, nil, routeConfig("outbound:svc", routeTo("default", nil, toCluster("svc"))))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	url := "http://" + boundAddr(t, p, "outbound:svc") + "/"
	for _, tc := range []struct{ id, seen, flags string }{
		{"00000001-0000-4000-8000-000000000000", "00000001-0000-9000-8000-000000000000", "-01"}, // 1 < 5,000
		{"00001389-0000-4000-8000-000000000000", "00001389-0000-4000-8000-000000000000", "-00"}, // 5,001
	} {
		resp, _ := get(t, h1Client(), url, "x-request-id", tc.id)
		if got, tp := resp.Header.Get("X-Echo-X-Request-Id"), resp.Header.Get("X-Echo-Traceparent"); got != tc.seen || !strings.HasSuffix(tp, tc.flags) {
			t.Errorf("%s: the application saw X-Request-Id %q and traceparent %q; want %q, flags %s", tc.id, got, tp, tc.seen, tc.flags)
		}
	}
}

// TestValidReferer: Envoy's own cases for isValidRefererValue, and the
// edges of the two forms.
func TestValidReferer(t *testing.T) {
	for v, want := range map[string]bool{
		// Envoy's test (test/common/http/utility_test.cc).
		"http://www.example.com":                   true,
		"http://www.example.com/foo?bar=xyz":       true,
		"/resource.html":                           true,
		"resource.html":                            true,
		"foo/bar/resource.html":                    true,
		"mal  formed/path/resource.html":           false,
		"htp:/www.malformed.com":                   false,
		"http://www.example.com/?foo=bar#fragment": false,
		"foo=bar#fragment":                         false,
		// Absolute: user info, ports, IPv6, no host.
		"https://user:pw@example.com/":   false,
		"https://example.com:8443/a/b":   true,
		"http://[2001:db8::1]:80/x":      true,
		"http://[2001:db8::1/x":          false, // then relative: ':' before the first '/'
		"http:///path":                   false,
		"http://exa mple.com/":           false,
		"http://example.com/a b":         false,
		"http://example.com:80x/":        false,
		"HTTPS://Example.COM/?q=1&r=%20": true,
		// http_parser's host: letters, digits, '.', '-', '_'; a port of
		// 1 to 65535 when there is a ':'. (Then relative: ':' first.)
		"http://a_b.example/":   true,
		"http://a!b/":           false,
		"http://ex%41mple.com/": false,
		"http://a:99999/":       false,
		"http://a:/x":           false,
		"http://a:65535/x":      true,
		// Relative: a ':' after the first '/', bytes a query may not hold.
		"":                    true,
		"/a:b/c?d=e@f":        true,
		"a:b/c":               false,
		"/caf\xc3\xa9":        false,
		"/a\"b":               false,
		"//cdn.example.com/x": true,
		"/path?next=/other?x": true,
	} {
		if got := validReferer(v); got != want {
			t.Errorf("validReferer(%q) = %t, want %t", v, got, want)
		}
	}
}

// TestRefererSanitising: through a sidecar pair, a request with one valid
// Referer keeps it, and one with two or an invalid one reaches the
// application without, as through Envoy's.
func TestRefererSanitising(t *testing.T) {
	sc := newSidecars(t)
	app := backend(t, "app", nil)
	apply(t, sc.server, sc.billing, sc.roots, []*listener.Listener{inboundHTTPListener("inbound:billing", "billing", "localhost:app", "spiffe://default/web")},
		[]*cluster.Cluster{staticHTTPCluster("localhost:app", false, app)}, nil)
	in := boundAddr(t, sc.server, "inbound:billing")
	apply(t, sc.client, sc.web, sc.roots, []*listener.Listener{outboundHTTPListener("outbound:billing", "outbound:billing")},
		[]*cluster.Cluster{mtlsHTTPCluster("billing", "billing", true)}, []*endpoint.ClusterLoadAssignment{assignment("billing", in)},
		routeConfig("outbound:billing", routeTo("pair", nil, timed(toCluster("billing")))))
	url := "http://" + boundAddr(t, sc.client, "outbound:billing") + "/"
	for _, tc := range []struct {
		referers []string
		want     []string
	}{
		{[]string{"https://web.example.com/page?x=1"}, []string{"https://web.example.com/page?x=1"}},
		{[]string{"/a", "/b"}, nil},
		{[]string{"https://web.example.com/page#top"}, nil},
		{[]string{"https://me:secret@web.example.com/"}, nil},
		{[]string{"not a url"}, nil},
	} {
		for name, c := range map[string]*http.Client{"h1": h1Client(), "h2c": h2cClient()} {
			req, _ := http.NewRequest(http.MethodGet, url, nil)
			for _, r := range tc.referers {
				req.Header.Add("Referer", r)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("%s %q: %v", name, tc.referers, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if got := resp.Header.Values("X-Echo-Referer"); resp.StatusCode != 200 || !slices.Equal(got, tc.want) {
				t.Errorf("%s: Referer %q: status %d, the application got %q, want %q", name, tc.referers, resp.StatusCode, got, tc.want)
			}
		}
	}
}

// FuzzReferer: validReferer never fails, and what it keeps has neither a
// fragment nor a control byte or space.
func FuzzReferer(f *testing.F) {
	for _, s := range []string{"http://www.example.com/foo?bar=xyz", "/a:b", "a:b", "http://[::1]:8/#x", "https://u@h/", "x\x00y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if !validReferer(v) {
			return
		}
		if strings.Contains(v, "#") || strings.IndexFunc(v, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
			t.Errorf("validReferer kept %q", v)
		}
	})
}
