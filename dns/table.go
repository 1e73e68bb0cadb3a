package dns

import (
	"net/netip"
	"strings"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// MeshService names a service within a mesh.
type MeshService struct {
	Mesh    string
	Service string
}

// Table is an immutable snapshot of the VIPs a zone answers for.
type Table struct {
	// byName maps a lower-case name without the domain ("billing" or
	// "billing.default") to its VIP.
	byName map[string]netip.Addr
	vips   map[MeshService]netip.Addr
}

// NewTable builds the table of the live (not released) VIPs in view.
// "<service>.<mesh>" always names a service; "<service>" alone names it too
// when it is in the mesh "default" or in only one mesh.
func NewTable(view *store.View) *Table {
	t := &Table{byName: map[string]netip.Addr{}, vips: map[MeshService]netip.Addr{}}
	short := map[string][]MeshService{}
	for _, r := range view.Items("VirtualIPs") {
		v := r.(*api.VirtualIPs)
		for svc, e := range v.Entries {
			ip, err := netip.ParseAddr(e.IP)
			if err != nil || !e.ReleasedAt.IsZero() {
				continue
			}
			ms := MeshService{Mesh: v.Mesh, Service: svc}
			t.vips[ms] = ip
			t.byName[strings.ToLower(svc+"."+v.Mesh)] = ip
			short[strings.ToLower(svc)] = append(short[strings.ToLower(svc)], ms)
		}
	}
	for name, candidates := range short {
		if _, taken := t.byName[name]; taken {
			continue // "a.b" as a service name and as service a of mesh b: the explicit form wins
		}
		if len(candidates) == 1 {
			t.byName[name] = t.vips[candidates[0]]
			continue
		}
		for _, c := range candidates {
			if c.Mesh == "default" {
				t.byName[name] = t.vips[c]
			}
		}
	}
	return t
}

// Lookup returns the VIP of a lower-case name without the domain.
func (t *Table) Lookup(name string) (netip.Addr, bool) {
	ip, ok := t.byName[name]
	return ip, ok
}

// VIPs returns every live VIP by mesh and service, for the xDS generator's
// outbound listeners. The map must not be modified.
func (t *Table) VIPs() map[MeshService]netip.Addr { return t.vips }

// WantedServices lists, by mesh, the services that need a VIP in this zone:
// those of local dataplanes and those that zone ingresses (this zone's and
// other zones') make available, in meshes that exist here.
func WantedServices(view *store.View) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	meshes := view.Items("Mesh")
	add := func(mesh, svc string) {
		if svc == "" {
			return
		}
		if _, ok := meshes[api.Key{Type: "Mesh", Name: mesh}]; !ok {
			return
		}
		if out[mesh] == nil {
			out[mesh] = map[string]bool{}
		}
		out[mesh][svc] = true
	}
	for _, r := range view.Items("Dataplane") {
		dp := r.(*api.Dataplane)
		for _, in := range dp.Networking.Inbound {
			add(dp.Mesh, in.Tags[api.TagService])
		}
	}
	for _, r := range view.Items("ZoneIngress") {
		for _, s := range r.(*api.ZoneIngress).AvailableServices {
			if s.Instances > 0 {
				add(s.Mesh, s.Tags[api.TagService])
			}
		}
	}
	return out
}

// MirroredTypes are the store types the resolver and the allocator follow.
func MirroredTypes() []string { return []string{"Mesh", "Dataplane", "ZoneIngress", "VirtualIPs"} }
