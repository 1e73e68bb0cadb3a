package proxy

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/prometheus/client_golang/prometheus"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/xds"
)

func newProxy(t testing.TB) *Proxy {
	t.Helper()
	p, err := New(zaptest.NewLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func TestPickByPriority(t *testing.T) {
	p := newProxy(t)
	p.FirstEjection = time.Minute
	c := &Cluster{Name: "c", Overprovisioning: 140, Endpoints: []Endpoint{
		{Addr: "a:1", Weight: 1, Priority: 0}, {Addr: "b:1", Weight: 1, Priority: 0}, {Addr: "z:1", Weight: 1, Priority: 1}}}
	count := func() map[string]int {
		out := map[string]int{}
		for range 4000 {
			ep, ok := p.pick(c, nil, 1)
			if !ok {
				t.Fatal("no endpoint")
			}
			out[ep.Addr]++
		}
		return out
	}
	if got := count(); got["z:1"] != 0 {
		t.Fatalf("all healthy: priority 1 got %d of 4000", got["z:1"])
	}
	// Half of priority 0 healthy: 50% × 1.4 = 70% stays, 30% spills.
	p.eject("c", "a:1")
	got := count()
	if got["a:1"] != 0 || got["z:1"] < 1000 || got["z:1"] > 1400 {
		t.Fatalf("one of two ejected: %v, want about 1200 of 4000 to spill to priority 1", got)
	}
	p.eject("c", "b:1")
	if got := count(); got["z:1"] != 4000 {
		t.Fatalf("priority 0 all ejected: %v", got)
	}
}

// TestPickPanic: a priority's health is its share of healthy endpoints
// (counted, not weighed, as in Envoy). When the priorities together
// cannot take all the load, one with fewer healthy endpoints than the
// panic threshold balances over all of its endpoints, healthy or not, as
// Envoy does; when all are in panic, each takes load by its number of
// endpoints; a threshold of 0 never panics.
func TestPickPanic(t *testing.T) {
	eps := func(prios ...uint32) []Endpoint {
		var out []Endpoint
		for i, prio := range prios {
			out = append(out, Endpoint{Addr: fmt.Sprintf("e%d:1", i), Weight: 1, Priority: prio})
		}
		return out
	}
	for _, tc := range []struct {
		name      string
		prios     []uint32
		ejected   []string
		threshold float64
		want      map[string]int // of 3000 picks (30,000 made), each within 15 %; nil: none picked
		tried     []string
		weights   []uint32 // of the endpoints, in order; 1 for those not given
	}{
		{"priority 0 at 1 of 5 in panic, priority 1 at 1 of 2 not", []uint32{0, 0, 0, 0, 0, 1, 1}, []string{"e0:1", "e1:1", "e2:1", "e3:1", "e5:1"}, 50,
			// 28 % and 70 % of the load, normalized: priority 0's share over all five of its endpoints.
			map[string]int{"e0:1": 171, "e1:1": 171, "e2:1": 171, "e3:1": 171, "e4:1": 171, "e6:1": 2143}, nil, nil},
		{"all in panic: by number of endpoints, not weight", []uint32{0, 1}, []string{"e0:1", "e1:1"}, 50,
			map[string]int{"e0:1": 1500, "e1:1": 1500}, nil, []uint32{3, 1}},
		{"a priority's health counts endpoints, not weights", []uint32{0, 0, 1}, []string{"e0:1"}, 50,
			// 1 of 2 healthy: 70 %, though the healthy one has a quarter of the weight.
			map[string]int{"e1:1": 2100, "e2:1": 900}, nil, []uint32{3, 1, 1}},
		{"a retry does not go to an unhealthy endpoint of a priority that takes no load", []uint32{0, 0, 0, 1}, []string{"e2:1", "e3:1"}, 50,
			nil, []string{"e0:1", "e1:1"}, nil},
		{"one of three healthy, no other priority: panic", []uint32{0, 0, 0}, []string{"e0:1", "e1:1"}, 50,
			map[string]int{"e0:1": 1000, "e1:1": 1000, "e2:1": 1000}, nil, nil},
		{"one of three healthy, a healthy priority 1 takes the rest: no panic", []uint32{0, 0, 0, 1}, []string{"e0:1", "e1:1"}, 50,
			map[string]int{"e2:1": 1400, "e3:1": 1600}, nil, nil},
		{"one of two healthy is not below 50 %: no panic", []uint32{0, 0}, []string{"e0:1"}, 50,
			map[string]int{"e1:1": 3000}, nil, nil},
		{"one of three healthy above a threshold of 30 %: no panic", []uint32{0, 0, 0}, []string{"e0:1", "e1:1"}, 30,
			map[string]int{"e2:1": 3000}, nil, nil},
		{"none healthy anywhere: by number of endpoints", []uint32{0, 0, 1}, []string{"e0:1", "e1:1", "e2:1"}, 50,
			map[string]int{"e0:1": 1000, "e1:1": 1000, "e2:1": 1000}, nil, nil},
		{"none healthy, threshold 0: none", []uint32{0, 0, 1}, []string{"e0:1", "e1:1", "e2:1"}, 0, nil, nil, nil},
		{"one of three healthy, threshold 0: the healthy one", []uint32{0, 0, 0}, []string{"e0:1", "e1:1"}, 0,
			map[string]int{"e2:1": 3000}, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newProxy(t)
			p.FirstEjection = time.Minute
			c := &Cluster{Name: "c", Overprovisioning: 140, PanicThreshold: tc.threshold, Endpoints: eps(tc.prios...)}
			for i, w := range tc.weights {
				c.Endpoints[i].Weight = w
			}
			for _, a := range tc.ejected {
				p.eject("c", a)
			}
			tried := map[string]bool{}
			for _, a := range tc.tried {
				tried[a] = true
			}
			got := map[string]int{}
			for range 30000 {
				ep, ok := p.pick(c, tried, 6)
				if !ok {
					if tc.want != nil {
						t.Fatal("no endpoint picked")
					}
					return
				}
				got[ep.Addr]++
			}
			if tc.want == nil {
				t.Fatalf("picked %v, want none", got)
			}
			for _, ep := range c.Endpoints {
				w, g := 10*tc.want[ep.Addr], got[ep.Addr]
				if g < w*85/100 || g > w*115/100 {
					t.Fatalf("picked %v, want about %v", got, tc.want)
				}
			}
			panics := promtest.ToFloat64(p.panics.WithLabelValues("c"))
			if inPanic := tc.want["e0:1"] > 0 && slices.Contains(tc.ejected, "e0:1"); inPanic != (panics > 0) {
				t.Fatalf("ursa_dp_lb_healthy_panic_total = %v", panics)
			}
		})
	}
}

func TestEjectedEndpointReturns(t *testing.T) {
	p := newProxy(t)
	clock := testutil.NewClock(time.Now())
	p.Now = clock.Now
	p.FirstEjection, p.EjectionTime = 50*time.Millisecond, 50*time.Millisecond
	p.eject("c", "a:1")
	if p.healthy("c", "a:1") {
		t.Fatal("an endpoint just ejected is healthy")
	}
	if !p.healthy("other", "a:1") {
		t.Fatal("ejected from one cluster, the endpoint is out of another too")
	}
	clock.Advance(50 * time.Millisecond)
	if p.healthy("c", "a:1") {
		t.Fatal("the endpoint came back before its ejection ended")
	}
	clock.Advance(time.Nanosecond)
	if !p.healthy("c", "a:1") {
		t.Fatal("the endpoint did not come back once its ejection ended")
	}
}

func echoServer(t *testing.T, name string) string {
	t.Helper()
	return echoOn(t, "127.0.0.1:0", name)
}

// anyPort is a listener address the kernel gives a free port to when the
// proxy binds it; boundAddr then says which.
const anyPort = "127.0.0.1:0"

// boundAddr is the address the proxy's listener name is bound to.
func boundAddr(t *testing.T, p *Proxy, name string) string {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.listeners[name]
	if !ok {
		t.Fatalf("listener %q is not running", name)
	}
	return r.ln.Addr().String()
}

func config(listen string, routes ...Route) *Config {
	c := &Config{Listeners: map[string]*Listener{"l": {Name: "l", Addr: listen, Routes: routes}}, Clusters: map[string]*Cluster{}}
	return c
}

// TestChangesKeepConnections: a configuration change — new weights, a new
// cluster — leaves an established connection flowing, and so does removing
// its listener (which only stops new connections).
func TestChangesKeepConnections(t *testing.T) {
	p := newProxy(t)
	a, b := echoServer(t, "a"), echoServer(t, "b")
	cfg := config(anyPort, Route{Cluster: "a", Weight: 1})
	cfg.Clusters["a"] = &Cluster{Name: "a", ConnectTimeout: time.Second, Overprovisioning: 140, Endpoints: []Endpoint{{Addr: a, Weight: 1}}}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	listen := boundAddr(t, p, "l")
	conn, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	roundTrip := func(msg string) string {
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintln(conn, msg)
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("established connection after a change: %v", err)
		}
		return strings.TrimSpace(line)
	}
	if got := roundTrip("one"); got != "a one" {
		t.Fatalf("got %q", got)
	}
	next := config(anyPort, Route{Cluster: "b", Weight: 1}) // the same listener: it keeps its port
	next.Clusters["b"] = &Cluster{Name: "b", ConnectTimeout: time.Second, Overprovisioning: 140, Endpoints: []Endpoint{{Addr: b, Weight: 1}}}
	if err := p.Apply(next); err != nil {
		t.Fatal(err)
	}
	if got := roundTrip("two"); got != "a two" {
		t.Fatalf("the established connection moved: %q", got)
	}
	if c2, err := net.Dial("tcp", listen); err == nil {
		fmt.Fprintln(c2, "new")
		line, _ := bufio.NewReader(c2).ReadString('\n')
		c2.Close()
		if strings.TrimSpace(line) != "b new" {
			t.Fatalf("a new connection after the change: %q", line)
		}
	}
	if err := p.Apply(&Config{Listeners: map[string]*Listener{}, Clusters: map[string]*Cluster{}}); err != nil {
		t.Fatal(err)
	}
	if got := roundTrip("three"); got != "a three" {
		t.Fatalf("after its listener went away: %q", got)
	}
	if _, err := net.DialTimeout("tcp", listen, time.Second); err == nil {
		t.Fatal("a removed listener still accepts")
	}
}

