package proxy

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	tcp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/proxy/tproxy"
	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/xds"
)

func TestMatchDst(t *testing.T) {
	r := func(c string) []Route { return []Route{{Cluster: c, Weight: 1}} }
	chains := []DstChain{
		{Port: 80, Prefixes: []netip.Prefix{netip.MustParsePrefix("240.0.0.7/32")}, Routes: r("billing-vip-80")},
		{Port: 80, Prefixes: []netip.Prefix{netip.MustParsePrefix("240.0.0.0/4")}, Routes: r("vips-80")},
		{Port: 8080, Prefixes: []netip.Prefix{netip.MustParsePrefix("240.0.0.7/32")}, Routes: r("billing")},
		{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Routes: r("ten")},
		{Routes: r("passthrough")},
	}
	for dst, want := range map[string]string{
		"240.0.0.7:80":   "billing-vip-80", // the longest prefix of the port's chains
		"240.0.0.8:80":   "vips-80",
		"240.0.0.7:8080": "billing",
		"240.0.0.7:9090": "passthrough", // no chain of the port: any port's
		"10.1.2.3:8080":  "ten",         // the port's chains miss: any port's
		"192.0.2.1:443":  "passthrough",
	} {
		got, ok := matchDst(chains, netip.MustParseAddrPort(dst))
		if !ok || got.Routes[0].Cluster != want {
			t.Errorf("%s → %v, %v; want %s", dst, got, ok, want)
		}
	}
	if got, ok := matchDst(chains[:4], netip.MustParseAddrPort("192.0.2.1:443")); ok {
		t.Errorf("without a catch-all, 192.0.2.1:443 → %v", got)
	}
}

func tcpFilter(t *testing.T, clusterName string) []*listener.Filter {
	t.Helper()
	a, err := anypb.New(&tcp.TcpProxy{StatPrefix: clusterName, ClusterSpecifier: &tcp.TcpProxy_Cluster{Cluster: clusterName}})
	if err != nil {
		t.Fatal(err)
	}
	return []*listener.Filter{{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listener.Filter_TypedConfig{TypedConfig: a}}}
}

// outboundListener is the transparent proxy's outbound listener as the CP
// is to send it: 240.0.0.7:80 and :8080 (billing's VIP) to billing, the
// rest passed through.
func outboundListener(t *testing.T, addr string, port uint32) *listener.Listener {
	vip := []*core.CidrRange{{AddressPrefix: "240.0.0.7", PrefixLen: wrapperspb.UInt32(32)}}
	return &listener.Listener{
		Name: "ursa:outbound", Address: socket(addr, port), UseOriginalDst: wrapperspb.Bool(true),
		FilterChains: []*listener.FilterChain{
			{FilterChainMatch: &listener.FilterChainMatch{DestinationPort: wrapperspb.UInt32(80), PrefixRanges: vip}, Filters: tcpFilter(t, "billing")},
			{FilterChainMatch: &listener.FilterChainMatch{DestinationPort: wrapperspb.UInt32(8080), PrefixRanges: vip}, Filters: tcpFilter(t, "billing")},
		},
		DefaultFilterChain: &listener.FilterChain{Filters: tcpFilter(t, "passthrough")},
	}
}

