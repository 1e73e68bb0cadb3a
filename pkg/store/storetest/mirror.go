package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// StartMirror starts a Mirror of types over s, logging to log, and waits
// for its first View; stop (also run when the test ends) stops it and
// waits for it to end.
func StartMirror(t testing.TB, s store.Store, log *zap.Logger, types ...string) (m *store.Mirror, stop func()) {
	t.Helper()
	m = store.NewMirror(s, types, log)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { m.Start(ctx) })
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	select {
	case <-m.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("the mirror never published its first View")
	}
	return m, stop
}

// checkMore checks that events, one transaction's (in revision order),
// mark its end: More on each but the last, when the store has
// transactions; never, when it has not.
func checkMore(t *testing.T, caps Capabilities, events []store.Event, what string) {
	t.Helper()
	for i, e := range events {
		if want := caps.Transactions && i < len(events)-1; e.More != want {
			t.Fatalf("%s: event %d of %d (%s %s) has More %v, want %v", what, i+1, len(events), e.Op, api.KeyOf(e.Resource), e.More, want)
		}
	}
}

// testMirrorTransactions: a Mirror of the store never publishes a View
// holding part of a transaction. A writer applies batches that set every
// route to one weight (and, every other batch, adds or deletes one route);
// every View published meanwhile must hold one weight throughout. This is
// the stores' side of the promise, with the timing they have: the
// Mirror's own handling of Event.More is pinned event by event in
// pkg/store's TestMirrorTransactionEnds.
// Without transactions, a View may hold any mix, and the case checks
// only that a View holds the last batch, of fewer writes.
func testMirrorTransactions(t *testing.T, s store.Store, caps Capabilities) {
	routes, batches := 40, 100
	if !caps.Transactions {
		routes, batches = 10, 10 // a write per route, and only the end is checked
	}
	c := ctx(t)
	MustCreate(t, s, Mesh("m"))
	m, _ := StartMirror(t, s, zap.NewNop(), "Mesh", "TrafficRoute")
	batch := func(w int) []api.Resource {
		var rs []api.Resource
		for i := range routes + w%2 {
			rs = append(rs, Route("m", fmt.Sprintf("r%02d", i), w, nil))
		}
		return rs
	}
	written := make(chan error, 1)
	go func() {
		for w := 1; w <= batches; w++ {
			var del []api.Key
			if w%2 == 0 {
				del = []api.Key{{Type: "TrafficRoute", Mesh: "m", Name: fmt.Sprintf("r%02d", routes)}}
			}
			if _, err := s.Apply(c, batch(w), del); err != nil {
				written <- err
				return
			}
		}
		written <- nil
	}()
	views, mixed := 0, 0
	for {
		v, changed := m.Current()
		rs, err := store.All[*api.TrafficRoute](v)
		if err != nil {
			t.Fatal(err)
		}
		weights := map[int]int{}
		for _, r := range rs {
			weights[weight(r)]++
		}
		views++
		if len(weights) > 1 || len(rs) > 0 && len(rs) != routes+weight(rs[0])%2 {
			if caps.Transactions {
				t.Fatalf("view at revision %d holds part of a transaction: %d routes, weights %v", v.Revision, len(rs), weights)
			}
			mixed++
		}
		if len(rs) == routes && weights[batches] == routes {
			t.Logf("%d views, %d of them mixed", views, mixed)
			break
		}
		select {
		case <-changed:
		case <-c.Done():
			t.Fatalf("the mirror never held the last batch: %d routes, weights %v", len(rs), weights)
		}
	}
	if err := <-written; err != nil {
		t.Fatal(err)
	}
}

// testListTypes: a store with transactions lists several types as of one
// revision, and so a Mirror's first View holds whole transactions too. A
// writer applies, again and again, a mesh labelled with a number and a
// route weighted with the same one, in one transaction; every listing of
// both types meanwhile, and the first View of each Mirror started
// meanwhile, must agree on the number. A store without transactions lists
// one type after another, and says so.
func testListTypes(t *testing.T, s store.Store, caps Capabilities) {
	c := ctx(t)
	batches := 300
	if !caps.Transactions {
		batches = 10
	}
	pair := func(w int) []api.Resource {
		m := Mesh("m")
		m.Labels = map[string]string{"w": fmt.Sprint(w)}
		return []api.Resource{m, Route("m", "r", w, nil)}
	}
	if _, err := s.Apply(c, pair(0), nil); err != nil {
		t.Fatal(err)
	}
	types := []string{"Mesh", "TrafficRoute"}
	// agree says whether a mesh's and a route's numbers match.
	agree := func(meshes, routes []api.Resource) (string, bool) {
		if len(meshes) != 1 || len(routes) != 1 {
			return fmt.Sprintf("%d meshes, %d routes", len(meshes), len(routes)), false
		}
		w, r := meshes[0].GetMeta().Labels["w"], fmt.Sprint(weight(routes[0]))
		return "mesh " + w + ", route " + r, w == r
	}
	done := make(chan error, 1)
	go func() {
		for w := 1; w <= batches; w++ {
			if _, err := s.Apply(c, pair(w), nil); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	lists, views := 0, 0
	for writing := true; writing; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			writing = false
		default:
		}
		res, whole, err := store.ListTypes(c, s, types)
		if err != nil {
			t.Fatal(err)
		}
		if whole != caps.Transactions {
			t.Fatalf("ListTypes says whole=%v of a store with Transactions=%v", whole, caps.Transactions)
		}
		lists++
		if got, ok := agree(res[0].Items, res[1].Items); !ok && caps.Transactions {
			t.Fatalf("a listing of one revision (%d, %d) holds %s", res[0].Revision, res[1].Revision, got)
		}
		if lists%10 == 0 {
			// A Mirror's first View, started in the middle of the writes.
			m, stop := StartMirror(t, s, zap.NewNop(), types...)
			v, _ := m.Current()
			stop()
			meshes, _ := store.All[*api.Mesh](v)
			routes, _ := store.All[*api.TrafficRoute](v)
			views++
			if got, ok := agree([]api.Resource{meshes[0]}, []api.Resource{routes[0]}); !ok && caps.Transactions {
				t.Fatalf("a Mirror's first View holds %s", got)
			}
		}
	}
	t.Logf("%d listings, %d first Views", lists, views)
}
