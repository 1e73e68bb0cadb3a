package zone

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/xds"
	"github.com/ursamesh/ursa/pkg/xds/xdstest"
)

// published records what generation publishes.
type published struct {
	mu  sync.Mutex
	ids map[string]int
}

func (p *published) SetResourcesFor(_ context.Context, n xds.Node, _ xds.Resources) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ids[n.ID]++
	return nil
}

func (p *published) take() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.ids
	p.ids = map[string]int{}
	return out
}

func dp(mesh, name, service string, version int64) *api.Dataplane {
	return &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: mesh, Name: name, Version: version},
		Networking: api.DataplaneNetworking{Address: "10.0.0.1", Inbound: []api.Inbound{{Port: 8080, Tags: map[string]string{api.TagService: service}}}}}
}

// TestGenerationSkipsUnchangedProxies: a proxy is generated again only when
// its mesh's catalogue, its own Dataplane or its connection changed.
func TestGenerationSkipsUnchangedProxies(t *testing.T) {
	out := &published{ids: map[string]int{}}
	g := NewGeneration(GenerationDeps{Out: out, CertTTL: time.Hour, Log: zaptest.NewLogger(t)})
	since := time.Now()
	nodes := []xds.Node{
		{ID: "default.web-1", Kind: xds.KindSidecar, Since: since},
		{ID: "default.billing-1", Kind: xds.KindSidecar, Since: since},
		{ID: "other.db-1", Kind: xds.KindSidecar, Since: since},
	}
	resources := func(billingVersion, dbVersion int64) []api.Resource {
		return []api.Resource{
			&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default", Version: 1}},
			&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "other", Version: 1}},
			dp("default", "web-1", "web", 1), dp("default", "billing-1", "billing", 1),
			dp("default", "billing-2", "billing", billingVersion), dp("other", "db-1", "db", dbVersion),
		}
	}
	step := func(rs []api.Resource, nodes []xds.Node) map[string]int {
		t.Helper()
		n := g.Sync(context.Background(), catalog.FromResources("zone-1", rs), nodes)
		got := out.take()
		if n != len(got) {
			t.Fatalf("Sync says %d generated, %d published", n, len(got))
		}
		return got
	}
	if got := step(resources(1, 1), nodes); len(got) != 3 {
		t.Fatalf("first generation published %v, want all three", got)
	}
	if got := step(resources(1, 1), nodes); len(got) != 0 {
		t.Fatalf("the same catalogue again published %v, want none", got)
	}
	if got := step(resources(1, 2), nodes); len(got) != 1 || got["other.db-1"] != 1 {
		t.Fatalf("a change in mesh other published %v, want other.db-1 alone", got)
	}
	// Another instance of billing changes: web, which reaches billing, is
	// regenerated; billing-1's sidecar, which does not, is not.
	if got := step(resources(2, 2), nodes); len(got) != 1 || got["default.web-1"] != 1 {
		t.Fatalf("a change of billing-2 published %v, want default.web-1 alone", got)
	}
	reconnected := append([]xds.Node(nil), nodes...)
	reconnected[0].Since = since.Add(time.Second)
	if got := step(resources(2, 2), reconnected); len(got) != 1 || got["default.web-1"] != 1 {
		t.Fatalf("a reconnection published %v, want default.web-1 alone", got)
	}
	if n := g.Generated(); n != 6 {
		t.Fatalf("generated %d proxies in all, want 6", n)
	}
}

