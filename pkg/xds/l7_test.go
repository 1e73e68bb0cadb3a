package xds

import (
	"testing"
	"time"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/xds/xdstest"
)

// TestSidecarTransparentL7Golden: a transparent sidecar's chains to an
// HTTP-family service are HTTP connection managers, in ursa:outbound and
// in ursa:inbound alike.
func TestSidecarTransparentL7Golden(t *testing.T) {
	s, dp, _ := stateFrom(t, "testdata/transparent/l7-http.input.yaml")
	r, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp, TransparentProxy: "15001", TransparentInbound: "15006"})
	if err != nil {
		t.Fatal(err)
	}
	if err := Validate(r); err != nil {
		t.Fatalf("generated resources do not validate: %v", err)
	}
	xdstest.Golden(t, "testdata/transparent/l7-http.golden.yaml", xdstest.Render(t, r), *update)
	kinds := map[string]string{}
	for _, res := range r[resource.ListenerType] {
		l := res.(*listener.Listener)
		for _, fc := range l.FilterChains {
			kinds[fc.Name] = fc.Filters[len(fc.Filters)-1].Name
		}
	}
	for chain, want := range map[string]string{
		"outbound:240.0.0.1:80":   "envoy.filters.network.http_connection_manager",
		"outbound:240.0.0.1:8080": "envoy.filters.network.http_connection_manager",
		"outbound:240.0.0.3:7000": "envoy.filters.network.tcp_proxy",
		"inbound:10.0.0.5:8000":   "envoy.filters.network.http_connection_manager",
		"direct:billing:8080":     "envoy.filters.network.tcp_proxy",
	} {
		if kinds[chain] != want {
			t.Errorf("chain %s: %q, want %q", chain, kinds[chain], want)
		}
	}
}

func dpWith(name string, tags ...map[string]string) *api.Dataplane {
	dp := &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: name}}
	dp.Networking.Address = "10.0.0.1"
	for i, t := range tags {
		dp.Networking.Inbound = append(dp.Networking.Inbound, api.Inbound{Port: 10000 + i, Tags: t})
	}
	return dp
}

func timeoutPolicy(name string, sources, destinations []map[string]string) *api.Timeout {
	t := &api.Timeout{Meta: api.Meta{Type: "Timeout", Mesh: "default", Name: name}}
	for _, m := range sources {
		t.Spec.Sources = append(t.Spec.Sources, api.Selector{Match: m})
	}
	for _, m := range destinations {
		t.Spec.Destinations = append(t.Spec.Destinations, api.Selector{Match: m})
	}
	t.Spec.ConnectTimeout = api.Dur(1)
	return t
}

// TestPolicyFor: of the policies whose sources match the proxy and whose
// destinations match the service, the most specific wins: most tags,
// then fewest "*", then the lowest name.
func TestPolicyFor(t *testing.T) {
	any := map[string]string{api.TagService: "*"}
	web := map[string]string{api.TagService: "web"}
	webV1 := map[string]string{api.TagService: "web", "version": "v1"}
	billing := map[string]string{api.TagService: "billing"}
	rs := []api.Resource{
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}},
		timeoutPolicy("a-any", []map[string]string{any}, []map[string]string{any}),
		timeoutPolicy("b-any-to-billing", []map[string]string{any}, []map[string]string{billing}),
		timeoutPolicy("c-web-to-billing", []map[string]string{web}, []map[string]string{billing}),
		timeoutPolicy("d-web-v1-to-any", []map[string]string{webV1}, []map[string]string{any}),
		timeoutPolicy("e-web-or-admin-to-billing", []map[string]string{{api.TagService: "admin"}, web}, []map[string]string{billing}),
		timeoutPolicy("f-zone", []map[string]string{{api.TagZone: "zone-1", "version": "*"}}, []map[string]string{billing}),
	}
	s := NewState(catalog.FromResources("zone-1", rs), nil).Mesh("default")
	for _, c := range []struct {
		dp   *api.Dataplane
		dest string
		want string
	}{
		{dpWith("web-v1", webV1), "billing", "d-web-v1-to-any"},                                            // 3 tags, one "*"; f-zone: 3 tags, two "*"
		{dpWith("web-v2", map[string]string{api.TagService: "web", "version": "v2"}), "billing", "f-zone"}, // 3 tags beat c's 2
		{dpWith("web", web), "billing", "c-web-to-billing"},                                                // ties with e, which c's name beats
		{dpWith("web", web), "ledger", "a-any"},
		{dpWith("other", map[string]string{api.TagService: "other"}), "billing", "b-any-to-billing"},
		{dpWith("admin", map[string]string{api.TagService: "admin"}), "billing", "e-web-or-admin-to-billing"},
		{dpWith("gateway"), "billing", "b-any-to-billing"}, // no inbounds: only any-caller sources
	} {
		got := policyFor[*api.Timeout](s, "Timeout", c.dp, c.dest)
		if got == nil || got.Name != c.want {
			t.Errorf("%s → %s: %v, want %s", c.dp.Name, c.dest, got, c.want)
		}
	}
	if got := policyFor[*api.Retry](s, "Retry", dpWith("web", web), "billing"); got != nil {
		t.Errorf("no Retry: got %v", got)
	}
}

