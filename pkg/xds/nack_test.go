package xds

import (
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

// edsStream publishes default.a's resources with a's endpoint at
// 10.0.0.1, opens a stream asking for EDS a by name (as Envoy and grpc-go
// do), and returns it with its first response.
func edsStream(t *testing.T, s *Server, client discovery.AggregatedDiscoveryServiceClient) (discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, *discovery.DiscoveryResponse) {
	t.Helper()
	if err := s.SetResources(t.Context(), "default.a", withEndpoint("10.0.0.1")); err != nil {
		t.Fatal(err)
	}
	str, err := client.StreamAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	str.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "default.a"}, TypeUrl: resource.EndpointType, ResourceNames: []string{"a"}})
	return str, recvWithin(t, str.Recv, 5*time.Second)
}

// TestFixPublishedBeforeNackIsSent: a named (EDS) response is NACKed; the
// fix was published after that response went and before its NACK came in.
// The fix must reach the proxy.
func TestFixPublishedBeforeNackIsSent(t *testing.T) {
	s, client := startServer(t)
	ctx := t.Context()
	str, bad := edsStream(t, s, client)
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
	ctx := t.Context()
	str, eds := edsStream(t, s, client)
	str.Send(&discovery.DiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNames: []string{"a"}, VersionInfo: eds.VersionInfo, ResponseNonce: eds.Nonce})
	str.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, ResourceNames: []string{"a"}})
	lds := recvWithin(t, str.Recv, 5*time.Second)
	// A proxy that has NACKed many times in its life (the count never
	// goes down, whatever the type): the server once slept up to 10 s on
	// each further NACK, in the stream's only loop.
	s.mu.Lock()
	s.nodes["default.a"].Nacks = 7
	s.mu.Unlock()
	str.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, ResourceNames: []string{"a"},
		ResponseNonce: lds.Nonce, ErrorDetail: &status.Status{Code: 3, Message: "bad listener"}})
	if err := s.SetResources(ctx, "default.a", withEndpoint("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	if got := recvWithin(t, str.Recv, 5*time.Second); got.TypeUrl != resource.EndpointType {
		t.Fatalf("after the listener NACK, a %s response, want the endpoint update", got.TypeUrl)
	}
}

// TestWildcardFirstRequestOfEmptyType: Envoy's first CDS (and LDS) request
// is a wildcard it waits for, to initialise; a proxy with no cluster must
// get an empty response, not silence (delta answers it: deltaAnswer).
func TestWildcardFirstRequestOfEmptyType(t *testing.T) {
	s, client := startServer(t)
	ctx := t.Context()
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
