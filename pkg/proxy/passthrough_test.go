package proxy

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/proxy/tproxy"
	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/xds"
	"github.com/ursamesh/ursa/pkg/xds/xdstest"
)

// TestUpstreamBindConfig: a cluster's upstream_bind_config source address
// is what its sockets bind; what else a bind config may ask, the proxy
// cannot do, and it says so.
func TestUpstreamBindConfig(t *testing.T) {
	orig := func(bc *core.BindConfig) *cluster.Cluster {
		return &cluster.Cluster{Name: "pt", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST},
			LbPolicy: cluster.Cluster_CLUSTER_PROVIDED, ConnectTimeout: durationpb.New(time.Second), UpstreamBindConfig: bc}
	}
	src := func(addr string, port uint32) *core.SocketAddress {
		return &core.SocketAddress{Address: addr, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port}}
	}
	cfg, err := translate(nil, []*cluster.Cluster{orig(&core.BindConfig{SourceAddress: src("127.0.0.6", 0)})}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Clusters["pt"].Source; got != netip.MustParseAddrPort("127.0.0.6:0") {
		t.Errorf("source %v; want 127.0.0.6:0", got)
	}
	if d := (&Proxy{}).dialer(cfg.Clusters["pt"]); d.LocalAddr == nil || d.LocalAddr.String() != "127.0.0.6:0" {
		t.Errorf("the cluster's dialer binds %v; want 127.0.0.6:0", d.LocalAddr)
	}
	for want, bc := range map[string]*core.BindConfig{
		"freebind":                    {SourceAddress: src("127.0.0.6", 0), Freebind: wrapperspb.Bool(true)},
		"socket_options":              {SourceAddress: src("127.0.0.6", 0), SocketOptions: []*core.SocketOption{{Level: 1, Name: 2, Value: &core.SocketOption_IntValue{IntValue: 1}}}},
		"additional_source_addresses": {SourceAddress: src("127.0.0.6", 0), AdditionalSourceAddresses: []*core.SocketAddress{src("::6", 0)}},
		"no source_address":           {},
		`"host.example" is not an IP`: {SourceAddress: src("host.example", 0)},
		"TCP sockets only":            {SourceAddress: &core.SocketAddress{Address: "127.0.0.6", Protocol: core.SocketAddress_UDP, PortSpecifier: &core.SocketAddress_PortValue{}}},
		"resolver_name":               {SourceAddress: &core.SocketAddress{Address: "127.0.0.6", ResolverName: "dns", PortSpecifier: &core.SocketAddress_PortValue{}}},
	} {
		_, err := translate(nil, []*cluster.Cluster{orig(bc)}, nil, nil, nil)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "upstream_bind_config") {
			t.Errorf("bind config %v: %v; want a refusal naming %s", bc, err, want)
		}
	}
}

// inboundPassthroughConfig is the zone CP's ursa:inbound with inbound
// passthrough for billing-1 of testdata transparent-inbound, and its
// clusters, as the built-in proxy takes them.
func inboundPassthroughConfig(t *testing.T) *Config {
	t.Helper()
	rs := xdstest.Inputs(t, "../xds/testdata/transparent-inbound.input.yaml")
	state := xds.NewState(catalog.FromResources("zone-1", rs), nil)
	res, err := xds.Sidecar(state, xds.Proxy{Kind: xds.KindSidecar, Dataplane: state.Mesh("default").Registered["billing-1"],
		TransparentInbound: "15006", InboundPassthrough: true})
	if err != nil {
		t.Fatal(err)
	}
	var listeners []*listener.Listener
	for _, r := range res[resource.ListenerType] {
		if l := r.(*listener.Listener); l.Name == xds.InboundListener {
			listeners = append(listeners, l)
		}
	}
	var clusters []*cluster.Cluster
	for _, r := range res[resource.ClusterType] {
		if c := r.(*cluster.Cluster); c.GetType() == cluster.Cluster_STATIC || c.Name == xds.InboundPassthroughCluster {
			clusters = append(clusters, c)
		}
	}
	cfg, err := translate(listeners, clusters, nil, nil, nil)
	if err != nil {
		t.Fatalf("the built-in proxy refuses the generated inbound passthrough: %v", err)
	}
	return cfg
}

// TestInboundPassthrough: the zone CP's ursa:inbound with inbound
// passthrough for billing-1 (testdata transparent-inbound: 8080 is an
// inbound at the app's own port, 9090 an inbound to the app's 9000), run by
// the proxy in a throwaway namespace that sends 10.0.0.7's ports to it: a
// connection to a port no inbound has (7070, the app's metrics) arrives at
// the app from 127.0.0.6, through the proxy and past the redirection,
// which lets the proxy's own connections from there out as they are; the
// app's own port of the 9090 inbound (9000) is closed, not passed through
// around its inbound. (The namespace's outbound redirection stands in for
// the inbound one, as in TestInboundTLSOnOriginalDst.)
func TestInboundPassthrough(t *testing.T) {
	cfg := inboundPassthroughConfig(t)
	if c := cfg.Clusters[xds.InboundPassthroughCluster]; c == nil || !c.OriginalDst || c.Source != netip.AddrPortFrom(tproxy.ProbeSource, 0) || xds.PassthroughSource != tproxy.ProbeSource.String() {
		t.Fatalf("%s translated to %+v", xds.InboundPassthroughCluster, c)
	}
	if !inNamespace(t) {
		return
	}

	ctx := context.Background()
	log := zaptest.NewLogger(t)
	if err := tproxy.Install(ctx, log, tproxy.Config{OutboundPort: 15006}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tproxy.Remove(ctx, log, "") })
	// The app: its metrics port, and the port behind the 9090 inbound;
	// each says who called.
	for _, addr := range []string{"10.0.0.7:7070", "0.0.0.0:9000"} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go testutil.ServeEach(ln, func(c net.Conn) {
			if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
				fmt.Fprintf(c, "app at %s from %s\n", c.LocalAddr(), c.RemoteAddr().(*net.TCPAddr).IP)
			}
		})
	}
	reg := prometheus.NewRegistry()
	p, err := New(log, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	p.Mark = tproxy.DefaultMark
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	call := func(addr string) (string, error) {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintln(c, "hi")
		return bufio.NewReader(c).ReadString('\n')
	}
	var got string
	testutil.Eventually(t, 10*time.Second, "the metrics port through the passthrough", func() error {
		got, err = call("10.0.0.7:7070")
		return err
	})
	if got != "app at 10.0.0.7:7070 from 127.0.0.6\n" {
		t.Errorf("10.0.0.7:7070 answered %q; want the app, called from 127.0.0.6", got)
	}
	if n := counterValue(t, reg, "ursa_dp_connections_total", xds.InboundListener); n < 1 {
		t.Errorf("ursa:inbound counted %v connections; the passthrough's went through it", n)
	}
	before := counterValue(t, reg, "ursa_dp_refused_total", "empty_filter_chain")
	if got, err := call("10.0.0.7:9000"); err == nil {
		t.Errorf("the app's port of the 9090 inbound answered %q; want it closed", got)
	}
	testutil.Eventually(t, 10*time.Second, "one refusal by the closed chain", func() error {
		if after := counterValue(t, reg, "ursa_dp_refused_total", "empty_filter_chain"); after != before+1 {
			return fmt.Errorf("refusals went %v → %v", before, after)
		}
		return nil
	})
}