func TestTranslateOriginalDst(t *testing.T) {
	cfg, err := translate([]*listener.Listener{outboundListener(t, "0.0.0.0", 15001)},
		[]*cluster.Cluster{{Name: "passthrough", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST}, LbPolicy: cluster.Cluster_CLUSTER_PROVIDED}},
		nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	l := cfg.Listeners["ursa:outbound"]
	if !l.OriginalDst || len(l.DstChains) != 3 || l.DstChains[0].Port != 80 || l.DstChains[0].Prefixes[0] != netip.MustParsePrefix("240.0.0.7/32") ||
		l.DstChains[2].Port != 0 || l.DstChains[2].Routes[0].Cluster != "passthrough" {
		t.Errorf("listener %+v", l)
	}
	if c := cfg.Clusters["passthrough"]; !c.OriginalDst || c.Warming {
		t.Errorf("cluster %+v", c)
	}

	for name, mutate := range map[string]func(*listener.Listener){
		"server names": func(l *listener.Listener) { l.FilterChains[0].FilterChainMatch.ServerNames = []string{"x"} },
		"source ranges": func(l *listener.Listener) {
			l.FilterChains[0].FilterChainMatch.SourcePrefixRanges = l.FilterChains[0].FilterChainMatch.PrefixRanges
		},
		"bad prefix": func(l *listener.Listener) {
			l.FilterChains[0].FilterChainMatch.PrefixRanges[0].PrefixLen = wrapperspb.UInt32(33)
		},
		"bad address": func(l *listener.Listener) {
			l.FilterChains[0].FilterChainMatch.PrefixRanges[0].AddressPrefix = "billing"
		},
		"bad port": func(l *listener.Listener) {
			l.FilterChains[0].FilterChainMatch.DestinationPort = wrapperspb.UInt32(70000)
		},
		"two catch-alls": func(l *listener.Listener) {
			l.FilterChains = append(l.FilterChains, &listener.FilterChain{Filters: tcpFilter(t, "passthrough")})
		},
	} {
		l := outboundListener(t, "0.0.0.0", 15001)
		mutate(l)
		if _, err := translate([]*listener.Listener{l}, nil, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "ursa:outbound") {
			t.Errorf("%s: %v; want the listener refused", name, err)
		}
	}
	// A chain without filters is taken, as Envoy takes it: it closes
	// what it matches (the inbound passthrough's closed ports).
	empty := outboundListener(t, "0.0.0.0", 15001)
	empty.DefaultFilterChain.Filters = nil
	if cfg, err := translate([]*listener.Listener{empty}, nil, nil, nil, nil); err != nil {
		t.Errorf("a chain without filters: %v", err)
	} else if c := cfg.Listeners["ursa:outbound"].DstChains[2]; len(c.Routes) != 0 || c.HTTP != nil {
		t.Errorf("a chain without filters translated to %+v", c)
	}
}

// TestOriginalDstInNamespace runs the transparent path for real: in a
// throwaway network namespace with the redirection installed, an app's
// connect to billing's VIP reaches billing through the proxy's
// original-destination listener, a connect elsewhere is passed through to
// where it was headed (the proxy's marked socket is not redirected again),
// and a connect to the listener itself is refused. The test re-runs itself
// inside the namespace (ip netns exec), so that every socket of the proxy
// lives there.
func TestOriginalDstInNamespace(t *testing.T) {
	if !redirectedNamespace(t) {
		return
	}

	echoOn(t, "240.0.0.9:8080", "billing")
	echoOn(t, "240.0.0.9:9000", "outside")

	p := newProxy(t)
	p.Mark = tproxy.DefaultMark
	cfg, err := translate([]*listener.Listener{outboundListener(t, "0.0.0.0", 15001)}, []*cluster.Cluster{
		{Name: "passthrough", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST}, LbPolicy: cluster.Cluster_CLUSTER_PROVIDED},
		{Name: "billing", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC}, LoadAssignment: &endpoint.ClusterLoadAssignment{
			ClusterName: "billing", Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{HostIdentifier: &endpoint.LbEndpoint_Endpoint{
				Endpoint: &endpoint.Endpoint{Address: socket("240.0.0.9", 8080)}}}}}}}},
	}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}

	for dst, want := range map[string]string{
		"240.0.0.7:80":   "billing hi", // the VIP's convenience port
		"240.0.0.7:8080": "billing hi",
		"240.0.0.9:9000": "outside hi", // passed through, not looped
	} {
		if got := roundTrip(t, dst); got != want {
			t.Errorf("via %s: %q; want %q", dst, got, want)
		}
	}
	if got := roundTrip(t, "127.0.0.1:15001"); got != "" {
		t.Errorf("a connection to the listener itself got %q; want it closed", got)
	}
}

