package kds

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// chanStream is a peer fed from a channel, recording what it is sent.
type chanStream struct {
	reqs chan *discovery.DeltaDiscoveryRequest
	sent chan *discovery.DeltaDiscoveryResponse
}

func (p *chanStream) Send(r *discovery.DeltaDiscoveryResponse) error { p.sent <- r; return nil }
func (p *chanStream) Recv() (*discovery.DeltaDiscoveryRequest, error) {
	r, ok := <-p.reqs
	if !ok {
		return nil, io.EOF
	}
	return r, nil
}

// TestSubscriptionToUnknownTypeKeepsStream: a peer one version apart
// subscribes to a type this side does not know (a global that added a
// zone-to-global type, talking to a zone that predates it; or a newer zone
// subscribing to a global-to-zone type an older global lacks). The stream
// goes on for the types both know, as go-control-plane's (Kuma's) does,
// instead of ending and reconnecting forever.
func TestSubscriptionToUnknownTypeKeepsStream(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := zaptest.NewLogger(t)
	st := store.NewMemory(0)
	if _, err := st.Apply(ctx, []api.Resource{
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}},
		&api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: "web-1"},
			Networking: api.DataplaneNetworking{Address: "127.0.0.1", Inbound: []api.Inbound{{Port: 1, Tags: map[string]string{api.TagService: "web"}}}}},
	}, nil); err != nil {
		t.Fatal(err)
	}
	d, _ := api.Lookup("Dataplane")
	cache := NewCache(st, []api.Descriptor{d}, nil, log)
	go cache.Start(ctx)
	peer := &chanStream{reqs: make(chan *discovery.DeltaDiscoveryRequest, 16), sent: make(chan *discovery.DeltaDiscoveryResponse, 16)}
	// The newer peer subscribes to every type it knows, one this side does not know first.
	peer.reqs <- &discovery.DeltaDiscoveryRequest{TypeUrl: TypeURL("MeshService")}
	peer.reqs <- &discovery.DeltaDiscoveryRequest{TypeUrl: TypeURL("Dataplane")}
	s := &Sender{Source: cache, Types: []api.Descriptor{d}, MaxMessageSize: 4 << 20, AckTimeout: time.Minute, Stats: NewStats(), Log: log}
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx, peer) }()
	select {
	case err := <-errc:
		t.Fatalf("the stream ended on a subscription to a type this side does not know: %v", err)
	case r := <-peer.sent:
		if r.TypeUrl != TypeURL("Dataplane") || len(r.Resources) != 1 {
			t.Fatalf("unexpected response %v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the Dataplanes were never sent")
	}
}

// TestSplitResponsesFitTheLimit: 26,000 Dataplanes of about 700 bytes
// (18 MB) with the default 16 MiB limit: every response the Sender splits
// them into fits the limit, each resource counted with its framing in the
// response (its field's tag and length), which gRPC would refuse otherwise,
// on every retry.
func TestSplitResponsesFitTheLimit(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	st := store.NewMemory(0)
	puts := []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}}
	for i := range 26000 {
		puts = append(puts, &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: fmt.Sprintf("web-%05d", i)},
			Networking: api.DataplaneNetworking{Address: fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255),
				Inbound: []api.Inbound{{Port: 8080, Tags: map[string]string{
					api.TagService: fmt.Sprintf("svc-%d", i%200), "version": "v1",
					"team": strings.Repeat("t", 60), "owner": strings.Repeat("o", 60),
					"app.kubernetes.io/name": strings.Repeat("n", 60), "app.kubernetes.io/part-of": strings.Repeat("p", 60),
					"pod-template-hash": strings.Repeat("h", 60),
				}}}}})
	}
	if _, err := st.Apply(ctx, puts, nil); err != nil {
		t.Fatal(err)
	}
	d, _ := api.Lookup("Dataplane")
	cache := NewCache(st, []api.Descriptor{d}, nil, log)
	go cache.Start(ctx)
	const limit = 16 << 20
	peer := &chanStream{reqs: make(chan *discovery.DeltaDiscoveryRequest, 16), sent: make(chan *discovery.DeltaDiscoveryResponse, 16)}
	peer.reqs <- &discovery.DeltaDiscoveryRequest{TypeUrl: TypeURL("Dataplane")}
	s := &Sender{Source: cache, Types: []api.Descriptor{d}, MaxMessageSize: limit, AckTimeout: time.Minute, Stats: NewStats(), Log: log}
	go s.Run(ctx, peer)
	got := 0
	for got < 26000 {
		select {
		case r := <-peer.sent:
			if n := proto.Size(r); n > limit {
				t.Fatalf("a response of %d resources is %d bytes, over the %d-byte limit the Sender was given (gRPC refuses to send it)", len(r.Resources), n, limit)
			}
			got += len(r.Resources)
		case <-time.After(30 * time.Second):
			t.Fatalf("only %d sent", got)
		}
	}
}
