// Package catalog builds the zone's service catalogue: per mesh, its
// services, their instances in this zone (Dataplanes whose proxies are
// online) and in other zones (through their ingresses), tags, ports and
// virtual IPs, with the policies that shape them. It is built once per change
// of the zone's store, from the store's mirror, and everything that decides
// endpoints, offers and DNS answers reads it: the sidecar, proxyless and
// ingress generators, the ingresses' offers and the resolver.
//
// Each mesh's catalogue carries a hash of its inputs, so that a proxy whose
// inputs did not change is not regenerated.
package catalog

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/store"
)

// Types are the store types a catalogue is built from; the mirror it reads
// must follow all of them.
func Types() []string {
	return []string{"Mesh", "MeshCA", "ZoneCA", "Dataplane", "DataplaneInsight", "ZoneIngress", "ZoneIngressInsight",
		"VirtualIPs", "TrafficRoute", "TrafficPermission", "Failover", "Timeout", "Retry", "CircuitBreaker",
		"HealthCheck", "FaultInjection", "TrafficLog", "TrafficTrace"}
}

// Catalog is the zone's catalogue: every mesh's, and this zone's own
// ingresses. It is immutable once built.
type Catalog struct {
	Zone     string
	Revision int64
	// Ingresses are this zone's own ZoneIngresses, by name, with whether
	// each is online.
	Ingresses []LocalIngress
	// Hash covers every mesh's hash and this zone's ingresses: what an
	// ingress's configuration depends on.
	Hash string
	// VirtualIPs are the zone's VIP assignments, by mesh, released ones
	// included: what the VIP allocator reconciles.
	VirtualIPs map[string]*api.VirtualIPs
	meshes     map[string]*MeshCatalog
	names      []string
}

// LocalIngress is one of this zone's ingresses.
type LocalIngress struct {
	*api.ZoneIngress
	// Online is false once its proxy was seen and is no longer connected;
	// an ingress whose proxy never connected (registered through the API)
	// counts as online.
	Online bool
}

// MeshCatalog is one mesh's catalogue in one zone. It is immutable once built;
// callers must not modify what it holds.
type MeshCatalog struct {
	Zone string
	Mesh *api.Mesh
	// CA is the mesh's certificate authority, nil until it reached the zone.
	CA *api.MeshCA
	// ZoneCA is this zone's intermediate CA in the mesh, which issues its
	// proxies' certificates; nil until it reached the zone.
	ZoneCA *api.ZoneCA
	// Dataplanes are the mesh's Dataplanes registered in this zone whose
	// proxies are online, sorted by name. A Dataplane whose proxy never
	// connected (a proxyless server, or one registered through the API)
	// counts as online; one whose proxy was seen and went away does not.
	// An insight older than its Dataplane (deleted and registered again)
	// says nothing of it.
	Dataplanes []*api.Dataplane
	// Registered are all the mesh's Dataplanes of this zone, online or
	// not, by name.
	Registered  map[string]*api.Dataplane
	Routes      []*api.TrafficRoute
	Permissions []*api.TrafficPermission
	Failovers   []*api.Failover
	// Policies are the mesh's source/destination policies of each type of
	// api.L7PolicyTypes, by type, each list sorted by name.
	Policies map[string][]api.Policy
	// Ingresses are other zones' ingresses.
	Ingresses []*api.ZoneIngress
	// VIPs maps a service to its live virtual IP in this zone.
	VIPs map[string]netip.Addr
	// Hash covers what the mesh's proxies read of it, the PolicyHash and
	// every service's Hash: two MeshCatalogs with the same hash give every
	// proxy the same configuration.
	Hash string
	// PolicyHash covers what every sidecar of the mesh reads besides its
	// services: the mesh, its CA, its policies, the list of its services
	// and the zones other than this one.
	PolicyHash string
	// InboundHash covers what a sidecar's inbounds read of the mesh
	// besides their Dataplane and their services' protocols: the mesh,
	// its TrafficPermissions, TrafficLogs and TrafficTraces. A change of
	// routes or of the other policies leaves it alone.
	InboundHash string

	services map[string]*Service
	names    []string
	// sidecarHashes memoises SidecarHash.
	sidecarHashes sync.Map
}

