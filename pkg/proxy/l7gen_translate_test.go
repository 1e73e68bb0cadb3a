package proxy

import (
	"path/filepath"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/xds"
	"github.com/ursamesh/ursa/pkg/xds/xdstest"
)

// TestGeneratedL7Translates: what the sidecar generator makes of each of
// its L7 golden cases (pkg/xds/testdata: routes, every policy, grpc,
// transparent), the built-in proxy accepts as a whole, or names what it
// refuses.
func TestGeneratedL7Translates(t *testing.T) {
	inputs, _ := filepath.Glob("../xds/testdata/sidecar/l7-*.input.yaml")
	inputs = append(inputs, "../xds/testdata/transparent/l7-http.input.yaml")
	if len(inputs) < 2 {
		t.Fatal("no L7 cases")
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".input.yaml")
		t.Run(name, func(t *testing.T) {
			rs := xdstest.Inputs(t, in)
			state := xds.NewState(catalog.FromResources("zone-1", rs), nil)
			for _, dpName := range []string{"web-1"} {
				dp := state.Mesh("default").Registered[dpName]
				p := xds.Proxy{Kind: xds.KindSidecar, Dataplane: dp}
				if strings.Contains(in, "transparent") {
					p.TransparentProxy, p.TransparentInbound = "15001", "15006"
				}
				res, err := xds.Sidecar(state, p)
				if err != nil {
					t.Fatal(err)
				}
				var listeners []*listener.Listener
				for _, r := range res[resource.ListenerType] {
					listeners = append(listeners, r.(*listener.Listener))
				}
				var clusters []*cluster.Cluster
				for _, r := range res[resource.ClusterType] {
					clusters = append(clusters, r.(*cluster.Cluster))
				}
				var cla []*endpoint.ClusterLoadAssignment
				for _, r := range res[resource.EndpointType] {
					cla = append(cla, r.(*endpoint.ClusterLoadAssignment))
				}
				var routes []*route.RouteConfiguration
				for _, r := range res[resource.RouteType] {
					routes = append(routes, r.(*route.RouteConfiguration))
				}
				cfg, err := translate(listeners, clusters, cla, nil, nil, routes...)
				if err != nil {
					t.Errorf("the built-in proxy refuses %s's configuration: %v", dpName, err)
					continue
				}
				// A Retry's retries go to instances not yet tried
				// (previous_hosts), as under Envoy with this configuration.
				for _, rt := range cfg.RouteTables {
					for _, vh := range rt.VHosts {
						for _, r := range vh.Routes {
							if r.Retry != nil && r.Retry.retries > 0 && !r.Retry.omitTried {
								t.Errorf("route %s of %s retries to the instances it tried", r.Name, rt.Name)
							}
						}
					}
				}
			}
		})
	}
}