// TestTranslateRefusesWhatItCannotRun names the unsupported part, so the
// proxy NACKs it with that reason.
func TestTranslateRefusesWhatItCannotRun(t *testing.T) {
	m, _ := anypb.New(&hcm.HttpConnectionManager{StatPrefix: "x"})
	l := &listener.Listener{Name: "http", Address: nil}
	if _, err := translate([]*listener.Listener{l}, nil, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "socket addresses") {
		t.Fatalf("listener without an address: %v", err)
	}
	l = &listener.Listener{Name: "http", Address: socket("127.0.0.1", 1), FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{
		{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listener.Filter_TypedConfig{TypedConfig: m}}}}}}
	if _, err := translate([]*listener.Listener{l}, nil, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "http_connection_manager") {
		t.Fatalf("an HTTP filter: %v", err)
	}
}

// TestTranslateClusterRefusals: what a cluster sets that the proxy does
// not do (another load balancer, a field it would ignore) is NACKed with
// its name, as Envoy's unknown extensions are.
func TestTranslateClusterRefusals(t *testing.T) {
	for _, c := range []struct {
		change func(*cluster.Cluster)
		want   string
	}{
		{func(c *cluster.Cluster) { c.LbPolicy = cluster.Cluster_RING_HASH }, "lb_policy RING_HASH"},
		{func(c *cluster.Cluster) { c.LbPolicy = cluster.Cluster_LEAST_REQUEST }, "lb_policy LEAST_REQUEST"},
		{func(c *cluster.Cluster) { c.LbPolicy = cluster.Cluster_CLUSTER_PROVIDED }, "lb_policy CLUSTER_PROVIDED"},
		{func(c *cluster.Cluster) {
			c.ClusterDiscoveryType, c.LoadAssignment = &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST}, nil
		}, "lb_policy ROUND_ROBIN with type ORIGINAL_DST"},
		{func(c *cluster.Cluster) {
			c.LbConfig = &cluster.Cluster_RoundRobinLbConfig_{RoundRobinLbConfig: &cluster.Cluster_RoundRobinLbConfig{}}
		}, "round_robin_lb_config"},
		{func(c *cluster.Cluster) { c.DnsRefreshRate = durationpb.New(time.Second) }, "dns_refresh_rate"},
		{func(c *cluster.Cluster) {
			c.TransportSocket = &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{
				TypedConfig: xds.MustAny(&tlsv3.UpstreamTlsContext{Sni: "x", MaxSessionKeys: wrapperspb.UInt32(0)})}}
		}, "max_session_keys"},
		{func(c *cluster.Cluster) {
			c.TransportSocket = &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{
				TypedConfig: xds.MustAny(&tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
					ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
						DefaultValidationContext:         &tlsv3.CertificateValidationContext{TrustChainVerification: tlsv3.CertificateValidationContext_ACCEPT_UNTRUSTED},
						ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: "mesh-ca"}}}}})}}
		}, "trust_chain_verification"},
		{func(c *cluster.Cluster) { c.PerConnectionBufferLimitBytes = wrapperspb.UInt32(1) }, "per_connection_buffer_limit_bytes"},
	} {
		cl := staticHTTPCluster("svc", false, "127.0.0.1:1")
		c.change(cl)
		_, err := translate(nil, []*cluster.Cluster{cl}, nil, nil, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), `cluster "svc"`) {
			t.Errorf("translate = %v; want an error naming cluster \"svc\" and %s", err, c.want)
		}
	}
	for _, lb := range []cluster.Cluster_LbPolicy{cluster.Cluster_ROUND_ROBIN, cluster.Cluster_RANDOM} {
		cl := staticHTTPCluster("svc", false, "127.0.0.1:1")
		cl.LbPolicy = lb
		if cfg, err := translate(nil, []*cluster.Cluster{cl}, nil, nil, nil); err != nil || (cfg.Clusters["svc"].rotation != nil) != (lb == cluster.Cluster_ROUND_ROBIN) {
			t.Errorf("lb_policy %s: %v", lb, err)
		}
	}
}

