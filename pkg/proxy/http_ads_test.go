package proxy

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"

	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/xds"
)

// TestHTTPOverADS: the client subscribes to the route configuration an
// HCM names (RDS) on the ADS stream, and the HTTP listener serves once it
// has arrived; a changed route configuration moves the next request.
func TestHTTPOverADS(t *testing.T) {
	log := zaptest.NewLogger(t)
	srv, err := xds.NewServer(log.Named("xds"), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	g := grpc.NewServer()
	srv.Register(ctx, g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	defer g.Stop()
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
	client := &Client{Address: ln.Addr().String(), NodeID: "default.web-1", Proxy: p, Log: log.Named("client")}
	done := make(chan struct{})
	go func() { client.Start(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	testutil.Until(t, 10*time.Second, "the route configuration", func() bool {
		return p.cfg.Load().RouteTables["outbound:svc"] != nil
	})
	url := "http://" + boundAddr(t, p, "outbound:svc") + "/"
	if resp, body := get(t, h1Client(), url); resp.StatusCode != http.StatusOK || body != "v1 GET /" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	set("v2")
	testutil.Until(t, 10*time.Second, "the route to v2", func() bool {
		_, body := get(t, h1Client(), url)
		return body == "v2 GET /"
	})
}
