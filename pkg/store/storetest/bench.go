package storetest

import (
	"context"
	"fmt"
	"testing"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// BenchFactory returns a new, empty store for one benchmark.
type BenchFactory func(b *testing.B) store.Store

// Bench measures the basic operations of stores made by newStore.
func Bench(b *testing.B, newStore BenchFactory) {
	ctx := context.Background()
	setup := func(b *testing.B, n int) store.Store {
		s := newStore(b)
		if _, err := s.Create(ctx, Mesh("default")); err != nil {
			b.Fatal(err)
		}
		for i := range n {
			if _, err := s.Create(ctx, Route("default", fmt.Sprintf("r%05d", i), 1, map[string]string{"team": fmt.Sprint(i % 10)})); err != nil {
				b.Fatal(err)
			}
		}
		return s
	}
	b.Run("Create", func(b *testing.B) {
		s := setup(b, 0)
		b.ResetTimer()
		for i := 0; b.Loop(); i++ {
			if _, err := s.Create(ctx, Route("default", fmt.Sprintf("c%d", i), 1, nil)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Update", func(b *testing.B) {
		s := setup(b, 1)
		r := Route("default", "r00000", 1, nil)
		r.Version = 1
		b.ResetTimer()
		for b.Loop() {
			out, err := s.Update(ctx, r)
			if err != nil {
				b.Fatal(err)
			}
			r.Version = out.GetMeta().Version
		}
	})
	b.Run("Get", func(b *testing.B) {
		s := setup(b, 100)
		key := api.Key{Type: "TrafficRoute", Mesh: "default", Name: "r00042"}
		b.ResetTimer()
		for b.Loop() {
			if _, err := s.Get(ctx, key); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("List%d", n), func(b *testing.B) {
			s := setup(b, n)
			b.ResetTimer()
			for b.Loop() {
				res, err := s.List(ctx, store.ListOptions{Type: "TrafficRoute", Mesh: "default"})
				if err != nil || len(res.Items) != n {
					b.Fatalf("list: %d items, %v", len(res.Items), err)
				}
			}
		})
	}
	b.Run("ListByLabel1000", func(b *testing.B) {
		s := setup(b, 1000)
		b.ResetTimer()
		for b.Loop() {
			res, err := s.List(ctx, store.ListOptions{Type: "TrafficRoute", Labels: map[string]string{"team": "3"}})
			if err != nil || len(res.Items) != 100 {
				b.Fatalf("list: %d items, %v", len(res.Items), err)
			}
		}
	})
}
