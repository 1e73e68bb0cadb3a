package proxy

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/xds"
)

// TestHTTPTranslateNACKs: what the proxy cannot honour in an HCM, a route
// configuration or a cluster's HTTP options is refused, naming it.
func TestHTTPTranslateNACKs(t *testing.T) {
	okRoute := func() *route.Route { return routeTo("r", nil, toCluster("c")) }
	withRoute := func(f func(*route.Route)) *route.RouteConfiguration {
		r := okRoute()
		f(r)
		return routeConfig("outbound:svc", r)
	}
	withHCM := func(f func(*hcm.HttpConnectionManager)) *listener.Listener {
		l := outboundHTTPListener("outbound:svc", "outbound:svc")
		h := &hcm.HttpConnectionManager{}
		l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(h)
		f(h)
		l.FilterChains[0].Filters[0] = hcmFilter(h)
		return l
	}
	for _, tc := range []struct {
		name      string
		listeners []*listener.Listener
		clusters  []*cluster.Cluster
		routes    []*route.RouteConfiguration
		want      string
	}{
		{name: "bad regex", routes: []*route.RouteConfiguration{withRoute(func(r *route.Route) {
			r.Match = &route.RouteMatch{PathSpecifier: &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: "(("}}}
		})}, want: "safe_regex"},
		{name: "unsupported match kind", routes: []*route.RouteConfiguration{withRoute(func(r *route.Route) {
			r.Match = &route.RouteMatch{PathSpecifier: &route.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/a"}}
		})}, want: "path_separated_prefix"},
		{name: "redirect", routes: []*route.RouteConfiguration{withRoute(func(r *route.Route) {
			r.Action = &route.Route_Redirect{Redirect: &route.RedirectAction{}}
		})}, want: "redirect"},
		{name: "negative timeout", routes: []*route.RouteConfiguration{withRoute(func(r *route.Route) { r.GetRoute().Timeout = durationpb.New(-time.Second) })}, want: "timeout"},
		{name: "retry_on", routes: []*route.RouteConfiguration{withRoute(func(r *route.Route) {
			r.GetRoute().RetryPolicy = &route.RetryPolicy{RetryOn: "5xx,envoy-ratelimited"}
		})}, want: "envoy-ratelimited"},
		{name: "retriable headers", routes: []*route.RouteConfiguration{withRoute(func(r *route.Route) {
			r.GetRoute().RetryPolicy = &route.RetryPolicy{RetryOn: "5xx", RetriableHeaders: []*route.HeaderMatcher{{Name: "x"}}}
		})}, want: "retriable_headers"},
		{name: "retry host predicate", routes: []*route.RouteConfiguration{withRoute(func(r *route.Route) {
			r.GetRoute().RetryPolicy = &route.RetryPolicy{RetryOn: "5xx", RetryHostPredicate: []*route.RetryPolicy_RetryHostPredicate{
				{Name: "envoy.retry_host_predicates.omit_canary_hosts"}}}
		})}, want: "omit_canary_hosts"},
		{name: "retry host predicate's type", routes: []*route.RouteConfiguration{withRoute(func(r *route.Route) {
			r.GetRoute().RetryPolicy = &route.RetryPolicy{RetryOn: "5xx", RetryHostPredicate: []*route.RetryPolicy_RetryHostPredicate{
				{Name: previousHostsName, ConfigType: &route.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: xds.MustAny(&route.CorsPolicy{})}}}}
		})}, want: "CorsPolicy"},
		{name: "prefix_rewrite on a regex match", routes: []*route.RouteConfiguration{withRoute(func(r *route.Route) {
			r.Match = &route.RouteMatch{PathSpecifier: &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: "/a.*"}}}
			r.GetRoute().PrefixRewrite = "/b"
		})}, want: "prefix_rewrite needs a prefix or path match"},
		{name: "prefix_rewrite not a path", routes: []*route.RouteConfiguration{withRoute(func(r *route.Route) { r.GetRoute().PrefixRewrite = "v2/" })}, want: `prefix_rewrite "v2/"`},
		{name: "prefix_rewrite with a query", routes: []*route.RouteConfiguration{withRoute(func(r *route.Route) { r.GetRoute().PrefixRewrite = "/v2?a=1" })}, want: "prefix_rewrite"},
		{name: "prefix_rewrite Go would escape again", routes: []*route.RouteConfiguration{withRoute(func(r *route.Route) { r.GetRoute().PrefixRewrite = "/ü/" })}, want: "prefix_rewrite"},
		{name: "prefix_rewrite with a brace", routes: []*route.RouteConfiguration{withRoute(func(r *route.Route) { r.GetRoute().PrefixRewrite = "/a{b}/" })}, want: "prefix_rewrite"},
		{name: "prefix_rewrite with a bad escape", routes: []*route.RouteConfiguration{withRoute(func(r *route.Route) { r.GetRoute().PrefixRewrite = "/v2%zz" })}, want: "prefix_rewrite"},
		{name: "host_rewrite_literal", routes: []*route.RouteConfiguration{withRoute(func(r *route.Route) {
			r.GetRoute().HostRewriteSpecifier = &route.RouteAction_HostRewriteLiteral{HostRewriteLiteral: "a b"}
		})}, want: "host_rewrite_literal"},
		{name: "host_rewrite_header", routes: []*route.RouteConfiguration{withRoute(func(r *route.Route) {
			r.GetRoute().HostRewriteSpecifier = &route.RouteAction_HostRewriteHeader{HostRewriteHeader: "x-host"}
		})}, want: "host_rewrite_header"},
		{name: "header matcher kind", routes: []*route.RouteConfiguration{withRoute(func(r *route.Route) {
			r.Match.Headers = []*route.HeaderMatcher{{Name: "x", HeaderMatchSpecifier: &route.HeaderMatcher_RangeMatch{}}}
		})}, want: "range_match"},
		{name: "vhost retry policy", routes: []*route.RouteConfiguration{func() *route.RouteConfiguration {
			rc := routeConfig("outbound:svc", okRoute())
			rc.VirtualHosts[0].RetryPolicy = &route.RetryPolicy{}
			return rc
		}()}, want: "retry_policy"},
		{name: "weighted total 0", routes: []*route.RouteConfiguration{withRoute(func(r *route.Route) {
			r.GetRoute().ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: &route.WeightedCluster{Clusters: []*route.WeightedCluster_ClusterWeight{{Name: "c", Weight: wrapperspb.UInt32(0)}}}}
		})}, want: "total weight 0"},
		{name: "unknown http filter", listeners: []*listener.Listener{withHCM(func(h *hcm.HttpConnectionManager) {
			h.HttpFilters = append([]*hcm.HttpFilter{{Name: "envoy.filters.http.cors", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: xds.MustAny(&route.CorsPolicy{})}}}, h.HttpFilters...)
		})}, want: "envoy.filters.http.cors"},
		{name: "no router", listeners: []*listener.Listener{withHCM(func(h *hcm.HttpConnectionManager) { h.HttpFilters = nil })}, want: "router"},
		{name: "hcm field", listeners: []*listener.Listener{withHCM(func(h *hcm.HttpConnectionManager) { h.UseRemoteAddress = wrapperspb.Bool(true) })}, want: "use_remote_address"},
		{name: "codec", listeners: []*listener.Listener{withHCM(func(h *hcm.HttpConnectionManager) { h.CodecType = hcm.HttpConnectionManager_HTTP3 })}, want: "codec_type"},
		{name: "hcm with another filter", listeners: []*listener.Listener{func() *listener.Listener {
			l := outboundHTTPListener("outbound:svc", "outbound:svc")
			l.FilterChains[0].Filters = append(l.FilterChains[0].Filters, l.FilterChains[0].Filters[0])
			return l
		}()}, want: "only network filter"},
		{name: "auto protocol", clusters: []*cluster.Cluster{func() *cluster.Cluster {
			c := staticHTTPCluster("c", false, "127.0.0.1:1")
			c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions": xds.MustAny(&core.TcpProtocolOptions{})}
			return c
		}()}, want: "TcpProtocolOptions"},
		{name: "response head of 0 KiB", clusters: []*cluster.Cluster{withCommonOptions(staticHTTPCluster("c", false, "127.0.0.1:1"), &core.HttpProtocolOptions{MaxResponseHeadersKb: wrapperspb.UInt32(0)})},
			want: "HttpProtocolOptions.MaxResponseHeadersKb"},
		{name: "response head past 1,024 KiB", clusters: []*cluster.Cluster{withCommonOptions(staticHTTPCluster("c", false, "127.0.0.1:1"), &core.HttpProtocolOptions{MaxResponseHeadersKb: wrapperspb.UInt32(2048)})},
			want: "max_response_headers_kb 2048"},
		{name: "no response fields", clusters: []*cluster.Cluster{withCommonOptions(staticHTTPCluster("c", false, "127.0.0.1:1"), &core.HttpProtocolOptions{MaxHeadersCount: wrapperspb.UInt32(0)})},
			want: "HttpProtocolOptions.MaxHeadersCount"},
		{name: "cluster common option", clusters: []*cluster.Cluster{withCommonOptions(staticHTTPCluster("c", false, "127.0.0.1:1"), &core.HttpProtocolOptions{MaxStreamDuration: durationpb.New(time.Second)})},
			want: "max_stream_duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := translate(tc.listeners, tc.clusters, nil, nil, nil, tc.routes...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("translate = %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

// withCommonOptions is cluster c (of staticHTTPCluster's making) with o as
// its protocol options' common_http_protocol_options.
func withCommonOptions(c *cluster.Cluster, o *core.HttpProtocolOptions) *cluster.Cluster {
	opts := &upstreamhttp.HttpProtocolOptions{}
	c.TypedExtensionProtocolOptions[httpProtocolOptionsKey].UnmarshalTo(opts)
	opts.CommonHttpProtocolOptions = o
	c.TypedExtensionProtocolOptions[httpProtocolOptionsKey] = xds.MustAny(opts)
	return c
}

// TestHTTPRouteDefaults: a route without a timeout gets Envoy's 15 s, 0 is
// none; a retry policy without back-off gets 25 ms to 250 ms.
func TestHTTPRouteDefaults(t *testing.T) {
	r := routeTo("r", nil, toCluster("c"))
	r.GetRoute().RetryPolicy = &route.RetryPolicy{RetryOn: "gateway-error"}
	none := routeTo("none", nil, toCluster("c"))
	none.GetRoute().Timeout = durationpb.New(0)
	cfg, err := translate(nil, nil, nil, nil, nil, routeConfig("outbound:svc", r, none))
	if err != nil {
		t.Fatal(err)
	}
	routes := cfg.RouteTables["outbound:svc"].VHosts[0].Routes
	if routes[0].Timeout != 15*time.Second || routes[1].Timeout != 0 {
		t.Fatalf("timeouts %s %s", routes[0].Timeout, routes[1].Timeout)
	}
	if rp := routes[0].Retry; rp.retries != 1 || rp.base != 25*time.Millisecond || rp.maxi != 250*time.Millisecond {
		t.Fatalf("retry defaults %+v", rp)
	}
	for i := range 1000 {
		if d := retryBackoff(1+i%5, rp(routes).base, rp(routes).maxi); d < 0 || d > 250*time.Millisecond {
			t.Fatalf("back-off %s", d)
		}
	}
}

func rp(routes []*HTTPRoute) *retryPolicy { return routes[0].Retry }

// TestHTTPRDSWarming: an HTTP listener whose route configuration has not
// arrived keeps the routes it had; a new one's arrival takes over.
func TestHTTPRDSWarming(t *testing.T) {
	l := outboundHTTPListener("outbound:svc", "outbound:svc")
	c := staticHTTPCluster("c", false, "127.0.0.1:1")
	prev, err := translate([]*listener.Listener{l}, []*cluster.Cluster{c}, nil, nil, nil, routeConfig("outbound:svc", routeTo("old", nil, toCluster("c"))))
	if err != nil {
		t.Fatal(err)
	}
	moved := proto.Clone(l).(*listener.Listener)
	h := &hcm.HttpConnectionManager{}
	moved.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(h)
	h.GetRds().RouteConfigName = "outbound:other"
	moved.FilterChains[0].Filters[0] = hcmFilter(h)
	next, err := translate([]*listener.Listener{moved}, []*cluster.Cluster{c}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := warm(prev, next)
	if rds := got.Listeners["outbound:svc"].HTTP.RDS; rds != "outbound:svc" || got.RouteTables["outbound:svc"] == nil {
		t.Fatalf("a listener whose routes have not arrived took them: RDS %q", rds)
	}
}

// FuzzHTTPRouteConfig feeds translate route configurations and HTTP
// connection managers from arbitrary bytes: it never panics, and a route
// table it accepts routes a request without panicking either.
func FuzzHTTPRouteConfig(f *testing.F) {
	canary := routeTo("canary/0", &route.RouteMatch{PathSpecifier: &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: "/a.*"}},
		Headers: []*route.HeaderMatcher{{Name: "x-canary", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: exactMatcher("1")}},
			{Name: ":method", HeaderMatchSpecifier: &route.HeaderMatcher_PresentMatch{PresentMatch: true}}}}, toCluster("v2"))
	canary.GetRoute().RetryPolicy = &route.RetryPolicy{RetryOn: "5xx,reset", NumRetries: wrapperspb.UInt32(3), PerTryTimeout: durationpb.New(time.Second)}
	canary.RequestHeadersToAdd = []*core.HeaderValueOption{{Header: &core.HeaderValue{Key: "x", Value: "y"}}}
	rewritten := toCluster("v1")
	rewritten.PrefixRewrite, rewritten.HostRewriteSpecifier = "/v2/", &route.RouteAction_HostRewriteLiteral{HostRewriteLiteral: "svc.internal"}
	legacy := routeTo("legacy", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/a/"}}, rewritten)
	for _, m := range []proto.Message{routeConfig("outbound:svc", canary, routeTo("default", nil, toCluster("v1"))),
		routeConfig("outbound:svc", legacy, routeTo("default", nil, toCluster("v1")))} {
		b, _ := proto.Marshal(m)
		f.Add(b, false)
	}
	h := &hcm.HttpConnectionManager{}
	outboundHTTPListener("outbound:svc", "outbound:svc").FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(h)
	b, _ := proto.Marshal(h)
	f.Add(b, true)
	inbound := &hcm.HttpConnectionManager{}
	inboundHTTPListener("inbound:svc", "svc", "localhost:1", "spiffe://default/web").FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(inbound)
	b, _ = proto.Marshal(inbound)
	f.Add(b, true)
	f.Fuzz(func(t *testing.T, in []byte, isHCM bool) {
		if isHCM {
			h := &hcm.HttpConnectionManager{}
			if proto.Unmarshal(in, h) != nil {
				return
			}
			l := &listener.Listener{Name: "l", Address: socket("127.0.0.1", 1), FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{hcmFilter(h)}}}}
			translate([]*listener.Listener{l}, nil, nil, nil, nil)
			return
		}
		rc := &route.RouteConfiguration{}
		if proto.Unmarshal(in, rc) != nil {
			return
		}
		cfg, err := translate(nil, nil, nil, nil, nil, rc)
		if err != nil {
			return
		}
		for _, table := range cfg.RouteTables {
			for _, target := range []string{"/a/b?c=d", "/a/%2F%20x", "/", "/a"} {
				req := httptest.NewRequest("GET", "http://svc.mesh"+target, nil)
				req.Header.Set("x-canary", "1")
				rt := table.route(req)
				if rt == nil {
					continue
				}
				// A rewrite leaves a request that can be sent: its path
				// begins with the rewrite, its query is the caller's (unless
				// the prefix replaced, as Envoy's may, reaches into it).
				(&exchange{rt: rt}).rewrite(req)
				query := strings.TrimPrefix(target[strings.IndexByte(target+"?", '?'):], "?")
				if uri := req.URL.RequestURI(); rt.PrefixRewrite != "" && !strings.HasPrefix(uri, rt.PrefixRewrite) ||
					!strings.Contains(rt.Match.prefix, "?") && req.URL.RawQuery != query {
					t.Fatalf("%s rewritten by %q: %q", target, rt.PrefixRewrite, uri)
				}
			}
		}
	})
}

