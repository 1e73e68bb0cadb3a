package ingress

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
)

// Offers is what this zone's ingresses offer other zones: the online local
// instances of every mesh with mTLS, grouped by mesh and tags
// (ursa.io/zone set to this zone), with their counts and the service's
// port here (its catalogue Port, the same in every group of the service),
// sorted by mesh
// and tags.
func Offers(cat *catalog.Catalog) []api.AvailableService {
	type key struct{ mesh, tags string }
	counts := map[key]*api.AvailableService{}
	for _, m := range cat.Meshes() {
		if !m.Mesh.MTLSEnabled() {
			continue // the ingress carries no mesh without mTLS (Generate)
		}
		for _, name := range m.LocalServices() {
			s := m.Service(name)
			for _, in := range s.Local {
				k := key{m.Mesh.Name, canonical(in.Tags)}
				if counts[k] == nil {
					counts[k] = &api.AvailableService{Mesh: m.Mesh.Name, Tags: maps.Clone(in.Tags), Port: int(s.Port)}
				}
				counts[k].Instances++
			}
		}
	}
	keys := slices.SortedFunc(maps.Keys(counts), func(a, b key) int {
		if c := strings.Compare(a.mesh, b.mesh); c != 0 {
			return c
		}
		return strings.Compare(a.tags, b.tags)
	})
	out := make([]api.AvailableService, 0, len(keys))
	for _, k := range keys {
		out = append(out, *counts[k])
	}
	return out
}

// canonical renders tags in key order, as fmt prints a map.
func canonical(tags map[string]string) string { return fmt.Sprint(tags) }

// Offered returns ing with the services it should offer: offers while its
// proxy is online, nothing once it went away (other zones stop sending to
// it). It returns nil when ing already says that.
func Offered(ing catalog.LocalIngress, offers []api.AvailableService) *api.ZoneIngress {
	want := offers
	if !ing.Online {
		want = nil
	}
	next := api.DeepCopy(ing.ZoneIngress).(*api.ZoneIngress)
	next.AvailableServices = want
	if api.SameContent(ing.ZoneIngress, next) {
		return nil
	}
	return next
}
