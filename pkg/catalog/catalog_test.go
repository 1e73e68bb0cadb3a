package catalog

import (
	"errors"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

func mesh(name string) *api.Mesh {
	return &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: name, Version: 1}}
}

func dataplane(mesh, name, addr, service string, port int, extra ...string) *api.Dataplane {
	tags := map[string]string{api.TagService: service}
	for i := 0; i+1 < len(extra); i += 2 {
		tags[extra[i]] = extra[i+1]
	}
	return &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: mesh, Name: name, Version: 1},
		Networking: api.DataplaneNetworking{Address: addr, Inbound: []api.Inbound{{Port: port, ServicePort: port + 1, Tags: tags}}}}
}

func insight(mesh, name string, connected bool) *api.DataplaneInsight {
	return &api.DataplaneInsight{Meta: api.Meta{Type: "DataplaneInsight", Mesh: mesh, Name: name, Version: 1},
		ProxyStatus: api.ProxyStatus{Connected: connected, Instance: "cp-1"}}
}

func ingress(zone string, services ...string) *api.ZoneIngress {
	ing := &api.ZoneIngress{Meta: api.Meta{Type: "ZoneIngress", Name: zone + ".ingress", Version: 1}, Zone: zone,
		Networking: api.ZoneIngressNetworking{Address: "10.9.0.1", Port: 10001, AdvertisedAddress: "203.0.113.9", AdvertisedPort: 10002}}
	for _, s := range services {
		ing.AvailableServices = append(ing.AvailableServices, api.AvailableService{Mesh: "default", Instances: 2,
			Tags: map[string]string{api.TagService: s, api.TagZone: zone}})
	}
	return ing
}

func vips(mesh string, entries map[string]string) *api.VirtualIPs {
	v := &api.VirtualIPs{Meta: api.Meta{Type: "VirtualIPs", Mesh: mesh, Name: "vips", Version: 1}, Entries: map[string]api.VirtualIP{}}
	for svc, ip := range entries {
		v.Entries[svc] = api.VirtualIP{IP: ip}
	}
	return v
}

