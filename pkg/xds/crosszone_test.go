package xds

import (
	"maps"
	"testing"

	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
)

// webCaller is web-1, the sidecar the cross-zone tests generate, and
// billingVIPs the VIPs of its mesh: YAML documents to go between others.
const (
	webCaller = `---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 10.0.0.5
  inbound:
  - {port: 10010, servicePort: 8000, tags: {ursa.io/service: web}}
`
	billingVIPs = `---
type: VirtualIPs
mesh: default
name: vips
entries:
  billing: {ip: 127.240.0.1}
  web: {ip: 127.240.0.2}
`
)

// yamlState decodes YAML documents into zone-1's state, with the first
// Dataplane among them.
func yamlState(t *testing.T, doc string) (*State, *api.Dataplane) {
	t.Helper()
	rs, errs := api.DecodeAll([]byte(doc))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	var dp *api.Dataplane
	for _, r := range rs {
		if d, ok := r.(*api.Dataplane); ok && dp == nil {
			dp = d
		}
	}
	return NewState(catalog.FromResources("zone-1", rs), nil), dp
}

func claOf(t *testing.T, r Resources, name string) *endpoint.ClusterLoadAssignment {
	t.Helper()
	for _, res := range r[resource.EndpointType] {
		if cla := res.(*endpoint.ClusterLoadAssignment); cla.ClusterName == name {
			return cla
		}
	}
	t.Fatalf("no load assignment %q", name)
	return nil
}

// TestNoIngressEndpointsWithoutMTLS: in a mesh without mTLS a sidecar
// sends plain bytes, with no ClientHello and no SNI, so another zone's
// ingress can only refuse them (it routes by SNI). Sidecars, as proxyless
// clients, then get this zone's instances only, as in Kuma
// (fillIngressOutbounds: "We ignore Ingress from endpoints if MTLS is
// disabled, otherwise we would fail anyway"): a TrafficRoute's share for
// zone-2 goes to the instances that can be reached.
func TestNoIngressEndpointsWithoutMTLS(t *testing.T) {
	s, dp := yamlState(t, `
type: Mesh
name: default
`+webCaller+`---
type: Dataplane
mesh: default
name: billing-1
networking:
  address: 10.0.0.7
  inbound:
  - {port: 10011, servicePort: 8080, tags: {ursa.io/service: billing}}
---
type: ZoneIngress
name: zone-2.ingress
zone: zone-2
networking: {address: 10.0.2.1, port: 10001, advertisedAddress: 203.0.113.2, advertisedPort: 10001}
availableServices:
- {mesh: default, instances: 3, port: 8080, tags: {ursa.io/service: billing, ursa.io/zone: zone-2}}
---
type: TrafficRoute
mesh: default
name: billing-by-zone
spec:
  destination: {ursa.io/service: billing}
  split:
  - {weight: 50, tags: {ursa.io/zone: zone-1}}
  - {weight: 50, tags: {ursa.io/zone: zone-2}}
`+billingVIPs+``)
	r, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"billing{ursa.io/zone=zone-1}", "billing{ursa.io/zone=zone-2}"} {
		for _, loc := range claOf(t, r, name).Endpoints {
			for _, lb := range loc.LbEndpoints {
				if a := lb.GetEndpoint().GetAddress().GetSocketAddress(); a.GetAddress() == "203.0.113.2" {
					t.Errorf("%s: a mesh without mTLS sends plaintext to zone-2's ingress %s:%d (priority %d), which routes only by SNI",
						name, a.GetAddress(), a.GetPortValue(), loc.Priority)
				}
			}
		}
	}
	// The proxyless generator, for the same mesh, already knows.
	pr, err := Proxyless(s, Proxy{Kind: KindProxyless, Dataplane: dp})
	if err != nil {
		t.Fatal(err)
	}
	for _, res := range pr[resource.EndpointType] {
		for _, loc := range res.(*endpoint.ClusterLoadAssignment).Endpoints {
			if loc.Locality.GetZone() == "zone-2" {
				t.Fatalf("proxyless got zone-2 too: %v", res)
			}
		}
	}
}