// inNamespace re-runs the calling test (by its name) inside a throwaway
// network namespace, lo up with 240.0.0.9 and 10.0.0.7 on it and a route
// to 240.0.0.0/4 through it, and returns false; run there, it returns
// true and the test goes on, every socket of its proxy in that namespace.
// Without root the test is skipped.
// redirectedNamespace is inNamespace with the transparent proxy's rules
// installed in the namespace (outbound TCP to port 15001), removed at the
// test's end.
func redirectedNamespace(t *testing.T) bool {
	t.Helper()
	if !inNamespace(t) {
		return false
	}
	ctx, log := context.Background(), zaptest.NewLogger(t)
	if err := tproxy.Install(ctx, log, tproxy.Config{OutboundPort: 15001}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tproxy.Remove(ctx, log, "") })
	return true
}

func inNamespace(t *testing.T) bool {
	t.Helper()
	if os.Getenv("URSA_TEST_IN_NETNS") != "" {
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("network namespaces and iptables need root")
	}
	ns := fmt.Sprintf("ursaod%d-%d", os.Getpid(), nsSeq.Add(1))
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", ns)
	t.Cleanup(func() { ip("netns", "delete", ns) })
	ip("-n", ns, "link", "set", "lo", "up")
	ip("-n", ns, "addr", "add", "240.0.0.9/32", "dev", "lo")
	ip("-n", ns, "addr", "add", "10.0.0.7/32", "dev", "lo")
	ip("-n", ns, "route", "add", "240.0.0.0/4", "dev", "lo")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "URSA_TEST_IN_NETNS=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("in namespace %s: %v:\n%s", ns, err, out)
	}
	return false
}

// nsSeq numbers inNamespace's namespaces within this process.
var nsSeq atomic.Int64

// echoOn serves on addr an echo that prefixes each line with name, until
// the test ends, and returns the address it bound.
func echoOn(t *testing.T, addr, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go testutil.ServeEach(ln, func(c net.Conn) {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			fmt.Fprintf(c, "%s %s\n", name, sc.Text())
		}
	})
	return ln.Addr().String()
}

// roundTrip sends "hi" to addr as an app would and returns the reply line,
// "" when the connection closes first.
func roundTrip(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintln(c, "hi")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && line == "" {
		return ""
	}
	return strings.TrimSuffix(line, "\n")
}

// TestTLSInspectorSettings: the TLS inspector's settings that change
// nothing the proxy does (fingerprints off, a read buffer's size) are
// taken; fingerprints on are refused (TestTranslateListenerRefusals).
func TestTLSInspectorSettings(t *testing.T) {
	l := outboundListener(t, "127.0.0.1", 0)
	l.ListenerFilters = []*listener.ListenerFilter{{Name: "envoy.filters.listener.tls_inspector", ConfigType: &listener.ListenerFilter_TypedConfig{
		TypedConfig: xds.MustAny(&tlsinspector.TlsInspector{EnableJa3Fingerprinting: wrapperspb.Bool(false), InitialReadBufferSize: wrapperspb.UInt32(1024)})}}}
	if _, err := translate([]*listener.Listener{l}, nil, nil, nil, nil); err != nil {
		t.Fatal(err)
	}
}

