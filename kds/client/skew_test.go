package client

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/kds/kdspb"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// fixedSource is a global whose snapshot never changes.
type fixedSource struct{ snap *kds.Snapshot }

func (s fixedSource) Current() (*kds.Snapshot, <-chan struct{}) { return s.snap, make(chan struct{}) }
func (s fixedSource) Ready() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// pipe joins a Sender (global side) and a Receiver (zone side) in memory.
type pipe struct {
	reqs  chan *discovery.DeltaDiscoveryRequest
	resps chan *discovery.DeltaDiscoveryResponse
}
type senderEnd struct{ *pipe }
type receiverEnd struct{ *pipe }

func (p senderEnd) Send(r *discovery.DeltaDiscoveryResponse) error     { p.resps <- r; return nil }
func (p senderEnd) Recv() (*discovery.DeltaDiscoveryRequest, error)    { return <-p.reqs, nil }
func (p receiverEnd) Send(r *discovery.DeltaDiscoveryRequest) error    { p.reqs <- r; return nil }
func (p receiverEnd) Recv() (*discovery.DeltaDiscoveryResponse, error) { return <-p.resps, nil }

func entryFromDoc(t *testing.T, typ, mesh, name string, doc []byte) *kds.Entry {
	t.Helper()
	body, err := proto.Marshal(&kdspb.Resource{Type: typ, Mesh: mesh, Name: name, Json: doc})
	if err != nil {
		t.Fatal(err)
	}
	wn := mesh + "/" + name
	if mesh == "" {
		wn = name
	}
	v := api.HashBytes(doc)
	return &kds.Entry{Name: wn, Version: v, Wire: &discovery.Resource{Name: wn, Version: v,
		Resource: &anypb.Any{TypeUrl: "type.googleapis.com/ursa.kds.v1.Resource", Value: body}}}
}

func entryOf(t *testing.T, r api.Resource) *kds.Entry {
	t.Helper()
	e, err := kds.NewEntry(kds.WireName(api.KeyOf(r)), r, "")
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestNewerGlobalsFieldDoesNotBlockTheType: a global one version ahead
// writes a TrafficRoute with a field this zone's version does not know. The
// zone refuses that one, naming it, and applies the others of the response:
// the unrelated "billing" split (a DR lever) reaches it, as with Kuma's
// zones, which skip a resource they cannot take.
func TestNewerGlobalsFieldDoesNotBlockTheType(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := zaptest.NewLogger(t)
	mesh := &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}
	billing := &api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: "default", Name: "billing"},
		Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: "billing"},
			Split: []api.Split{{Weight: 100, Tags: map[string]string{api.TagZone: "zone-b"}}}}}
	future := api.DeepCopy(billing).(*api.TrafficRoute)
	future.Name, future.Spec.Destination = "payments", map[string]string{api.TagService: "payments"}
	doc, _ := api.EncodeJSON(kds.Canonical(future))
	var m map[string]any
	json.Unmarshal(doc, &m)
	m["spec"].(map[string]any)["mirror"] = map[string]any{"percent": 10} // a field from the next version
	doc, _ = json.Marshal(m)

	meshD, _ := api.Lookup("Mesh")
	routeD, _ := api.Lookup("TrafficRoute")
	snap := &kds.Snapshot{Revision: 1, Types: map[string]*kds.TypeSet{
		kds.TypeURL("Mesh"): {Entries: map[string]*kds.Entry{"default": entryOf(t, mesh)}},
		kds.TypeURL("TrafficRoute"): {Entries: map[string]*kds.Entry{
			"default/billing":  entryOf(t, billing),
			"default/payments": entryFromDoc(t, "TrafficRoute", "default", "payments", doc),
		}},
	}}
	p := &pipe{reqs: make(chan *discovery.DeltaDiscoveryRequest, 64), resps: make(chan *discovery.DeltaDiscoveryResponse, 64)}
	zoneStore := store.NewMemory(0)
	types := []api.Descriptor{meshD, routeD}
	s := &kds.Sender{Source: fixedSource{snap}, Types: types, Peer: "zone-a", MaxMessageSize: 4 << 20, AckTimeout: time.Minute, Stats: kds.NewStats(), Log: log}
	r := &kds.Receiver{Types: types, Target: &globalTarget{store: zoneStore, log: log, zone: "zone-a", held: map[string]map[string]bool{}}, Stats: kds.NewStats(), Log: log}
	go s.Run(ctx, senderEnd{p})
	go r.Run(ctx, receiverEnd{p})

	k := api.Key{Type: "TrafficRoute", Mesh: "default", Name: "billing"}
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := zoneStore.Get(ctx, k); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("8s on, the valid TrafficRoute default/billing has not reached the zone: one resource with a newer field NACKs the whole type, again at every retry")
}
