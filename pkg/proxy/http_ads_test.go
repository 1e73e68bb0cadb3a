package proxy

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/xds"
)

// cpXDS is the CP's own xDS server on a loopback port, stopped with the
// test, and its address.
func cpXDS(t *testing.T) (*xds.Server, string) {
	t.Helper()
	srv, err := xds.NewServer(testutil.Logger(t).Named("xds"), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := grpc.NewServer()
	srv.Register(ctx, g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	t.Cleanup(func() { cancel(); g.Stop() })
	return srv, ln.Addr().String()
}

// runADS runs p's ADS client, as node, against the server at addr until
// the test ends.
func runADS(t *testing.T, p *Proxy, addr, node string) {
	ctx, cancel := context.WithCancel(context.Background())
	client := &Client{Address: addr, NodeID: node, Proxy: p, Log: testutil.Logger(t).Named("client")}
	done := make(chan struct{})
	go func() { client.Start(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// servedByV1 waits for p's route configuration outbound:svc and returns
// the URL of its listener once a request there reaches v1.
func servedByV1(t *testing.T, p *Proxy) string {
	t.Helper()
	testutil.Until(t, 10*time.Second, "the route configuration", func() bool {
		return p.cfg.Load().RouteTables["outbound:svc"] != nil
	})
	url := "http://" + boundAddr(t, p, "outbound:svc") + "/"
	if resp, body := get(t, h1Client(), url); resp.StatusCode != http.StatusOK || body != "v1 GET /" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	return url
}

// TestHTTPOverADS: the client subscribes to the route configuration an
// HCM names (RDS) on the ADS stream, and the HTTP listener serves once it
// has arrived; a changed route configuration moves the next request.
func TestHTTPOverADS(t *testing.T) {
	srv, addr := cpXDS(t)
	ctx := context.Background()
	v1, v2 := backend(t, "v1", nil), backend(t, "v2", nil)
	set := func(to string) {
		res := xds.Resources{
			resource.ListenerType: {outboundHTTPListener("outbound:svc", "outbound:svc")},
			resource.ClusterType:  {staticHTTPCluster("v1", false, v1), staticHTTPCluster("v2", false, v2)},
			resource.RouteType:    {routeConfig("outbound:svc", routeTo("default", nil, toCluster(to)))},
		}
		if err := srv.SetResources(ctx, "default.web-1", res); err != nil {
			t.Fatal(err)
		}
	}
	set("v1")
	p := newProxy(t)
	runADS(t, p, addr, "default.web-1")
	url := servedByV1(t, p)
	set("v2")
	testutil.Until(t, 10*time.Second, "the route to v2", func() bool {
		_, body := get(t, h1Client(), url)
		return body == "v2 GET /"
	})
}

// TestRejectedUpdateKeepsTheLastGood: a response the proxy rejects leaves
// what it had of that type, as Envoy keeps its last good configuration: a
// refused listener does not make the next cluster, route or endpoint
// update a rejection too (a failover's EDS would be).
func TestRejectedUpdateKeepsTheLastGood(t *testing.T) {
	srv, addr := cpXDS(t)
	ctx := context.Background()
	v1, v2, v3 := backend(t, "v1", nil), backend(t, "v2", nil), backend(t, "v3", nil)
	good := func() *listener.Listener { return outboundHTTPListener("outbound:svc", "outbound:svc") }
	// Refused by the built-in proxy (Envoy's HCM takes it): it names the
	// field.
	bad := withHCM(t, outboundHTTPListener("outbound:svc", "outbound:svc"), func(h *hcm.HttpConnectionManager) {
		h.HttpProtocolOptions = &core.Http1ProtocolOptions{AllowAbsoluteUrl: wrapperspb.Bool(false)}
	})
	set := func(l *listener.Listener, svc string, to string) {
		t.Helper()
		res := xds.Resources{
			resource.ListenerType: {l},
			resource.ClusterType:  {staticHTTPCluster("svc", false, svc), staticHTTPCluster("v3", false, v3)},
			resource.RouteType:    {routeConfig("outbound:svc", routeTo("default", nil, toCluster(to)))},
		}
		if err := srv.SetResources(ctx, "default.web-1", res); err != nil {
			t.Fatal(err)
		}
	}
	node := func() xds.Node {
		n, _ := srv.Insight("default.web-1")
		return n
	}
	set(good(), v1, "svc")
	p := newProxy(t)
	runADS(t, p, addr, "default.web-1")
	url := servedByV1(t, p)

	set(bad, v1, "svc")
	testutil.Until(t, 10*time.Second, "the listener's rejection", func() bool { return node().Nacks == 1 })
	if n := node(); !strings.Contains(n.LastNack, "allow_absolute_url") {
		t.Fatalf("the rejection does not name the field: %q", n.LastNack)
	}

	// A cluster's endpoints change: taken, and the listener that runs
	// (the last good one) sends there.
	set(bad, v2, "svc")
	testutil.Until(t, 10*time.Second, "the cluster update", func() bool {
		n := node()
		return n.Acked[resource.ClusterType] != "" && n.Acked[resource.ClusterType] == n.Current[resource.ClusterType]
	})
	if _, body := get(t, h1Client(), url); body != "v2 GET /" {
		t.Fatalf("after the cluster update: %q", body)
	}
	// So is a route's.
	set(bad, v2, "v3")
	testutil.Until(t, 10*time.Second, "the route update", func() bool {
		_, body := get(t, h1Client(), url)
		return body == "v3 GET /"
	})
	if n := node(); n.Nacks != 1 {
		t.Fatalf("%d rejections, want the listener's one: %q", n.Nacks, n.LastNack)
	}

	// The listener fixed: taken.
	set(good(), v2, "svc")
	testutil.Until(t, 10*time.Second, "the listener update", func() bool {
		n := node()
		return n.Acked[resource.ListenerType] == n.Current[resource.ListenerType]
	})
}
