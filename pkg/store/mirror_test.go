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
	m := store.NewMirror(st, []string{"Mesh", "TrafficRoute"}, zaptest.NewLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { m.Start(ctx) })
	defer func() { cancel(); wg.Wait() }()
	<-m.Ready()
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
