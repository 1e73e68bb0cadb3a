package server_test

import (
	"context"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/kds/server"
	"github.com/ursamesh/ursa/pkg/api"
)

// TestZoneCannotOfferAnotherZonesInstances: zone A's ingress offers zone
// A's instances only (an honest offer carries its own zone's ursa.io/zone):
// other zones match a TrafficRoute's zone subset ({ursa.io/zone: zone-b},
// the DR lever) against the offers' tags, so an offer from A tagged zone-b
// would draw the traffic meant for zone B to A's ingress. The global
// refuses it, storing nothing.
func TestZoneCannotOfferAnotherZonesInstances(t *testing.T) {
	ctx := context.Background()
	g := startSecured(t, server.Deps{})
	if _, err := g.store.Apply(ctx, []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}}, nil); err != nil {
		t.Fatal(err)
	}
	stream := upStream(t, g, "zone-a")
	forged := ingress("zone-a", "ingress")
	forged.AvailableServices = []api.AvailableService{{Mesh: "default", Instances: 100,
		Tags: map[string]string{api.TagService: "billing", api.TagZone: "zone-b"}}}
	got := send(t, stream, &discovery.DeltaDiscoveryResponse{TypeUrl: kds.TypeURL("ZoneIngress"), Nonce: "1",
		Resources: []*discovery.Resource{wire(t, forged, "ingress")}})
	if got == "" {
		r, _ := g.store.Get(ctx, api.Key{Type: "ZoneIngress", Name: "zone-a.ingress"})
		t.Fatalf("zone-a's ingress offering zone-b's instances was accepted and stored (to be sent to every other zone): %+v", r.(*api.ZoneIngress).AvailableServices)
	}
	if _, err := g.store.Get(ctx, api.Key{Type: "ZoneIngress", Name: "zone-a.ingress"}); err == nil {
		t.Fatal("the refused ingress was stored")
	}
}
