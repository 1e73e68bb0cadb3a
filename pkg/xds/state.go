// Package xds turns the zone's catalogue into each proxy's Envoy resources,
// and serves them over xDS. Generators are pure functions of a State and a
// Proxy: no I/O, no clock, no store. The zone wires them to its mirror and
// to the xDS server in this package.
package xds

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
)

// State is what every generator reads: the zone's catalogue, with what a
// mesh's proxies share memoised per mesh. It is immutable once built and
// safe for concurrent use.
type State struct {
	Catalog *catalog.Catalog
	// DNSDomain and DNSTTL are the domain and answer TTL of the sidecars'
	// DNS tables, as of the zone's DNS (dns.domain, dns.ttl); empty and
	// zero mean DNSDomain and DNSTTL. Set them right after NewState,
	// before any generator reads the State.
	DNSDomain string
	DNSTTL    time.Duration
	meshes    map[string]*MeshState
}

// NewState wraps a catalogue. A mesh whose hash equals its hash in prev
// keeps prev's MeshState, and with it everything already built for its
// proxies; prev may be nil.
func NewState(cat *catalog.Catalog, prev *State) *State {
	s := &State{Catalog: cat, meshes: map[string]*MeshState{}}
	for _, m := range cat.Meshes() {
		old := prev.Mesh(m.Mesh.Name)
		if old != nil && old.Hash == m.Hash {
			s.meshes[m.Mesh.Name] = old
			continue
		}
		next := NewMeshState(m)
		if old != nil && old.PolicyHash == m.PolicyHash && old.policy.size() < 4*len(m.Registered)+4096 {
			next.policy = old.policy
		}
		if old != nil && old.InboundHash == m.InboundHash && old.inbound.size() < 4*len(m.Registered)+4096 {
			next.inbound = old.inbound
		}
		s.meshes[m.Mesh.Name] = next
	}
	return s
}

// Mesh returns a mesh's state, nil when the mesh does not exist (or s is
// nil).
func (s *State) Mesh(name string) *MeshState {
	if s == nil {
		return nil
	}
	return s.meshes[name]
}

// Meshes returns every mesh's state, by name.
func (s *State) Meshes() []*MeshState {
	out := make([]*MeshState, 0, len(s.meshes))
	for _, m := range s.Catalog.Meshes() {
		out = append(out, s.meshes[m.Mesh.Name])
	}
	return out
}

// MeshState is one mesh's catalogue and what its proxies share (endpoint
// lists, clusters, load assignments, outbound listeners), built once and
// shared, never modified once built. It must not be copied.
type MeshState struct {
	*catalog.MeshCatalog

	// shared memoises what depends on the whole mesh (endpoints, load
	// assignments, each set of outbounds).
	shared memoTable
	// policy memoises what depends only on what PolicyHash covers, given
	// its key: clusters, outbound listeners, route configurations. The
	// next MeshState of the mesh keeps it while the PolicyHash stays the
	// same, so that a change of endpoints
	// rebuilds load assignments only and proxies keep the very same
	// listener and cluster messages (whose encodings are known).
	policy *memoTable
	// inbound memoises a stored Dataplane's inbound listeners, which
	// depend only on what InboundHash covers, given their key: a change
	// of routes or of the outbound policies does not rebuild them.
	inbound *memoTable
}

// NewMeshState returns the state of a mesh's catalogue.
func NewMeshState(m *catalog.MeshCatalog) *MeshState {
	return &MeshState{MeshCatalog: m, policy: &memoTable{}, inbound: &memoTable{}}
}

// memoTable holds values built once by key. It is safe for concurrent use;
// the zero value is ready.
type memoTable struct {
	mu sync.Mutex
	m  map[string]any
}

func (t *memoTable) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// memo returns the value built for key in the MeshState's shared table.
func memo[T any](s *MeshState, key string, build func() T) T { return memoIn(&s.shared, key, build) }

// memoPolicy returns the value built for key in the MeshState's policy
// table: build must depend on nothing but key and what PolicyHash covers.
func memoPolicy[T any](s *MeshState, key string, build func() T) T {
	return memoIn(s.policy, key, build)
}

// memoInbound returns the value built for key in the MeshState's inbound
// table: build must depend on nothing but key and what InboundHash
// covers.
func memoInbound[T any](s *MeshState, key string, build func() T) T {
	return memoIn(s.inbound, key, build)
}

// memoIn returns the value built for key, building it once per table. It
// builds without holding the lock (builders call memo themselves); if two
// callers race, the first value stored wins.
func memoIn[T any](t *memoTable, key string, build func() T) T {
	t.mu.Lock()
	v, ok := t.m[key]
	t.mu.Unlock()
	if ok {
		return v.(T)
	}
	built := build()
	t.mu.Lock()
	defer t.mu.Unlock()
	if v, ok := t.m[key]; ok {
		return v.(T)
	}
	if t.m == nil {
		t.m = map[string]any{}
	}
	t.m[key] = built
	return built
}

// Kind is the kind of a proxy, which picks its generator.
type Kind int

const (
	// KindSidecar is a proxy beside a workload: Envoy or ursa-dp run.
	KindSidecar Kind = iota
	// KindProxyless is a gRPC application speaking xDS itself: it gets the
	// api_listener shape grpc-go's xDS resolver consumes.
	KindProxyless
	// KindIngress is a zone ingress (ursa-dp ingress).
	KindIngress
)

