package kds

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// heapMiB is the live heap after a collection, in MiB.
func heapMiB() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc >> 20)
}

// TestUnansweredResponsesCostTheirChanges: a type of 20,000 resources, a
// peer that takes its time acknowledging (inside the ACK timeout), and 300
// one-resource changes: what the Sender keeps of each response until it is
// answered (to undo it on a NACK) is what it changed, not a copy of what
// the peer holds of the whole type (376 MiB here when it was).
func TestUnansweredResponsesCostTheirChanges(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	st := store.NewMemory(0)
	mk := func(i, port int) api.Resource {
		return &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: fmt.Sprintf("web-%05d", i)},
			Networking: api.DataplaneNetworking{Address: "10.0.0.1", Inbound: []api.Inbound{{Port: port, Tags: map[string]string{api.TagService: "web"}}}}}
	}
	puts := []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}}
	for i := range 20000 {
		puts = append(puts, mk(i, 1))
	}
	if _, err := st.Apply(ctx, puts, nil); err != nil {
		t.Fatal(err)
	}
	d, _ := api.Lookup("Dataplane")
	cache := NewCache(st, []api.Descriptor{d}, nil, log)
	go cache.Start(ctx)
	peer := &chanStream{reqs: make(chan *discovery.DeltaDiscoveryRequest, 16), sent: make(chan *discovery.DeltaDiscoveryResponse, 1000)}
	peer.reqs <- &discovery.DeltaDiscoveryRequest{TypeUrl: TypeURL("Dataplane")}
	s := &Sender{Source: cache, Types: []api.Descriptor{d}, MaxMessageSize: 16 << 20, AckTimeout: time.Hour, Stats: NewStats(), Log: log}
	go s.Run(ctx, peer)
	<-peer.sent
	base := heapMiB()
	for i := range 300 {
		if _, err := st.Apply(ctx, []api.Resource{mk(i, 2)}, nil); err != nil {
			t.Fatal(err)
		}
		<-peer.sent
	}
	grown := heapMiB() - base
	t.Logf("heap grew by %d MiB for 300 unanswered one-resource responses", grown)
	if grown > 100 {
		t.Fatalf("heap grew by %d MiB for 300 unanswered one-resource responses over a 20,000-resource type", grown)
	}
}
