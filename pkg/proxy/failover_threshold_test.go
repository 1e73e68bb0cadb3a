package proxy

import (
	"fmt"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/xds"
)

// localLoad generates web-1's sidecar in zone-1 with ten billing instances
// here and zone-2 offering billing, under the Failover spec given, takes
// all but healthy of the local instances as unhealthy, and returns the
// percentage of billing's traffic the built-in proxy keeps in zone-1.
func localLoad(t *testing.T, failover string, healthy int) uint32 {
	t.Helper()
	var b strings.Builder
	b.WriteString("type: Mesh\nname: default\nmtls: {enabled: true}\n---\ntype: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 10.0.0.5\n  inbound:\n  - {port: 10010, servicePort: 8000, tags: {ursa.io/service: web}}\n")
	for i := range 10 {
		fmt.Fprintf(&b, "---\ntype: Dataplane\nmesh: default\nname: billing-%d\nnetworking:\n  address: 10.0.0.%d\n  inbound:\n  - {port: 10011, servicePort: 8080, tags: {ursa.io/service: billing}}\n", i, 10+i)
	}
	b.WriteString("---\ntype: ZoneIngress\nname: zone-2.ingress\nzone: zone-2\nnetworking: {address: 10.0.2.1, port: 10001}\navailableServices:\n- {mesh: default, instances: 3, tags: {ursa.io/service: billing, ursa.io/zone: zone-2}}\n")
	b.WriteString("---\ntype: VirtualIPs\nmesh: default\nname: vips\nentries:\n  billing: {ip: 127.240.0.1}\n  web: {ip: 127.240.0.2}\n")
	b.WriteString("---\ntype: Failover\nmesh: default\nname: billing-locality\nspec:\n  destination: {ursa.io/service: billing}\n" + failover)
	rs, errs := api.DecodeAll([]byte(b.String()))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	state := xds.NewState(catalog.FromResources("zone-1", rs), nil)
	var p xds.Proxy
	for _, m := range state.Meshes() {
		p = xds.Proxy{Kind: xds.KindSidecar, Dataplane: m.Registered["web-1"]}
	}
	res, err := xds.Sidecar(state, p)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := translate(resourcesOf[*listener.Listener](res, resource.ListenerType), resourcesOf[*cluster.Cluster](res, resource.ClusterType),
		resourcesOf[*endpoint.ClusterLoadAssignment](res, resource.EndpointType), nil, nil,
		resourcesOf[*route.RouteConfiguration](res, resource.RouteType)...)
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Clusters["billing"]
	if c == nil {
		t.Fatalf("no billing cluster: %v", cfg.Clusters)
	}
	var levels []priorityLevel
	left := healthy
	for _, ep := range c.Endpoints {
		for len(levels) <= int(ep.Priority) {
			levels = append(levels, priorityLevel{prio: uint32(len(levels))})
		}
		lv := &levels[ep.Priority]
		lv.hosts++
		if ep.Zone == "zone-1" {
			if left > 0 {
				lv.healthy++
				left--
			}
		} else {
			lv.healthy++
		}
	}
	if levels[0].hosts != 10 {
		t.Fatalf("priority 0 has %d hosts, want zone-1's 10", levels[0].hosts)
	}
	sum := priorityLoads(levels, c)
	if len(levels) != 2 {
		t.Fatalf("want zone-1 and zone-2's priorities, got %+v", levels)
	}
	return levels[0].load * 100 / sum
}

// TestFailoverThreshold: through the generator and the built-in proxy, a
// Failover's threshold is the share of healthy instances at and above
// which a zone keeps all its load, and below which it spills; without one
// the zone spills below Envoy's default (overprovisioning 1.4: at 6 of 10
// healthy it keeps 84 %), as without a Failover; a drained zone takes what
// the zones before it spill, and nothing more.
func TestFailoverThreshold(t *testing.T) {
	for _, th := range []int{30, 50, 60, 70, 90} {
		spec := fmt.Sprintf("  localityAware: true\n  order: [zone-2]\n  threshold: %d\n", th)
		if got := localLoad(t, spec, th/10); got != 100 {
			t.Errorf("threshold %d, %d/10 healthy: zone-1 keeps %d%%, want 100%%", th, th/10, got)
		}
		if got := localLoad(t, spec, th/10-1); got >= 100 {
			t.Errorf("threshold %d, %d/10 healthy: zone-1 keeps %d%%, want it to spill", th, th/10-1, got)
		}
	}
	for name, spec := range map[string]string{"an ordering Failover without threshold": "  localityAware: true\n  order: [zone-2]\n",
		"a drain": "  drained: [zone-2]\n"} {
		if got := localLoad(t, spec, 6); got != 84 {
			t.Errorf("%s, 6/10 healthy: zone-1 keeps %d%%, want Envoy's default 84%%", name, got)
		}
		if got := localLoad(t, spec, 8); got != 100 {
			t.Errorf("%s, 8/10 healthy: zone-1 keeps %d%%, want 100%%", name, got)
		}
	}
}
