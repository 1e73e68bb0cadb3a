package xds

import (
	"maps"
	"slices"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
)

// failoverPlan is how a service's traffic is spread over zones: the levels
// of zones in priority order, from the Failovers that select the service.
type failoverPlan struct {
	// ordering is the most specific Failover that orders zones; nil means
	// the default (the caller's zone, then every other zone).
	ordering *api.Failover
	// drained zones, from every Failover that selects the service.
	drained   map[string]bool
	threshold int
}

// failoverFor combines the Failovers that select a service: the ordering
// comes from the one with the most destination tags (then the first by
// name) that orders zones at all; the drained zones of all of them add up,
// so a drain never hides the user's ordering, nor the user's Failover a
// drain.
func (s *MeshState) failoverFor(service string) failoverPlan {
	plan := failoverPlan{drained: map[string]bool{}}
	svc := map[string]string{api.TagService: service}
	for _, f := range s.Failovers {
		if !catalog.Matches(f.Spec.Destination, svc) {
			continue
		}
		for _, z := range f.Spec.Drained {
			plan.drained[z] = true
		}
		if !f.Spec.Orders() {
			continue
		}
		best := plan.ordering
		if best == nil || specificity(f.Spec.Destination) > specificity(best.Spec.Destination) ||
			(specificity(f.Spec.Destination) == specificity(best.Spec.Destination) && f.Name < best.Name) {
			plan.ordering = f
		}
	}
	if plan.ordering != nil {
		plan.threshold = plan.ordering.Spec.Threshold
	}
	return plan
}

// overprovisioning is the load assignment's overprovisioning factor
// (Envoy's, in percent) for the plan's threshold: a priority keeps all its
// load while threshold percent of its endpoints or more are healthy, and
// spills below. Rounded up, so that at exactly the threshold nothing
// spills. 0 without a threshold: Envoy's default, 140 (about 71 %).
func (plan failoverPlan) overprovisioning() uint32 {
	if plan.threshold <= 0 {
		return 0
	}
	return uint32((10000 + plan.threshold - 1) / plan.threshold)
}

// specificity counts a selector's tags that name a value ("*" does not).
func specificity(selector map[string]string) int {
	n := 0
	for _, v := range selector {
		if v != "*" {
			n++
		}
	}
	return n
}

// priorities gives each zone its locality priority, 0 first. Without an
// ordering Failover the caller's zone comes first and every other zone
// next, so local instances are preferred while they are healthy; with one,
// the caller's zone (when locality-aware), then the listed zones in order,
// then the rest (unless onlyListed: then the rest are absent). A subset
// pinned to a zone by its ursa.io/zone tag puts that zone before all
// others. Drained zones come after every other zone. The priorities have no
// gaps.
func (plan failoverPlan) priorities(s *MeshState, pinned string) map[string]uint32 {
	others := map[string]bool{}
	for _, ing := range s.Ingresses {
		if ing.Zone != s.Zone {
			others[ing.Zone] = true
		}
	}
	var levels [][]string
	if f := plan.ordering; f == nil {
		levels = [][]string{{s.Zone}, slices.Sorted(maps.Keys(others))}
	} else {
		placed := map[string]bool{}
		if f.Spec.LocalityAware {
			levels = append(levels, []string{s.Zone})
			placed[s.Zone] = true
		}
		for _, z := range f.Spec.Order {
			if !placed[z] {
				levels = append(levels, []string{z})
				placed[z] = true
			}
		}
		if !f.Spec.OnlyListed {
			var rest []string
			for _, z := range slices.Sorted(maps.Keys(others)) {
				if !placed[z] {
					rest = append(rest, z)
				}
			}
			if !placed[s.Zone] {
				rest = append(rest, s.Zone)
			}
			levels = append(levels, rest)
		}
	}
	if pinned != "" {
		levels = append([][]string{{pinned}}, levels...)
	}
	var drained []string
	for _, level := range levels {
		for _, z := range level {
			if plan.drained[z] && !slices.Contains(drained, z) {
				drained = append(drained, z)
			}
		}
	}
	slices.Sort(drained)
	levels = append(levels, drained)
	out := map[string]uint32{}
	next := uint32(0)
	for i, level := range levels {
		last := i == len(levels)-1
		added := false
		for _, z := range level {
			if _, done := out[z]; done || (plan.drained[z] && !last) {
				continue
			}
			out[z] = next
			added = true
		}
		if added {
			next++
		}
	}
	return out
}

// pinnedZone is the zone a subset's ursa.io/zone tag names, or "".
func (sub Subset) pinnedZone() string {
	if z := sub.Tags[api.TagZone]; z != "*" {
		return z
	}
	return ""
}

// anyZone is the subset without its zone tag: the same instances in every
// zone.
func (sub Subset) AnyZone() Subset {
	if _, ok := sub.Tags[api.TagZone]; !ok {
		return sub
	}
	tags := maps.Clone(sub.Tags)
	delete(tags, api.TagZone)
	return Subset{Tags: tags, Weight: sub.Weight}
}
