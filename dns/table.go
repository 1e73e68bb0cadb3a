package dns

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/ursamesh/ursa/pkg/catalog"
)

// MeshService names a service within a mesh.
type MeshService = catalog.MeshService

// Table is an immutable snapshot of the VIPs a zone answers for.
type Table struct {
	// byName maps a lower-case name without the domain ("billing" or
	// "billing.default") to its VIP.
	byName map[string]netip.Addr
	// parents are the names that only have names under them ("default"
	// of "billing.default"): they exist, without an address.
	parents map[string]bool
	vips    map[MeshService]netip.Addr
}

// NewTable builds the table of the catalogue's live (not released) VIPs.
// "<service>.<mesh>" always names a service; "<service>" alone names it too
// when it is in the mesh "default" or in only one mesh.
func NewTable(cat *catalog.Catalog) *Table {
	t := &Table{byName: map[string]netip.Addr{}, parents: map[string]bool{}, vips: cat.VIPs()}
	// In order, so that of services whose names differ only in case
	// ("Web", "web") the first by name answers, in every table.
	all := slices.SortedFunc(maps.Keys(t.vips), func(a, b MeshService) int {
		return cmp.Or(strings.Compare(a.Mesh, b.Mesh), strings.Compare(a.Service, b.Service))
	})
	short := map[string][]MeshService{}
	for _, ms := range all {
		n := strings.ToLower(ms.Service + "." + ms.Mesh)
		if _, taken := t.byName[n]; !taken {
			t.byName[n] = t.vips[ms]
		}
		short[strings.ToLower(ms.Service)] = append(short[strings.ToLower(ms.Service)], ms)
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
				break
			}
		}
	}
	for name := range t.byName {
		for i := strings.IndexByte(name, '.'); i >= 0; i = strings.IndexByte(name, '.') {
			name = name[i+1:]
			t.parents[name] = true
		}
	}
	return t
}

// HasNamesUnder tells whether a lower-case name without the domain has
// names of the table under it (a mesh's name, such as "default").
func (t *Table) HasNamesUnder(name string) bool { return t.parents[name] }

// Lookup returns the VIP of a lower-case name without the domain.
func (t *Table) Lookup(name string) (netip.Addr, bool) {
	ip, ok := t.byName[name]
	return ip, ok
}

// VIPs returns every live VIP by mesh and service. The map must not be
// modified.
func (t *Table) VIPs() map[MeshService]netip.Addr { return t.vips }
