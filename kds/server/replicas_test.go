package server_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/kds/server"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/pgtest"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/postgres"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// pgStores starts a throwaway PostgreSQL and opens n store handles on one
// database, as n CP replicas would.
func pgStores(t *testing.T, n int) []store.Store {
	t.Helper()
	cluster, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	ctx := context.Background()
	dsn, err := cluster.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.MigrateUp(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	var out []store.Store
	for range n {
		s, err := postgres.Open(ctx, dsn, postgres.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		out = append(out, s)
	}
	return out
}

// TestTwoReplicas: zones connected to different global replicas on one
// PostgreSQL each get every change written through either.
func TestTwoReplicas(t *testing.T) {
	ctx := context.Background()
	stores := pgStores(t, 2)
	g1 := startGlobalWith(t, stores[0], server.Deps{Verifier: fakeTokens{}, Instance: "g1"})
	g2 := startGlobalWith(t, stores[1], server.Deps{Verifier: fakeTokens{}, Instance: "g2"})
	a := startZone(t, g1, "zone-a", "zone:zone-a")
	b := startZone(t, g2, "zone-b", "zone:zone-b")

	// A policy written through replica 2 reaches the zone on replica 1.
	if _, err := g2.store.Apply(ctx, []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}, route(30)}, nil); err != nil {
		t.Fatal(err)
	}
	rk := api.Key{Type: "TrafficRoute", Mesh: "default", Name: "billing"}
	testutil.Until(t, 30*time.Second, "the route in zone A via replica 1", func() bool { return has(a.store, rk) })
	testutil.Until(t, 30*time.Second, "the route in zone B via replica 2", func() bool { return has(b.store, rk) })
	// Zone A's ingress, taken in by replica 1, reaches zone B on replica 2.
	if _, err := a.store.Create(ctx, ingress("zone-a", "ingress")); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 30*time.Second, "zone A's ingress in zone B across replicas", func() bool {
		return has(b.store, api.Key{Type: "ZoneIngress", Name: "zone-a.ingress"})
	})
	// Each replica reports the zone it serves.
	for zone, inst := range map[string]string{"zone-a": "g1", "zone-b": "g2"} {
		testutil.Until(t, 30*time.Second, zone+" insight from "+inst, func() bool {
			r, err := g1.store.Get(ctx, api.Key{Type: "ZoneInsight", Name: zone})
			return err == nil && r.(*api.ZoneInsight).GlobalInstance == inst && r.(*api.ZoneInsight).Connected
		})
	}
}

// TestLargeTypeIsSplit: a change larger than one message arrives whole, in
// several responses.
func TestLargeTypeIsSplit(t *testing.T) {
	ctx := context.Background()
	g := startGlobalWith(t, store.NewMemory(0), server.Deps{Verifier: fakeTokens{}, MaxMessageSize: 80 << 10})
	puts := []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}}
	for i := range 300 {
		r := route(1 + i%100)
		r.Name = fmt.Sprintf("route-%03d-%s", i, strings.Repeat("x", 40))
		r.Labels = map[string]string{"description": strings.Repeat("y", 60)}
		puts = append(puts, r)
	}
	if _, err := g.store.Apply(ctx, puts, nil); err != nil {
		t.Fatal(err)
	}
	var responses atomic.Int64
	z := startZoneWith(t, g, "zone-a", "zone:zone-a", store.NewMemory(0), func(url string, _ *discoveryResponse) {
		if url == kds.TypeURL("TrafficRoute") {
			responses.Add(1)
		}
	})
	testutil.Until(t, 30*time.Second, "300 routes in the zone", func() bool {
		res, _ := z.store.List(ctx, store.ListOptions{Type: "TrafficRoute"})
		return len(res.Items) == 300
	})
	if responses.Load() < 2 {
		t.Fatalf("300 routes (~%d KiB) came in %d response(s) under a 16 KiB budget", 300*300/1024, responses.Load())
	}
}