// Service is one service of a mesh.
type Service struct {
	Name string
	VIP  netip.Addr // invalid until the allocator gave it one
	// Port is the application port of the service's first registered
	// instance here (by Dataplane name); for a service registered only in
	// other zones, the smallest port their offers carry (each zone offers
	// its own first instance's port, and zones may disagree); 0 when no
	// offer carries one (zones that predate offers' ports). Outbound
	// listeners offer the service at its VIP on this port (and on 80).
	Port uint32
	// Local are the ready inbounds (api.Inbound.Ready) of online
	// Dataplanes of this zone that carry the service, sorted by address
	// and port.
	Local []Instance
	// Remote are other zones' ingresses' offers of the service.
	Remote []Offer
	// Protocol is how the service speaks (api.TagProtocol): the protocol
	// every inbound registered here and every other zone's offer of it
	// agree on; tcp when they disagree, when one says nothing (tcp) or
	// names no known protocol.
	Protocol string
	// Hash covers everything above (and the Dataplanes and ingresses it
	// comes from): a proxy that reaches the service depends on it.
	Hash string
}

// Instance is one ready inbound of an online local Dataplane.
type Instance struct {
	Dataplane string
	Address   string
	Port      uint32
	// Tags are the inbound's, with ursa.io/zone set to this zone.
	Tags map[string]string
}

// Offer is one set of instances another zone's ingress makes available.
type Offer struct {
	Zone      string
	Ingress   string
	Address   string // what this zone dials: advertised, else local
	Port      uint32
	Instances int
	Tags      map[string]string
}

// Build builds the catalogue of zone from view, which must hold every type
// of Types.
func Build(zone string, view *store.View) (*Catalog, error) {
	in, err := readInputs(view)
	if err != nil {
		return nil, fmt.Errorf("build catalogue: %w", err)
	}
	return build(zone, view.Revision, in), nil
}

// inputs are the view's resources, grouped.
type inputs struct {
	meshes      []*api.Mesh
	cas         []*api.MeshCA
	zoneCAs     []*api.ZoneCA
	dataplanes  []*api.Dataplane
	dpInsights  map[api.Key]*api.DataplaneInsight
	ingresses   []*api.ZoneIngress
	ingInsights map[string]*api.ZoneIngressInsight
	vips        []*api.VirtualIPs
	routes      []*api.TrafficRoute
	permissions []*api.TrafficPermission
	failovers   []*api.Failover
	policies    []api.Policy
}

func readInputs(view *store.View) (inputs, error) {
	var in inputs
	var errs [11]error
	in.meshes, errs[0] = store.All[*api.Mesh](view)
	in.cas, errs[1] = store.All[*api.MeshCA](view)
	in.dataplanes, errs[2] = store.All[*api.Dataplane](view)
	dpi, e3 := store.All[*api.DataplaneInsight](view)
	errs[3] = e3
	in.ingresses, errs[4] = store.All[*api.ZoneIngress](view)
	ii, e5 := store.All[*api.ZoneIngressInsight](view)
	errs[5] = e5
	in.vips, errs[6] = store.All[*api.VirtualIPs](view)
	in.routes, errs[7] = store.All[*api.TrafficRoute](view)
	in.permissions, errs[8] = store.All[*api.TrafficPermission](view)
	in.failovers, errs[9] = store.All[*api.Failover](view)
	in.zoneCAs, errs[10] = store.All[*api.ZoneCA](view)
	for _, typ := range api.L7PolicyTypes() {
		items, err := view.Items(typ)
		if err != nil {
			return inputs{}, err
		}
		for _, key := range slices.SortedFunc(maps.Keys(items), func(a, b api.Key) int {
			return cmp.Or(strings.Compare(a.Mesh, b.Mesh), strings.Compare(a.Name, b.Name))
		}) {
			r := items[key]
			p, ok := r.(api.Policy)
			if !ok {
				return inputs{}, fmt.Errorf("catalog: %s is not a policy", api.KeyOf(r))
			}
			in.policies = append(in.policies, p)
		}
	}
	for _, err := range errs {
		if err != nil {
			return inputs{}, err
		}
	}
	in.dpInsights = make(map[api.Key]*api.DataplaneInsight, len(dpi))
	for _, i := range dpi {
		in.dpInsights[api.Key{Type: "Dataplane", Mesh: i.Mesh, Name: i.Name}] = i
	}
	in.ingInsights = make(map[string]*api.ZoneIngressInsight, len(ii))
	for _, i := range ii {
		in.ingInsights[i.Name] = i
	}
	return in, nil
}