// TestTranslateSecretRefusals: a secret that asks for more than a
// certificate and key or a CA and its CRL, inline, is NACKed with its name:
// a validation context's SAN matches ignored would accept any peer.
func TestTranslateSecretRefusals(t *testing.T) {
	ca := func(change func(*tlsv3.CertificateValidationContext)) *tlsv3.Secret {
		vc := &tlsv3.CertificateValidationContext{TrustedCa: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: []byte("x")}}}
		change(vc)
		return &tlsv3.Secret{Name: "mesh-ca", Type: &tlsv3.Secret_ValidationContext{ValidationContext: vc}}
	}
	for _, c := range []struct {
		s    *tlsv3.Secret
		want string
	}{
		{ca(func(vc *tlsv3.CertificateValidationContext) {
			vc.MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{{SanType: tlsv3.SubjectAltNameMatcher_URI}}
		}), "MatchTypedSubjectAltNames"},
		{ca(func(vc *tlsv3.CertificateValidationContext) { vc.AllowExpiredCertificate = true }), "allow_expired_certificate"},
		{ca(func(vc *tlsv3.CertificateValidationContext) {
			vc.TrustedCa = &core.DataSource{Specifier: &core.DataSource_Filename{Filename: "/etc/ca.pem"}}
		}), "inline_bytes"},
		{&tlsv3.Secret{Name: "identity", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			Password: &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: "x"}}}}}, "password"},
	} {
		if _, err := translate(nil, nil, nil, []*tlsv3.Secret{c.s}, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("translate = %v; want an error naming %s", err, c.want)
		}
	}
}

// TestEDSHealthStatus: an endpoint EDS says is UNHEALTHY, DRAINING or
// TIMEOUT takes no calls while another can; DEGRADED, and what else an
// assignment sets that the proxy would ignore, is NACKed with its name.
func TestEDSHealthStatus(t *testing.T) {
	lbe := func(port uint32, st core.HealthStatus) *endpoint.LbEndpoint {
		return &endpoint.LbEndpoint{HealthStatus: st, HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: socket("127.0.0.1", port)}}}
	}
	cla := func(eps ...*endpoint.LbEndpoint) *endpoint.ClusterLoadAssignment {
		return &endpoint.ClusterLoadAssignment{ClusterName: "svc", Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: eps}}}
	}
	p := newProxy(t)
	for _, st := range []core.HealthStatus{core.HealthStatus_UNHEALTHY, core.HealthStatus_DRAINING, core.HealthStatus_TIMEOUT} {
		eps, err := endpointsOf(cla(lbe(1, st), lbe(2, core.HealthStatus_HEALTHY), lbe(3, core.HealthStatus_UNKNOWN)))
		if err != nil {
			t.Fatal(err)
		}
		c := &Cluster{Name: "svc", Overprovisioning: 140, PanicThreshold: 50, Endpoints: eps}
		for range 100 {
			if ep, ok := p.pick(c, nil, 1); !ok || ep.Addr == "127.0.0.1:1" {
				t.Fatalf("%s: picked %v, %v", st, ep, ok)
			}
		}
	}
	for _, c := range []struct {
		cla  *endpoint.ClusterLoadAssignment
		want string
	}{
		{cla(lbe(1, core.HealthStatus_DEGRADED)), "health_status DEGRADED"},
		{func() *endpoint.ClusterLoadAssignment {
			a := cla(lbe(1, core.HealthStatus_HEALTHY))
			a.Endpoints[0].LbEndpoints[0].Metadata = &core.Metadata{}
			return a
		}(), "metadata"},
		{func() *endpoint.ClusterLoadAssignment {
			a := cla(lbe(1, core.HealthStatus_HEALTHY))
			a.Policy = &endpoint.ClusterLoadAssignment_Policy{DropOverloads: []*endpoint.ClusterLoadAssignment_Policy_DropOverload{{Category: "x"}}}
			return a
		}(), "drop_overloads"},
		{func() *endpoint.ClusterLoadAssignment {
			a := cla(lbe(1, core.HealthStatus_HEALTHY))
			a.Endpoints[0].LbEndpoints[0].GetEndpoint().Hostname = "x"
			return a
		}(), "hostname"},
	} {
		cl := staticHTTPCluster("svc", false)
		cl.LoadAssignment = c.cla
		if _, err := translate(nil, []*cluster.Cluster{cl}, nil, nil, nil); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("translate = %v; want an error naming %s", err, c.want)
		}
	}
}

