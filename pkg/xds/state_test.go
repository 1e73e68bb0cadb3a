package xds

import (
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
)

// TestPolicyMemoOutlivesEndpoints: when only endpoints change, the next
// state gives a sidecar the very same listener and cluster messages (only
// load assignments are rebuilt); when a policy changes, new ones.
func TestPolicyMemoOutlivesEndpoints(t *testing.T) {
	dp := func(name, addr, service string) *api.Dataplane {
		return &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: name, Version: 1},
			Networking: api.DataplaneNetworking{Address: addr, Inbound: []api.Inbound{{Port: 8080, Tags: map[string]string{api.TagService: service}}}}}
	}
	base := []api.Resource{
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default", Version: 1}},
		&api.VirtualIPs{Meta: api.Meta{Type: "VirtualIPs", Mesh: "default", Name: "vips", Version: 1},
			Entries: map[string]api.VirtualIP{"billing": {IP: "127.240.0.2"}}},
		dp("web-1", "10.0.0.1", "web"), dp("billing-1", "10.0.0.2", "billing"),
	}
	web := base[2].(*api.Dataplane)
	gen := func(s *State) Resources {
		r, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: web})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	same := func(a, b []types.Resource) bool {
		if len(a) != len(b) || len(a) == 0 {
			return false
		}
		for i := range a {
			if a[i] != b[i] {
				return false
			}
		}
		return true
	}
	s1 := NewState(catalog.FromResources("zone-1", base), nil)
	r1 := gen(s1)

	moved := dp("billing-1", "10.0.0.9", "billing")
	moved.Version = 2
	s2 := NewState(catalog.FromResources("zone-1", []api.Resource{base[0], base[1], base[2], moved}), s1)
	if s2.Mesh("default") == s1.Mesh("default") {
		t.Fatal("a new endpoint kept the old MeshState")
	}
	r2 := gen(s2)
	if !same(r1[resource.ListenerType], r2[resource.ListenerType]) || !same(r1[resource.ClusterType], r2[resource.ClusterType]) {
		t.Fatal("an endpoint change rebuilt listeners or clusters")
	}
	if same(r1[resource.EndpointType], r2[resource.EndpointType]) {
		t.Fatal("an endpoint change kept the old load assignments")
	}

	route := &api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: "default", Name: "r", Version: 1},
		Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: "billing"}, Split: []api.Split{{Weight: 100, Tags: map[string]string{"version": "v1"}}}}}
	s3 := NewState(catalog.FromResources("zone-1", []api.Resource{base[0], base[1], base[2], moved, route}), s2)
	if r3 := gen(s3); same(r2[resource.ListenerType], r3[resource.ListenerType]) {
		t.Fatal("a route change kept the old listeners")
	}
}