func catalogOf(t *testing.T, rs ...api.Resource) *Catalog {
	t.Helper()
	cat, err := Build("zone-1", store.NewView(rs, Types()...))
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

// TestServices: a mesh's services are its registered ones and those other
// zones offer; instances are the online local ones, tagged with the zone;
// offers dial the ingress's advertised address.
func TestServices(t *testing.T) {
	cat := catalogOf(t, mesh("default"), mesh("other"),
		dataplane("default", "web-1", "10.0.0.1", "web", 8080),
		dataplane("default", "billing-1", "10.0.0.2", "billing", 9090, "version", "v1"),
		dataplane("default", "billing-2", "10.0.0.3", "billing", 9090, "version", "v2"),
		dataplane("default", "billing-3", "10.0.0.4", "billing", 9090),
		insight("default", "billing-2", true), insight("default", "billing-3", false),
		dataplane("other", "db-1", "10.0.1.1", "db", 5432),
		ingress("zone-2", "billing", "payments"), ingress("zone-1"),
		vips("default", map[string]string{"web": "240.0.0.1", "billing": "240.0.0.2"}),
	)
	m := cat.Mesh("default")
	if got := m.Services(); !slices.Equal(got, []string{"billing", "payments", "web"}) {
		t.Fatalf("services = %v", got)
	}
	billing := m.Service("billing")
	var names []string
	for _, in := range billing.Local {
		names = append(names, in.Dataplane)
		if in.Tags[api.TagZone] != "zone-1" {
			t.Fatalf("local instance without its zone: %+v", in)
		}
	}
	// billing-3's proxy went away; billing-1's never connected (it counts).
	if !slices.Equal(names, []string{"billing-1", "billing-2"}) {
		t.Fatalf("billing's local instances = %v", names)
	}
	if billing.Port != 9091 || billing.VIP != netip.MustParseAddr("240.0.0.2") {
		t.Fatalf("billing: port %d, VIP %v", billing.Port, billing.VIP)
	}
	if len(billing.Remote) != 1 || billing.Remote[0].Address != "203.0.113.9" || billing.Remote[0].Port != 10002 || billing.Remote[0].Zone != "zone-2" {
		t.Fatalf("billing's remote offers = %+v", billing.Remote)
	}
	if got := m.LocalServices(); !slices.Equal(got, []string{"billing", "web"}) {
		t.Fatalf("local services = %v", got)
	}
	if len(m.Ingresses) != 1 || len(cat.Ingresses) != 1 || cat.Ingresses[0].Zone != "zone-1" || !cat.Ingresses[0].Online {
		t.Fatalf("ingresses: other zones %d, own %+v", len(m.Ingresses), cat.Ingresses)
	}
	if got := cat.Mesh("other").Services(); !slices.Equal(got, []string{"db"}) {
		t.Fatalf("other mesh's services = %v", got)
	}
	if cat.Mesh("missing") != nil {
		t.Fatal("a mesh that does not exist has a catalogue")
	}
	if w := cat.Wanted(); !w["default"]["payments"] || !w["other"]["db"] || w["default"]["db"] {
		t.Fatalf("wanted VIPs = %v", w)
	}
}

// TestHash: the hash changes with what a proxy's configuration depends on,
// only in the mesh it is about, and not with an insight's ACKed versions.
func TestHash(t *testing.T) {
	base := func() []api.Resource {
		return []api.Resource{mesh("default"), mesh("other"),
			dataplane("default", "billing-1", "10.0.0.2", "billing", 9090), insight("default", "billing-1", true),
			dataplane("other", "db-1", "10.0.1.1", "db", 5432)}
	}
	before := catalogOf(t, base()...)
	again := catalogOf(t, base()...)
	if before.Mesh("default").Hash != again.Mesh("default").Hash || before.Hash != again.Hash {
		t.Fatal("the same inputs hash differently")
	}
	tests := []struct {
		name   string
		change func([]api.Resource) []api.Resource
		same   bool
	}{
		{"a new version of a dataplane", func(rs []api.Resource) []api.Resource {
			rs[2].GetMeta().Version = 2
			return rs
		}, false},
		{"its proxy goes offline", func(rs []api.Resource) []api.Resource {
			rs[3] = insight("default", "billing-1", false)
			return rs
		}, false},
		{"its proxy ACKs a version", func(rs []api.Resource) []api.Resource {
			in := insight("default", "billing-1", true)
			in.Acked = map[string]string{"type": "v9"}
			in.Version = 7
			rs[3] = in
			return rs
		}, true},
		{"a route", func(rs []api.Resource) []api.Resource {
			return append(rs, &api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: "default", Name: "r", Version: 1},
				Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: "billing"}, Split: []api.Split{{Weight: 1}}}})
		}, false},
		{"a VIP", func(rs []api.Resource) []api.Resource {
			return append(rs, vips("default", map[string]string{"billing": "240.0.0.9"}))
		}, false},
		{"another zone's offer", func(rs []api.Resource) []api.Resource { return append(rs, ingress("zone-2", "billing")) }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			after := catalogOf(t, tt.change(base())...)
			if got := after.Mesh("default").Hash == before.Mesh("default").Hash; got != tt.same {
				t.Fatalf("default's hash unchanged = %v, want %v", got, tt.same)
			}
			if tt.name != "another zone's offer" && after.Mesh("other").Hash != before.Mesh("other").Hash {
				t.Fatal("a change in default changed other's hash")
			}
		})
	}
	// Resources that were never stored (version 0) hash by content.
	a := dataplane("default", "x", "10.0.0.1", "x", 1)
	b := dataplane("default", "x", "10.0.0.2", "x", 1)
	a.Version, b.Version = 0, 0
	if catalogOf(t, mesh("default"), a).Mesh("default").Hash == catalogOf(t, mesh("default"), b).Mesh("default").Hash {
		t.Fatal("unversioned resources with different contents hash the same")
	}
}