// TestPickRoundRobin: a ROUND_ROBIN cluster takes its endpoints in
// rotation, a heavier one's turns spread among the others' (as Envoy's
// EDF scheduler does, not in a row), each priority in its own rotation;
// a RANDOM one draws.
func TestPickRoundRobin(t *testing.T) {
	p := newProxy(t)
	order := func(c *Cluster, n int) string {
		var b strings.Builder
		for range n {
			ep, _ := p.pick(c, nil, 1)
			b.WriteByte(ep.Addr[0])
		}
		return b.String()
	}
	// The start is random, and so the order: a rotation of len(cycle) is
	// a sequence that repeats every len(cycle) picks, each of cycle once.
	rotates := func(got, cycle string) bool {
		for i := range got {
			if i+len(cycle) < len(got) && got[i] != got[i+len(cycle)] {
				return false
			}
		}
		for _, r := range cycle {
			if !strings.ContainsRune(got[:min(len(cycle), len(got))], r) {
				return false
			}
		}
		return true
	}
	c := &Cluster{Name: "c", Overprovisioning: 140, PanicThreshold: 50, rotation: &roundRobin{}, Endpoints: []Endpoint{
		{Addr: "a:1", Weight: 1}, {Addr: "b:1", Weight: 1}, {Addr: "c:1", Weight: 1}}}
	if got := order(c, 30); !rotates(got, "abc") {
		t.Fatalf("equal weights: %s; want a, b and c in rotation", got)
	}
	// Weights 3 and 3: alternating, not three in a row each.
	c = &Cluster{Name: "c", Overprovisioning: 140, PanicThreshold: 50, rotation: &roundRobin{}, Endpoints: []Endpoint{
		{Addr: "a:1", Weight: 3}, {Addr: "b:1", Weight: 3}}}
	if got := order(c, 30); !rotates(got, "ab") {
		t.Fatalf("weights 3, 3: %s; want them alternating", got)
	}
	// Weights 2, 1, 1: a half the picks, never three in a row.
	c = &Cluster{Name: "c", Overprovisioning: 140, PanicThreshold: 50, rotation: &roundRobin{}, Endpoints: []Endpoint{
		{Addr: "a:1", Weight: 2}, {Addr: "b:1", Weight: 1}, {Addr: "c:1", Weight: 1}}}
	got := order(c, 400)
	if strings.Count(got, "a") != 200 || strings.Count(got, "b") != 100 || strings.Contains(got, "aaa") {
		t.Fatalf("weights 2, 1, 1: %s; want a half the picks, never three in a row", got[:40])
	}
	// Weights 1 and 20, as an ingress of one instance beside one of
	// twenty: the one's turns are spread, not in a run.
	c = &Cluster{Name: "c", Overprovisioning: 140, PanicThreshold: 50, rotation: &roundRobin{}, Endpoints: []Endpoint{
		{Addr: "a:1", Weight: 1}, {Addr: "b:1", Weight: 20}}}
	if got := order(c, 210); strings.Count(got, "a") != 10 || strings.Contains(got, "aa") {
		t.Fatalf("weights 1, 20: %s; want a once every 21", got)
	}
	// Two priorities, the first with one healthy endpoint of two (70 %
	// of the load): each priority's picks rotate among its own.
	p.FirstEjection = time.Minute
	c = &Cluster{Name: "prio", Overprovisioning: 140, PanicThreshold: 0, rotation: &roundRobin{}, Endpoints: []Endpoint{
		{Addr: "a:1", Weight: 1}, {Addr: "x:1", Weight: 1, Unhealthy: true},
		{Addr: "b:1", Weight: 1, Priority: 1}, {Addr: "c:1", Weight: 1, Priority: 1}}}
	got = order(c, 600)
	var second strings.Builder
	for _, r := range got {
		if r != 'a' {
			second.WriteRune(r)
		}
	}
	if !rotates(second.String(), "bc") || strings.Contains(got, "x") {
		t.Fatalf("priority 1's picks: %s; want b and c alternating", second.String())
	}
	// Drawn at random: equal weights in strict rotation over 30 picks
	// three times is a chance of about 1 in 10^40.
	c = &Cluster{Name: "c", Overprovisioning: 140, PanicThreshold: 50, Endpoints: []Endpoint{
		{Addr: "a:1", Weight: 1}, {Addr: "b:1", Weight: 1}, {Addr: "c:1", Weight: 1}}}
	if a, b, d := order(c, 30), order(c, 30), order(c, 30); rotates(a, "abc") && rotates(b, "abc") && rotates(d, "abc") {
		t.Fatal("a RANDOM cluster picked in rotation")
	}
}

// TestPickDraining: a DRAINING endpoint is left out of its priority's
// size and health, as Envoy excludes it: one healthy endpoint beside two
// draining ones keeps all the load and is not in panic; draining ones take
// calls only when their priority is in panic.
func TestPickDraining(t *testing.T) {
	p := newProxy(t)
	c := &Cluster{Name: "c", Overprovisioning: 140, PanicThreshold: 50, rotation: &roundRobin{}, Endpoints: []Endpoint{
		{Addr: "a:1", Weight: 1}, {Addr: "d:1", Weight: 1, Excluded: true}, {Addr: "e:1", Weight: 1, Excluded: true},
		{Addr: "z:1", Weight: 1, Priority: 1}}}
	for range 300 {
		if ep, ok := p.pick(c, nil, 1); !ok || ep.Addr != "a:1" {
			t.Fatalf("picked %v, %v; want a:1 only", ep, ok)
		}
	}
	// Priority 0 with only draining endpoints: priority 1 takes it all.
	c.Endpoints[0].Excluded = true
	for range 300 {
		if ep, ok := p.pick(c, nil, 1); !ok || ep.Addr != "z:1" {
			t.Fatalf("with priority 0 all draining: picked %v, %v; want z:1", ep, ok)
		}
	}
}