// TestTranslateListenerRefusals: what a listener, its filter chains, its
// downstream TLS or its tcp_proxy set that the proxy does not do is
// NACKed with its name (these were ignored).
func TestTranslateListenerRefusals(t *testing.T) {
	tcpWith := func(change func(*tcp.TcpProxy)) []*listener.Filter {
		tp := &tcp.TcpProxy{StatPrefix: "x", ClusterSpecifier: &tcp.TcpProxy_WeightedClusters{WeightedClusters: &tcp.TcpProxy_WeightedCluster{
			Clusters: []*tcp.TcpProxy_WeightedCluster_ClusterWeight{{Name: "billing", Weight: 1}}}}}
		change(tp)
		return []*listener.Filter{{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listener.Filter_TypedConfig{TypedConfig: xds.MustAny(tp)}}}
	}
	for _, c := range []struct {
		l    *listener.Listener
		want string
	}{
		{func() *listener.Listener {
			l := outboundListener(t, "127.0.0.1", 0)
			l.ListenerFilters = []*listener.ListenerFilter{{Name: "envoy.filters.listener.http_inspector"}}
			return l
		}(), "listener filter \"envoy.filters.listener.http_inspector\""},
		{func() *listener.Listener {
			l := outboundListener(t, "127.0.0.1", 0)
			l.ListenerFilters = []*listener.ListenerFilter{{Name: "envoy.filters.listener.tls_inspector", ConfigType: &listener.ListenerFilter_TypedConfig{
				TypedConfig: xds.MustAny(&tlsinspector.TlsInspector{EnableJa3Fingerprinting: wrapperspb.Bool(true)})}}}
			return l
		}(), "tls_inspector fingerprinting"},
		{func() *listener.Listener {
			l := outboundListener(t, "127.0.0.1", 0)
			l.ListenerFilters = []*listener.ListenerFilter{{Name: "envoy.filters.listener.tls_inspector", FilterDisabled: &listener.ListenerFilterChainMatchPredicate{
				Rule: &listener.ListenerFilterChainMatchPredicate_AnyMatch{AnyMatch: true}}}}
			return l
		}(), "ListenerFilter.filter_disabled"},
		{func() *listener.Listener {
			l := outboundListener(t, "127.0.0.1", 0)
			l.PerConnectionBufferLimitBytes = wrapperspb.UInt32(1)
			return l
		}(), "per_connection_buffer_limit_bytes"},
		{func() *listener.Listener {
			l := outboundListener(t, "127.0.0.1", 0)
			l.DefaultFilterChain.TransportSocketConnectTimeout = durationpb.New(time.Second)
			return l
		}(), "transport_socket_connect_timeout"},
		{func() *listener.Listener {
			l := inboundHTTPListener("in", "billing", "app")
			down := &tlsv3.DownstreamTlsContext{RequireClientCertificate: wrapperspb.Bool(false)}
			l.FilterChains[0].TransportSocket.ConfigType = &core.TransportSocket_TypedConfig{TypedConfig: xds.MustAny(down)}
			return l
		}(), "require_client_certificate must be true"},
		{func() *listener.Listener {
			l := inboundHTTPListener("in", "billing", "app")
			down := &tlsv3.DownstreamTlsContext{RequireClientCertificate: wrapperspb.Bool(true),
				CommonTlsContext: &tlsv3.CommonTlsContext{TlsParams: &tlsv3.TlsParameters{}}}
			l.FilterChains[0].TransportSocket.ConfigType = &core.TransportSocket_TypedConfig{TypedConfig: xds.MustAny(down)}
			return l
		}(), "tls_params"},
		{&listener.Listener{Name: "t", Address: socket("127.0.0.1", 0), FilterChains: []*listener.FilterChain{{
			Filters: tcpWith(func(tp *tcp.TcpProxy) { tp.MaxConnectAttempts = wrapperspb.UInt32(0) })}}}, "TcpProxy.MaxConnectAttempts"},
		{&listener.Listener{Name: "t", Address: socket("127.0.0.1", 0), FilterChains: []*listener.FilterChain{{
			Filters: tcpWith(func(tp *tcp.TcpProxy) { tp.MaxDownstreamConnectionDuration = durationpb.New(time.Second) })}}}, "max_downstream_connection_duration"},
		{&listener.Listener{Name: "t", Address: socket("127.0.0.1", 0), FilterChains: []*listener.FilterChain{{Filters: tcpWith(func(*tcp.TcpProxy) {})}},
			DefaultFilterChain: &listener.FilterChain{Filters: tcpWith(func(*tcp.TcpProxy) {})}}, "default_filter_chain is supported only with use_original_dst"},
		{&listener.Listener{Name: "t", Address: socket("127.0.0.1", 0), FilterChains: []*listener.FilterChain{{
			FilterChainMatch: &listener.FilterChainMatch{SourcePrefixRanges: []*core.CidrRange{{AddressPrefix: "10.0.0.0", PrefixLen: wrapperspb.UInt32(8)}}},
			Filters:          tcpWith(func(*tcp.TcpProxy) {})}}}, "source_prefix_ranges"},
		{&listener.Listener{Name: "sni", Address: socket("127.0.0.1", 0), FilterChains: []*listener.FilterChain{{
			FilterChainMatch: &listener.FilterChainMatch{ServerNames: []string{"a"}, DestinationPort: wrapperspb.UInt32(443)},
			Filters:          tcpWith(func(*tcp.TcpProxy) {})}}}, "destination_port"},
		{func() *listener.Listener {
			l := inboundHTTPListener("in", "billing", "app")
			down := &tlsv3.DownstreamTlsContext{RequireClientCertificate: wrapperspb.Bool(true), CommonTlsContext: &tlsv3.CommonTlsContext{AlpnProtocols: []string{"http/1.1"}}}
			l.FilterChains[0].TransportSocket.ConfigType = &core.TransportSocket_TypedConfig{TypedConfig: xds.MustAny(down)}
			return l
		}(), `alpn_protocols ["http/1.1"]`},
		{&listener.Listener{Name: "t", Address: socket("127.0.0.1", 0), FilterChains: []*listener.FilterChain{{
			TransportSocket: &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: xds.MustAny(
				&tlsv3.DownstreamTlsContext{RequireClientCertificate: wrapperspb.Bool(true), CommonTlsContext: &tlsv3.CommonTlsContext{AlpnProtocols: []string{"h2"}}})}},
			Filters: tcpWith(func(*tcp.TcpProxy) {})}}}, "on a TCP chain"},
		{&listener.Listener{Name: "t", Address: socket("127.0.0.1", 0), FilterChains: []*listener.FilterChain{{
			Filters: tcpWith(func(tp *tcp.TcpProxy) {
				tp.GetWeightedClusters().Clusters[0].MetadataMatch = &core.Metadata{}
			})}}}, "metadata_match"},
	} {
		if _, err := translate([]*listener.Listener{c.l}, nil, nil, nil, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("translate = %v; want an error naming %s", err, c.want)
		}
	}
}