// TestZoneTagURI: the proxy reads its zone from its certificate's tag URI
// SAN, made by pkg/mtls.
func TestZoneTagURI(t *testing.T) {
	if want := mtls.TagURIPrefix(api.TagZone); zoneTagURI != want {
		t.Fatalf("zoneTagURI %q, mtls makes %q", zoneTagURI, want)
	}
}

// TestRetryOn: which attempts each retry_on condition retries, as Envoy's.
func TestRetryOn(t *testing.T) {
	resp := func(status int, grpc string) *http.Response {
		r := &http.Response{StatusCode: status, Header: http.Header{}}
		if grpc != "" {
			r.Header.Set("Grpc-Status", grpc)
		}
		return r
	}
	connect, reset := &connectError{errors.New("refused")}, errors.New("EOF")
	for _, c := range []struct {
		on      string
		resp    *http.Response
		err     error
		retried bool
	}{
		{on: "5xx", resp: resp(503, ""), retried: true},
		{on: "5xx", resp: resp(404, "")},
		{on: "5xx", err: connect, retried: true},
		{on: "5xx", err: reset, retried: true},
		{on: "gateway-error", resp: resp(502, ""), retried: true},
		{on: "gateway-error", resp: resp(500, "")},
		{on: "gateway-error", err: reset, retried: true},
		{on: "gateway-error", err: connect, retried: true},
		{on: "reset", err: reset, retried: true},
		{on: "reset", err: connect, retried: true},
		// A response head past the cluster's bounds is Envoy's codec's
		// protocol error: a reset (the pool does not resend it itself).
		{on: "5xx", err: &upstreamHeadError{status: 503}, retried: true},
		{on: "connect-failure", err: &upstreamHeadError{status: 503}},
		{on: "connect-failure", err: connect, retried: true},
		{on: "connect-failure", err: reset},
		{on: "connect-failure", resp: resp(503, "")},
		{on: "retriable-4xx", resp: resp(409, ""), retried: true},
		{on: "retriable-4xx", resp: resp(429, "")},
		{on: "retriable-status-codes", resp: resp(418, ""), retried: true},
		{on: "retriable-status-codes", resp: resp(503, "")},
		{on: "refused-stream", err: errors.New("http2: stream error: REFUSED_STREAM"), retried: true},
		{on: "unavailable", resp: resp(200, "14"), retried: true},
		{on: "unavailable", resp: resp(200, "13")},
		{on: "internal", resp: resp(200, "13"), retried: true},
		{on: "cancelled,deadline-exceeded,resource-exhausted", resp: resp(200, "8"), retried: true},
		{on: "", resp: resp(503, "")},
	} {
		pol := &route.RetryPolicy{RetryOn: c.on, RetriableStatusCodes: []uint32{418}}
		p, err := translateRetry(pol)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.wants(c.resp, c.err); got != c.retried {
			t.Errorf("retry_on %q, response %v, error %v: retried %t, want %t", c.on, c.resp, c.err, got, c.retried)
		}
	}
}
