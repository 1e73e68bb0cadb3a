package kds

import (
	"context"
	"io"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap/zaptest"
	"google.golang.org/genproto/googleapis/rpc/status"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// nackOnce is a peer that rejects the first response it gets and accepts
// the rest, recording every response.
type nackOnce struct {
	reqs  chan *discovery.DeltaDiscoveryRequest
	sent  chan *discovery.DeltaDiscoveryResponse
	count int
}

func (p *nackOnce) Send(r *discovery.DeltaDiscoveryResponse) error {
	p.count++
	ack := &discovery.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce}
	if p.count == 1 {
		ack.ErrorDetail = &status.Status{Code: 3, Message: "mesh not found: \"default\""}
	}
	p.reqs <- ack
	p.sent <- r
	return nil
}

func (p *nackOnce) Recv() (*discovery.DeltaDiscoveryRequest, error) {
	r, ok := <-p.reqs
	if !ok {
		return nil, io.EOF
	}
	return r, nil
}

// TestNackedTypeIsSentAgain: a rejection (here, policies that arrived
// before their Mesh) does not leave the peer behind until the next change:
// the type is sent again after a pause.
func TestNackedTypeIsSentAgain(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := zaptest.NewLogger(t)
	st := store.NewMemory(0)
	if _, err := st.Apply(ctx, []api.Resource{
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}},
		&api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: "default", Name: "billing"}, Spec: api.TrafficRouteSpec{
			Destination: map[string]string{api.TagService: "billing"}, Split: []api.Split{{Weight: 100}}}},
	}, nil); err != nil {
		t.Fatal(err)
	}
	d, _ := api.Lookup("TrafficRoute")
	cache := NewCache(st, []api.Descriptor{d}, nil, log)
	go cache.Start(ctx)
	<-cache.Ready()
	peer := &nackOnce{reqs: make(chan *discovery.DeltaDiscoveryRequest, 16), sent: make(chan *discovery.DeltaDiscoveryResponse, 16)}
	peer.reqs <- &discovery.DeltaDiscoveryRequest{TypeUrl: TypeURL("TrafficRoute")}
	s := &Sender{Source: cache, Types: []api.Descriptor{d}, MaxMessageSize: 4 << 20, AckTimeout: time.Minute,
		Stats: NewStats(), Log: log}
	go s.Run(ctx, peer)
	for i, want := range []string{"the first response", "the response sent again after the NACK"} {
		select {
		case r := <-peer.sent:
			if len(r.Resources) != 1 || r.Resources[0].Name != "default/billing" {
				t.Fatalf("%s: %v", want, r)
			}
			if i == 0 {
				t.Logf("sent at %s", time.Now().Format("15:04:05.000"))
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s", want)
		}
	}
	select {
	case r := <-peer.sent:
		t.Fatalf("sent again after an ACK: %v", r)
	case <-time.After(1500 * time.Millisecond):
	}
}