// TestAddressesOfEitherFamily: listeners and endpoints at IPv6 addresses
// (a ZoneIngress or a Dataplane may be at one) are addresses net.Listen and
// net.Dial take, as Envoy takes them.
func TestAddressesOfEitherFamily(t *testing.T) {
	for addr, want := range map[string]string{"2001:db8::5": "[2001:db8::5]:10001", "10.0.0.5": "10.0.0.5:10001"} {
		l := &listener.Listener{Name: "ingress", Address: socket(addr, 10001),
			FilterChains: []*listener.FilterChain{{Filters: tcpFilter(t, "billing")}}}
		got, err := translateListener(l)
		if err != nil {
			t.Fatal(err)
		}
		if got.Addr != want {
			t.Errorf("a listener at %s port 10001 binds %q, want %q", addr, got.Addr, want)
		}
		cla := &endpoint.ClusterLoadAssignment{ClusterName: "billing", Endpoints: []*endpoint.LocalityLbEndpoints{{
			LbEndpoints: []*endpoint.LbEndpoint{{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: socket(addr, 10001)}}}}}}}
		cfg, err := translate(nil, []*cluster.Cluster{{Name: "billing", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
			EdsClusterConfig: &cluster.Cluster_EdsClusterConfig{ServiceName: "billing"}}}, []*endpoint.ClusterLoadAssignment{cla}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if eps := cfg.Clusters["billing"].Endpoints; len(eps) != 1 || eps[0].Addr != want {
			t.Errorf("an endpoint at %s port 10001: %+v, want %q", addr, eps, want)
		}
	}
}

// TestServerNamesWithoutCase: an ingress's server names are kept in lower
// case, and two chains that match one name in two cases are refused, as
// Envoy refuses two chains with the same match.
func TestServerNamesWithoutCase(t *testing.T) {
	chain := func(name string) *listener.FilterChain {
		return &listener.FilterChain{FilterChainMatch: &listener.FilterChainMatch{ServerNames: []string{name}},
			Filters: tcpFilter(t, "billing")}
	}
	l := &listener.Listener{Name: "ingress", Address: socket("127.0.0.1", 10001), FilterChains: []*listener.FilterChain{chain("Billing-ABC.default.ursa")}}
	got, err := translateListener(l)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got.SNIRoutes["billing-abc.default.ursa"]; !ok || len(got.SNIRoutes) != 1 {
		t.Fatalf("server names: %v", got.SNIRoutes)
	}
	l.FilterChains = append(l.FilterChains, chain("billing-abc.DEFAULT.ursa"))
	if _, err := translateListener(l); err == nil || !strings.Contains(err.Error(), `server name "billing-abc.default.ursa" is matched by two filter chains`) {
		t.Fatalf("one name in two chains: %v", err)
	}
}

func socket(addr string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{Address: addr, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port}}}}
}

// TestSNIPassthrough: an ingress listener routes by the ClientHello's SNI
// without terminating TLS (the backend completes the handshake), and closes
// and counts a connection whose SNI it does not know.
func TestSNIPassthrough(t *testing.T) {
	ca, _ := mtls.NewCA("default", time.Now())
	id, _ := mtls.Issue(ca, "billing", time.Hour, time.Now())
	pair, err := tls.X509KeyPair(id.CertPEM, id.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	backend, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	go testutil.ServeEach(backend, func(c net.Conn) {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			fmt.Fprintf(c, "tls %s\n", sc.Text())
		}
	})
	reg := prometheus.NewRegistry()
	p, err := New(zaptest.NewLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	cfg := &Config{
		Listeners: map[string]*Listener{"ingress": {Name: "ingress", Addr: anyPort, SNIRoutes: map[string][]Route{"billing-abc.default.ursa": {{Cluster: "billing", Weight: 1}}}}},
		Clusters:  map[string]*Cluster{"billing": {Name: "billing", ConnectTimeout: time.Second, Overprovisioning: 140, Endpoints: []Endpoint{{Addr: backend.Addr().String(), Weight: 1}}}},
	}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	listen := boundAddr(t, p, "ingress")
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(ca.CertPEM))
	dial := func(sni string) (string, error) {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", listen, &tls.Config{ServerName: sni, RootCAs: roots,
			InsecureSkipVerify: true}) // the backend's certificate names a SPIFFE ID, not this SNI
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprintln(c, "hi")
		line, err := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line), err
	}
	if got, err := dial("billing-abc.default.ursa"); err != nil || got != "tls hi" {
		t.Fatalf("known SNI: %q %v", got, err)
	}
	// A host name's case means nothing (RFC 6066 3): Envoy matches server
	// names without it.
	if got, err := dial("Billing-ABC.Default.URSA"); err != nil || got != "tls hi" {
		t.Fatalf("the known SNI in another case: %q %v", got, err)
	}
	if _, err := dial("unknown.default.ursa"); err == nil {
		t.Fatal("an unknown SNI was passed through")
	}
	families, _ := reg.Gather()
	refused := false
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if f.GetName() == "ursa_dp_refused_total" && l.GetValue() == "unknown_sni" && m.GetCounter().GetValue() == 1 {
					refused = true
				}
			}
		}
	}
	if !refused {
		t.Fatal("the unknown SNI was not counted")
	}
}

// testCA is a mesh CA, a pool holding it, and a way to turn its issued
// identities into key pairs.
func testCA(t *testing.T, now time.Time) (*api.MeshCA, *x509.CertPool, func(mtls.Identity) *tls.Certificate) {
	t.Helper()
	ca, err := mtls.NewCA("default", now)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(ca.CertPEM))
	return ca, roots, func(id mtls.Identity) *tls.Certificate {
		p, err := tls.X509KeyPair(id.CertPEM, id.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return &p
	}
}

