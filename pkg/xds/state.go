// Package xds turns a snapshot of a zone's state into each proxy's Envoy
// resources. Generators are pure functions of a MeshState and a Proxy: no
// I/O, no clock, no store. The zone wires them to its store and to the xDS
// server in this package.
package xds

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/ursamesh/ursa/pkg/api"
)

// MeshState is everything a proxy's configuration depends on, for one mesh
// in one zone. It is immutable once built, and must not be copied: build a
// new one when the state changes (it memoises what it generates).
type MeshState struct {
	Zone string
	Mesh *api.Mesh
	// Dataplanes are the mesh's dataplanes registered in this zone.
	Dataplanes  []*api.Dataplane
	Routes      []*api.TrafficRoute
	Permissions []*api.TrafficPermission
	Failovers   []*api.Failover
	// Ingresses are other zones' ingresses.
	Ingresses []*api.ZoneIngress
	// VIPs maps a service to its virtual IP in this zone.
	VIPs map[string]netip.Addr

	// shared memoises what every proxy of the mesh gets alike (endpoint
	// lists, clusters, load assignments, outbound listeners), so that a
	// mesh's proxies share one copy instead of each building its own. The
	// values are never modified once built.
	mu     sync.Mutex
	shared map[string]any
}

// memo returns the value built for key, building it once per MeshState.
// It builds without holding the lock (builders call memo themselves); if
// two callers race, the first value stored wins.
func memo[T any](s *MeshState, key string, build func() T) T {
	s.mu.Lock()
	v, ok := s.shared[key]
	s.mu.Unlock()
	if ok {
		return v.(T)
	}
	built := build()
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := s.shared[key]; ok {
		return v.(T)
	}
	if s.shared == nil {
		s.shared = map[string]any{}
	}
	s.shared[key] = built
	return built
}

// Proxy is the proxy a configuration is for.
type Proxy struct {
	Dataplane *api.Dataplane
	// Proxyless is a gRPC application speaking xDS itself: it gets the
	// api_listener shape grpc-go's xDS resolver consumes.
	Proxyless bool
}

// NodeID is a proxy's xDS node id: "<mesh>.<dataplane name>".
func NodeID(mesh, name string) string { return mesh + "." + name }

// ParseNodeID splits a node id at its first dot.
func ParseNodeID(id string) (mesh, name string, err error) {
	mesh, name, ok := strings.Cut(id, ".")
	if !ok || mesh == "" || name == "" {
		return "", "", fmt.Errorf("node id %q: want <mesh>.<dataplane name>", id)
	}
	return mesh, name, nil
}

// Services lists the services of the mesh: those of local dataplanes and
// those other zones offer, sorted.
func (s *MeshState) Services() []string { return slices.Clone(s.services()) }

// services is Services, built once per MeshState: callers must not modify
// it.
func (s *MeshState) services() []string {
	return memo(s, "services", s.buildServices)
}

func (s *MeshState) buildServices() []string {
	set := map[string]bool{}
	for _, dp := range s.Dataplanes {
		for _, in := range dp.Networking.Inbound {
			set[in.Tags[api.TagService]] = true
		}
	}
	for _, ing := range s.Ingresses {
		for _, as := range ing.AvailableServices {
			if as.Mesh == s.Mesh.Name && as.Instances > 0 {
				set[as.Tags[api.TagService]] = true
			}
		}
	}
	delete(set, "")
	return slices.Sorted(maps.Keys(set))
}

// routeFor returns the TrafficRoute for a service: of the routes whose
// destination selects it, the one with the most tags, then the first by name.
func (s *MeshState) routeFor(service string) *api.TrafficRoute {
	var best *api.TrafficRoute
	for _, r := range s.Routes {
		if !matches(r.Spec.Destination, map[string]string{api.TagService: service}) {
			continue
		}
		if best == nil || len(r.Spec.Destination) > len(best.Spec.Destination) ||
			(len(r.Spec.Destination) == len(best.Spec.Destination) && r.Name < best.Name) {
			best = r
		}
	}
	return best
}

