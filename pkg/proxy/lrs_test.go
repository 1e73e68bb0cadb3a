package proxy

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	lrs "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/xds"
)

// TestLoadCountedPerLocality: each upstream attempt is counted in its
// endpoint's zone, and a report holds the deltas of current EDS clusters.
func TestLoadCountedPerLocality(t *testing.T) {
	p := newProxy(t)
	p.Now = testutil.NewClock(time.Now()).Now // zone-2's one ejection lasts the whole test
	dead := testutil.RefusingAddr(t)
	c := &Cluster{Name: "billing", ConnectTimeout: time.Second, Overprovisioning: 140, Endpoints: []Endpoint{
		{Addr: echoServer(t, "one"), Weight: 1, Zone: "zone-1"}, {Addr: dead, Weight: 1, Zone: "zone-2"}}}
	for range 50 {
		conn, err := p.connect(&Config{}, c, 3)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
	}
	p.load.record("localhost:8080", "", true) // an inbound cluster: no zone
	got := p.load.snapshot()
	if z1, z2 := got[loadKey{"billing", "zone-1"}], got[loadKey{"billing", "zone-2"}]; z1 != (loadCounts{issued: 50, successful: 50}) || z2 != (loadCounts{issued: 1, errors: 1}) {
		t.Fatalf("zone-1 %+v, zone-2 %+v: want 50 successes in zone-1 and the one failure that ejected zone-2", z1, z2)
	}
	all := &lrs.LoadStatsResponse{SendAllClusters: true}
	req := loadReport(nil, got, time.Second, all, map[string]bool{"billing": true, "localhost:8080": true})
	if len(req.ClusterStats) != 1 || len(req.ClusterStats[0].UpstreamLocalityStats) != 2 {
		t.Fatalf("report %v: want billing in two zones", req)
	}
	if l := req.ClusterStats[0].UpstreamLocalityStats[0]; l.GetLocality().GetZone() != "zone-1" || l.TotalSuccessfulRequests != 50 || l.TotalIssuedRequests != 50 {
		t.Fatalf("zone-1 in the report: %v", l)
	}
	if d := req.ClusterStats[0].LoadReportInterval.AsDuration(); d != time.Second {
		t.Fatalf("interval %s", d)
	}
	// The next report holds only what happened since: zeros.
	next := loadReport(got, got, time.Second, all, map[string]bool{"billing": true})
	if l := next.ClusterStats[0].UpstreamLocalityStats[0]; l.TotalIssuedRequests != 0 || l.TotalSuccessfulRequests != 0 {
		t.Fatalf("second report %v: want zeros", l)
	}
	// A cluster no longer configured, or not asked for, is not reported.
	if r := loadReport(nil, got, time.Second, all, map[string]bool{}); len(r.ClusterStats) != 0 {
		t.Fatalf("report of a removed cluster: %v", r)
	}
	if r := loadReport(nil, got, time.Second, &lrs.LoadStatsResponse{Clusters: []string{"payments"}}, map[string]bool{"billing": true}); len(r.ClusterStats) != 0 {
		t.Fatalf("report of a cluster not asked for: %v", r)
	}
}

// TestLoadReportsReachTheCP: a Client with ReportLoad, connected to a real
// xDS server with LRS, reports the connections its proxy makes, and the
// CP's aggregate shows them in the right zone.
func TestLoadReportsReachTheCP(t *testing.T) {
	log := zaptest.NewLogger(t)
	reg := prometheus.NewRegistry()
	srv, err := xds.NewServer(log.Named("xds"), reg)
	if err != nil {
		t.Fatal(err)
	}
	loads := xds.NewLoads(2 * time.Second)
	lrsSrv, err := xds.NewLoadReporting(srv, loads, 100*time.Millisecond, log.Named("lrs"), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g := grpc.NewServer()
	srv.Register(ctx, g)
	lrsSrv.Register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	defer g.Stop()

	backend := echoServer(t, "billing")
	host, port, _ := net.SplitHostPort(backend)
	portN, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		t.Fatal(err)
	}
	res := xds.Resources{
		resource.ClusterType: {&cluster.Cluster{Name: "billing", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
			EdsClusterConfig: &cluster.Cluster_EdsClusterConfig{ServiceName: "billing", EdsConfig: &core.ConfigSource{
				ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}}},
			ConnectTimeout: durationpb.New(time.Second)}},
		resource.EndpointType: {&endpoint.ClusterLoadAssignment{ClusterName: "billing", Endpoints: []*endpoint.LocalityLbEndpoints{{
			Locality: &core.Locality{Zone: "zone-2"},
			LbEndpoints: []*endpoint.LbEndpoint{{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
				Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
					Address: host, PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(portN)}}}}}}}},
		}}}},
	}
	if err := srv.SetResources(ctx, "default.web-1", res); err != nil {
		t.Fatal(err)
	}
	p := newProxy(t)
	client := &Client{Address: ln.Addr().String(), NodeID: "default.web-1", Proxy: p, Log: log.Named("client"), ReportLoad: true}
	done := make(chan struct{})
	go func() { client.Start(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	var c *Cluster
	testutil.Until(t, 10*time.Second, "billing's endpoints", func() bool {
		c = p.cfg.Load().Clusters["billing"]
		return c != nil && len(c.Endpoints) == 1
	})
	for range 30 {
		conn, err := p.connect(p.cfg.Load(), c, 3)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
	}
	testutil.Until(t, 10*time.Second, "30 connections to zone-2 in the CP's aggregate", func() bool {
		s := loads.Services(time.Now())
		return len(s) == 1 && s[0].Service == "billing" && s[0].Zones["zone-2"].Successful == 30
	})
}