// issued issues key pairs for services from ca (testCA's, with its
// pairOf), valid for an hour from now.
func issued(t *testing.T, ca *api.MeshCA, pairOf func(mtls.Identity) *tls.Certificate, now time.Time) func(service string) *tls.Certificate {
	return func(service string) *tls.Certificate {
		t.Helper()
		id, err := mtls.Issue(ca, service, time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		return pairOf(id)
	}
}

// TestRotationKeepsConnections: a new identity from SDS serves new
// connections while an established mTLS connection keeps flowing.
func TestRotationKeepsConnections(t *testing.T) {
	now := time.Now()
	ca, roots, pairOf := testCA(t, now)
	first, _ := mtls.Issue(ca, "billing", time.Hour, now)
	second, _ := mtls.Issue(ca, "billing", time.Hour, now)
	caller, _ := mtls.Issue(ca, "web", time.Hour, now)
	p := newProxy(t)
	app := echoServer(t, "app")
	cfg := func(id mtls.Identity) *Config {
		return &Config{Identity: pairOf(id), Roots: roots,
			Listeners: map[string]*Listener{"in": {Name: "in", Addr: anyPort, TLS: true, Routes: []Route{{Cluster: "app", Weight: 1}}}},
			Clusters:  map[string]*Cluster{"app": {Name: "app", ConnectTimeout: time.Second, Overprovisioning: 140, Endpoints: []Endpoint{{Addr: app, Weight: 1}}}}}
	}
	if err := p.Apply(cfg(first)); err != nil {
		t.Fatal(err)
	}
	listen := boundAddr(t, p, "in")
	dial := func() (*tls.Conn, *bufio.Reader) {
		c, err := tls.Dial("tcp", listen, &tls.Config{Certificates: []tls.Certificate{*pairOf(caller)}, RootCAs: roots, InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		return c, bufio.NewReader(c)
	}
	echo := func(c *tls.Conn, r *bufio.Reader, msg string) {
		c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintln(c, msg)
		if line, err := r.ReadString('\n'); err != nil || strings.TrimSpace(line) != "app "+msg {
			t.Fatalf("%s: %q %v", msg, line, err)
		}
	}
	old, oldR := dial()
	defer old.Close()
	echo(old, oldR, "before")
	if err := p.Apply(cfg(second)); err != nil {
		t.Fatal(err)
	}
	echo(old, oldR, "after the rotation")
	fresh, freshR := dial()
	defer fresh.Close()
	echo(fresh, freshR, "new")
	want, _ := x509.ParseCertificate(pairOf(second).Certificate[0])
	if got := fresh.ConnectionState().PeerCertificates[0]; got.SerialNumber.Cmp(want.SerialNumber) != 0 {
		t.Fatal("a new connection did not get the rotated certificate")
	}
}

// TestHandshakeFailureFailsOver is a remote zone whose ingress accepts the
// connection but has no instance left for the SNI, so it closes before the
// TLS handshake ends: the caller's connection goes to the next priority
// (the next zone) instead of failing, and the first endpoint is ejected
// for that cluster only.
func TestHandshakeFailureFailsOver(t *testing.T) {
	now := time.Now()
	ca, roots, pairOf := testCA(t, now)
	pair := issued(t, ca, pairOf, now)
	// The empty ingress: accepts, reads the ClientHello, closes.
	empty, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer empty.Close()
	go func() {
		for {
			c, err := empty.Accept()
			if err != nil {
				return
			}
			c.Read(make([]byte, 512))
			c.Close()
		}
	}()
	// The next zone: a TLS server with the billing identity.
	next, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*pair("billing")},
		ClientAuth: tls.RequireAnyClientCert})
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	go func() {
		for {
			c, err := next.Accept()
			if err != nil {
				return
			}
			go func() { c.(*tls.Conn).Handshake(); c.Write([]byte("zone-3\n")); c.Close() }()
		}
	}()
	p := newProxy(t)
	p.Now = testutil.NewClock(now).Now // the ejection lasts until the checks below are done
	c := &Cluster{Name: "billing{ursa.io/zone=zone-2}", TLS: true, SNI: "billing-x.default.ursa", ConnectTimeout: time.Second,
		Overprovisioning: 140, Endpoints: []Endpoint{
			{Addr: empty.Addr().String(), Weight: 1, Priority: 0}, {Addr: next.Addr().String(), Weight: 1, Priority: 1}}}
	cfg := &Config{Identity: pair("web"), Roots: roots, Listeners: map[string]*Listener{}, Clusters: map[string]*Cluster{c.Name: c}}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		up, err := p.connect(cfg, c, 3)
		if err != nil {
			t.Fatalf("connection %d failed instead of failing over: %v", i, err)
		}
		line, err := bufio.NewReader(up).ReadString('\n')
		up.Close()
		if err != nil || line != "zone-3\n" {
			t.Fatalf("connection %d: %q %v", i, line, err)
		}
	}
	if p.healthy(c.Name, empty.Addr().String()) {
		t.Fatal("the endpoint that closed during the handshake was not ejected")
	}
	if !p.healthy("billing", empty.Addr().String()) {
		t.Fatal("the ejection reached another cluster")
	}
}

// TestWarming is a route shift whose new cluster's endpoints have not
// arrived yet: connections keep going to the old cluster until they do.
func TestWarming(t *testing.T) {
	a := &Cluster{Name: "billing{ursa.io/zone=zone-2}", Endpoints: []Endpoint{{Addr: "a:1", Weight: 1}}}
	cfg := func(route string, clusters ...*Cluster) *Config {
		c := &Config{Listeners: map[string]*Listener{"out": {Name: "out", Addr: "127.0.0.1:1", Routes: []Route{{Cluster: route, Weight: 100}}}},
			Clusters: map[string]*Cluster{}}
		for _, cl := range clusters {
			c.Clusters[cl.Name] = cl
		}
		return c
	}
	prev := cfg(a.Name, a)
	cold := &Cluster{Name: "billing{ursa.io/zone=zone-3}", Warming: true}
	got := warm(prev, cfg(cold.Name, cold))
	if r := got.Listeners["out"].Routes; r[0].Cluster != a.Name || got.Clusters[a.Name] != a {
		t.Fatalf("a route to a warming cluster was taken at once: %+v", r)
	}
	hot := &Cluster{Name: cold.Name, Endpoints: []Endpoint{{Addr: "b:1", Weight: 1}}}
	if r := warm(got, cfg(hot.Name, hot)).Listeners["out"].Routes; r[0].Cluster != hot.Name {
		t.Fatalf("the route did not move once the cluster warmed: %+v", r)
	}
	// With nothing ready before either, the new routes stand.
	if r := warm(&Config{Listeners: map[string]*Listener{}}, cfg(cold.Name, cold)).Listeners["out"].Routes; r[0].Cluster != cold.Name {
		t.Fatalf("a new listener kept nothing: %+v", r)
	}
}

