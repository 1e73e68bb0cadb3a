package proxy

import (
	"net"
	"net/http"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/proxy/tproxy"
)

// TestHTTPOriginalDstInNamespace: the transparent proxy's outbound
// listener with an HTTP chain for billing's VIP (its routes over RDS: the
// header canary to v2, the rest to v1) serves an app's plain HTTP calls to
// the VIP, routing each request; other destinations pass through.
func TestHTTPOriginalDstInNamespace(t *testing.T) {
	if !redirectedNamespace(t) {
		return
	}
	serve := func(addr, name string) {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(name)) })}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	serve("240.0.0.9:8081", "v1")
	serve("240.0.0.9:8082", "v2")
	serve("240.0.0.9:9000", "outside")

	p := newProxy(t)
	p.Mark = tproxy.DefaultMark
	h := outboundHTTPListener("ursa:outbound", "outbound:billing").FilterChains[0].Filters
	vip := []*core.CidrRange{{AddressPrefix: "240.0.0.7", PrefixLen: wrapperspb.UInt32(32)}}
	l := &listener.Listener{Name: "ursa:outbound", Address: socket("0.0.0.0", 15001), UseOriginalDst: wrapperspb.Bool(true),
		FilterChains:       []*listener.FilterChain{{FilterChainMatch: &listener.FilterChainMatch{DestinationPort: wrapperspb.UInt32(80), PrefixRanges: vip}, Filters: h}},
		DefaultFilterChain: &listener.FilterChain{Filters: tcpFilter(t, "passthrough")}}
	canary := routeTo("canary/0", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"},
		Headers: []*route.HeaderMatcher{{Name: "x-canary", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: exactMatcher("1")}}}}, toCluster("v2"))
	cfg, err := translate([]*listener.Listener{l}, []*cluster.Cluster{
		{Name: "passthrough", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST}, LbPolicy: cluster.Cluster_CLUSTER_PROVIDED},
		staticHTTPCluster("v1", false, "240.0.0.9:8081"), staticHTTPCluster("v2", false, "240.0.0.9:8082"),
	}, nil, nil, nil, routeConfig("outbound:billing", canary, routeTo("canary/default", nil, toCluster("v1"))))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	c := h1Client()
	for _, tc := range []struct{ url, canary, want string }{
		{"http://240.0.0.7/", "", "v1"},
		{"http://240.0.0.7/", "1", "v2"},
		{"http://240.0.0.9:9000/", "1", "outside"},
	} {
		if resp, body := get(t, c, tc.url, "x-canary", tc.canary); resp.StatusCode != 200 || body != tc.want {
			t.Errorf("%s with x-canary %q: %d %q, want %q", tc.url, tc.canary, resp.StatusCode, body, tc.want)
		}
	}
}
