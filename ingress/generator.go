// Package ingress is the zone ingress: the generator of its configuration,
// the services it offers other zones (availableServices), and the mode
// `ursa-dp ingress` runs (in ingress/dataplane).
//
// An ingress routes other zones' mTLS connections by the SNI the calling
// sidecar set (catalog.SNI, the one function both sides name subsets with),
// without decrypting them, to a local instance of the named subset.
package ingress

import (
	"fmt"
	"maps"
	"slices"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/xds"
)

// Generate generates a zone ingress's configuration: one listener that
// reads the SNI of each connection without terminating TLS and passes the
// bytes to a local instance of the service and subset the SNI names. Other
// zones' sidecars build their SNI from the same TrafficRoutes (KDS gives
// every zone the same policies), so the ingress offers a filter chain per
// subset any route names, and one per whole service. It is an
// xds.Generator for xds.KindIngress.
func Generate(s *xds.State, p xds.Proxy) (xds.Resources, error) {
	ing := p.Ingress
	if ing == nil {
		return nil, fmt.Errorf("ingress: no ZoneIngress")
	}
	out := xds.Resources{}
	l := &listener.Listener{
		Name:    fmt.Sprintf("ingress:%s:%d", ing.Networking.Address, ing.Networking.Port),
		Address: xds.SocketAddress(ing.Networking.Address, uint32(ing.Networking.Port)),
		ListenerFilters: []*listener.ListenerFilter{{Name: wellknown.TlsInspector,
			ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: xds.MustAny(&tlsinspector.TlsInspector{})}}},
	}
	for _, m := range s.Meshes() {
		if !m.Mesh.MTLSEnabled() {
			// Only a sidecar's mTLS inbound, which asks for a certificate of
			// the mesh, may sit behind the ingress: a mesh without mTLS has
			// plain inbounds, and a chain to one would let anyone who
			// reaches the ingress into its applications.
			continue
		}
		chains := map[string]xds.Subset{}
		for _, svc := range m.LocalServices() {
			for _, sub := range append(m.RoutedSubsets(svc), xds.Subset{Tags: map[string]string{api.TagService: svc}, Weight: 1}) {
				chains[catalog.SNI(m.Mesh.Name, sub.Tags)] = sub.AnyZone() // this zone's instances, whatever zone the caller pinned
			}
		}
		for _, sni := range slices.Sorted(maps.Keys(chains)) {
			eps := m.Endpoints(chains[sni], true)
			if len(eps) == 0 {
				continue
			}
			name := "ingress:" + sni
			l.FilterChains = append(l.FilterChains, &listener.FilterChain{
				FilterChainMatch: &listener.FilterChainMatch{ServerNames: []string{sni}},
				Filters:          []*listener.Filter{xds.TCPProxy(name, []xds.Subset{{Tags: map[string]string{api.TagService: name}, Weight: 1}})},
			})
			out.Add(resource.ClusterType, xds.EDSCluster(name))
			out.Add(resource.EndpointType, xds.LoadAssignment(name, eps, nil))
		}
	}
	if len(l.FilterChains) == 0 {
		return out, nil // nothing to offer yet
	}
	out.Add(resource.ListenerType, l)
	return out, nil
}
