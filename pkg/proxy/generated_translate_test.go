package proxy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/xds"
	"github.com/ursamesh/ursa/pkg/xds/xdstest"
)

// TestGeneratedTranslates: what the generators make of each of their
// golden cases (pkg/xds/testdata: sidecars of every dataplane, routes and
// every policy, grpc, transparent; ingress/testdata: zone ingresses), with
// the CP's secrets, the built-in proxy accepts as a whole, or names what
// it refuses.
func TestGeneratedTranslates(t *testing.T) {
	inputs, _ := filepath.Glob("../xds/testdata/sidecar/*.input.yaml")
	transparent, _ := filepath.Glob("../xds/testdata/transparent/*.input.yaml")
	// The ingress generator is a tier above this package: its golden
	// files hold what it makes.
	ingresses, _ := filepath.Glob("../../ingress/testdata/*.golden.yaml")
	inputs = append(append(inputs, transparent...), ingresses...)
	if len(inputs) < 10 || len(ingresses) == 0 {
		t.Fatalf("too few cases: %v", inputs)
	}
	secrets := func(t *testing.T) []*tlsv3.Secret {
		ca, err := mtls.NewCA("default", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		id, err := mtls.Issue(ca, "web", time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return resourcesOf[*tlsv3.Secret](xds.Secrets(id, ca.CertPEM), resource.SecretType)
	}(t)
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".input.yaml")
		t.Run(filepath.Base(filepath.Dir(in))+"/"+name, func(t *testing.T) {
			var proxies []xds.Proxy
			var state *xds.State
			if strings.HasSuffix(in, ".golden.yaml") {
				proxies = append(proxies, xds.Proxy{Kind: xds.KindIngress})
			} else {
				state = xds.NewState(catalog.FromResources("zone-1", xdstest.Inputs(t, in)), nil)
			}
			var meshes []*xds.MeshState
			if state != nil {
				meshes = state.Meshes()
			}
			for _, m := range meshes {
				for _, dp := range m.Registered {
					// With a DNS listener, as a sidecar that asks for one.
					p := xds.Proxy{Kind: xds.KindSidecar, Dataplane: dp, DNSAddress: "127.0.0.1:15053"}
					if strings.Contains(in, "transparent") {
						p.TransparentProxy, p.TransparentInbound = "15001", "15006"
						// And with every inbound port redirected: the
						// inbound passthrough.
						all := p
						all.InboundPassthrough = true
						proxies = append(proxies, all)
					}
					proxies = append(proxies, p)
				}
			}
			if len(proxies) == 0 {
				t.Fatal("no proxy in the case")
			}
			for _, p := range proxies {
				id := "ingress"
				if p.Dataplane != nil {
					id = p.Dataplane.Name
				}
				var res xds.Resources
				var err error
				if p.Kind == xds.KindIngress {
					golden, rerr := os.ReadFile(in)
					if rerr != nil {
						t.Fatal(rerr)
					}
					res = xdstest.Parse(t, golden)
				} else {
					res, err = xds.Sidecar(state, p)
				}
				if err != nil {
					t.Fatal(err)
				}
				cfg, err := translate(resourcesOf[*listener.Listener](res, resource.ListenerType), resourcesOf[*cluster.Cluster](res, resource.ClusterType),
					resourcesOf[*endpoint.ClusterLoadAssignment](res, resource.EndpointType), secrets, nil,
					resourcesOf[*route.RouteConfiguration](res, resource.RouteType)...)
				if err != nil {
					t.Errorf("the built-in proxy refuses the configuration of %s: %v", id, err)
					continue
				}
				// A Retry's retries go to instances not yet tried
				// (previous_hosts), as under Envoy with this configuration.
				for _, rt := range cfg.RouteTables {
					for _, vh := range rt.VHosts {
						for _, r := range vh.Routes {
							if r.Retry != nil && r.Retry.retries > 0 && !r.Retry.omitTried {
								t.Errorf("%s: route %s of %s retries to the instances it tried", id, r.Name, rt.Name)
							}
						}
					}
				}
			}
		})
	}
}