// stale reports whether an insight is older than the resource it is about:
// its last connection or disconnection came before the resource was
// created (a Dataplane deleted and registered again). Such an insight says
// nothing of the new resource, whose proxy is then as good as never seen.
func stale(p api.ProxyStatus, of api.Meta) bool {
	last := p.ConnectedSince
	if !p.Connected && p.DisconnectedAt.After(last) {
		last = p.DisconnectedAt
	}
	return last.Before(of.CreationTime)
}

// FromResources builds a catalogue from a list of resources, as a test or a
// tool holds them; Dataplanes without an insight count as online.
func FromResources(zone string, rs []api.Resource) *Catalog {
	cat, err := Build(zone, store.NewView(rs, Types()...))
	if err != nil {
		panic(err) // NewView holds every type Build reads
	}
	return cat
}

func build(zone string, rev int64, in inputs) *Catalog {
	cat := &Catalog{Zone: zone, Revision: rev, meshes: map[string]*MeshCatalog{}, VirtualIPs: map[string]*api.VirtualIPs{}}
	for _, m := range in.meshes {
		cat.meshes[m.Name] = &MeshCatalog{Zone: zone, Mesh: m, Registered: map[string]*api.Dataplane{}, VIPs: map[string]netip.Addr{},
			Policies: map[string][]api.Policy{}}
		cat.names = append(cat.names, m.Name)
	}
	mesh := func(name string) *MeshCatalog { return cat.meshes[name] }
	for _, ca := range in.cas {
		if m := mesh(ca.Mesh); m != nil && ca.Name == mtls.CAName {
			m.CA = ca
		}
	}
	for _, ca := range in.zoneCAs {
		if m := mesh(ca.Mesh); m != nil && ca.Name == zone {
			m.ZoneCA = ca
		}
	}
	for _, dp := range in.dataplanes {
		m := mesh(dp.Mesh)
		if m == nil {
			continue
		}
		m.Registered[dp.Name] = dp
		if i, seen := in.dpInsights[api.KeyOf(dp)]; !seen || i.Online() || stale(i.ProxyStatus, dp.Meta) {
			m.Dataplanes = append(m.Dataplanes, dp)
		}
	}
	for _, r := range in.routes {
		if m := mesh(r.Mesh); m != nil {
			m.Routes = append(m.Routes, r)
		}
	}
	for _, p := range in.permissions {
		if m := mesh(p.Mesh); m != nil {
			m.Permissions = append(m.Permissions, p)
		}
	}
	for _, f := range in.failovers {
		if m := mesh(f.Mesh); m != nil {
			m.Failovers = append(m.Failovers, f)
		}
	}
	for _, p := range in.policies {
		if m := mesh(p.GetMeta().Mesh); m != nil {
			typ := p.GetMeta().Type
			m.Policies[typ] = append(m.Policies[typ], p)
		}
	}
	for _, v := range in.vips {
		cat.VirtualIPs[v.Mesh] = v
		m := mesh(v.Mesh)
		if m == nil {
			continue
		}
		for svc, e := range v.Entries {
			if ip, err := netip.ParseAddr(e.IP); err == nil && e.ReleasedAt.IsZero() {
				m.VIPs[svc] = ip
			}
		}
	}
	for _, ing := range in.ingresses {
		if ing.Zone == zone {
			i, seen := in.ingInsights[ing.Name]
			cat.Ingresses = append(cat.Ingresses, LocalIngress{ZoneIngress: ing, Online: !seen || i.Online() || stale(i.ProxyStatus, ing.Meta)})
			continue
		}
		for _, m := range cat.meshes {
			m.Ingresses = append(m.Ingresses, ing)
		}
	}
	h := sha256.New()
	for _, name := range cat.names {
		m := cat.meshes[name]
		m.index()
		fmt.Fprintf(h, "%s=%s;", name, m.Hash)
	}
	for _, ing := range cat.Ingresses {
		writeMeta(h, ing.ZoneIngress)
		fmt.Fprintf(h, "%t;", ing.Online)
	}
	for _, v := range in.vips {
		writeMeta(h, v)
	}
	cat.Hash = hex.EncodeToString(h.Sum(nil)[:16])
	return cat
}