// TestL7OutboundSharing: sidecars whose tags match the same policies'
// sources share their outbound resources; one that matches another
// policy's sources gets its own, with that policy's effect.
func TestL7OutboundSharing(t *testing.T) {
	s, _, _ := stateFrom(t, "testdata/sidecar/l7-fault.input.yaml")
	m := s.Mesh("default")
	v1a := dpWith("web-a", map[string]string{api.TagService: "web", "version": "v1"})
	v1b := dpWith("web-b", map[string]string{api.TagService: "web", "version": "v1"})
	v2 := dpWith("web-c", map[string]string{api.TagService: "web", "version": "v2"})
	ra, rb, rc := m.outboundResources(v1a, false), m.outboundResources(v1b, false), m.outboundResources(v2, false)
	la, lb, lc := ra[resource.ListenerType], rb[resource.ListenerType], rc[resource.ListenerType]
	if len(la) == 0 || len(la) != len(lb) || la[0] != lb[0] {
		t.Fatal("two v1 sidecars of web do not share their outbound listeners")
	}
	hasFault := func(l *listener.Listener) bool {
		m := &hcm.HttpConnectionManager{}
		if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(m); err != nil {
			t.Fatal(err)
		}
		return m.HttpFilters[0].Name == FaultFilter
	}
	if !hasFault(la[0].(*listener.Listener)) || hasFault(lc[0].(*listener.Listener)) {
		t.Error("the FaultInjection from web v1 applies to web v2, or not to web v1")
	}
	// The clusters do not depend on the fault: shared by all three.
	if ra[resource.ClusterType][0] != rc[resource.ClusterType][0] {
		t.Error("web v1 and v2 do not share billing's cluster")
	}
	if k1, k2 := outboundKey(m, v1a), outboundKey(m, v2); k1 == k2 {
		t.Errorf("web v1 and v2 have the same outbound key %q", k1)
	}
}

// TestServiceProtocol: a service speaks what its inbounds and other
// zones' offers agree on, else tcp.
func TestServiceProtocol(t *testing.T) {
	s, _, _ := stateFrom(t, "testdata/sidecar/l7-grpc.input.yaml")
	m := s.Mesh("default")
	for svc, want := range map[string]string{"greeter": "grpc", "mixed": "tcp", "web": "tcp", "nope": "tcp"} {
		if got := m.Protocol(svc); got != want {
			t.Errorf("%s: %s, want %s", svc, got, want)
		}
	}
}

// TestInboundFollowsProtocol: a stored Dataplane's inbound listeners are
// memoised while the PolicyHash stays the same, but the protocol of their
// service is not in it: when another instance's tag makes billing tcp,
// billing-1's inbound (its own listener, or its chain of ursa:inbound)
// becomes a tcp_proxy again.
func TestInboundFollowsProtocol(t *testing.T) {
	mesh := &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default", Version: 1}}
	billing := func(name, addr, protocol string) *api.Dataplane {
		dp := dpWith(name, map[string]string{api.TagService: "billing", api.TagProtocol: protocol})
		dp.Version, dp.Networking.Address = 1, addr
		return dp
	}
	b1 := billing("billing-1", "10.0.0.1", "http")
	last := func(s *State, p Proxy, name string) string {
		t.Helper()
		r, err := Sidecar(s, p)
		if err != nil {
			t.Fatal(err)
		}
		for _, res := range r[resource.ListenerType] {
			l := res.(*listener.Listener)
			if l.Name == name {
				fs := l.FilterChains[0].Filters
				return fs[len(fs)-1].Name
			}
		}
		t.Fatalf("no listener %s", name)
		return ""
	}
	s1 := NewState(catalog.FromResources("zone-1", []api.Resource{mesh, b1}), nil)
	s2 := NewState(catalog.FromResources("zone-1", []api.Resource{mesh, b1, billing("billing-2", "10.0.0.2", "grpc")}), s1)
	if s1.Mesh("default").PolicyHash != s2.Mesh("default").PolicyHash {
		t.Fatal("registering an instance changed the PolicyHash")
	}
	for _, p := range []Proxy{{Kind: KindSidecar, Dataplane: b1}, {Kind: KindSidecar, Dataplane: b1, TransparentInbound: "15006"}} {
		name := "inbound:10.0.0.1:10000"
		if p.TransparentInbound != "" {
			name = InboundListener
		}
		if got := last(s1, p, name); got != "envoy.filters.network.http_connection_manager" {
			t.Errorf("%s while billing is http: %s", name, got)
		}
		if got := last(s2, p, name); got != "envoy.filters.network.tcp_proxy" {
			t.Errorf("%s once billing's instances disagree: %s", name, got)
		}
	}
}

