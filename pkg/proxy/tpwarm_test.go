package proxy

import (
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/proxy/tproxy"
)

// TestTransparentListenerWarms: a route shift (a TrafficRoute that
// moves billing to a new subset, so a new EDS cluster) reaches a
// transparent sidecar as a new ursa:outbound whose VIP chain names the new
// cluster, before that cluster's endpoints have arrived (CDS, then EDS a
// round trip later). The transparent proxy's original-destination
// listener, through which every call of a transparent host goes, keeps the
// chain's old routes until the new cluster is warm, as a sidecar's
// ordinary listener does (warm, TestWarming) and Envoy does: it took the
// cold cluster at once, and the app's connections to the VIP were closed
// until the endpoints came. Real connections, in a network namespace with
// the transparent proxy's rules.
func TestTransparentListenerWarms(t *testing.T) {
	if !redirectedNamespace(t) {
		return
	}
	echoOn(t, "240.0.0.9:8080", "v1")

	p := newProxy(t)
	p.Mark = tproxy.DefaultMark
	vip := []*core.CidrRange{{AddressPrefix: "240.0.0.7", PrefixLen: wrapperspb.UInt32(32)}}
	outbound := func(to string) *listener.Listener {
		return &listener.Listener{
			Name: "ursa:outbound", Address: socket("0.0.0.0", 15001), UseOriginalDst: wrapperspb.Bool(true),
			FilterChains: []*listener.FilterChain{
				{FilterChainMatch: &listener.FilterChainMatch{DestinationPort: wrapperspb.UInt32(80), PrefixRanges: vip}, Filters: tcpFilter(t, to)},
			},
			DefaultFilterChain: &listener.FilterChain{Filters: tcpFilter(t, "passthrough")},
		}
	}
	passthrough := &cluster.Cluster{Name: "passthrough", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST}, LbPolicy: cluster.Cluster_CLUSTER_PROVIDED}
	v1, v2 := plainEDSCluster("billing-v1"), plainEDSCluster("billing-v2")
	cla := &endpoint.ClusterLoadAssignment{ClusterName: "billing-v1", Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
		HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: socket("240.0.0.9", 8080)}}}}}}}

	cfg, err := translate([]*listener.Listener{outbound("billing-v1")}, []*cluster.Cluster{passthrough, v1}, []*endpoint.ClusterLoadAssignment{cla}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, "240.0.0.7:80"); got != "v1 hi" {
		t.Fatalf("before the shift: %q", got)
	}

	// The shift: CDS and LDS name billing-v2, whose EDS has not come yet.
	cfg, err = translate([]*listener.Listener{outbound("billing-v2")}, []*cluster.Cluster{passthrough, v1, v2}, []*endpoint.ClusterLoadAssignment{cla}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Clusters["billing-v2"].Warming {
		t.Fatal("billing-v2 is not warming")
	}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, "240.0.0.7:80"); got != "v1 hi" {
		t.Errorf("an app's call to billing's VIP while the shifted-to cluster warms: %q; want it served by billing-v1 until billing-v2's endpoints arrive (as the sidecar's ordinary listeners and Envoy do)", got)
	}
}