func (k Kind) String() string {
	switch k {
	case KindSidecar:
		return "sidecar"
	case KindProxyless:
		return "proxyless"
	case KindIngress:
		return "ingress"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Proxy is the proxy a configuration is for.
type Proxy struct {
	Kind Kind
	// Dataplane is a sidecar's or a proxyless client's.
	Dataplane *api.Dataplane
	// Ingress is an ingress's own ZoneIngress.
	Ingress *api.ZoneIngress
	// DNSAddress, for a sidecar, is the IP:port it asked to answer .mesh
	// names on (node metadata api.MetadataDNSAddress); "" for none.
	DNSAddress string
	// TransparentProxy, for a sidecar, is the port its outbound TCP is
	// redirected to (node metadata api.MetadataTransparentProxy); "" for
	// none.
	TransparentProxy string
	// TransparentInbound, for a sidecar, is the port its inbound TCP is
	// redirected to (node metadata api.MetadataTransparentInbound); "" for
	// none: a listener per inbound, bound to the Dataplane's address.
	TransparentInbound string
	// InboundPassthrough, for a sidecar with TransparentInbound, says its
	// inbound TCP to every port is redirected (node metadata
	// api.MetadataInboundPassthrough): its inbound listener passes what
	// no inbound takes through to the application.
	InboundPassthrough bool
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

// routeFor returns the TrafficRoute for a service: of the routes whose
// destination selects it, the one with the most tags, then the first by name.
func (s *MeshState) routeFor(service string) *api.TrafficRoute {
	var best *api.TrafficRoute
	for _, r := range s.Routes {
		if !catalog.Matches(r.Spec.Destination, map[string]string{api.TagService: service}) {
			continue
		}
		if best == nil || len(r.Spec.Destination) > len(best.Spec.Destination) ||
			(len(r.Spec.Destination) == len(best.Spec.Destination) && r.Name < best.Name) {
			best = r
		}
	}
	return best
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

// Subsets returns how a service's traffic splits: per its TrafficRoute, or
// all to the whole service. Zero weights are dropped. It is built once per
// MeshState and service: callers must not modify it (it is clipped, so
// appending copies).
func (s *MeshState) Subsets(service string) []Subset {
	return memo(s, "subsets|"+service, func() []Subset { return slices.Clip(s.buildSubsets(service)) })
}

func (s *MeshState) buildSubsets(service string) []Subset {
	return defaultSubsets(service, s.routeFor(service))
}

// Endpoint is one place a subset's traffic can go.
type Endpoint struct {
	Address string
	Port    uint32
	Weight  uint32
	Zone    string
}

// Endpoints returns a subset's endpoints: the online local instances whose
// tags match it, and, unless localOnly, each other zone's ingress offering
// it, weighted by instance count. Built once per MeshState: callers must not
// modify it.
func (s *MeshState) Endpoints(sub Subset, localOnly bool) []Endpoint {
	key := fmt.Sprintf("endpoints|%s|%v", sub.ClusterName(), localOnly)
	return memo(s, key, func() []Endpoint { return s.buildEndpoints(sub, localOnly) })
}

// remoteEndpoints are the ingress endpoints of the offers that match tags:
// one per zone and address (replicas of a zone's ingress behind one load
// balancer advertise the same), carrying the zone's instances that match,
// spread over the zone's addresses so that a zone weighs its instances
// however many ingresses it runs. Every ingress of a zone offers all of the
// zone's instances, so an offer's instances count once per zone and tag
// group, not once per ingress.
func remoteEndpoints(offers []catalog.Offer, tags map[string]string) []Endpoint {
	type zoneOffers struct {
		instances map[string]int // by tag group: what the zone's ingresses offer
		addrs     []Endpoint     // distinct, in the offers' order
	}
	zones := map[string]*zoneOffers{}
	var order []string
	for _, o := range offers {
		if !catalog.Matches(tags, o.Tags) {
			continue
		}
		z, ok := zones[o.Zone]
		if !ok {
			z = &zoneOffers{instances: map[string]int{}}
			zones[o.Zone] = z
			order = append(order, o.Zone)
		}
		group := fmt.Sprint(o.Tags) // fmt prints a map's keys sorted
		z.instances[group] = max(z.instances[group], o.Instances)
		if !slices.ContainsFunc(z.addrs, func(e Endpoint) bool { return e.Address == o.Address && e.Port == o.Port }) {
			z.addrs = append(z.addrs, Endpoint{Address: o.Address, Port: o.Port, Zone: o.Zone})
		}
	}
	var out []Endpoint
	for _, zone := range order {
		z := zones[zone]
		n := 0
		for _, c := range z.instances {
			n += c
		}
		k := len(z.addrs)
		for i, e := range z.addrs {
			share := n / k
			if i < n%k {
				share++
			}
			e.Weight = uint32(max(share, 1))
			out = append(out, e)
		}
	}
	return out
}

func (s *MeshState) buildEndpoints(sub Subset, localOnly bool) []Endpoint {
	svc := s.Service(sub.Tags[api.TagService])
	if svc == nil {
		return nil
	}
	var out []Endpoint
	for _, in := range svc.Local {
		if catalog.Matches(sub.Tags, in.Tags) {
			out = append(out, Endpoint{Address: in.Address, Port: in.Port, Weight: 1, Zone: s.Zone})
		}
	}
	if !localOnly {
		out = append(out, remoteEndpoints(svc.Remote, sub.Tags)...)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Address != out[j].Address {
			return out[i].Address < out[j].Address
		}
		return out[i].Port < out[j].Port
	})
	return out
}