// TestWarmingByOriginalDestination: the transparent proxy's listener warms
// chain by chain. A chain that moves to a cluster not warm yet keeps the
// routes of the chain it replaces (the same port and prefixes), with their
// cluster, while another chain's change is taken at once; once the cluster
// warms, the chain moves. Before, the listener took the cold cluster at
// once, and an app's connections to the VIP were refused until its
// endpoints came.
func TestWarmingByOriginalDestination(t *testing.T) {
	vip := []netip.Prefix{netip.MustParsePrefix("240.0.0.7/32")}
	other := []netip.Prefix{netip.MustParsePrefix("240.0.0.8/32")}
	v1 := &Cluster{Name: "billing-v1", Endpoints: []Endpoint{{Addr: "a:1", Weight: 1}}}
	web := &Cluster{Name: "web", Endpoints: []Endpoint{{Addr: "w:1", Weight: 1}}}
	cold := &Cluster{Name: "billing-v2", Warming: true}
	pass := &Cluster{Name: "passthrough"}
	cfg := func(billing, webTo string, clusters ...*Cluster) *Config {
		chains := []DstChain{
			{Port: 80, Prefixes: vip, Routes: []Route{{Cluster: billing, Weight: 1}}},
			{Port: 80, Prefixes: other, Routes: []Route{{Cluster: webTo, Weight: 1}}},
			{Routes: []Route{{Cluster: "passthrough", Weight: 1}}},
		}
		l := &Listener{Name: "ursa:outbound", Addr: "0.0.0.0:15001", OriginalDst: true, DstChains: chains, dsts: newDstIndex(chains)}
		c := &Config{Listeners: map[string]*Listener{l.Name: l}, Clusters: map[string]*Cluster{pass.Name: pass}}
		for _, cl := range clusters {
			c.Clusters[cl.Name] = cl
		}
		return c
	}
	route := func(c *Config, dst string) string {
		ch, ok := c.Listeners["ursa:outbound"].dsts.match(netip.MustParseAddrPort(dst))
		if !ok {
			return "none"
		}
		return ch.Routes[0].Cluster
	}
	prev := cfg(v1.Name, web.Name, v1, web)
	web2 := &Cluster{Name: "web2", Endpoints: []Endpoint{{Addr: "w:2", Weight: 1}}}
	got := warm(prev, cfg(cold.Name, web2.Name, cold, web2))
	if r := route(got, "240.0.0.7:80"); r != v1.Name || got.Clusters[v1.Name] != v1 {
		t.Fatalf("a chain moved to a cold cluster at once: %s", r)
	}
	if r := route(got, "240.0.0.8:80"); r != web2.Name {
		t.Fatalf("a chain whose new cluster is warm did not move: %s", r)
	}
	if r := route(got, "192.0.2.1:443"); r != "passthrough" {
		t.Fatalf("the default chain: %s", r)
	}
	hot := &Cluster{Name: cold.Name, Endpoints: []Endpoint{{Addr: "b:1", Weight: 1}}}
	if r := route(warm(got, cfg(hot.Name, web2.Name, hot, web2)), "240.0.0.7:80"); r != hot.Name {
		t.Fatalf("the chain did not move once its cluster warmed: %s", r)
	}
}

// TestEndpointBackEndsEjection: an endpoint the control plane removed and
// then adds back is not left out for the rest of an old ejection.
func TestEndpointBackEndsEjection(t *testing.T) {
	p := newProxy(t)
	p.FirstEjection = time.Minute
	cfg := func(eps ...Endpoint) *Config {
		return &Config{Listeners: map[string]*Listener{}, Clusters: map[string]*Cluster{"c": {Name: "c", Endpoints: eps}}}
	}
	a, b := Endpoint{Addr: "a:1", Weight: 1}, Endpoint{Addr: "b:1", Weight: 1}
	if err := p.Apply(cfg(a, b)); err != nil {
		t.Fatal(err)
	}
	p.eject("c", "a:1")
	p.eject("c", "b:1")
	if err := p.Apply(cfg(b)); err != nil { // a removed: gone
		t.Fatal(err)
	}
	if err := p.Apply(cfg(a, b)); err != nil { // a back
		t.Fatal(err)
	}
	if !p.healthy("c", "a:1") {
		t.Fatal("an endpoint added back is still ejected")
	}
	if p.healthy("c", "b:1") {
		t.Fatal("an endpoint that stayed lost its ejection")
	}
	// The whole cluster gone and back.
	if err := p.Apply(&Config{Listeners: map[string]*Listener{}, Clusters: map[string]*Cluster{}}); err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(cfg(a, b)); err != nil {
		t.Fatal(err)
	}
	if !p.healthy("c", "b:1") {
		t.Fatal("an endpoint of a cluster added back is still ejected")
	}
}

// TestEjectionBacksOff: each failure in a row doubles the time an endpoint
// is left out, up to the limit; a success ends the streak.
func TestEjectionBacksOff(t *testing.T) {
	p := newProxy(t)
	clock := testutil.NewClock(time.Now())
	p.Now = clock.Now
	p.FirstEjection, p.EjectionTime = 100*time.Millisecond, time.Second
	left := func() time.Duration {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.ejected["c|a:1"].until.Sub(clock.Now())
	}
	for _, want := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		p.eject("c", "a:1")
		if got := left(); got != want*time.Millisecond {
			t.Fatalf("ejected for %s, want %dms", got, want)
		}
	}
	p.connected("c", "a:1")
	p.eject("c", "a:1")
	if got := left(); got != 100*time.Millisecond {
		t.Fatalf("after a success, ejected for %s, want 100ms", got)
	}
}

