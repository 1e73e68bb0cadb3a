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
)

// published records what generation publishes.
type published struct {
	mu  sync.Mutex
	ids map[string]int
}

func (p *published) SetResources(_ context.Context, id string, _ xds.Resources) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.ids[id]++
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
	g := &generation{zone: "zone-1", out: out, gens: generators(), ids: newIdentities(time.Hour), log: zaptest.NewLogger(t),
		last: map[string]string{}, warned: map[string]bool{}}
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
			dp("default", "web-1", "web", 1), dp("default", "billing-1", "billing", billingVersion), dp("other", "db-1", "db", dbVersion),
		}
	}
	var state *xds.State
	step := func(rs []api.Resource, nodes []xds.Node) map[string]int {
		t.Helper()
		state = xds.NewState(catalog.FromResources("zone-1", rs), state)
		g.generate(context.Background(), state, nodes, time.Now())
		return out.take()
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
	if got := step(resources(2, 2), nodes); len(got) != 2 || got["default.web-1"] != 1 || got["default.billing-1"] != 1 {
		t.Fatalf("a change of billing-1 published %v, want both proxies of default", got)
	}
	reconnected := append([]xds.Node(nil), nodes...)
	reconnected[0].Since = since.Add(time.Second)
	if got := step(resources(2, 2), reconnected); len(got) != 1 || got["default.web-1"] != 1 {
		t.Fatalf("a reconnection published %v, want default.web-1 alone", got)
	}
	if n := g.generated.Load(); n != 7 {
		t.Fatalf("generated %d proxies in all, want 7", n)
	}
}
