package proxy

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/xds"
)

// withHCM is l with its HTTP connection manager changed by change.
func withHCM(t testing.TB, l *listener.Listener, change func(*hcm.HttpConnectionManager)) *listener.Listener {
	t.Helper()
	f := l.FilterChains[0].Filters[0]
	h := &hcm.HttpConnectionManager{}
	if err := f.GetTypedConfig().UnmarshalTo(h); err != nil {
		t.Fatal(err)
	}
	change(h)
	f.ConfigType = &listener.Filter_TypedConfig{TypedConfig: xds.MustAny(h)}
	return l
}

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
		"x-envoy-expected-rq-timeout-ms", "1", "x-envoy-force-trace", "1", "x-envoy-custom", "kept"}
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
				for _, k := range []string{"Retry-On", "Max-Retries", "Upstream-Rq-Timeout-Ms", "Force-Trace"} {
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
// (404: no route) get the Server header too.
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
		{func(h *hcm.HttpConnectionManager) { h.ServerName = "bad\r\nname" }, "server_name"},
		{func(h *hcm.HttpConnectionManager) { h.ServerHeaderTransformation = 7 }, "server_header_transformation"},
		{func(h *hcm.HttpConnectionManager) { h.PreserveExternalRequestId = true }, "preserve_external_request_id"},
	} {
		l := withHCM(t, outboundHTTPListener("out", "out"), tc.change)
		_, err := translate([]*listener.Listener{l}, nil, nil, nil, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.want, err)
		}
	}
}

// BenchmarkHCMHeaders is what the HCM's and router's headers cost a
// request in the caller's sidecar (a new X-Request-Id, the route's
// expected timeout, the service time) and in the callee's (the service
// time), on a header like a client's.
func BenchmarkHCMHeaders(b *testing.B) {
	hh := hcmHeaders{requestID: true, envoyHeaders: true, server: hcm.HttpConnectionManager_PASS_THROUGH}
	rt := &HTTPRoute{Timeout: 15 * time.Second, expectedTimeout: "15000"}
	u, _ := url.Parse("/orders/1")
	start := time.Now()
	for b.Loop() {
		h := http.Header{"Host": {"billing.mesh"}, "User-Agent": {"curl/8.5"}, "Accept": {"*/*"}}
		r := &http.Request{Header: h, URL: u}
		hh.request(h, false)
		hh.upstream(r, rt)
		resp := http.Header{"Content-Type": {"text/plain"}, "Content-Length": {"128"}}
		hh.upstreamResponse(resp, start)
		hh.response(resp)
		// The callee's sidecar.
		hh.request(h, true)
		hh.upstreamResponse(resp, start)
	}
}