// TestEjectedEndpointIsTriedByOneConnection: once an ejection is over,
// the first connection to the endpoint is its trial, and until that one
// connects, fails or times out, the endpoint stays unhealthy to the others:
// an endpoint that takes connections and never answers holds up one
// connection, not every new one.
func TestEjectedEndpointIsTriedByOneConnection(t *testing.T) {
	p := newProxy(t)
	clock := testutil.NewClock(time.Now())
	p.Now = clock.Now
	p.FirstEjection, p.EjectionTime = time.Second, time.Second
	c := &Cluster{Name: "c", ConnectTimeout: 2 * time.Second}
	p.eject("c", "a:1")
	clock.Advance(1100 * time.Millisecond)
	if !p.healthy("c", "a:1") {
		t.Fatal("an endpoint whose ejection is over is still left out")
	}
	p.trying(c, "a:1")
	if p.healthy("c", "a:1") {
		t.Fatal("an endpoint being tried again is healthy to other connections")
	}
	p.trying(c, "a:1") // a second connection that raced the first changes nothing
	clock.Advance(4900 * time.Millisecond)
	if p.healthy("c", "a:1") {
		t.Fatal("the trial ended before twice the connect timeout (dial, handshake) and a second")
	}
	clock.Advance(200 * time.Millisecond)
	if !p.healthy("c", "a:1") {
		t.Fatal("a trial that never reported holds the endpoint out for good")
	}
	p.trying(c, "a:1") // the next connection is the next trial
	if p.healthy("c", "a:1") {
		t.Fatal("after a trial that never reported, the next connection is no trial")
	}
	clock.Advance(5100 * time.Millisecond)
	p.trying(c, "a:1")
	p.eject("c", "a:1") // the trial failed: ejected again, no trial
	clock.Advance(1100 * time.Millisecond)
	if !p.healthy("c", "a:1") {
		t.Fatal("after its next ejection, the endpoint is not tried again")
	}
	p.trying(c, "a:1")
	p.connected("c", "a:1")
	if !p.healthy("c", "a:1") {
		t.Fatal("a trial that connected leaves the endpoint out")
	}
}

// TestListenerInUseIsLeftOut: as in Envoy, a listener whose address is
// taken is left out and named in the error, the others run, and the same
// failure is not reported again by later updates.
func TestListenerInUseIsLeftOut(t *testing.T) {
	p := newProxy(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	app := echoServer(t, "app")
	cfg := func() *Config {
		return &Config{
			Listeners: map[string]*Listener{
				"in":  {Name: "in", Addr: anyPort, Routes: []Route{{Cluster: "app", Weight: 1}}},
				"vip": {Name: "vip", Addr: taken.Addr().String(), Routes: []Route{{Cluster: "app", Weight: 1}}},
			},
			Clusters: map[string]*Cluster{"app": {Name: "app", ConnectTimeout: time.Second, Overprovisioning: 140, Endpoints: []Endpoint{{Addr: app, Weight: 1}}}},
		}
	}
	err = p.Apply(cfg())
	if err == nil || !strings.Contains(err.Error(), `listener "vip"`) || strings.Contains(err.Error(), `listener "in"`) {
		t.Fatalf("error = %v, want one naming only the listener in use", err)
	}
	c, err := net.DialTimeout("tcp", boundAddr(t, p, "in"), time.Second)
	if err != nil {
		t.Fatalf("the other listener is not running: %v", err)
	}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintln(c, "hi")
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "app hi\n" {
		t.Fatalf("through the other listener: %q %v", line, err)
	}
	c.Close()
	if err := p.Apply(cfg()); err != nil {
		t.Fatalf("the same failure was reported again: %v", err)
	}
	taken.Close()
	if err := p.Apply(cfg()); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.cfg.Load().Listeners["vip"]; !ok {
		t.Fatal("the listener did not start once its address was free")
	}
}

// TestConnectAttempts: a TCP connection tries as many endpoints as its
// tcp_proxy's max_connect_attempts, Envoy's 1 when unset: with one, a
// refused endpoint fails the connection; with two, the next one (the
// refused one is ejected, so its priority's load moves on) takes it.
func TestConnectAttempts(t *testing.T) {
	refused := testutil.RefusingAddr(t)
	live, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	go testutil.ServeEach(live, func(c net.Conn) { c.Write([]byte("live\n")) })
	for _, attempts := range []int{1, 2} {
		p := newProxy(t)
		p.FirstEjection = time.Minute
		c := &Cluster{Name: "c", ConnectTimeout: time.Second, Overprovisioning: 140, PanicThreshold: 50, Endpoints: []Endpoint{
			{Addr: refused, Weight: 1}, {Addr: live.Addr().String(), Weight: 1, Priority: 1}}}
		up, err := p.connect(&Config{}, c, attempts)
		if attempts == 1 {
			if err == nil {
				up.Close()
				t.Fatal("one attempt at a refused endpoint connected")
			}
			continue
		}
		if err != nil {
			t.Fatalf("%d attempts: %v", attempts, err)
		}
		line, _ := bufio.NewReader(up).ReadString('\n')
		up.Close()
		if line != "live\n" {
			t.Fatalf("%d attempts reached %q", attempts, line)
		}
	}
	cfg, err := translate([]*listener.Listener{{Name: "t", Address: socket("127.0.0.1", 0), FilterChains: []*listener.FilterChain{{
		Filters: []*listener.Filter{xds.TCPProxy("t", []xds.Subset{{Tags: map[string]string{"ursa.io/service": "c"}, Weight: 1}})}}}}}, nil, nil, nil, nil)
	if err != nil || cfg.Listeners["t"].Routes[0].ConnectAttempts != 3 {
		t.Fatalf("the CP's tcp_proxy: %v; want 3 connect attempts", err)
	}
}

// TestHealthyEndpointsGauge: a first pick sets the cluster's
// ursa_dp_endpoints_healthy to its healthy endpoints, and later picks
// (through the cached series) keep it current, per cluster.
func TestHealthyEndpointsGauge(t *testing.T) {
	p := newProxy(t)
	a := &Cluster{Name: "a", Overprovisioning: 140, Endpoints: []Endpoint{{Addr: "a:1", Weight: 1}, {Addr: "a:2", Weight: 1}}}
	b := &Cluster{Name: "b", Overprovisioning: 140, Endpoints: []Endpoint{{Addr: "b:1", Weight: 1}, {Addr: "b:2", Weight: 1, Unhealthy: true}}}
	for _, want := range []float64{2, 2, 1} {
		if want == 1 {
			a.Endpoints[0].Unhealthy = true
		}
		if _, ok := p.pick(a, nil, 1); !ok {
			t.Fatal("no endpoint picked in a")
		}
		if got := promtest.ToFloat64(p.healthyGauge.WithLabelValues("a")); got != want {
			t.Fatalf("ursa_dp_endpoints_healthy{cluster=a} = %v, want %v", got, want)
		}
	}
	p.pick(b, nil, 1)
	if got := promtest.ToFloat64(p.healthyGauge.WithLabelValues("b")); got != 1 {
		t.Fatalf("ursa_dp_endpoints_healthy{cluster=b} = %v, want 1", got)
	}
}
