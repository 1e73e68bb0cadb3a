package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/storetest"
)

func TestMemoryConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return store.NewMemory(0) })
}

func TestMemoryCompaction(t *testing.T) {
	s := store.NewMemory(10)
	storetest.MustCreate(t, s, storetest.Mesh("default"))
	for i := range 20 {
		storetest.MustCreate(t, s, storetest.Route("default", "r"+string(rune('a'+i)), 1, nil))
	}
	err := s.Watch(context.Background(), 1, func(store.Event) error { return nil })
	if !errors.Is(err, store.ErrCompacted) {
		t.Fatalf("watch from a compacted revision = %v, want ErrCompacted", err)
	}
}

// TestListTypesThroughMetrics: the metrics wrapper lists as of one
// revision when the store it wraps can, and one type after another, with
// the same answers, when it cannot.
func TestListTypesThroughMetrics(t *testing.T) {
	mem := store.NewMemory(0)
	storetest.MustCreate(t, mem, storetest.Mesh("default"))
	storetest.MustCreate(t, mem, storetest.Route("default", "r", 1, nil))
	for _, tc := range []struct {
		name  string
		inner store.Store
		whole bool
	}{
		{"snapshots", mem, true},
		{"none", struct{ store.Store }{mem}, false},
	} {
		st, err := store.WithMetrics(tc.inner, prometheus.NewRegistry())
		if err != nil {
			t.Fatal(err)
		}
		res, whole, err := store.ListTypes(context.Background(), st, []string{"TrafficRoute", "Mesh"})
		if err != nil || whole != tc.whole || len(res) != 2 || len(res[0].Items) != 1 || res[0].Items[0].GetMeta().Name != "r" ||
			len(res[1].Items) != 1 || res[1].Items[0].GetMeta().Name != "default" || res[0].Revision != 2 || res[1].Revision != 2 {
			t.Fatalf("%s: ListTypes = %v whole=%v, %v; want the route, then the mesh, at revision 2, whole=%v", tc.name, res, whole, err, tc.whole)
		}
	}
}

func BenchmarkMemory(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) store.Store { return store.NewMemory(0) })
}
