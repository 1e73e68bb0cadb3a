package xds

import (
	"os"
	"path/filepath"
	"testing"

	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// reviewInput writes a YAML case to a temp file for stateFrom.
func reviewInput(t *testing.T, doc string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "case.input.yaml")
	if err := os.WriteFile(f, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func plReviewCLA(t *testing.T, r Resources, name string) *endpoint.ClusterLoadAssignment {
	t.Helper()
	for _, res := range r[resource.EndpointType] {
		if cla := res.(*endpoint.ClusterLoadAssignment); cla.ClusterName == name {
			return cla
		}
	}
	t.Fatalf("no load assignment %s", name)
	return nil
}

func claEndpoints(cla *endpoint.ClusterLoadAssignment) int {
	n := 0
	for _, l := range cla.Endpoints {
		n += len(l.LbEndpoints)
	}
	return n
}

// TestReviewPLPinnedSplitWithoutMTLS: in a mesh without mTLS, a TrafficRoute
// that sends part of billing's traffic to another zone (the DR lever,
// {ursa.io/zone: zone-2}) cannot cross zones (no SNI); a sidecar then sends
// that part to this zone's instances (its cluster is the subset without its
// zone tag, local only). A proxyless client gets a load assignment with no
// endpoint at all for that cluster, so grpc-go fails that share of the calls
// with UNAVAILABLE.
func TestReviewPLPinnedSplitWithoutMTLS(t *testing.T) {
	in := reviewInput(t, `type: Mesh
name: default
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
  - {port: 9000, tags: {ursa.io/service: web}}
  outbound:
  - {port: 10021, tags: {ursa.io/service: billing}}
---
type: Dataplane
mesh: default
name: billing-1
networking:
  address: 127.0.0.2
  inbound:
  - {port: 9001, tags: {ursa.io/service: billing, ursa.io/protocol: grpc}}
---
type: ZoneIngress
name: zone-2.ingress
zone: zone-2
networking: {address: 10.0.2.1, port: 10001, advertisedAddress: 203.0.113.2, advertisedPort: 10001}
availableServices:
- {mesh: default, instances: 1, port: 9001, tags: {ursa.io/service: billing, ursa.io/protocol: grpc, ursa.io/zone: zone-2}}
---
type: TrafficRoute
mesh: default
name: billing-dr
spec:
  destination: {ursa.io/service: billing}
  split:
  - {weight: 90, tags: {ursa.io/zone: zone-1}}
  - {weight: 10, tags: {ursa.io/zone: zone-2}}
`)
	s, web, _ := stateFrom(t, in)
	const pinned = "billing{ursa.io/zone=zone-2}"
	side, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: web})
	if err != nil {
		t.Fatal(err)
	}
	sideCLA := plReviewCLA(t, side, pinned)
	t.Logf("sidecar %s: %d endpoints", pinned, claEndpoints(sideCLA))
	pl, err := Proxyless(s, Proxy{Kind: KindProxyless, Dataplane: web})
	if err != nil {
		t.Fatal(err)
	}
	plCLA := plReviewCLA(t, pl, pinned)
	if claEndpoints(plCLA) == 0 {
		t.Fatalf("proxyless %s has no endpoint (sidecar's has %d): 10%% of the proxyless client's calls fail UNAVAILABLE", pinned, claEndpoints(sideCLA))
	}
}

// TestReviewPLServerOnWildcardAddress: grpc-go's xDS server asks for the
// listener named after lis.Addr().String() (xds/server.go:200) and serves
// only when that listener's address equals the one it listens on
// (internal/xds/server/listener_wrapper.go:463). A Go server written the
// usual way, net.Listen("tcp", ":9000") (Istio's proxyless examples do),
// asks for grpc/server?xds.resource.listening_address=[::]:9000; the CP
// only ever generates the listener at the Dataplane's own address, so such
// a server stays NOT_SERVING forever, closing every connection.
func TestReviewPLServerOnWildcardAddress(t *testing.T) {
	s, _, _ := stateFrom(t, "testdata/proxyless/server.input.yaml")
	var dp = s.Mesh("default").Registered
	for _, d := range dp {
		r, err := Proxyless(s, Proxy{Kind: KindProxyless, Dataplane: d})
		if err != nil {
			t.Fatal(err)
		}
		names := map[string]bool{}
		for _, l := range r[resource.ListenerType] {
			names[cache.GetResourceName(l)] = true
		}
		for _, in := range d.Networking.Inbound {
			for _, wild := range []string{"::", "0.0.0.0"} {
				if name := ProxylessServerListenerName(wild, uint32(in.Port)); !names[name] {
					t.Errorf("%s: no listener %q for a server listening on :%d (only %q)", d.Name, name, in.Port,
						ProxylessServerListenerName(d.Networking.Address, uint32(in.Port)))
				}
			}
		}
		return
	}
}