// TestIngressReplicasBehindOneAddress: a zone runs its ingress as two
// replicas behind one load balancer (helm's ingress.replicas; on Kubernetes
// each pod is a ZoneIngress advertised at the Service's LB address). Both
// offer the same 2 instances. The other zones see zone-2 as 2 instances'
// worth, like zone-3 with its 2 instances and one ingress, at one endpoint
// (Kuma keeps one per advertised address: "many Ingress instances can be
// placed in front of one load balancer ... we only need one Instance").
func TestIngressReplicasBehindOneAddress(t *testing.T) {
	s, dp := yamlState(t, `
type: Mesh
name: default
mtls: {enabled: true}
`+webCaller+`---
type: ZoneIngress
name: ingress-a.ursa-system
zone: zone-2
networking: {address: 10.0.2.1, port: 10001, advertisedAddress: 203.0.113.2, advertisedPort: 10001}
availableServices:
- {mesh: default, instances: 2, port: 8080, tags: {ursa.io/service: billing, ursa.io/zone: zone-2}}
---
type: ZoneIngress
name: ingress-b.ursa-system
zone: zone-2
networking: {address: 10.0.2.9, port: 10001, advertisedAddress: 203.0.113.2, advertisedPort: 10001}
availableServices:
- {mesh: default, instances: 2, port: 8080, tags: {ursa.io/service: billing, ursa.io/zone: zone-2}}
---
type: ZoneIngress
name: ingress.ursa-system
zone: zone-3
networking: {address: 10.0.3.1, port: 10001, advertisedAddress: 203.0.113.3, advertisedPort: 10001}
availableServices:
- {mesh: default, instances: 2, port: 8080, tags: {ursa.io/service: billing, ursa.io/zone: zone-3}}
`+billingVIPs+``)
	r, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp})
	if err != nil {
		t.Fatal(err)
	}
	weight := map[string]uint32{}
	count := map[string]int{}
	prio := map[string]uint32{}
	for _, loc := range claOf(t, r, "billing").Endpoints {
		prio[loc.Locality.GetZone()] = loc.Priority
		for _, lb := range loc.LbEndpoints {
			weight[loc.Locality.GetZone()] += lb.GetLoadBalancingWeight().GetValue()
			count[loc.Locality.GetZone()]++
		}
	}
	if prio["zone-2"] != prio["zone-3"] {
		t.Fatalf("the zones are not in one priority: %v", prio)
	}
	if count["zone-2"] != 1 || weight["zone-2"] != weight["zone-3"] {
		t.Fatalf("zone-2 (2 instances, 2 ingress replicas behind 203.0.113.2:10001) has %d endpoints of total weight %d; zone-3 (2 instances) weighs %d: zone-2 takes %d%% of the load instead of 50%%",
			count["zone-2"], weight["zone-2"], weight["zone-3"], 100*weight["zone-2"]/(weight["zone-2"]+weight["zone-3"]))
	}
}

// TestRemoteEndpointsWeighTheirZonesInstances: a zone weighs the instances
// it offers whatever the number of its ingresses and of its tag groups:
// replicas at one address are one endpoint, ingresses at distinct
// addresses share the zone's instances, and an offer's instances count
// once per zone and tag group.
func TestRemoteEndpointsWeighTheirZonesInstances(t *testing.T) {
	v1 := map[string]string{api.TagService: "billing", "version": "v1"}
	v2 := map[string]string{api.TagService: "billing", "version": "v2"}
	offers := []catalog.Offer{
		// zone-2: two ingresses at distinct addresses, each offering the
		// zone's 3 instances of v1 and 2 of v2.
		{Zone: "zone-2", Ingress: "a", Address: "203.0.113.2", Port: 10001, Instances: 3, Tags: v1},
		{Zone: "zone-2", Ingress: "a", Address: "203.0.113.2", Port: 10001, Instances: 2, Tags: v2},
		{Zone: "zone-2", Ingress: "b", Address: "203.0.113.9", Port: 10001, Instances: 3, Tags: v1},
		{Zone: "zone-2", Ingress: "b", Address: "203.0.113.9", Port: 10001, Instances: 2, Tags: v2},
		// zone-3: one ingress with 1 instance.
		{Zone: "zone-3", Ingress: "c", Address: "203.0.113.3", Port: 10001, Instances: 1, Tags: v1},
	}
	weights := func(tags map[string]string) map[string]uint32 {
		out := map[string]uint32{}
		for _, e := range remoteEndpoints(offers, tags) {
			out[e.Zone+" "+e.Address] = e.Weight
		}
		return out
	}
	all := weights(map[string]string{api.TagService: "billing"})
	if want := map[string]uint32{"zone-2 203.0.113.2": 3, "zone-2 203.0.113.9": 2, "zone-3 203.0.113.3": 1}; !maps.Equal(all, want) {
		t.Fatalf("billing: %v, want %v", all, want)
	}
	if got, want := weights(v2), map[string]uint32{"zone-2 203.0.113.2": 1, "zone-2 203.0.113.9": 1}; !maps.Equal(got, want) {
		t.Fatalf("v2: %v, want %v", got, want)
	}
}
