package xds

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ursamesh/ursa/pkg/testutil"
)

func startServer(t *testing.T) (*Server, discovery.AggregatedDiscoveryServiceClient) {
	return startServerWith(t, nil)
}

// startServerWith starts a Server that tells p (if not nil) of its streams.
func startServerWith(t *testing.T, p Presence) (*Server, discovery.AggregatedDiscoveryServiceClient) {
	t.Helper()
	s, client, _ := startServing(t, p)
	return s, client
}

// startServing is startServerWith, and ends the context the server was
// registered with when stop is called (the stop of the process).
func startServing(t *testing.T, p Presence) (_ *Server, _ discovery.AggregatedDiscoveryServiceClient, stop context.CancelFunc) {
	t.Helper()
	return startServingOn(t, p, prometheus.NewRegistry())
}

// startServingOn is startServing with the server's metrics on reg.
func startServingOn(t *testing.T, p Presence, reg prometheus.Registerer) (_ *Server, _ discovery.AggregatedDiscoveryServiceClient, stop context.CancelFunc) {
	t.Helper()
	s, err := NewServer(zaptest.NewLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	if p != nil {
		s.SetPresence(p)
	}
	ctx, cancel := context.WithCancel(context.Background())
	// Stop waits for the handlers, so that none logs after the test.
	g := grpc.NewServer(grpc.WaitForHandlers(true))
	s.Register(ctx, g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	t.Cleanup(func() { cancel(); g.Stop() })
	cc, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	r := Resources{}
	r.Add(resource.ListenerType, apiListener("billing"))
	r.Add(resource.RouteType, routeConfig("billing", []Subset{{Tags: map[string]string{"ursa.io/service": "billing"}, Weight: 1}}))
	r.Add(resource.ClusterType, EDSCluster("billing"))
	r.Add(resource.EndpointType, LoadAssignment("billing", nil, nil))
	if err := s.SetResources(ctx, "default.a", r); err != nil {
		t.Fatal(err)
	}
	return s, discovery.NewAggregatedDiscoveryServiceClient(cc), cancel
}

// TestStopFlagsDisconnects: a stream the proxy ends is a proxy leaving; one
// that ends because the server is stopping (its context done) says so, for
// the presence to leave the proxy connected while it reconnects.
func TestStopFlagsDisconnects(t *testing.T) {
	rec := &recorder{added: make(chan struct{}, 1)}
	_, client, stop := startServing(t, rec)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	connect := func() context.CancelFunc {
		sctx, leave := context.WithCancel(ctx)
		stream, err := client.StreamAggregatedResources(sctx)
		if err != nil {
			t.Fatal(err)
		}
		stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "default.a"}, TypeUrl: resource.ListenerType, ResourceNames: []string{"billing"}})
		return leave
	}
	leave := connect()
	rec.waitFor(t, OpConnected, 1)
	leave()
	if e := rec.waitFor(t, OpDisconnected, 1); e.Stopping {
		t.Fatalf("a proxy that left: %+v", e)
	}
	defer connect()()
	rec.waitFor(t, OpConnected, 2)
	stop()
	if e := rec.waitFor(t, OpDisconnected, 2); !e.Stopping {
		t.Fatalf("a stream the server's stop ended: %+v", e)
	}
}

// TestNackIsRecorded: a NACK is counted, shown in the proxy's insight, and
// the rejected configuration is not resent in a loop.
func TestNackIsRecorded(t *testing.T) {
	s, client := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := client.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: "default.a"}
	stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType, ResourceNames: []string{"billing"}})
	resp, err := stream.Recv()
	if err != nil || len(resp.Resources) != 1 {
		t.Fatalf("first response: %v %v", resp, err)
	}
	stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType, ResourceNames: []string{"billing"},
		ResponseNonce: resp.Nonce, ErrorDetail: &status.Status{Code: 3, Message: "cannot apply"}})
	testutil.Eventually(t, 10*time.Second, "the NACK in the proxy's insight", func() error {
		if n, ok := s.Insight("default.a"); !ok || n.Nacks != 1 || n.LastNack != "cannot apply" {
			return fmt.Errorf("insight %+v (found %v)", n, ok)
		}
		return nil
	})
	// Nothing new to send: the stream stays quiet rather than resending.
	got := make(chan error, 1)
	go func() { _, err := stream.Recv(); got <- err }()
	select {
	case err := <-got:
		t.Fatalf("the rejected configuration came again (%v)", err)
	case <-time.After(300 * time.Millisecond):
	}
}

// TestDeltaXDS: the same configuration is served over delta xDS.
func TestDeltaXDS(t *testing.T) {
	_, client := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := client.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "default.a"}, TypeUrl: resource.ListenerType, ResourceNamesSubscribe: []string{"billing"}})
	resp, err := stream.Recv()
	if err != nil || len(resp.Resources) != 1 || resp.Resources[0].Name != "billing" {
		t.Fatalf("delta response: %v %v", resp, err)
	}
}

// recorder is a Presence that keeps what it is told.
type recorder struct {
	mu     sync.Mutex
	events []StreamEvent
	added  chan struct{}
}