// TestEndpointNamesNoOneHost: an endpoint given by a host name is refused
// when the name resolves to an address that names no one host (the zone
// CP refuses those given as addresses); one given by address, and
// localhost (admitted by a zone CP run for one host), are dialled as given.
func TestEndpointNamesNoOneHost(t *testing.T) {
	p := &Proxy{}
	c := &Cluster{Name: "web", ConnectTimeout: time.Second}
	d := p.endpointDialer(c, "web-1.example.internal:8080")
	if d.Control == nil {
		t.Fatal("no check on what a host name resolves to")
	}
	for _, resolved := range []string{"127.0.0.1:8080", "127.9.9.9:8080", "[::1]:8080", "169.254.169.254:80", "0.0.0.0:8080", "[fe80::1]:8080", "[::ffff:127.0.0.1]:8080", "224.0.0.1:8080"} {
		if err := d.Control("tcp", resolved, nil); err == nil || !strings.Contains(err.Error(), "names no one host") {
			t.Errorf("web-1.example.internal resolved to %s: %v; want a refusal", resolved, err)
		}
	}
	for _, resolved := range []string{"10.0.0.5:8080", "[2001:db8::5]:8080"} {
		if err := d.Control("tcp", resolved, nil); err != nil {
			t.Errorf("web-1.example.internal resolved to %s: %v", resolved, err)
		}
	}
	for _, addr := range []string{"127.0.0.1:8080", "10.0.0.5:8080", "localhost:8080", "LOCALHOST.:8080", "app.localhost:8080"} {
		if p.endpointDialer(c, addr).Control != nil {
			t.Errorf("%s: checked; an address, or localhost, is dialled as given", addr)
		}
	}
	// A real name that resolves to loopback (this host's name, often, by
	// /etc/hosts), with something listening there.
	name, err := os.Hostname()
	if err != nil {
		t.Skip(err)
	}
	addrs, err := net.LookupHost(name)
	if err != nil || len(addrs) == 0 || !netip.MustParseAddr(addrs[0]).IsLoopback() || strings.HasSuffix(name, "localhost") {
		t.Skipf("this host's name %q does not resolve to loopback here (%v %v)", name, addrs, err)
	}
	l, err := net.Listen("tcp", net.JoinHostPort(addrs[0], "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	target := net.JoinHostPort(name, port)
	if conn, err := p.endpointDialer(c, target).Dial("tcp", target); err == nil {
		conn.Close()
		t.Fatalf("dialled %s, which resolves to %s", target, addrs[0])
	} else if !strings.Contains(err.Error(), "names no one host") {
		t.Fatalf("dial %s: %v; want the refusal", target, err)
	}
}