// matches reports whether tags satisfy every entry of selector ("*" matches
// any value of a present tag).
func matches(selector, tags map[string]string) bool {
	for k, v := range selector {
		got, ok := tags[k]
		if !ok || (v != "*" && got != v) {
			return false
		}
	}
	return true
}

// Subset is a weighted part of a service's traffic.
type Subset struct {
	Tags   map[string]string // always includes ursa.io/service
	Weight uint32
}

// ClusterName names the cluster of a subset: the service, then the sorted
// extra tags.
func (sub Subset) ClusterName() string {
	name := sub.Tags[api.TagService]
	var extra []string
	for _, k := range slices.Sorted(maps.Keys(sub.Tags)) {
		if k != api.TagService {
			extra = append(extra, k+"="+sub.Tags[k])
		}
	}
	if len(extra) > 0 {
		name += "{" + strings.Join(extra, ",") + "}"
	}
	return name
}

// subsets returns how a service's traffic splits: per its TrafficRoute, or
// all to the whole service. Zero weights are dropped. It is built once per
// MeshState and service: callers must not modify it (it is clipped, so
// appending copies).
func (s *MeshState) subsets(service string) []Subset {
	return memo(s, "subsets|"+service, func() []Subset { return slices.Clip(s.buildSubsets(service)) })
}

func (s *MeshState) buildSubsets(service string) []Subset {
	r := s.routeFor(service)
	if r == nil {
		return []Subset{{Tags: map[string]string{api.TagService: service}, Weight: 100}}
	}
	var out []Subset
	for _, sp := range r.Spec.Split {
		if sp.Weight <= 0 {
			continue
		}
		tags := maps.Clone(sp.Tags)
		if tags == nil {
			tags = map[string]string{}
		}
		tags[api.TagService] = service
		out = append(out, Subset{Tags: tags, Weight: uint32(sp.Weight)})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].ClusterName() < out[j].ClusterName() })
	return out
}

// Endpoint is one place a subset's traffic can go.
type Endpoint struct {
	Address string
	Port    uint32
	Weight  uint32
	Zone    string
}

// endpoints returns a subset's endpoints: the local inbounds whose tags
// match it (in this zone), and, unless localOnly, each other zone's ingress
// offering it, weighted by instance count.
func (s *MeshState) endpoints(sub Subset, localOnly bool) []Endpoint {
	key := fmt.Sprintf("endpoints|%s|%v", sub.ClusterName(), localOnly)
	return memo(s, key, func() []Endpoint { return s.buildEndpoints(sub, localOnly) })
}

// matchesHere is matches for a local inbound, whose zone is this zone when
// its tags do not say.
func (s *MeshState) matchesHere(selector, tags map[string]string) bool {
	for k, v := range selector {
		got, ok := tags[k]
		if !ok && k == api.TagZone {
			got, ok = s.Zone, true
		}
		if !ok || (v != "*" && got != v) {
			return false
		}
	}
	return true
}

func (s *MeshState) buildEndpoints(sub Subset, localOnly bool) []Endpoint {
	var out []Endpoint
	for _, dp := range s.Dataplanes {
		for _, in := range dp.Networking.Inbound {
			if s.matchesHere(sub.Tags, in.Tags) {
				out = append(out, Endpoint{Address: dp.Networking.Address, Port: uint32(in.Port), Weight: 1, Zone: s.Zone})
			}
		}
	}
	if !localOnly {
		for _, ing := range s.Ingresses {
			addr, port := ing.Networking.AdvertisedAddress, ing.Networking.AdvertisedPort
			if addr == "" {
				addr, port = ing.Networking.Address, ing.Networking.Port
			}
			var instances int
			for _, as := range ing.AvailableServices {
				if as.Mesh == s.Mesh.Name && matches(sub.Tags, as.Tags) {
					instances += as.Instances
				}
			}
			if instances > 0 {
				out = append(out, Endpoint{Address: addr, Port: uint32(port), Weight: uint32(instances), Zone: ing.Zone})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Address != out[j].Address {
			return out[i].Address < out[j].Address
		}
		return out[i].Port < out[j].Port
	})
	return out
}
