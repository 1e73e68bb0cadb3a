package catalog

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// TestFollowerPublishesWhatMatters: a catalogue is published when a proxy
// goes, not when it only ACKs a new version or a lease is renewed.
func TestFollowerPublishesWhatMatters(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	st := store.NewMemory(0)
	write := func(rs ...api.Resource) {
		t.Helper()
		for _, r := range rs {
			r.GetMeta().Version = 0 // upserts, as the zone's writers do
		}
		if _, err := st.Apply(ctx, rs, nil); err != nil {
			t.Fatal(err)
		}
	}
	write(mesh("default"), dataplane("default", "web-1", "10.0.0.1", "web", 8080), insight("default", "web-1", true))
	m := store.NewMirror(st, append(Types(), "Lease"), zaptest.NewLogger(t))
	f := NewFollower("zone-1", m, zaptest.NewLogger(t))
	var wg sync.WaitGroup
	wg.Go(func() { m.Start(ctx) })
	wg.Go(func() { f.Start(ctx) })
	defer func() { cancel(); wg.Wait() }()
	testutil.Until(t, 5*time.Second, "the first catalogue with web-1 online", func() bool {
		cat, _ := f.Current()
		return cat.Mesh("default") != nil && len(cat.Mesh("default").Dataplanes) == 1
	})
	cat, changed := f.Current()
	acked := insight("default", "web-1", true)
	acked.Acked = map[string]string{"lds": "v2"}
	write(acked, &api.Lease{Meta: api.Meta{Type: "Lease", Name: "x"}, Holder: "a", RenewTime: time.Now(), Duration: 15})
	// A marker the catalogue reads, written after them, shows when the
	// follower has seen them.
	write(&api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: "default", Name: "marker"},
		Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: "web"}, Split: []api.Split{{Weight: 1}}}})
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("no catalogue after the marker")
	}
	next, changed := f.Current()
	if len(next.Mesh("default").Routes) != 1 || next.Revision != cat.Revision+3 {
		t.Fatalf("published revision %d (routes %d), want the marker's, %d, in one catalogue", next.Revision, len(next.Mesh("default").Routes), cat.Revision+3)
	}
	gone := insight("default", "web-1", false)
	gone.DisconnectedAt = store.Now()
	write(gone)
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("no catalogue after web-1 went")
	}
	if cat, _ := f.Current(); len(cat.Mesh("default").Dataplanes) != 0 {
		t.Fatal("web-1 still online")
	}
}