func (r *recorder) Observe(e StreamEvent) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
	select {
	case r.added <- struct{}{}:
	default:
	}
}

// waitFor waits until an event op of node has been observed, n times in
// all.
func (r *recorder) waitFor(t *testing.T, op StreamOp, times int) StreamEvent {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		r.mu.Lock()
		var seen []StreamEvent
		for _, e := range r.events {
			if e.Op == op {
				seen = append(seen, e)
			}
		}
		r.mu.Unlock()
		if len(seen) >= times {
			return seen[times-1]
		}
		select {
		case <-r.added:
		case <-deadline:
			t.Fatalf("event %d never came %d times; got %+v", op, times, r.events)
		}
	}
}

// TestPresenceEvents: the server tells its Presence when a proxy connects,
// acknowledges, rejects, and goes; and again when it comes back. It decides
// nothing from that itself.
func TestPresenceEvents(t *testing.T) {
	rec := &recorder{added: make(chan struct{}, 1)}
	s, client := startServerWith(t, rec)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	node := &core.Node{Id: "default.a"}
	connect := func() (discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, context.CancelFunc) {
		sctx, stop := context.WithCancel(ctx)
		stream, err := client.StreamAggregatedResources(sctx)
		if err != nil {
			t.Fatal(err)
		}
		stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType, ResourceNames: []string{"billing"}})
		return stream, stop
	}
	stream, stop := connect()
	if e := rec.waitFor(t, OpConnected, 1); e.Node != "default.a" || e.Kind != KindSidecar || e.At.IsZero() {
		t.Fatalf("connected: %+v", e)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType, ResourceNames: []string{"billing"},
		VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce})
	if e := rec.waitFor(t, OpAcked, 1); e.TypeURL != resource.ListenerType || e.Version != resp.VersionInfo {
		t.Fatalf("acked: %+v, want version %s", e, resp.VersionInfo)
	}
	if nodes, _ := s.Nodes(); len(nodes) != 1 || nodes[0].ID != "default.a" {
		t.Fatalf("nodes: %+v", nodes)
	}
	stop()
	if e := rec.waitFor(t, OpDisconnected, 1); e.Node != "default.a" {
		t.Fatalf("disconnected: %+v", e)
	}
	if nodes, _ := s.Nodes(); len(nodes) != 0 {
		t.Fatalf("nodes after the stream closed: %+v", nodes)
	}
	_, stop = connect()
	defer stop()
	rec.waitFor(t, OpConnected, 2)
}

// TestSetResourcesForAGoneConnection: what is generated for a connection
// that has closed (or never was) is not kept.
func TestSetResourcesForAGoneConnection(t *testing.T) {
	s, err := NewServer(zaptest.NewLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	r := Resources{}
	r.Add(resource.ClusterType, EDSCluster("billing"))
	r.Add(resource.EndpointType, LoadAssignment("billing", nil, nil))
	if err := s.SetResourcesFor(context.Background(), Node{ID: "default.gone", Since: time.Now()}, r); err != nil {
		t.Fatal(err)
	}
	if s.cache.snapshot("default.gone") != nil || len(s.published) != 0 {
		t.Fatal("a gone proxy's snapshot was kept")
	}
}

// TestProxiesGauge: ursa_xds_proxies counts the proxies with a stream, by
// kind, and the series dashboards read are there at zero before anything
// happened.
func TestProxiesGauge(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, client, _ := startServingOn(t, nil, reg)
	gauge := func(sidecars int) string {
		return fmt.Sprintf(`# HELP ursa_xds_proxies Proxies with an open xDS stream to this replica, by kind: sidecar, ingress, proxyless.
# TYPE ursa_xds_proxies gauge
ursa_xds_proxies{kind="ingress"} 0
ursa_xds_proxies{kind="proxyless"} 0
ursa_xds_proxies{kind="sidecar"} %d
`, sidecars)
	}
	if err := promtest.GatherAndCompare(reg, strings.NewReader(gauge(0)), "ursa_xds_proxies"); err != nil {
		t.Fatal(err)
	}
	if n, err := promtest.GatherAndCount(reg, "ursa_xds_nacks_total", "ursa_xds_refused_total"); err != nil || n != 10 {
		t.Fatalf("series of NACKs and refusals before any: %d %v, want 5 types and 5 reasons", n, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sctx, leave := context.WithCancel(ctx)
	stream, err := client.StreamAggregatedResources(sctx)
	if err != nil {
		t.Fatal(err)
	}
	stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "default.a"}, TypeUrl: resource.ListenerType, ResourceNames: []string{"billing"}})
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if err := promtest.GatherAndCompare(reg, strings.NewReader(gauge(1)), "ursa_xds_proxies"); err != nil {
		t.Fatal(err)
	}
	leave()
	testutil.Eventually(t, 10*time.Second, "the proxy gone from the gauge", func() error {
		return promtest.GatherAndCompare(reg, strings.NewReader(gauge(0)), "ursa_xds_proxies")
	})
}