// TestInboundSurvivesRouteChanges: a stored Dataplane's inbound listener
// is kept (the very message) when routes or outbound policies change,
// and made again when a TrafficPermission does.
func TestInboundSurvivesRouteChanges(t *testing.T) {
	rs := xdstest.Inputs(t, "testdata/sidecar/l7-canary.input.yaml")
	for _, r := range rs {
		r.GetMeta().Version = 1
	}
	inbound := func(s *State) *listener.Listener {
		t.Helper()
		r, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: s.Mesh("default").Registered["web-1"]})
		if err != nil {
			t.Fatal(err)
		}
		for _, res := range r[resource.ListenerType] {
			if l := res.(*listener.Listener); l.Name == "inbound:10.0.0.5:10010" {
				return l
			}
		}
		t.Fatal("no inbound listener")
		return nil
	}
	with := func(extra ...api.Resource) []api.Resource { return append(append([]api.Resource{}, rs...), extra...) }
	s1 := NewState(catalog.FromResources("zone-1", rs), nil)
	retry := &api.Retry{Meta: api.Meta{Type: "Retry", Mesh: "default", Name: "r", Version: 1}, Spec: api.RetrySpec{
		Sources: []api.Selector{{Match: map[string]string{api.TagService: "*"}}}, Destinations: []api.Selector{{Match: map[string]string{api.TagService: "*"}}},
		HTTP: &api.HTTPRetry{NumRetries: 2}}}
	s2 := NewState(catalog.FromResources("zone-1", with(retry)), s1)
	if s1.Mesh("default").PolicyHash == s2.Mesh("default").PolicyHash {
		t.Fatal("a Retry left the PolicyHash alone")
	}
	if inbound(s2) != inbound(s1) {
		t.Error("a Retry rebuilt web-1's inbound listener")
	}
	deny := &api.TrafficPermission{Meta: api.Meta{Type: "TrafficPermission", Mesh: "default", Name: "deny", Version: 1}, Spec: api.TrafficPermissionSpec{
		Sources: []api.Selector{{Match: map[string]string{api.TagService: "admin"}}}, Destinations: []api.Selector{{Match: map[string]string{api.TagService: "web"}}},
		Action: api.ActionDeny}}
	s3 := NewState(catalog.FromResources("zone-1", with(retry, deny)), s2)
	if inbound(s3) == inbound(s2) {
		t.Error("a TrafficPermission kept web-1's inbound listener")
	}
}

// TestPerTryTimeoutWithoutRetry: a Timeout's per-try timeout bounds the one
// try of a route no Retry applies to (a retry policy of no retries), so
// the field is never silently dropped.
func TestPerTryTimeoutWithoutRetry(t *testing.T) {
	to := &api.Timeout{Spec: api.TimeoutSpec{HTTP: &api.HTTPTimeouts{PerTryTimeout: api.Dur(150 * time.Millisecond)}}}
	a := RouteOptions{Name: "outbound:billing", Service: "billing", Protocol: api.ProtocolHTTP, Timeout: to}.
		action([]Subset{{Tags: map[string]string{api.TagService: "billing"}, Weight: 1}})
	rp := a.GetRetryPolicy()
	if rp == nil || rp.GetNumRetries().GetValue() != 0 || rp.GetPerTryTimeout().AsDuration() != 150*time.Millisecond {
		t.Fatalf("retry policy %v", rp)
	}
	if a := (RouteOptions{Service: "billing", Protocol: api.ProtocolHTTP}).action([]Subset{{Tags: map[string]string{api.TagService: "billing"}, Weight: 1}}); a.GetRetryPolicy() != nil {
		t.Fatalf("a retry policy without Timeout or Retry: %v", a.GetRetryPolicy())
	}
}