// index builds the services and the hash of the mesh.
func (m *MeshCatalog) index() {
	m.services = map[string]*Service{}
	svc := func(name string) *Service {
		s, ok := m.services[name]
		if !ok {
			s = &Service{Name: name}
			m.services[name] = s
		}
		return s
	}
	hashes := map[string]hash.Hash{}
	hashOf := func(name string) hash.Hash {
		h, ok := hashes[name]
		if !ok {
			h = sha256.New()
			hashes[name] = h
		}
		return h
	}
	online := make(map[string]bool, len(m.Dataplanes))
	for _, dp := range m.Dataplanes {
		online[dp.Name] = true
	}
	registered := map[string]bool{}  // services with a Dataplane here
	protocols := map[string]string{} // by service: agreed so far, "" once they disagree
	agree := func(svcName string, tags map[string]string) {
		p := tags[api.TagProtocol]
		if !api.IsHTTP(p) {
			p = api.ProtocolTCP
		}
		if cur, seen := protocols[svcName]; !seen {
			protocols[svcName] = p
		} else if cur != p {
			protocols[svcName] = ""
		}
	}
	for _, name := range slices.Sorted(maps.Keys(m.Registered)) {
		dp := m.Registered[name]
		for _, in := range dp.Networking.Inbound {
			if svcName := in.Tags[api.TagService]; svcName != "" {
				registered[svcName] = true
				agree(svcName, in.Tags)
				if s := svc(svcName); s.Port == 0 {
					s.Port = uint32(in.AppPort())
				}
				h := hashOf(svcName)
				writeMeta(h, dp)
				h.Write([]byte{boolByte(online[name])})
			}
		}
	}
	for _, dp := range m.Dataplanes {
		for _, in := range dp.Networking.Inbound {
			name := in.Tags[api.TagService]
			if name == "" || !in.Ready() {
				continue
			}
			tags := maps.Clone(in.Tags)
			tags[api.TagZone] = m.Zone
			s := svc(name)
			s.Local = append(s.Local, Instance{Dataplane: dp.Name, Address: dp.Networking.Address, Port: uint32(in.Port), Tags: tags})
		}
	}
	for _, ing := range m.Ingresses {
		addr, port := ing.Networking.AdvertisedAddress, ing.Networking.AdvertisedPort
		if addr == "" {
			addr, port = ing.Networking.Address, ing.Networking.Port
		}
		for _, as := range ing.AvailableServices {
			name := as.Tags[api.TagService]
			if as.Mesh != m.Mesh.Name || as.Instances <= 0 || name == "" {
				continue
			}
			s := svc(name)
			agree(name, as.Tags)
			writeMeta(hashOf(name), ing)
			s.Remote = append(s.Remote, Offer{Zone: ing.Zone, Ingress: ing.Name, Address: addr, Port: uint32(port), Instances: as.Instances, Tags: as.Tags})
			if p := uint32(as.Port); !registered[name] && p != 0 && (s.Port == 0 || p < s.Port) {
				s.Port = p
			}
		}
	}
	for name, s := range m.services {
		s.VIP = m.VIPs[name]
		if s.Protocol = protocols[name]; s.Protocol == "" {
			s.Protocol = api.ProtocolTCP
		}
		h := hashOf(name)
		fmt.Fprintf(h, "vip=%s;port=%d;", s.VIP, s.Port)
		s.Hash = hex.EncodeToString(h.Sum(nil)[:16])
		sort.SliceStable(s.Local, func(i, j int) bool {
			if s.Local[i].Address != s.Local[j].Address {
				return s.Local[i].Address < s.Local[j].Address
			}
			return s.Local[i].Port < s.Local[j].Port
		})
	}
	m.names = slices.Sorted(maps.Keys(m.services))
	m.PolicyHash = m.policyHash()
	m.InboundHash = m.inboundHash()
	// Everything the mesh's proxies read is in the policies or in a
	// service.
	h := sha256.New()
	h.Write([]byte(m.PolicyHash))
	for _, name := range m.names {
		fmt.Fprintf(h, "%s=%s;", name, m.services[name].Hash)
	}
	m.Hash = hex.EncodeToString(h.Sum(nil)[:16])
}

