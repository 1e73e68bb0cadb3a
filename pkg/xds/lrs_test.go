package xds

import (
	"context"
	"fmt"
	"math"
	"net"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	lrs "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	ursatest "github.com/ursamesh/ursa/pkg/testutil"
)

// lrsFixture is an xDS server with LRS on one real gRPC server, and a
// client connection to it.
type lrsFixture struct {
	srv   *Server
	lrs   *LoadReporting
	loads *Loads
	cc    *grpc.ClientConn
}

func startLRS(t *testing.T, auth *Auth) *lrsFixture {
	t.Helper()
	reg := prometheus.NewRegistry()
	s, err := NewServer(zaptest.NewLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	if auth != nil {
		s.SetAuth(*auth)
	}
	loads := NewLoads(2 * time.Second)
	l, err := NewLoadReporting(s, loads, 100*time.Millisecond, zaptest.NewLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	// Stop waits for the handlers, so that none logs after the test (an
	// ADS stream's end is logged).
	g := grpc.NewServer(grpc.WaitForHandlers(true))
	s.Register(ctx, g)
	l.Register(g)
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
	return &lrsFixture{srv: s, lrs: l, loads: loads, cc: cc}
}

// connect publishes billing's endpoints in zone-1 and zone-2 for a node and
// connects it over ADS; the stream lasts as long as ctx.
func (f *lrsFixture) connect(t *testing.T, ctx context.Context, id string) {
	t.Helper()
	r := Resources{}
	r.Add(resource.ClusterType, EDSCluster("billing"))
	r.Add(resource.EndpointType, LoadAssignment("billing", []Endpoint{
		{Address: "10.0.0.1", Port: 80, Weight: 1, Zone: "zone-1"},
		{Address: "10.0.0.2", Port: 80, Weight: 1, Zone: "zone-2"},
	}, nil))
	if err := f.srv.SetResources(ctx, id, r); err != nil {
		t.Fatal(err)
	}
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(f.cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: id}, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
}

func locality(zone string, ok, failed uint64) *endpoint.UpstreamLocalityStats {
	return &endpoint.UpstreamLocalityStats{Locality: &core.Locality{Zone: zone},
		TotalSuccessfulRequests: ok, TotalErrorRequests: failed, TotalIssuedRequests: ok + failed}
}

func report(cluster string, locs ...*endpoint.UpstreamLocalityStats) *endpoint.ClusterStats {
	return &endpoint.ClusterStats{ClusterName: cluster, UpstreamLocalityStats: locs, LoadReportInterval: durationpb.New(time.Second)}
}

// open starts an LRS stream as node and returns it after the server's
// first response, or the error that ended it.
func (f *lrsFixture) open(ctx context.Context, id string) (lrs.LoadReportingService_StreamLoadStatsClient, *lrs.LoadStatsResponse, error) {
	stream, err := lrs.NewLoadReportingServiceClient(f.cc).StreamLoadStats(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := stream.Send(&lrs.LoadStatsRequest{Node: &core.Node{Id: id}}); err != nil {
		return nil, nil, err
	}
	resp, err := stream.Recv()
	return stream, resp, err
}

// TestLoadReportIsAggregated: a connected proxy's reports are summed per
// service and destination zone; what it reports of clusters or zones it was
// never given is refused and counted.
func TestLoadReportIsAggregated(t *testing.T) {
	f := startLRS(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f.connect(t, ctx, "default.web-1")
	stream, resp, err := f.open(ctx, "default.web-1")
	if err != nil {
		t.Fatal(err)
	}
	if !resp.GetSendAllClusters() || resp.GetLoadReportingInterval().AsDuration() != 100*time.Millisecond {
		t.Fatalf("response %v: want all clusters every 100ms", resp)
	}
	for range 2 {
		err := stream.Send(&lrs.LoadStatsRequest{ClusterStats: []*endpoint.ClusterStats{
			report("billing", locality("zone-2", 40, 1), locality("zone-1", 10, 0), locality("zone-9", 1000, 0)),
			report("payments", locality("zone-2", 1000, 0)),
		}})
		if err != nil {
			t.Fatal(err)
		}
	}
	ursatest.Until(t, 10*time.Second, "two reports in the aggregate", func() bool {
		s := f.loads.Services(time.Now())
		return len(s) == 1 && s[0].Zones["zone-2"].Successful == 80
	})
	got := f.loads.Services(time.Now())[0]
	if got.Mesh != "default" || got.Service != "billing" || len(got.Zones) != 2 {
		t.Fatalf("aggregate %+v", got)
	}
	if z := got.Zones["zone-2"]; z.Errors != 2 || z.Issued != 82 || math.Abs(z.PerSecond-40) > 0.01 {
		t.Fatalf("zone-2: %+v, want 80 ok, 2 errors, 40/s", z)
	}
	if z := got.Zones["zone-1"]; z.Successful != 20 || math.Abs(z.PerSecond-10) > 0.01 {
		t.Fatalf("zone-1: %+v", z)
	}
	for reason, want := range map[string]float64{"unknown_locality": 2, "unknown_cluster": 2} {
		if n := testutil.ToFloat64(f.lrs.rejected.WithLabelValues(reason)); n != want {
			t.Errorf("rejected %s = %v, want %v", reason, n, want)
		}
	}
	// The rate falls to zero once reports stop; the totals stay.
	later := f.loads.Services(time.Now().Add(3 * time.Second))[0]
	if later.Zones["zone-2"].PerSecond != 0 || later.Zones["zone-2"].Successful != 80 {
		t.Fatalf("after the window: %+v", later.Zones["zone-2"])
	}
}

// TestForgedLoadReportsAreRefused: streams of unknown, malformed or
// other-mesh nodes are closed; oversized and implausible reports are
// dropped; the server keeps serving the honest stream.
func TestForgedLoadReportsAreRefused(t *testing.T) {
	f := startLRS(t, &Auth{
		Verify: func(_ context.Context, token string) (Claims, error) {
			if token == "good" {
				return Claims{Kind: TokenDataplane, Mesh: "default"}, nil
			}
			return Claims{Kind: TokenDataplane, Mesh: "other"}, nil
		},
		AllowUnauthenticated: true,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f.connect(t, metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer good"), "default.web-1")
	for _, tt := range []struct {
		node, token string
		want        codes.Code
	}{
		{"default.ghost", "", codes.FailedPrecondition},
		{"nodots", "", codes.InvalidArgument},
		{"", "", codes.InvalidArgument},
		{"default.web-1", "evil", codes.PermissionDenied},
	} {
		sctx := ctx
		if tt.token != "" {
			sctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tt.token)
		}
		if _, _, err := f.open(sctx, tt.node); status.Code(err) != tt.want {
			t.Errorf("node %q: %v, want %s", tt.node, err, tt.want)
		}
	}
	stream, _, err := f.open(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer good"), "default.web-1")
	if err != nil {
		t.Fatal(err)
	}
	huge := &lrs.LoadStatsRequest{}
	for i := range MaxReportClusters + 1 {
		huge.ClusterStats = append(huge.ClusterStats, report(fmt.Sprintf("c%d", i)))
	}
	many := report("billing")
	for range MaxClusterLocalities + 1 {
		many.UpstreamLocalityStats = append(many.UpstreamLocalityStats, locality("zone-1", 1, 0))
	}
	for _, req := range []*lrs.LoadStatsRequest{
		huge,
		{ClusterStats: []*endpoint.ClusterStats{many}},
		{ClusterStats: []*endpoint.ClusterStats{report("billing", locality("zone-1", math.MaxUint64, 0))}},
		{ClusterStats: []*endpoint.ClusterStats{report("billing{", locality("zone-1", 1, 0)), {}, nil}},
		{ClusterStats: []*endpoint.ClusterStats{report("billing", locality("zone-1", 3, 0))}},
	} {
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	ursatest.Until(t, 10*time.Second, "the honest report", func() bool {
		s := f.loads.Services(time.Now())
		return len(s) == 1 && s[0].Zones["zone-1"].Successful == 3
	})
	for _, reason := range []string{"too_many_clusters", "too_many_localities", "implausible_count", "not_connected", "node_id", "token"} {
		if testutil.ToFloat64(f.lrs.rejected.WithLabelValues(reason)) == 0 {
			t.Errorf("no %s rejection counted", reason)
		}
	}
	// A node may not change mid-stream.
	stream.Send(&lrs.LoadStatsRequest{Node: &core.Node{Id: "default.other"}})
	if _, err := stream.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("node change: %v", err)
	}
}

// TestLoadReportsEndWithTheirToken: a load report stream speaks for its
// node only while the node's ADS stream was admitted with the same token:
// once the node's configuration stream is another token's (the first
// expired or was revoked, and the proxy came back with a new one), a
// report on the old stream ends it, and nothing of it is recorded.
func TestLoadReportsEndWithTheirToken(t *testing.T) {
	f := startLRS(t, &Auth{Verify: func(_ context.Context, token string) (Claims, error) {
		return Claims{Kind: TokenDataplane, Mesh: "default"}, nil
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	with := func(ctx context.Context, token string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	adsCtx, endADS := context.WithCancel(ctx)
	f.connect(t, with(adsCtx, "first"), "default.web-1")
	if _, _, err := f.open(with(ctx, "another"), "default.web-1"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a stream with a token the ADS stream was not admitted with: %v", err)
	}
	stream, _, err := f.open(with(ctx, "first"), "default.web-1")
	if err != nil {
		t.Fatal(err)
	}
	endADS()
	ursatest.Until(t, 10*time.Second, "the first ADS stream to end", func() bool { _, ok := f.srv.connected("default.web-1"); return !ok })
	f.connect(t, with(ctx, "second"), "default.web-1")
	if err := stream.Send(&lrs.LoadStatsRequest{ClusterStats: []*endpoint.ClusterStats{report("billing", locality("zone-1", 5, 0))}}); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("a report on the old token's stream: %v, want the stream ended", err)
	}
	if s := f.loads.Services(time.Now()); len(s) != 0 {
		t.Fatalf("the old token's report was recorded: %+v", s)
	}
	renewed, _, err := f.open(with(ctx, "second"), "default.web-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := renewed.Send(&lrs.LoadStatsRequest{ClusterStats: []*endpoint.ClusterStats{report("billing", locality("zone-1", 3, 0))}}); err != nil {
		t.Fatal(err)
	}
	ursatest.Until(t, 10*time.Second, "the new token's report", func() bool {
		s := f.loads.Services(time.Now())
		return len(s) == 1 && s[0].Zones["zone-1"].Successful == 3
	})
}

// FuzzLoadReport feeds arbitrary bytes, as a LoadStatsRequest, through the
// report → aggregate path: it never panics and the aggregate stays sane.
func FuzzLoadReport(f *testing.F) {
	seed, _ := proto.Marshal(&lrs.LoadStatsRequest{ClusterStats: []*endpoint.ClusterStats{
		report("billing", locality("zone-2", 40, 1)), report("billing{version=v2}", locality("zone-1", 3, 0)),
	}})
	f.Add(seed)
	f.Add([]byte{0x12, 0x03, 0x0a, 0x01, 0x7b})
	known := map[string]map[string]bool{"billing": {"zone-1": true, "zone-2": true}, "billing{version=v2}": {"zone-1": true}}
	f.Fuzz(func(t *testing.T, data []byte) {
		req := &lrs.LoadStatsRequest{}
		if proto.Unmarshal(data, req) != nil {
			return
		}
		samples, _ := Samples("default", req, known)
		loads := NewLoads(0)
		now := time.Now()
		loads.Add("default.a", samples, now)
		loads.Add("default.a", samples, now.Add(time.Second))
		for _, s := range loads.Services(now.Add(time.Second)) {
			if s.Service != "billing" {
				t.Fatalf("service %q from a report", s.Service)
			}
			for z, zl := range s.Zones {
				if !known["billing"][z] || zl.PerSecond < 0 || math.IsNaN(zl.PerSecond) || math.IsInf(zl.PerSecond, 0) {
					t.Fatalf("zone %q: %+v", z, zl)
				}
			}
		}
	})
}

func TestServiceOfCluster(t *testing.T) {
	for name, want := range map[string]string{
		"billing": "billing", "billing{ursa.io/zone=zone-2,version=v2}": "billing",
		"billing{": "", "{x}": "", "localhost:8080": "", "ingress:default.billing": "", "": "",
	} {
		if got := ServiceOfCluster(name); got != want {
			t.Errorf("ServiceOfCluster(%q) = %q, want %q", name, got, want)
		}
	}
}
