package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/storetest"
)

// TestMirrorFollowsBursts: a burst of writes ends in a View that holds all
// of them, whatever Views were published on the way, and types no write
// touched keep their map.
func TestMirrorFollowsBursts(t *testing.T) {
	st := store.NewMemory(0)
	storetest.MustCreate(t, st, storetest.Mesh("default"))
	m, _ := storetest.StartMirror(t, st, zaptest.NewLogger(t), "Mesh", "TrafficRoute")
	first, _ := m.Current()
	const n = 300
	for i := range n {
		storetest.MustCreate(t, st, storetest.Route("default", fmt.Sprintf("r%03d", i), 1, nil))
	}
	deadline := time.After(10 * time.Second)
	for {
		v, changed := m.Current()
		routes, err := store.All[*api.TrafficRoute](v)
		if err != nil {
			t.Fatal(err)
		}
		if len(routes) == n {
			if routes[0].Name != "r000" || routes[n-1].Name != "r299" {
				t.Fatalf("routes out of order: %s … %s", routes[0].Name, routes[n-1].Name)
			}
			if !v.Same(first, "Mesh") || v.Same(first, "TrafficRoute") {
				t.Fatal("Same: the untouched type's map was copied, or the written one's was not")
			}
			if _, ok, err := store.Get[*api.Mesh](v, "", "default"); !ok || err != nil {
				t.Fatalf("Get the mesh: %v %v", ok, err)
			}
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("the mirror holds %d of %d routes", len(routes), n)
		}
	}
}

// TestViewOfATypeNotMirrored: reading a type the mirror does not follow is
// an error, not an empty map.
func TestViewOfATypeNotMirrored(t *testing.T) {
	v := store.NewView(nil, "Mesh")
	if _, err := store.All[*api.Dataplane](v); !errors.Is(err, store.ErrNotMirrored) {
		t.Fatalf("All of a type not held: %v", err)
	}
	if _, _, err := store.Get[*api.Dataplane](v, "default", "x"); !errors.Is(err, store.ErrNotMirrored) {
		t.Fatalf("Get of a type not held: %v", err)
	}
	if _, err := v.Items("Dataplane"); !errors.Is(err, store.ErrNotMirrored) {
		t.Fatalf("Items of a type not held: %v", err)
	}
	if ms, err := store.All[*api.Mesh](v); err != nil || len(ms) != 0 {
		t.Fatalf("All of a held, empty type: %v %v", ms, err)
	}
}

// scriptedStore is a Memory whose Watch plays the script's events instead
// of the store's, one call of Watch per script entry; a call past the
// script blocks until its context ends.
type scriptedStore struct {
	*store.Memory
	mu     sync.Mutex
	script []func(ctx context.Context, fn func(store.Event) error) error
	calls  int
}

func (s *scriptedStore) Watch(ctx context.Context, since int64, fn func(store.Event) error) error {
	s.mu.Lock()
	i := s.calls
	s.calls++
	s.mu.Unlock()
	if i < len(s.script) {
		return s.script[i](ctx, fn)
	}
	<-ctx.Done()
	return ctx.Err()
}

// waitRoutes waits for a View of m holding the routes named, and fails
// the test if none comes.
func waitRoutes(t *testing.T, m *store.Mirror, want string) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		v, changed := m.Current()
		routes, err := store.All[*api.TrafficRoute](v)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, r := range routes {
			names = append(names, r.Name)
		}
		got := fmt.Sprint(names)
		if got == want {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("the mirror's View holds routes %s, want %s", got, want)
		}
	}
}

// TestMirrorTransactionEnds: a transaction ends with its last change even
// when the mirror does not follow that change's type, and a watch lost in
// the middle of one leaves nothing open after the mirror lists again.
func TestMirrorTransactionEnds(t *testing.T) {
	route := func(name string, rev int64, more bool) store.Event {
		return store.Event{Revision: rev, Op: store.OpCreate, Resource: storetest.Route("default", name, 1, nil), More: more}
	}
	start := func(t *testing.T, st *scriptedStore) *store.Mirror {
		m, _ := storetest.StartMirror(t, st, zaptest.NewLogger(t), "Mesh", "TrafficRoute")
		return m
	}

	t.Run("last change of a type not followed", func(t *testing.T) {
		st := &scriptedStore{Memory: store.NewMemory(0)}
		storetest.MustCreate(t, st.Memory, storetest.Mesh("default"))
		st.script = append(st.script, func(ctx context.Context, fn func(store.Event) error) error {
			fn(route("r1", 2, true))
			fn(route("r2", 3, true))
			fn(store.Event{Revision: 4, Op: store.OpCreate, Resource: &api.Zone{Meta: api.Meta{Type: "Zone", Name: "zone-1"}}})
			<-ctx.Done() // the stream stays, quiet
			return ctx.Err()
		})
		waitRoutes(t, start(t, st), "[r1 r2]")
	})

	t.Run("watch lost mid-transaction", func(t *testing.T) {
		st := &scriptedStore{Memory: store.NewMemory(0)}
		storetest.MustCreate(t, st.Memory, storetest.Mesh("default"))
		st.script = append(st.script, func(_ context.Context, fn func(store.Event) error) error {
			fn(route("r1", 2, true))
			// The transaction commits whole; the mirror lists it again.
			if _, err := st.Memory.Apply(context.Background(), []api.Resource{storetest.Route("default", "r1", 1, nil), storetest.Route("default", "r2", 1, nil)}, nil); err != nil {
				t.Error(err)
			}
			return fmt.Errorf("stream lost: %w", store.ErrCompacted)
		})
		waitRoutes(t, start(t, st), "[r1 r2]")
	})
}