// TestTCPIdleTimeoutPerSource: two sidecars whose tags pick different
// Timeouts for a TCP service get their own tcp_proxy idle timeouts (the
// outbound listener's memo key holds the Timeout).
func TestTCPIdleTimeoutPerSource(t *testing.T) {
	db := map[string]string{api.TagService: "db"}
	to := timeoutPolicy("web-to-db", []map[string]string{{api.TagService: "web"}}, []map[string]string{db})
	to.Spec.TCP = &api.TCPTimeouts{IdleTimeout: api.Dur(10 * time.Second)}
	dbDP := dpWith("db-1", db)
	dbDP.Networking.Address = "10.0.0.9"
	rs := []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}, to, dbDP,
		&api.VirtualIPs{Meta: api.Meta{Type: "VirtualIPs", Mesh: "default", Name: "zone-1"}, Entries: map[string]api.VirtualIP{"db": {IP: "127.240.0.9"}}}}
	m := NewState(catalog.FromResources("zone-1", rs), nil).Mesh("default")
	idle := func(dp *api.Dataplane) time.Duration {
		ls := m.outboundResources(dp, false)[resource.ListenerType]
		if len(ls) == 0 {
			t.Fatalf("%s: no outbound listener", dp.Name)
		}
		tp := &tcp.TcpProxy{}
		if err := ls[0].(*listener.Listener).FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(tp); err != nil {
			t.Fatal(err)
		}
		return tp.GetIdleTimeout().AsDuration()
	}
	if got := idle(dpWith("web-1", map[string]string{api.TagService: "web"})); got != 10*time.Second {
		t.Errorf("web's idle timeout %s, want 10s", got)
	}
	if got := idle(dpWith("api-1", map[string]string{api.TagService: "api"})); got != 0 {
		t.Errorf("api's idle timeout %s, want none (it took web's listener)", got)
	}
}

// TestPerTryTimeoutRetryOfOtherProtocol: a Retry with only a grpc block
// leaves an http service's per-try timeout to the Timeout; a proxyless
// client never gets a retry policy of 0 retries (grpc-go refuses one).
func TestPerTryTimeoutRetryOfOtherProtocol(t *testing.T) {
	to := &api.Timeout{Spec: api.TimeoutSpec{HTTP: &api.HTTPTimeouts{PerTryTimeout: api.Dur(150 * time.Millisecond)}}}
	re := &api.Retry{Spec: api.RetrySpec{GRPC: &api.HTTPRetry{NumRetries: 2}}}
	sub := []Subset{{Tags: map[string]string{api.TagService: "billing"}, Weight: 1}}
	rp := RouteOptions{Service: "billing", Protocol: api.ProtocolHTTP, Timeout: to, Retry: re}.action(sub).GetRetryPolicy()
	if rp.GetPerTryTimeout().AsDuration() != 150*time.Millisecond || rp.GetNumRetries().GetValue() != 0 {
		t.Fatalf("http service with a grpc-only Retry: %v", rp)
	}
}

// TestProxylessNoZeroRetries: grpc-go refuses num_retries 0, so a
// Timeout's per-try timeout alone gives a proxyless client no retry policy.
func TestProxylessNoZeroRetries(t *testing.T) {
	billing := map[string]string{api.TagService: "billing", api.TagProtocol: api.ProtocolGRPC}
	to := timeoutPolicy("per-try", []map[string]string{{api.TagService: "*"}}, []map[string]string{{api.TagService: "billing"}})
	to.Spec.HTTP = &api.HTTPTimeouts{PerTryTimeout: api.Dur(100 * time.Millisecond)}
	rs := []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}, to, dpWith("billing-1", billing)}
	m := NewState(catalog.FromResources("zone-1", rs), nil).Mesh("default")
	pp := m.pairPoliciesFor([]map[string]string{{api.TagService: "web"}}, "billing")
	if pp.timeout == nil {
		t.Fatal("the Timeout does not apply")
	}
	rc, _ := m.proxylessRoutes("billing", pp)
	for _, r := range rc.VirtualHosts[0].Routes {
		if rp := r.GetRoute().GetRetryPolicy(); rp != nil {
			t.Fatalf("route %s has a retry policy %v", r.Name, rp)
		}
	}
}
