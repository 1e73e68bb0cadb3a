package ingress

import (
	"testing"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/xds"
)

// TestIngressCarriesOnlyMeshesWithMTLS: the zone ingress is the zone's
// door to the network (a LoadBalancer in the chart, an advertised address
// other zones dial). It passes bytes through by SNI, without terminating
// TLS, so what it may forward to is only a sidecar's mTLS inbound, which
// demands a client certificate of the mesh. A mesh without mTLS has
// plaintext inbound listeners that hand the bytes straight to the app: an
// SNI chain for such a mesh lets anyone who reaches the ingress (no
// certificate, no token) tunnel into that mesh's apps, the SNI being
// computable from the mesh and service names (catalog.SNI). DESIGN and the
// README say cross-zone traffic needs mTLS and that sidecars of a mesh
// without it never use other zones' ingresses; Kuma's zone ingress
// likewise serves mTLS meshes only ("mTLS is required to do cross zone
// communication"). Its ingress chain and offer would let anyone in.
func TestIngressCarriesOnlyMeshesWithMTLS(t *testing.T) {
	cat := catalog.FromResources("zone-1", []api.Resource{
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "plain", Version: 1}}, // mtls off
		&api.ZoneIngress{Meta: api.Meta{Type: "ZoneIngress", Name: "ingress", Version: 1}, Zone: "zone-1",
			Networking: api.ZoneIngressNetworking{Address: "10.0.0.1", Port: 10001, AdvertisedAddress: "203.0.113.1", AdvertisedPort: 10001}},
		&api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "plain", Name: "db-1", Version: 1},
			Networking: api.DataplaneNetworking{Address: "10.0.0.7", Inbound: []api.Inbound{{Port: 10011, ServicePort: 6379,
				Tags: map[string]string{api.TagService: "db"}}}}},
	})
	state := xds.NewState(cat, nil)

	// The sidecar of db-1 in the mesh without mTLS: its inbound takes
	// plaintext and hands it to the app.
	dp := state.Mesh("plain").Registered["db-1"]
	side, err := xds.Sidecar(state, xds.Proxy{Kind: xds.KindSidecar, Dataplane: dp})
	if err != nil {
		t.Fatal(err)
	}
	inbound := 0
	for _, r := range side[resource.ListenerType] {
		l := r.(*listener.Listener)
		if l.GetAddress().GetSocketAddress().GetPortValue() != 10011 {
			continue
		}
		for _, fc := range l.GetFilterChains() {
			inbound++
			if fc.GetTransportSocket() != nil {
				t.Fatalf("premise: db-1's inbound in a mesh without mTLS terminates TLS")
			}
		}
	}
	if inbound == 0 {
		t.Fatalf("premise: db-1 has no inbound listener on 10011")
	}

	r, err := Generate(state, xds.Proxy{Kind: xds.KindIngress, Ingress: cat.Ingresses[0].ZoneIngress})
	if err != nil {
		t.Fatal(err)
	}
	sni := catalog.SNI("plain", map[string]string{api.TagService: "db"})
	for _, res := range r[resource.ListenerType] {
		for _, fc := range res.(*listener.Listener).GetFilterChains() {
			for _, name := range fc.GetFilterChainMatch().GetServerNames() {
				if name == sni {
					t.Errorf("the ingress routes SNI %s (mesh plain, service db: mTLS off) to db-1's plaintext inbound 10.0.0.7:10011: "+
						"anyone who reaches the ingress reaches the app, with no certificate", sni)
				}
			}
		}
	}
	for _, o := range Offers(cat) {
		if o.Mesh == "plain" {
			t.Errorf("the ingress offers %v of mesh plain (mTLS off) to other zones", o.Tags)
		}
	}
}