// TestIngressPresence: this zone's ingress is offline once its proxy's
// insight says so.
func TestIngressPresence(t *testing.T) {
	gone := &api.ZoneIngressInsight{Meta: api.Meta{Type: "ZoneIngressInsight", Name: "zone-1.ingress", Version: 1},
		ProxyStatus: api.ProxyStatus{DisconnectedAt: time.Now()}}
	up := catalogOf(t, mesh("default"), ingress("zone-1"))
	down := catalogOf(t, mesh("default"), ingress("zone-1"), gone)
	if !up.Ingresses[0].Online || down.Ingresses[0].Online || up.Hash == down.Hash {
		t.Fatalf("online %v then %v; hashes %s %s", up.Ingresses[0].Online, down.Ingresses[0].Online, up.Hash, down.Hash)
	}
}

// TestBuildNeedsEveryType: a view without a type the catalogue reads is a
// wiring mistake, reported, not an empty catalogue.
func TestBuildNeedsEveryType(t *testing.T) {
	_, err := Build("zone-1", store.NewView(nil, "Mesh", "Dataplane"))
	if !errors.Is(err, store.ErrNotMirrored) {
		t.Fatalf("Build on a partial view: %v", err)
	}
}

// TestSNI: one name per subset whatever the zone, a valid DNS name.
func TestSNI(t *testing.T) {
	a := SNI("default", map[string]string{api.TagService: "Billing_API", "version": "v1", api.TagZone: "zone-1"})
	b := SNI("default", map[string]string{api.TagService: "Billing_API", "version": "v1"})
	c := SNI("default", map[string]string{api.TagService: "Billing_API", "version": "v2"})
	if a != b || a == c {
		t.Fatalf("SNIs %q %q %q", a, b, c)
	}
	if want := "billing-api-"; a[:len(want)] != want {
		t.Fatalf("SNI %q does not start with %q", a, want)
	}
}

// TestStaleInsight: an insight older than its Dataplane (deleted and
// registered again) says nothing of it: the new one counts as never seen.
func TestStaleInsight(t *testing.T) {
	now := time.Now()
	dp := dataplane("default", "web-1", "10.0.0.1", "web", 8080)
	dp.CreationTime = now
	old := insight("default", "web-1", false)
	old.ConnectedSince, old.DisconnectedAt = now.Add(-2*time.Hour), now.Add(-time.Hour)
	if got := catalogOf(t, mesh("default"), dp, old).Mesh("default").Dataplanes; len(got) != 1 {
		t.Fatal("a Dataplane registered after its old proxy went is offline")
	}
	fresh := insight("default", "web-1", false)
	fresh.ConnectedSince, fresh.DisconnectedAt = now.Add(time.Second), now.Add(time.Minute)
	if got := catalogOf(t, mesh("default"), dp, fresh).Mesh("default").Dataplanes; len(got) != 0 {
		t.Fatal("a Dataplane whose proxy went after it was registered is online")
	}
}

// TestRemotePort: a service registered here takes its port from its own
// first Dataplane whatever other zones offer; one only other zones offer
// takes the smallest port their offers carry; offers without a port (zones
// that predate it) leave it 0, on port 80 only. The port is in the
// service's hash.
func TestRemotePort(t *testing.T) {
	offer := func(zone string, ports map[string]int) *api.ZoneIngress {
		ing := ingress(zone)
		for _, s := range slices.Sorted(maps.Keys(ports)) {
			ing.AvailableServices = append(ing.AvailableServices, api.AvailableService{Mesh: "default", Instances: 1,
				Tags: map[string]string{api.TagService: s, api.TagZone: zone}, Port: ports[s]})
		}
		return ing
	}
	m := catalogOf(t, mesh("default"),
		dataplane("default", "billing-1", "10.0.0.2", "billing", 9090), insight("default", "billing-1", false),
		offer("zone-2", map[string]int{"billing": 7000, "payments": 8443, "ledger": 0, "audit": 6000}),
		offer("zone-3", map[string]int{"billing": 7001, "payments": 443, "ledger": 0, "audit": 0}),
	).Mesh("default")
	want := map[string]uint32{"billing": 9091, "payments": 443, "ledger": 0, "audit": 6000}
	for name, port := range want {
		if got := m.Service(name).Port; got != port {
			t.Errorf("%s: port %d, want %d", name, got, port)
		}
	}

	// The same ingress, same version, another port: another hash.
	hash := func(port int) string {
		return catalogOf(t, mesh("default"), offer("zone-2", map[string]int{"payments": port})).Mesh("default").Service("payments").Hash
	}
	if hash(8443) == hash(8444) {
		t.Fatal("an offer's port is not in the service's hash")
	}
}