// TestSidecarHashCoversItsInputs: over many variants of a mesh, two with
// the same SidecarHash give a sidecar the same resources, so skipping its
// generation on an equal hash never leaves it stale.
func TestSidecarHashCoversItsInputs(t *testing.T) {
	base := func() []api.Resource {
		web := dp("default", "web-1", "web", 1)
		web.Networking.Outbound = []api.Outbound{{Port: 7000, Tags: map[string]string{api.TagService: "billing"}}}
		return []api.Resource{
			&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default", Version: 1}, MTLS: &api.MeshMTLS{Enabled: true}},
			web, dp("default", "web-2", "web", 1), dp("default", "billing-1", "billing", 1),
			&api.VirtualIPs{Meta: api.Meta{Type: "VirtualIPs", Mesh: "default", Name: "vips", Version: 1},
				Entries: map[string]api.VirtualIP{"web": {IP: "240.0.0.1"}, "billing": {IP: "240.0.0.2"}}},
			&api.ZoneIngress{Meta: api.Meta{Type: "ZoneIngress", Name: "zone-2.ingress", Version: 1}, Zone: "zone-2",
				Networking:        api.ZoneIngressNetworking{Address: "10.2.0.1", Port: 10001},
				AvailableServices: []api.AvailableService{{Mesh: "default", Instances: 2, Tags: map[string]string{api.TagService: "billing", api.TagZone: "zone-2"}}}},
		}
	}
	bump := func(i int) func([]api.Resource) []api.Resource {
		return func(rs []api.Resource) []api.Resource {
			r := api.DeepCopy(rs[i])
			r.GetMeta().Version++
			if d, ok := r.(*api.Dataplane); ok {
				d.Networking.Address = "10.0.0.99"
			}
			rs[i] = r
			return rs
		}
	}
	variants := map[string]func([]api.Resource) []api.Resource{
		"base":                               func(rs []api.Resource) []api.Resource { return rs },
		"own service's other instance moves": bump(2),
		"billing's instance moves":           bump(3),
		"billing's instance goes offline": func(rs []api.Resource) []api.Resource {
			return append(rs, &api.DataplaneInsight{Meta: api.Meta{Type: "DataplaneInsight", Mesh: "default", Name: "billing-1", Version: 1}})
		},
		"billing's VIP changes": func(rs []api.Resource) []api.Resource {
			v := api.DeepCopy(rs[4]).(*api.VirtualIPs)
			v.Version++
			v.Entries["billing"] = api.VirtualIP{IP: "240.0.0.9"}
			rs[4] = v
			return rs
		},
		"zone-2 offers more billing": func(rs []api.Resource) []api.Resource {
			ing := api.DeepCopy(rs[5]).(*api.ZoneIngress)
			ing.Version++
			ing.AvailableServices[0].Instances = 5
			rs[5] = ing
			return rs
		},
		"a route splits billing": func(rs []api.Resource) []api.Resource {
			return append(rs, &api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: "default", Name: "r", Version: 1},
				Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: "billing"}, Split: []api.Split{
					{Weight: 50, Tags: map[string]string{api.TagZone: "zone-1"}}, {Weight: 50, Tags: map[string]string{api.TagZone: "zone-2"}}}}})
		},
		"a permission": func(rs []api.Resource) []api.Resource {
			return append(rs, &api.TrafficPermission{Meta: api.Meta{Type: "TrafficPermission", Mesh: "default", Name: "p", Version: 1},
				Spec: api.TrafficPermissionSpec{Sources: []api.Selector{{Match: map[string]string{api.TagService: "billing"}}},
					Destinations: []api.Selector{{Match: map[string]string{api.TagService: "web"}}}}})
		},
		"a failover": func(rs []api.Resource) []api.Resource {
			return append(rs, &api.Failover{Meta: api.Meta{Type: "Failover", Mesh: "default", Name: "f", Version: 1},
				Spec: api.FailoverSpec{Destination: map[string]string{api.TagService: "*"}, Drained: []string{"zone-2"}}})
		},
	}
	type result struct {
		name string
		res  string
	}
	byHash := map[string]result{}
	for name, change := range variants {
		cat := catalog.FromResources("zone-1", change(base()))
		m := cat.Mesh("default")
		web := m.Registered["web-1"]
		h := m.SidecarHash(ownAndExplicit(web))
		res, err := xds.Sidecar(xds.NewState(cat, nil), xds.Proxy{Kind: xds.KindSidecar, Dataplane: web})
		if err != nil {
			t.Fatal(err)
		}
		got := string(xdstest.Render(t, res))
		if prev, ok := byHash[h]; ok && prev.res != got {
			t.Errorf("%q and %q have the same hash but give web-1 different resources", prev.name, name)
		}
		byHash[h] = result{name, got}
	}
	// Only the change web-1 does not reach leaves its hash alone.
	if len(byHash) != len(variants)-1 {
		t.Errorf("%d distinct hashes for %d variants, want %d", len(byHash), len(variants), len(variants)-1)
	}
}
