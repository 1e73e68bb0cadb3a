// Package dns is the zone's .mesh resolver: it gives every service of every
// mesh a stable virtual IP, keeps the assignment in the zone's store, and
// answers <service>.mesh with it over UDP and TCP.
package dns

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
)

// vipsName is the name of each mesh's VirtualIPs resource.
const vipsName = "vips"

// Allocator decides VIPs. It is a pure function of its inputs.
type Allocator struct {
	CIDR netip.Prefix
	// HoldBack is how long a released VIP stays reserved for its service
	// before another service may get it; it must exceed the DNS TTL.
	HoldBack time.Duration
}

// Reconcile returns the VirtualIPs resources that must change so that every
// wanted (mesh, service) has a VIP, services no longer wanted are released,
// and releases older than HoldBack are forgotten. A released service that
// comes back within the hold-back gets its old VIP. VIPs are unique across
// meshes. The error lists the services the CIDR had no room for; the
// returned changes are valid either way.
func (a Allocator) Reconcile(current map[string]*api.VirtualIPs, wanted map[string]map[string]bool, now time.Time) ([]*api.VirtualIPs, error) {
	used := map[netip.Addr]bool{}
	for _, v := range current {
		for _, e := range v.Entries {
			if ip, err := netip.ParseAddr(e.IP); err == nil {
				used[ip] = true
			}
		}
	}
	meshes := map[string]bool{}
	for m := range current {
		meshes[m] = true
	}
	for m := range wanted {
		meshes[m] = true
	}
	var (
		out     []*api.VirtualIPs
		full    []string
		next    = a.first()
		ordered = slices.Sorted(maps.Keys(meshes))
	)
	for _, mesh := range ordered {
		var entries map[string]api.VirtualIP
		if cur := current[mesh]; cur != nil {
			entries = maps.Clone(cur.Entries)
		}
		if entries == nil {
			entries = map[string]api.VirtualIP{}
		}
		changed := false
		for _, svc := range slices.Sorted(maps.Keys(entries)) {
			e := entries[svc]
			ip, err := netip.ParseAddr(e.IP)
			switch {
			case err != nil || !a.CIDR.Contains(ip):
				// Outside the range, which the zone was restarted
				// with another --vip-cidr: given a new VIP below.
				delete(entries, svc)
				changed = true
			case wanted[mesh][svc] && !e.ReleasedAt.IsZero():
				e.ReleasedAt = time.Time{}
				entries[svc], changed = e, true
			case !wanted[mesh][svc] && e.ReleasedAt.IsZero():
				e.ReleasedAt = now
				entries[svc], changed = e, true
			case !wanted[mesh][svc] && now.Sub(e.ReleasedAt) > a.HoldBack:
				delete(entries, svc) // its IP stays in used until the next pass
				changed = true
			}
		}
		for _, svc := range slices.Sorted(maps.Keys(wanted[mesh])) {
			if _, ok := entries[svc]; ok {
				continue
			}
			ip, ok := a.free(&next, used)
			if !ok {
				full = append(full, mesh+"/"+svc)
				continue
			}
			used[ip] = true
			entries[svc], changed = api.VirtualIP{IP: ip.String()}, true
		}
		if !changed {
			continue
		}
		v := &api.VirtualIPs{Meta: api.Meta{Type: "VirtualIPs", Mesh: mesh, Name: vipsName}, Entries: entries}
		if cur := current[mesh]; cur != nil {
			// Conditional on what it was decided from: a replica that lost
			// the lease without knowing it cannot undo its successor's.
			v.Labels, v.Version = cur.Labels, cur.Version
		}
		out = append(out, v)
	}
	if len(full) > 0 {
		return out, fmt.Errorf("VIP range %s is full: no VIP for %v", a.CIDR, full)
	}
	return out, nil
}

// first is the first address handed out: the one after the network address.
func (a Allocator) first() netip.Addr { return a.CIDR.Masked().Addr().Next() }

// free returns the lowest free address at or after *next, advancing *next.
func (a Allocator) free(next *netip.Addr, used map[netip.Addr]bool) (netip.Addr, bool) {
	for ip := *next; ip.IsValid() && a.CIDR.Contains(ip); ip = ip.Next() {
		if used[ip] || (ip.Is4() && !a.CIDR.Contains(ip.Next())) { // skip the IPv4 broadcast address
			continue
		}
		*next = ip.Next()
		return ip, true
	}
	return netip.Addr{}, false
}
