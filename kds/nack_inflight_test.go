package kds

import (
	"context"
	"errors"
	"net"
	"sort"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ursamesh/ursa/kds/kdspb"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// gatedTarget holds what it applies by name. Its first Apply waits for
// release; the first reject Applies are refused (the policies' Mesh is not
// there yet, say), the rest accepted.
type gatedTarget struct {
	firstIn, release chan struct{}
	reject           int

	mu    sync.Mutex
	calls int
	held  map[string]string
}

func (t *gatedTarget) Held(context.Context, api.Descriptor) (map[string]string, error) {
	return map[string]string{}, nil
}

func (t *gatedTarget) Apply(_ context.Context, _ api.Descriptor, res []*discovery.Resource, removed []string) error {
	t.mu.Lock()
	t.calls++
	n := t.calls
	t.mu.Unlock()
	if n == 1 {
		close(t.firstIn)
		<-t.release
	}
	if n <= t.reject {
		return Reject(errors.New("mesh not found: \"default\""))
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range res {
		t.held[r.Name] = r.Version
	}
	for _, n := range removed {
		delete(t.held, n)
	}
	return nil
}

func (t *gatedTarget) names() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for n := range t.held {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

type senderService struct {
	kdspb.UnimplementedKDSServer
	s *Sender
}

func (g *senderService) GlobalToZone(stream kdspb.KDS_GlobalToZoneServer) error {
	return g.s.Run(stream.Context(), stream)
}

func tr(name string) *api.TrafficRoute {
	return &api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: "default", Name: name}, Spec: api.TrafficRouteSpec{
		Destination: map[string]string{api.TagService: name}, Split: []api.Split{{Weight: 100}}}}
}

// TestTwoNacksInFlightKeepBoth: two responses of a type are in flight (two
// writes at the global in quick succession) and both are NACKed (their
// Mesh is refused, say). The second's "before" counts the first's
// resources as held; restoring it at the second NACK lost them for good.
// A NACK voids the type's later responses: once the cause is gone, the
// retry sends both resources.
func TestTwoNacksInFlightKeepBoth(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := zaptest.NewLogger(t)
	st := store.NewMemory(0)
	if _, err := st.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}); err != nil {
		t.Fatal(err)
	}
	d, _ := api.Lookup("TrafficRoute")
	cache := NewCache(st, []api.Descriptor{d}, nil, log)
	go cache.Start(ctx)
	<-cache.Ready()

	gs := grpc.NewServer()
	kdspb.RegisterKDSServer(gs, &senderService{s: &Sender{Source: cache, Types: []api.Descriptor{d}, Peer: "zone-a",
		MaxMessageSize: 4 << 20, AckTimeout: time.Minute, Stats: NewStats(), Log: log.Named("sender")}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	defer gs.Stop()
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	stream, err := kdspb.NewKDSClient(cc).GlobalToZone(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tgt := &gatedTarget{firstIn: make(chan struct{}), release: make(chan struct{}), reject: 2, held: map[string]string{}}
	r := &Receiver{Types: []api.Descriptor{d}, Target: tgt, Stats: NewStats(), Log: log.Named("receiver")}
	go r.Run(ctx, stream)

	if _, err := st.Create(ctx, tr("a")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-tgt.firstIn:
	case <-time.After(10 * time.Second):
		t.Fatal("route a never reached the receiver")
	}
	if _, err := st.Create(ctx, tr("b")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the sender sends b while a is being applied
	close(tgt.release)                 // both are NACKed; later ones are accepted

	time.Sleep(5 * time.Second) // retries at 1 s and 2 s
	if got := tgt.names(); len(got) != 2 {
		t.Fatalf("after the NACKs' cause went away the peer holds %v, want [default/a default/b] (the global holds both)", got)
	}
}
