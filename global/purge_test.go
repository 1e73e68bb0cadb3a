package global

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// TestPurgeZones: what a zone sent (its Dataplanes, ZoneIngress, insights)
// goes when its Zone is deleted, and, as the purge starts, when its Zone
// went while none ran; other zones' stay, and so does everything of a
// zone registered again.
func TestPurgeZones(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := store.NewMemory(1000)
	log := zaptest.NewLogger(t)
	must := func(_ api.Resource, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(st.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}))
	sent := func(zone string) []api.Key {
		labels := map[string]string{api.LabelOrigin: api.OriginZone, api.LabelZone: zone}
		dp := &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: zone + ".web-1", Labels: labels},
			Networking: api.DataplaneNetworking{Address: "10.0.0.7", Inbound: []api.Inbound{{Port: 8080, Tags: map[string]string{api.TagService: "web", api.TagZone: zone}}}}}
		ing := &api.ZoneIngress{Meta: api.Meta{Type: "ZoneIngress", Name: zone + ".ingress", Labels: labels}, Zone: zone,
			Networking: api.ZoneIngressNetworking{Address: "10.0.0.9", Port: 10001}}
		must(st.Create(ctx, dp))
		must(st.Create(ctx, ing))
		must(st.Create(ctx, &api.ZoneInsight{Meta: api.Meta{Type: "ZoneInsight", Name: zone}}))
		return []api.Key{api.KeyOf(dp), api.KeyOf(ing), {Type: "ZoneInsight", Name: zone}}
	}
	for _, z := range []string{"zone-1", "zone-2"} {
		must(st.Create(ctx, &api.Zone{Meta: api.Meta{Type: "Zone", Name: z}}))
	}
	zone1, zone2, zone3 := sent("zone-1"), sent("zone-2"), sent("zone-3") // zone-3's Zone went while no purge ran
	mirror := store.NewMirror(st, mirroredTypes(), log)
	go mirror.Start(ctx)
	done := make(chan struct{})
	go func() { purgeZones(ctx, st, mirror, log); close(done) }()
	defer func() { cancel(); <-done }()

	present := func(keys []api.Key) (n int) {
		for _, k := range keys {
			if _, err := st.Get(ctx, k); err == nil {
				n++
			} else if !errors.Is(err, store.ErrNotFound) {
				t.Fatal(err)
			}
		}
		return n
	}
	testutil.Eventually(t, 10*time.Second, "zone-3's resources, whose Zone is gone, to be purged at start", func() error {
		if n := present(zone3); n != 0 {
			return errors.New("still there")
		}
		return nil
	})
	if err := st.Delete(ctx, api.Key{Type: "Zone", Name: "zone-2"}, 0); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "zone-2's resources to go with its Zone", func() error {
		if n := present(zone2); n != 0 {
			return errors.New("still there")
		}
		return nil
	})
	if n := present(zone1); n != len(zone1) {
		t.Fatalf("%d of zone-1's %d resources left", n, len(zone1))
	}

	// A zone registered again as its purge runs keeps what it sends.
	purgeZone(ctx, st, "zone-1", log)
	if n := present(zone1); n != len(zone1) {
		t.Fatalf("a registered zone's resources were purged: %d of %d left", n, len(zone1))
	}
}