// TestNotReadyInbound: an inbound whose Health says not ready (a pod that
// is not Ready) keeps its service registered, with its port, but is no
// endpoint; one without Health, or ready, is.
func TestNotReadyInbound(t *testing.T) {
	notReady := dataplane("default", "billing-1", "10.0.0.1", "billing", 9090)
	notReady.Networking.Inbound[0].Health = &api.Health{Ready: false}
	ready := dataplane("default", "billing-2", "10.0.0.2", "billing", 9090)
	ready.Networking.Inbound[0].Health = &api.Health{Ready: true}
	cat := catalogOf(t, mesh("default"), notReady, ready,
		func() *api.Dataplane {
			dp := dataplane("default", "web-1", "10.0.0.3", "web", 8080)
			dp.Networking.Inbound[0].Health = &api.Health{}
			return dp
		}())
	m := cat.Mesh("default")
	if got := m.Services(); !slices.Equal(got, []string{"billing", "web"}) {
		t.Fatalf("services = %v, want both registered", got)
	}
	billing := m.Service("billing")
	if len(billing.Local) != 1 || billing.Local[0].Dataplane != "billing-2" {
		t.Fatalf("billing's endpoints = %+v, want only the ready billing-2", billing.Local)
	}
	if billing.Port != 9091 {
		t.Fatalf("billing's port = %d, want 9091 from the first registered instance", billing.Port)
	}
	if web := m.Service("web"); len(web.Local) != 0 || web.Port != 8081 {
		t.Fatalf("web = %+v, want registered with no endpoint", web)
	}
}

// TestProtocol: a service speaks the protocol its inbounds here and other
// zones' offers agree on; tcp when they disagree or one says nothing. A
// sidecar's hash follows its own services' protocols, which its inbounds
// speak.
func TestProtocol(t *testing.T) {
	offer := func(zone, service, protocol string) *api.ZoneIngress {
		ing := ingress(zone)
		tags := map[string]string{api.TagService: service, api.TagZone: zone}
		if protocol != "" {
			tags[api.TagProtocol] = protocol
		}
		ing.AvailableServices = append(ing.AvailableServices, api.AvailableService{Mesh: "default", Instances: 1, Tags: tags})
		return ing
	}
	build := func(billing2 string) *MeshCatalog {
		return catalogOf(t, mesh("default"),
			dataplane("default", "web-1", "10.0.0.1", "web", 8000, api.TagProtocol, "http"),
			dataplane("default", "web-2", "10.0.0.2", "web", 8000, api.TagProtocol, "http"),
			dataplane("default", "billing-1", "10.0.0.3", "billing", 9000, api.TagProtocol, "grpc"),
			dataplane("default", "billing-2", "10.0.0.4", "billing", 9000, api.TagProtocol, billing2),
			dataplane("default", "ledger-1", "10.0.0.5", "ledger", 7000, api.TagProtocol, "http2"),
			dataplane("default", "odd-1", "10.0.0.6", "odd", 7000, api.TagProtocol, "smtp"),
			offer("zone-2", "ledger", ""), offer("zone-3", "audit", "http2"),
		).Mesh("default")
	}
	m := build("grpc")
	for svc, want := range map[string]string{"web": "http", "billing": "grpc", "ledger": "tcp", "audit": "http2", "odd": "tcp"} {
		if got := m.Service(svc).Protocol; got != want {
			t.Errorf("%s: %q, want %q", svc, got, want)
		}
	}
	other := build("http")
	if got := other.Service("billing").Protocol; got != "tcp" {
		t.Errorf("billing's inbounds disagree: %q, want tcp", got)
	}
	if m.SidecarHash([]string{"billing"}, nil) == other.SidecarHash([]string{"billing"}, nil) {
		t.Error("billing's sidecars keep their hash when billing's protocol changes")
	}
}
