package xds

import (
	"fmt"
	"maps"
	"slices"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"

	"github.com/ursamesh/ursa/pkg/api"
)

// Ingress generates a zone ingress's configuration: one listener that reads
// the SNI of each connection without terminating TLS and passes the bytes to
// a local instance of the service and subset the SNI names. Other zones'
// sidecars build their SNI from the same TrafficRoutes (KDS gives every zone
// the same policies), so the ingress offers a filter chain per subset any
// route names, and one per whole service.
func Ingress(meshes []*MeshState, ing *api.ZoneIngress) (Resources, error) {
	out := Resources{}
	l := &listener.Listener{
		Name:    fmt.Sprintf("ingress:%s:%d", ing.Networking.Address, ing.Networking.Port),
		Address: socketAddress(ing.Networking.Address, uint32(ing.Networking.Port)),
		ListenerFilters: []*listener.ListenerFilter{{Name: wellknown.TlsInspector,
			ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: mustAny(&tlsinspector.TlsInspector{})}}},
	}
	for _, s := range meshes {
		chains := map[string]Subset{}
		for _, svc := range s.localServices() {
			for _, sub := range append(s.subsets(svc), Subset{Tags: map[string]string{api.TagService: svc}, Weight: 1}) {
				chains[SNI(s.Mesh.Name, sub.Tags)] = sub.anyZone() // this zone's instances, whatever zone the caller pinned
			}
		}
		for _, sni := range slices.Sorted(maps.Keys(chains)) {
			sub := chains[sni]
			eps := s.endpoints(sub, true)
			if len(eps) == 0 {
				continue
			}
			name := "ingress:" + sni
			l.FilterChains = append(l.FilterChains, &listener.FilterChain{
				FilterChainMatch: &listener.FilterChainMatch{ServerNames: []string{sni}},
				Filters:          []*listener.Filter{tcpProxy(name, []Subset{{Tags: map[string]string{api.TagService: name}, Weight: 1}})},
			})
			out.add(resource.ClusterType, edsCluster(name))
			out.add(resource.EndpointType, loadAssignment(name, eps, nil))
		}
	}
	if len(l.FilterChains) == 0 {
		return out, nil // nothing to offer yet
	}
	out.add(resource.ListenerType, l)
	return out, nil
}

// localServices lists the services with instances in this zone.
func (s *MeshState) localServices() []string {
	set := map[string]bool{}
	for _, dp := range s.Dataplanes {
		for _, in := range dp.Networking.Inbound {
			set[in.Tags[api.TagService]] = true
		}
	}
	delete(set, "")
	return slices.Sorted(maps.Keys(set))
}

// AvailableServices is what a zone's ingress offers other zones: its local
// inbounds grouped by mesh and tags, with their instance counts.
func AvailableServices(meshes []*MeshState, zone string) []api.AvailableService {
	type key struct{ mesh, tags string }
	counts := map[key]*api.AvailableService{}
	var order []key
	for _, s := range meshes {
		for _, dp := range s.Dataplanes {
			for _, in := range dp.Networking.Inbound {
				tags := maps.Clone(in.Tags)
				tags[api.TagZone] = zone
				k := key{s.Mesh.Name, fmt.Sprint(tags)}
				if counts[k] == nil {
					counts[k] = &api.AvailableService{Mesh: s.Mesh.Name, Tags: tags}
					order = append(order, k)
				}
				counts[k].Instances++
			}
		}
	}
	slices.SortFunc(order, func(a, b key) int {
		if a.mesh != b.mesh {
			if a.mesh < b.mesh {
				return -1
			}
			return 1
		}
		if a.tags < b.tags {
			return -1
		}
		if a.tags > b.tags {
			return 1
		}
		return 0
	})
	out := make([]api.AvailableService, 0, len(order))
	for _, k := range order {
		out = append(out, *counts[k])
	}
	return out
}