// inboundHash is InboundHash.
func (m *MeshCatalog) inboundHash() string {
	h := sha256.New()
	writeMeta(h, m.Mesh)
	for _, p := range m.Permissions {
		writeMeta(h, p)
	}
	for _, typ := range []string{"TrafficLog", "TrafficTrace"} {
		h.Write([]byte(typ + ":"))
		for _, p := range m.Policies[typ] {
			writeMeta(h, p)
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// policyHash is PolicyHash.
func (m *MeshCatalog) policyHash() string {
	h := sha256.New()
	writeMeta(h, m.Mesh)
	if m.CA != nil {
		writeMeta(h, m.CA)
	}
	if m.ZoneCA != nil {
		writeMeta(h, m.ZoneCA)
	}
	for _, r := range m.Routes {
		writeMeta(h, r)
	}
	for _, p := range m.Permissions {
		writeMeta(h, p)
	}
	for _, f := range m.Failovers {
		writeMeta(h, f)
	}
	for _, typ := range api.L7PolicyTypes() {
		for _, p := range m.Policies[typ] {
			writeMeta(h, p)
		}
	}
	fmt.Fprintf(h, "services=%q;", m.names)
	zones := map[string]bool{}
	for _, ing := range m.Ingresses {
		zones[ing.Zone] = true
	}
	fmt.Fprintf(h, "zones=%q;", slices.Sorted(maps.Keys(zones)))
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// SidecarHash is the hash of what a sidecar's configuration depends on in
// its mesh: the PolicyHash, and the hashes of the services it reaches,
// which are every service but its own (the services its inbounds carry),
// plus those its explicit outbounds name, and its own services' protocols
// (its inbounds speak them). A sidecar of billing is not regenerated when
// only billing's instances change. It is memoised per
// own and explicit set, and safe for concurrent use.
func (m *MeshCatalog) SidecarHash(own, explicit []string) string {
	key := fmt.Sprintf("%q|%q", own, explicit)
	if v, ok := m.sidecarHashes.Load(key); ok {
		return v.(string)
	}
	h := sha256.New()
	h.Write([]byte(m.PolicyHash))
	write := func(name string) {
		if s := m.services[name]; s != nil {
			fmt.Fprintf(h, "%s=%s;", name, s.Hash)
		} else {
			fmt.Fprintf(h, "%s=-;", name)
		}
	}
	for _, name := range m.names {
		if !slices.Contains(own, name) {
			write(name)
		}
	}
	h.Write([]byte{'|'})
	for _, name := range explicit {
		write(name)
	}
	for _, name := range own {
		if s := m.services[name]; s != nil {
			fmt.Fprintf(h, "|%s:%s", name, s.Protocol)
		}
	}
	sum := hex.EncodeToString(h.Sum(nil)[:16])
	m.sidecarHashes.Store(key, sum)
	return sum
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

// writeMeta writes what identifies one version of a resource: its key,
// version and creation time (the store gives every write of a resource a
// new version, and a resource deleted and created again starts again at
// version 1, but at another creation time). Resources that never were in a
// store (version 0: tests and tools) are written whole.
func writeMeta(h hash.Hash, r api.Resource) {
	m := r.GetMeta()
	var v [16]byte
	binary.BigEndian.PutUint64(v[:8], uint64(m.Version))
	binary.BigEndian.PutUint64(v[8:], uint64(m.CreationTime.UnixNano()))
	fmt.Fprintf(h, "%s/%s/%s@", m.Type, m.Mesh, m.Name)
	h.Write(v[:])
	if m.Version == 0 {
		doc, _ := json.Marshal(r)
		h.Write(doc)
	}
	h.Write([]byte{';'})
}

// Mesh returns the catalogue of a mesh, nil when the mesh does not exist
// here.
func (c *Catalog) Mesh(name string) *MeshCatalog { return c.meshes[name] }

// Meshes returns every mesh's catalogue, by name.
func (c *Catalog) Meshes() []*MeshCatalog {
	out := make([]*MeshCatalog, len(c.names))
	for i, n := range c.names {
		out[i] = c.meshes[n]
	}
	return out
}

// Services lists the mesh's services: those registered here (online or
// not) and those other zones offer, sorted. The slice is shared: callers
// must not modify it.
func (m *MeshCatalog) Services() []string { return m.names }

// Service returns a service of the mesh, nil when there is none.
func (m *MeshCatalog) Service(name string) *Service { return m.services[name] }

// LocalServices lists the services with online instances in this zone.
func (m *MeshCatalog) LocalServices() []string {
	var out []string
	for _, n := range m.names {
		if len(m.services[n].Local) > 0 {
			out = append(out, n)
		}
	}
	return out
}

// Matches reports whether tags satisfy every entry of selector ("*" matches
// any value of a present tag).
func Matches(selector, tags map[string]string) bool {
	for k, v := range selector {
		got, ok := tags[k]
		if !ok || (v != "*" && got != v) {
			return false
		}
	}
	return true
}

// VIPs returns every live VIP by mesh and service.
func (c *Catalog) VIPs() map[MeshService]netip.Addr {
	out := map[MeshService]netip.Addr{}
	for _, m := range c.Meshes() {
		for svc, ip := range m.VIPs {
			out[MeshService{Mesh: m.Mesh.Name, Service: svc}] = ip
		}
	}
	return out
}

// MeshService names a service within a mesh.
type MeshService struct {
	Mesh    string
	Service string
}

// Wanted lists, by mesh, the services that need a VIP in this zone: every
// service of every mesh's catalogue.
func (c *Catalog) Wanted() map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for _, m := range c.Meshes() {
		for _, svc := range m.Services() {
			if out[m.Mesh.Name] == nil {
				out[m.Mesh.Name] = map[string]bool{}
			}
			out[m.Mesh.Name][svc] = true
		}
	}
	return out
}

// String names the catalogue in logs.
func (c *Catalog) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "zone %s rev %d:", c.Zone, c.Revision)
	for _, m := range c.Meshes() {
		fmt.Fprintf(&b, " %s(%d services, %d dataplanes up)", m.Mesh.Name, len(m.names), len(m.Dataplanes))
	}
	return b.String()
}
