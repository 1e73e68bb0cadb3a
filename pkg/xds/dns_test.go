package xds

import (
	"strings"
	"testing"
	"time"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	dnsfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/dns_filter/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/xds/xdstest"
)

func findListener(r Resources, name string) *listener.Listener {
	for _, res := range r[resource.ListenerType] {
		if l := res.(*listener.Listener); l.Name == name {
			return l
		}
	}
	return nil
}

// TestDNSListenerGolden: a sidecar that asks for DNS gets the UDP listener
// of Envoy's DNS filter, its table naming every service with a VIP twice
// (<service>.mesh, <service>.<mesh>.mesh), besides its usual resources.
func TestDNSListenerGolden(t *testing.T) {
	s, dp, _ := stateFrom(t, "testdata/sidecar/local.input.yaml")
	r, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp, DNSAddress: "127.0.0.1:15053"})
	if err != nil {
		t.Fatal(err)
	}
	if err := Validate(r); err != nil {
		t.Fatalf("generated resources do not validate: %v", err)
	}
	l := findListener(r, DNSListenerName)
	if l == nil {
		t.Fatal("no DNS listener")
	}
	without, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(r[resource.ListenerType]), len(without[resource.ListenerType])+1; got != want {
		t.Fatalf("%d listeners, want %d (the others and the DNS listener)", got, want)
	}
	cfg := &dnsfilter.DnsFilterConfig{}
	if err := l.GetListenerFilters()[0].GetTypedConfig().UnmarshalTo(cfg); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range cfg.GetServerConfig().GetInlineDnsTable().GetVirtualDomains() {
		names = append(names, d.GetName()+"="+d.GetEndpoint().GetAddressList().GetAddress()[0])
	}
	if got, want := strings.Join(names, " "), "billing.default.mesh=127.240.0.1 billing.mesh=127.240.0.1 web.default.mesh=127.240.0.2 web.mesh=127.240.0.2"; got != want {
		t.Fatalf("table %s, want %s", got, want)
	}
	xdstest.Golden(t, "testdata/dns/local.golden.yaml", xdstest.Render(t, Resources{resource.ListenerType: []types.Resource{l}}), *update)
}

func TestDNSListenerOnlyWhenAskedAndVIPs(t *testing.T) {
	s, dp, _ := stateFrom(t, "testdata/sidecar/local.input.yaml")
	r, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp})
	if err != nil {
		t.Fatal(err)
	}
	if findListener(r, DNSListenerName) != nil {
		t.Fatal("a DNS listener for a proxy that did not ask")
	}
	// A mesh without VIPs: nothing to answer, no listener.
	var rs []api.Resource
	for _, res := range xdstest.Inputs(t, "testdata/sidecar/local.input.yaml") {
		if _, ok := res.(*api.VirtualIPs); !ok {
			rs = append(rs, res)
		}
	}
	novips := NewState(catalog.FromResources("zone-1", rs), nil)
	r, err = Sidecar(novips, Proxy{Kind: KindSidecar, Dataplane: dp, DNSAddress: "127.0.0.1:15053"})
	if err != nil {
		t.Fatal(err)
	}
	if findListener(r, DNSListenerName) != nil {
		t.Fatal("a DNS listener in a mesh without VIPs")
	}
	for _, bad := range []string{"localhost:53", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", "::1:53"} {
		if _, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp, DNSAddress: bad}); err == nil || !strings.Contains(err.Error(), "dns address") {
			t.Errorf("dns address %q: err %v, want one naming the dns address", bad, err)
		}
	}
}

// The table follows the zone DNS's domain and TTL when the State has them.
func TestDNSListenerDomainAndTTL(t *testing.T) {
	s, dp, _ := stateFrom(t, "testdata/sidecar/local.input.yaml")
	s.DNSDomain, s.DNSTTL = "Corp.", 5*time.Second
	r, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp, DNSAddress: "127.0.0.1:15053"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &dnsfilter.DnsFilterConfig{}
	if err := findListener(r, DNSListenerName).GetListenerFilters()[0].GetTypedConfig().UnmarshalTo(cfg); err != nil {
		t.Fatal(err)
	}
	table := cfg.GetServerConfig().GetInlineDnsTable()
	d := table.GetVirtualDomains()[0]
	if d.GetName() != "billing.corp" || d.GetAnswerTtl().AsDuration() != 5*time.Second {
		t.Fatalf("first name %q ttl %v, want billing.corp 5s", d.GetName(), d.GetAnswerTtl().AsDuration())
	}
}

// Names two services spell alike answer one VIP, the same in every build:
// <service>.<mesh> over a service named "<service>.<mesh>", as the zone's
// DNS does; of names that differ in case, the first service by name.
func TestDNSListenerNamesSpelledAlike(t *testing.T) {
	var rs []api.Resource
	for _, res := range xdstest.Inputs(t, "testdata/sidecar/local.input.yaml") {
		if v, ok := res.(*api.VirtualIPs); ok {
			v.Entries["billing.default"] = api.VirtualIP{IP: "240.0.0.3"}
			v.Entries["Web"] = api.VirtualIP{IP: "240.0.0.4"}
		}
		rs = append(rs, res)
	}
	want := "billing.default.default.mesh=240.0.0.3 billing.default.mesh=127.240.0.1 billing.mesh=127.240.0.1 " +
		"web.default.mesh=240.0.0.4 web.mesh=240.0.0.4"
	for range 20 { // a fresh MeshState each time: map orders differ
		s := NewState(catalog.FromResources("zone-1", rs), nil)
		dp := s.Mesh("default").Registered["web-1"]
		r, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp, DNSAddress: "127.0.0.1:15053"})
		if err != nil {
			t.Fatal(err)
		}
		cfg := &dnsfilter.DnsFilterConfig{}
		if err := findListener(r, DNSListenerName).GetListenerFilters()[0].GetTypedConfig().UnmarshalTo(cfg); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, d := range cfg.GetServerConfig().GetInlineDnsTable().GetVirtualDomains() {
			names = append(names, d.GetName()+"="+strings.Join(d.GetEndpoint().GetAddressList().GetAddress(), ","))
		}
		if got := strings.Join(names, " "); got != want {
			t.Fatalf("table %s, want %s", got, want)
		}
	}
}
