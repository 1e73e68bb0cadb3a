package xds

import (
	"testing"
	"time"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/xds/xdstest"
)

// TestProxylessKeepsPolicyPart: a change of endpoints (a new instance of
// billing) rebuilds a proxyless client's load assignments and keeps the
// very listener, route and cluster messages (whose encodings are known);
// a client whose tags other policies select gets its own routes.
func TestProxylessKeepsPolicyPart(t *testing.T) {
	rs := xdstest.Inputs(t, "testdata/proxyless/l7.input.yaml")
	var web *api.Dataplane
	for _, r := range rs {
		if d, ok := r.(*api.Dataplane); ok && d.Name == "web-1" {
			web = d
			web.Version = 1 // stored: its server listener is memoised too
		}
	}
	s1 := NewState(catalog.FromResources("zone-1", rs), nil)
	r1, err := Proxyless(s1, Proxy{Kind: KindProxyless, Dataplane: web})
	if err != nil {
		t.Fatal(err)
	}
	more := &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: "billing-2"}, Networking: api.DataplaneNetworking{
		Address: "127.0.0.3", Inbound: []api.Inbound{{Port: 9001, Tags: map[string]string{api.TagService: "billing", "version": "v1"}}}}}
	s2 := NewState(catalog.FromResources("zone-1", append(rs, more)), s1)
	r2, err := Proxyless(s2, Proxy{Kind: KindProxyless, Dataplane: web})
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{resource.ListenerType, resource.RouteType, resource.ClusterType} {
		if len(r1[typ]) != len(r2[typ]) {
			t.Fatalf("%s: %d then %d", typ, len(r1[typ]), len(r2[typ]))
		}
		for i := range r1[typ] {
			if r1[typ][i] != r2[typ][i] {
				t.Errorf("%s %d was rebuilt for a change of endpoints", typ, i)
			}
		}
	}
	changed := 0
	for i := range r1[resource.EndpointType] {
		if r1[resource.EndpointType][i] != r2[resource.EndpointType][i] {
			changed++
		}
	}
	if changed == 0 {
		t.Error("no load assignment was rebuilt for a new instance")
	}

	// api-1's tags select the Timeout for api (9 s), not web's.
	api1 := &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: "api-1"}, Networking: api.DataplaneNetworking{
		Address: "127.0.0.4", Inbound: []api.Inbound{{Port: 9004, Tags: map[string]string{api.TagService: "api"}}}}}
	r3, err := Proxyless(s2, Proxy{Kind: KindProxyless, Dataplane: api1})
	if err != nil {
		t.Fatal(err)
	}
	if got := maxStreamDuration(t, r3, "billing"); got != 9*time.Second {
		t.Fatalf("api-1's billing deadline %v, want 9s", got)
	}
	if got := maxStreamDuration(t, r2, "billing"); got != 300*time.Millisecond {
		t.Fatalf("web-1's billing deadline %v, want 300ms", got)
	}
}

// maxStreamDuration is the deadline of the default route of a service's
// route configuration.
func maxStreamDuration(t *testing.T, r Resources, svc string) time.Duration {
	t.Helper()
	for _, res := range r[resource.RouteType] {
		if rc := res.(*route.RouteConfiguration); rc.Name == svc {
			routes := rc.VirtualHosts[0].Routes
			return routes[len(routes)-1].GetRoute().GetMaxStreamDuration().GetMaxStreamDuration().AsDuration()
		}
	}
	t.Fatalf("no route configuration %s", svc)
	return 0
}
