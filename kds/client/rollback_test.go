package client

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// mutableSource is a global whose snapshot the test replaces.
type mutableSource struct {
	mu      sync.Mutex
	snap    *kds.Snapshot
	changed chan struct{}
}

func (s *mutableSource) Current() (*kds.Snapshot, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap, s.changed
}
func (s *mutableSource) Ready() <-chan struct{} { c := make(chan struct{}); close(c); return c }
func (s *mutableSource) publish(snap *kds.Snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.snap = snap
	close(s.changed)
	s.changed = make(chan struct{})
}

// TestRolledBackChangeReachesTheZone: while the zone refuses one resource
// of a type (a newer global's field), it applies the others of each
// response and NACKs. A DR split changed from zone-b to zone-c reaches the
// zone; rolled back to zone-b, it reaches it too: after a NACK the sender
// holds what it sent as unknown, not as what the zone held before (which,
// versions being hashes of the content, equals the rollback).
func TestRolledBackChangeReachesTheZone(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := zaptest.NewLogger(t)
	mesh := &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}
	route := func(zone string) *api.TrafficRoute {
		return &api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: "default", Name: "billing"},
			Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: "billing"},
				Split: []api.Split{{Weight: 100, Tags: map[string]string{api.TagZone: zone}}}}}
	}
	future := route("zone-b")
	future.Name, future.Spec.Destination = "payments", map[string]string{api.TagService: "payments"}
	doc, _ := api.EncodeJSON(kds.Canonical(future))
	var m map[string]any
	json.Unmarshal(doc, &m)
	m["spec"].(map[string]any)["mirror"] = map[string]any{"percent": 10}
	doc, _ = json.Marshal(m)
	refused := entryFromDoc(t, "TrafficRoute", "default", "payments", doc)

	meshD, _ := api.Lookup("Mesh")
	routeD, _ := api.Lookup("TrafficRoute")
	snapOf := func(rev int64, routes map[string]*kds.Entry) *kds.Snapshot {
		return &kds.Snapshot{Revision: rev, Types: map[string]*kds.TypeSet{
			kds.TypeURL("Mesh"):         {Entries: map[string]*kds.Entry{"default": entryOf(t, mesh)}},
			kds.TypeURL("TrafficRoute"): {Entries: routes},
		}}
	}
	src := &mutableSource{snap: snapOf(1, map[string]*kds.Entry{"default/billing": entryOf(t, route("zone-b"))}), changed: make(chan struct{})}
	p := &pipe{reqs: make(chan *discovery.DeltaDiscoveryRequest, 64), resps: make(chan *discovery.DeltaDiscoveryResponse, 64)}
	zoneStore := store.NewMemory(0)
	types := []api.Descriptor{meshD, routeD}
	s := &kds.Sender{Source: src, Types: types, Peer: "zone-a", MaxMessageSize: 4 << 20, AckTimeout: time.Minute, Stats: kds.NewStats(), Log: log}
	r := &kds.Receiver{Types: types, Target: &globalTarget{store: zoneStore, log: log, zone: "zone-a", held: map[string]map[string]bool{}}, Stats: kds.NewStats(), Log: log}
	go s.Run(ctx, senderEnd{p})
	go r.Run(ctx, receiverEnd{p})

	k := api.Key{Type: "TrafficRoute", Mesh: "default", Name: "billing"}
	waitZone := func(want string, d time.Duration) string {
		var got string
		for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if res, err := zoneStore.Get(ctx, k); err == nil {
				got = res.(*api.TrafficRoute).Spec.Split[0].Tags[api.TagZone]
				if got == want {
					return got
				}
			}
		}
		return got
	}
	if got := waitZone("zone-b", 5*time.Second); got != "zone-b" {
		t.Fatalf("initial route not at the zone: %q", got)
	}
	// The DR lever: everything to zone-c; meanwhile a newer global's route
	// appears that this zone refuses.
	src.publish(snapOf(2, map[string]*kds.Entry{"default/billing": entryOf(t, route("zone-c")), "default/payments": refused}))
	if got := waitZone("zone-c", 5*time.Second); got != "zone-c" {
		t.Fatalf("DR change not at the zone: %q", got)
	}
	time.Sleep(200 * time.Millisecond) // the NACK is in
	// Roll the lever back.
	src.publish(snapOf(3, map[string]*kds.Entry{"default/billing": entryOf(t, route("zone-b")), "default/payments": refused}))
	if got := waitZone("zone-b", 8*time.Second); got != "zone-b" {
		t.Fatalf("8s after the rollback the zone still routes billing to %q (the global says zone-b): the NACK reverted the sender's belief to zone-b's hash though the zone applied zone-c", got)
	}
}
