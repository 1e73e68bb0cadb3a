package xds

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ursamesh/ursa/pkg/testutil"
)

func startServer(t *testing.T) (*Server, discovery.AggregatedDiscoveryServiceClient) {
	t.Helper()
	s, err := NewServer(zaptest.NewLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
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
	r.add(resource.ListenerType, apiListener("billing"))
	r.add(resource.RouteType, routeConfig("billing", []Subset{{Tags: map[string]string{"ursa.io/service": "billing"}, Weight: 1}}))
	r.add(resource.ClusterType, edsCluster("billing"))
	r.add(resource.EndpointType, loadAssignment("billing", nil, nil))
	if err := s.SetResources(ctx, "default.a", r); err != nil {
		t.Fatal(err)
	}
	return s, discovery.NewAggregatedDiscoveryServiceClient(cc)
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

// TestOffline: a proxy whose stream closes is offline (its instances stop
// being endpoints) until it connects again, and the change wakes whoever
// follows the server's nodes.
func TestOffline(t *testing.T) {
	s, client := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	connect := func() context.CancelFunc {
		sctx, stop := context.WithCancel(ctx)
		stream, err := client.StreamAggregatedResources(sctx)
		if err != nil {
			t.Fatal(err)
		}
		stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "default.a"}, TypeUrl: resource.ListenerType, ResourceNames: []string{"billing"}})
		testutil.Until(t, 10*time.Second, "the proxy to show as connected", func() bool {
			n, ok := s.Insight("default.a")
			return ok && n.Connected
		})
		return stop
	}
	wait := func(what string, want bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for s.Offline()["default.a"] != want {
			_, changed := s.Nodes()
			select {
			case <-changed:
			case <-time.After(time.Until(deadline)):
				t.Fatalf("%s: offline = %v", what, s.Offline())
			}
		}
	}
	if len(s.Offline()) != 0 {
		t.Fatal("a proxy that never connected is offline")
	}
	stop := connect()
	wait("connected", false)
	stop()
	wait("stream closed", true)
	stop = connect()
	defer stop()
	wait("reconnected", false)
}
