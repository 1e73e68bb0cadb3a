package xds

import (
	"testing"
	"time"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
)

// A Dataplane deleted and registered again under the same name starts again
// at version 1 (versions are per resource), at another creation time.
// (Found in review.) While the mesh's PolicyHash is
// unchanged (the service has another instance), the policy memo hands the
// re-registered proxy the inbound listener of the old Dataplane.
func TestRecreatedDataplaneGetsItsOwnInbound(t *testing.T) {
	created := time.Now()
	dp := func(name, addr string, port int) *api.Dataplane {
		created = created.Add(time.Second) // as a store sets it
		return &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: name, Version: 1, CreationTime: created},
			Networking: api.DataplaneNetworking{Address: addr, Inbound: []api.Inbound{{Port: port, Tags: map[string]string{api.TagService: "web"}}}}}
	}
	mesh := &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default", Version: 1}}
	old := dp("web-1", "10.0.0.1", 8080)
	other := dp("web-2", "10.0.0.2", 8080)
	s1 := NewState(catalog.FromResources("zone-1", []api.Resource{mesh, old, other}), nil)
	if _, err := Sidecar(s1, Proxy{Kind: KindSidecar, Dataplane: old}); err != nil {
		t.Fatal(err)
	}
	// web-1 deleted (removeOffline, ursactl delete) ...
	s2 := NewState(catalog.FromResources("zone-1", []api.Resource{mesh, other}), s1)
	// ... and registered again, elsewhere: version 1 again.
	reborn := dp("web-1", "10.0.0.9", 9090)
	s3 := NewState(catalog.FromResources("zone-1", []api.Resource{mesh, other, reborn}), s2)
	r, err := Sidecar(s3, Proxy{Kind: KindSidecar, Dataplane: reborn})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range r[resource.ListenerType] {
		t.Logf("listener %s", l.(*listener.Listener).Name)
		if l.(*listener.Listener).Name == "inbound:10.0.0.1:8080" {
			t.Fatal("the re-registered web-1 (10.0.0.9:9090) got the old web-1's inbound listener")
		}
	}
}

// The catalogue hash names a resource by its key and version only, so a
// Dataplane deleted and re-created between two cuts of the mirror (same
// name, version 1 again, another address) leaves every hash unchanged: the
// Follower does not publish, and no proxy learns the new address.
func TestRecreatedDataplaneChangesTheHash(t *testing.T) {
	mesh := &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default", Version: 1}}
	a := &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: "web-1", Version: 1},
		Networking: api.DataplaneNetworking{Address: "10.0.0.1", Inbound: []api.Inbound{{Port: 8080, Tags: map[string]string{api.TagService: "web"}}}}}
	b := api.DeepCopy(a).(*api.Dataplane)
	b.Networking.Address = "10.0.0.9"
	b.CreationTime = a.CreationTime.Add(time.Millisecond) // created again
	c1 := catalog.FromResources("zone-1", []api.Resource{mesh, a})
	c2 := catalog.FromResources("zone-1", []api.Resource{mesh, b})
	if c1.Hash == c2.Hash {
		t.Fatalf("same catalogue hash %s for web-1 at 10.0.0.1 and at 10.0.0.9", c1.Hash)
	}
}
