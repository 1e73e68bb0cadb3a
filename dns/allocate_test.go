package dns

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/leader"
	"github.com/ursamesh/ursa/pkg/pgtest"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/postgres"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// replica is one zone CP's resolver side: a mirror of its store, the table,
// and the leader-elected allocator.
type replica struct {
	resolver *Resolver
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

func startReplica(t *testing.T, st store.Store, name string, a Allocator) *replica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := zaptest.NewLogger(t).Named(name)
	m := store.NewMirror(st, catalog.Types(), log)
	cat := catalog.NewFollower("zone-1", m, log)
	r := &replica{resolver: NewResolver(), cancel: cancel}
	el := &leader.Elector{Store: st, Lease: "vip-allocator", Identity: name, Duration: 3 * time.Second, Log: log}
	r.wg.Go(func() { m.Start(ctx) })
	r.wg.Go(func() { cat.Start(ctx) })
	r.wg.Go(func() { r.resolver.Follow(ctx, cat) })
	r.wg.Go(func() { el.Start(ctx, func(ctx context.Context) error { return Allocate(ctx, st, cat, a, log) }) })
	t.Cleanup(r.stop)
	return r
}

func (r *replica) stop() { r.cancel(); r.wg.Wait() }

func (r *replica) lookup(name string) string {
	ip, ok := r.resolver.Table().Lookup(name)
	if !ok {
		return ""
	}
	return ip.String()
}

func dataplane(mesh, name, svc string) *api.Dataplane {
	return &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: mesh, Name: name},
		Networking: api.DataplaneNetworking{Address: "127.0.0.1", Inbound: []api.Inbound{{Port: 10011, Tags: map[string]string{api.TagService: svc}}}}}
}

var testAlloc = Allocator{CIDR: netip.MustParsePrefix("240.0.0.0/24"), HoldBack: time.Hour}

// TestServicesGetVIPs: local services and services other zones offer get
// VIPs; a service that goes away stops resolving but keeps its VIP reserved.
func TestServicesGetVIPs(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory(0)
	r := startReplica(t, st, "z1", testAlloc)
	if _, err := st.Apply(ctx, []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}, dataplane("default", "b1", "billing")}, nil); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 10*time.Second, "billing's VIP", func() bool { return r.lookup("billing") != "" })
	// A service that appears in another zone, through that zone's ingress.
	remote := &api.ZoneIngress{Meta: api.Meta{Type: "ZoneIngress", Name: "zone-2.ingress", Labels: map[string]string{api.LabelOrigin: api.OriginGlobal}},
		Zone: "zone-2", Networking: api.ZoneIngressNetworking{Address: "127.0.0.2", Port: 10001},
		AvailableServices: []api.AvailableService{{Mesh: "default", Instances: 2, Tags: map[string]string{api.TagService: "payments", api.TagZone: "zone-2"}}}}
	if _, err := st.Create(ctx, remote); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 10*time.Second, "the remote service's VIP", func() bool { return r.lookup("payments") != "" && r.lookup("payments.default") != "" })
	billing := r.lookup("billing")
	if billing == r.lookup("payments") {
		t.Fatal("two live services share a VIP")
	}
	// billing goes away: it stops resolving, and a new service does not get
	// its VIP within the hold-back.
	if err := st.Delete(ctx, api.Key{Type: "Dataplane", Mesh: "default", Name: "b1"}, 0); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 10*time.Second, "billing gone", func() bool { return r.lookup("billing") == "" })
	if _, err := st.Create(ctx, dataplane("default", "s1", "search")); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 10*time.Second, "search's VIP", func() bool { return r.lookup("search") != "" })
	if r.lookup("search") == billing {
		t.Fatalf("search got billing's freed VIP %s within the hold-back", billing)
	}
	// billing returns: same VIP.
	if _, err := st.Create(ctx, dataplane("default", "b2", "billing")); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 10*time.Second, "billing back on its VIP", func() bool { return r.lookup("billing") == billing })
}

// TestVIPsSurviveRestartAndReplicas runs on PostgreSQL: VIPs are the same
// after a restart, and with two replicas one allocates and both answer the
// same.
func TestVIPsSurviveRestartAndReplicas(t *testing.T) {
	cluster, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	ctx := context.Background()
	dsn, err := cluster.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.MigrateUp(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	open := func() *postgres.Store {
		s, err := postgres.Open(ctx, dsn, postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		return s
	}
	st := open()
	puts := []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}}
	for i := range 20 {
		puts = append(puts, dataplane("default", fmt.Sprintf("d%d", i), fmt.Sprintf("svc-%d", i)))
	}
	if _, err := st.Apply(ctx, puts, nil); err != nil {
		t.Fatal(err)
	}
	r1 := startReplica(t, st, "first", testAlloc)
	testutil.Until(t, 10*time.Second, "20 VIPs", func() bool { return len(r1.resolver.Table().VIPs()) == 20 })
	before := map[MeshService]netip.Addr{}
	for k, v := range r1.resolver.Table().VIPs() {
		before[k] = v
	}
	r1.stop()

	// Restarted (a new process: new store handle, new identity).
	r2 := startReplica(t, open(), "second", testAlloc)
	r3 := startReplica(t, open(), "third", testAlloc)
	for _, r := range []*replica{r2, r3} {
		testutil.Until(t, 10*time.Second, "the VIPs after a restart", func() bool { return len(r.resolver.Table().VIPs()) == 20 })
		for k, v := range r.resolver.Table().VIPs() {
			if before[k] != v {
				t.Fatalf("%v: %s before the restart, %s after", k, before[k], v)
			}
		}
	}
	// A new service: one replica allocates, both answer it the same.
	if _, err := st.Create(ctx, dataplane("default", "n", "new")); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 10*time.Second, "both replicas answer for the new service", func() bool {
		return r2.lookup("new") != "" && r2.lookup("new") == r3.lookup("new")
	})
	lease, err := st.Get(ctx, api.Key{Type: "Lease", Name: "vip-allocator"})
	if err != nil {
		t.Fatal(err)
	}
	if h := lease.(*api.Lease).Holder; h != "second" && h != "third" {
		t.Fatalf("lease held by %q", h)
	}
	res, _ := st.List(ctx, store.ListOptions{Type: "VirtualIPs"})
	if len(res.Items) != 1 || len(res.Items[0].(*api.VirtualIPs).Entries) != 21 {
		t.Fatalf("stored VIPs: %+v", res.Items)
	}
}
