package xds

import (
	"context"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
)

// withEndpoint is listeners("a") whose load assignment "a" holds addr.
func withEndpoint(addr string) Resources {
	r := listeners("a")
	r[resource.EndpointType] = []types.Resource{LoadAssignment("a", []Endpoint{{Address: addr, Port: 80, Weight: 1, Zone: "z"}}, nil)}
	return r
}

// TestFixPublishedBeforeNackIsSent: a named (EDS) response is NACKed; the
// fix was published after that response went and before its NACK came in
// (or while the NACK slept in nacked). The fix must reach the proxy.
func TestFixPublishedBeforeNackIsSent(t *testing.T) {
	s, client := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.SetResources(ctx, "default.a", withEndpoint("10.0.0.1")); err != nil {
		t.Fatal(err)
	}
	str, err := client.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: "default.a"}
	str.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.EndpointType, ResourceNames: []string{"a"}})
	bad := recvWithin(t, str.Recv, 5*time.Second)
	// The fix is published: no watch is open (the proxy has not answered).
	if err := s.SetResources(ctx, "default.a", withEndpoint("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	fixed := s.published["default.a"].GetVersion(resource.EndpointType)
	str.Send(&discovery.DiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNames: []string{"a"},
		ResponseNonce: bad.Nonce, ErrorDetail: &status.Status{Code: 3, Message: "bad endpoint"}})
	got := recvWithin(t, str.Recv, 3*time.Second)
	if got.VersionInfo != fixed {
		t.Fatalf("got version %q, want the fix %q", got.VersionInfo, fixed)
	}
}

// TestNackHoldsNoOtherType: a proxy's NACK of its listeners must not
// hold back its endpoint updates on the same ADS stream.
func TestNackHoldsNoOtherType(t *testing.T) {
	s, client := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.SetResources(ctx, "default.a", withEndpoint("10.0.0.1")); err != nil {
		t.Fatal(err)
	}
	str, err := client.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: "default.a"}
	str.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.EndpointType, ResourceNames: []string{"a"}})
	eds := recvWithin(t, str.Recv, 5*time.Second)
	str.Send(&discovery.DiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNames: []string{"a"}, VersionInfo: eds.VersionInfo, ResponseNonce: eds.Nonce})
	str.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, ResourceNames: []string{"a"}})
	lds := recvWithin(t, str.Recv, 5*time.Second)
	// The proxy has NACKed a few times before in its life (the count
	// never goes down, whatever the type): 7 NACKs, e.g. 7 bad pushes.
	s.mu.Lock()
	s.nodes["default.a"].Nacks = 7
	s.mu.Unlock()
	str.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, ResourceNames: []string{"a"},
		ResponseNonce: lds.Nonce, ErrorDetail: &status.Status{Code: 3, Message: "bad listener"}})
	time.Sleep(100 * time.Millisecond) // the NACK is being handled
	start := time.Now()
	if err := s.SetResources(ctx, "default.a", withEndpoint("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	got := recvWithin(t, str.Recv, 15*time.Second)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("the endpoint update (%s) came %v after it was published: the listener NACK held the stream", got.TypeUrl, d.Round(100*time.Millisecond))
	}
}

// TestWildcardFirstRequestOfEmptyType: Envoy's first CDS (and LDS) request
// is a wildcard it waits for, to initialise; a proxy with no cluster must
// get an empty response, not silence (delta answers it: deltaAnswer).
func TestWildcardFirstRequestOfEmptyType(t *testing.T) {
	s, client := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.SetResources(ctx, "default.a", Resources{resource.ListenerType: nil}); err != nil {
		t.Fatal(err)
	}
	str, err := client.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	str.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "default.a"}, TypeUrl: resource.ClusterType})
	got := recvWithin(t, str.Recv, 3*time.Second)
	if len(got.Resources) != 0 {
		t.Fatalf("got %d clusters", len(got.Resources))
	}
}
