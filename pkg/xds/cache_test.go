package xds

import (
	"context"
	"slices"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
)

// listeners is a proxyless configuration: per name a listener, its route
// and its cluster.
func listeners(names ...string) Resources {
	r := Resources{resource.ListenerType: nil}
	for _, n := range names {
		r.Add(resource.ListenerType, apiListener(n))
		r.Add(resource.RouteType, routeConfig(n, []Subset{{Tags: map[string]string{"ursa.io/service": n}, Weight: 1}}))
		r.Add(resource.ClusterType, EDSCluster(n))
		r.Add(resource.EndpointType, LoadAssignment(n, nil, nil))
	}
	return r
}

// recvWithin receives the next response, or fails the test after d.
func recvWithin[T any](t *testing.T, recv func() (T, error), d time.Duration) T {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	got := make(chan result, 1)
	go func() { v, err := recv(); got <- result{v, err} }()
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.v
	case <-time.After(d):
		t.Fatal("no response")
	}
	panic("unreachable")
}

// TestSotwWatches: a wildcard stream gets every listener and then each new
// version, a stream that names listeners gets those it names, and neither
// gets anything when a publication leaves its type unchanged.
func TestSotwWatches(t *testing.T) {
	s, client := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	node := &core.Node{Id: "default.a"}
	if err := s.SetResources(ctx, "default.a", listeners("a", "b")); err != nil {
		t.Fatal(err)
	}
	all, err := client.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	named, err := client.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	all.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType})
	named.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType, ResourceNames: []string{"b", "z"}})
	names := func(resp *discovery.DiscoveryResponse) []string {
		var out []string
		for _, a := range resp.GetResources() {
			l := &listener.Listener{}
			if err := a.UnmarshalTo(l); err != nil {
				t.Fatal(err)
			}
			out = append(out, l.GetName())
		}
		return out
	}
	first := recvWithin(t, all.Recv, 5*time.Second)
	if got := names(first); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("wildcard stream got %v, want [a b]", got)
	}
	firstNamed := recvWithin(t, named.Recv, 5*time.Second)
	if got := names(firstNamed); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("named stream got %v, want [b]", got)
	}
	all.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, VersionInfo: first.VersionInfo, ResponseNonce: first.Nonce})
	named.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, ResourceNames: []string{"b", "z"},
		VersionInfo: firstNamed.VersionInfo, ResponseNonce: firstNamed.Nonce})

	// The same listeners again (new messages): nothing is sent. Then a
	// new one: both streams get the new version.
	if err := s.SetResources(ctx, "default.a", listeners("a", "b")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetResources(ctx, "default.a", listeners("a", "b", "z")); err != nil {
		t.Fatal(err)
	}
	second := recvWithin(t, all.Recv, 5*time.Second)
	if got := names(second); !slices.Equal(got, []string{"a", "b", "z"}) || second.VersionInfo == first.VersionInfo {
		t.Fatalf("wildcard stream got %v at %q, want [a b z] at a new version", got, second.VersionInfo)
	}
	secondNamed := recvWithin(t, named.Recv, 5*time.Second)
	if got := names(secondNamed); !slices.Equal(got, []string{"b", "z"}) {
		t.Fatalf("named stream got %v, want [b z]", got)
	}
}

// TestDeltaWatches: a wildcard delta stream gets every resource, then only
// what changed, and the names of what was removed.
func TestDeltaWatches(t *testing.T) {
	s, client := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.SetResources(ctx, "default.a", listeners("a", "b")); err != nil {
		t.Fatal(err)
	}
	stream, err := client.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "default.a"}, TypeUrl: resource.ListenerType})
	names := func(resp *discovery.DeltaDiscoveryResponse) []string {
		var out []string
		for _, r := range resp.GetResources() {
			out = append(out, r.GetName())
		}
		return out
	}
	resp := recvWithin(t, stream.Recv, 5*time.Second)
	if got := names(resp); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("first response %v, want [a b]", got)
	}
	stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType, ResponseNonce: resp.Nonce})
	// b goes, c comes, a is unchanged.
	if err := s.SetResources(ctx, "default.a", listeners("a", "c")); err != nil {
		t.Fatal(err)
	}
	resp = recvWithin(t, stream.Recv, 5*time.Second)
	if got := names(resp); !slices.Equal(got, []string{"c"}) || !slices.Equal(resp.RemovedResources, []string{"b"}) {
		t.Fatalf("second response %v, removed %v; want [c], removed [b]", got, resp.RemovedResources)
	}
	stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType, ResponseNonce: resp.Nonce})
	// Only the clusters change: the listener watch stays open, and still
	// answers the next change of the listeners.
	more := listeners("a", "c")
	more.Add(resource.ClusterType, EDSCluster("d"))
	more.Add(resource.EndpointType, LoadAssignment("d", nil, nil))
	for _, r := range []Resources{more, listeners("a")} {
		if err := s.SetResources(ctx, "default.a", r); err != nil {
			t.Fatal(err)
		}
	}
	resp = recvWithin(t, stream.Recv, 5*time.Second)
	if got := names(resp); len(got) != 0 || !slices.Equal(resp.RemovedResources, []string{"c"}) {
		t.Fatalf("third response %v, removed %v; want nothing, removed [c]", got, resp.RemovedResources)
	}
}

// TestSotwLettingGo: a request naming nothing, from a stream that named
// some resources of the type before, lets go of the type (the xDS
// protocol; grpc-go and the built-in proxy send it when their last watch
// of a type goes): it gets nothing, not every resource as a wildcard
// would. A stream's first request naming nothing is a wildcard.
func TestSotwLettingGo(t *testing.T) {
	s, _ := startServer(t)
	if err := s.SetResources(context.Background(), "default.a", listeners("a", "b")); err != nil {
		t.Fatal(err)
	}
	snap := s.published["default.a"]
	req := &discovery.DiscoveryRequest{TypeUrl: resource.ListenerType}
	sub := stream.NewSotwSubscription([]string{"a"}, true)
	sub.SetResourceSubscription(nil)
	if resp := sotwAnswer(snap, req, sub); resp != nil {
		r, _ := resp.GetDiscoveryResponse()
		t.Fatalf("a stream that let go got %d listeners", len(r.GetResources()))
	}
	wildcard := stream.NewSotwSubscription(nil, true)
	resp := sotwAnswer(snap, req, wildcard)
	if resp == nil {
		t.Fatal("a first request naming nothing got nothing")
	}
	if r, _ := resp.GetDiscoveryResponse(); len(r.GetResources()) != 2 {
		t.Fatalf("a first request naming nothing got %d listeners, want both", len(r.GetResources()))
	}
}
