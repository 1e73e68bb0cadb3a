package store_test

import (
	"context"
	"errors"
	"testing"

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

func BenchmarkMemory(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) store.Store { return store.NewMemory(0) })
}
