package server_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ursamesh/ursa/kds/server"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// blipStore fails the next `fail` writes of zone Dataplanes with
// ErrUnavailable: PostgreSQL at the global gone for a moment.
type blipStore struct {
	store.Store
	fail atomic.Int32
}

func (s *blipStore) Apply(ctx context.Context, puts []api.Resource, deletes []api.Key) (int, error) {
	for _, r := range puts {
		if r.GetMeta().Type == "Dataplane" && s.fail.Add(-1) >= 0 {
			return 0, fmt.Errorf("apply: %w", store.ErrUnavailable)
		}
	}
	return s.Store.Apply(ctx, puts, deletes)
}

// TestZoneToGlobalRecoversAlone: the global's store refuses one write of
// the zone's Dataplanes (a PostgreSQL blip), which ends the zone-to-global
// stream; the zone reconnects and sends again on its own, while the global
// has nothing to send it (the session's other stream ends with it).
func TestZoneToGlobalRecoversAlone(t *testing.T) {
	ctx := context.Background()
	st := &blipStore{Store: store.NewMemory(0)}
	g := startGlobalWith(t, st, server.Deps{AckTimeout: 5 * time.Second, Verifier: fakeTokens{}})
	if _, err := st.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}); err != nil {
		t.Fatal(err)
	}
	a := startZone(t, g, "zone-a", "zone:zone-a")
	testutil.Until(t, 30*time.Second, "the mesh in zone A", func() bool { return has(a.store, api.Key{Type: "Mesh", Name: "default"}) })
	dp := func(name string) *api.Dataplane {
		return &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: name},
			Networking: api.DataplaneNetworking{Address: "127.0.0.1", Inbound: []api.Inbound{{Port: 1, Tags: map[string]string{api.TagService: "web"}}}}}
	}
	st.fail.Store(1)
	if _, err := a.store.Create(ctx, dp("web-1")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the blip is over
	if _, err := a.store.Create(ctx, dp("web-2")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if has(g.store, api.Key{Type: "Dataplane", Mesh: "default", Name: "zone-a.web-2"}) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("15s after a one-write store blip, the zone's dataplanes are not at the global (zone connected: %v)", a.client.Connected())
}
