package e2e

import (
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ursamesh/ursa/pkg/api"
)

// TestIngressTokenCannotJoinASidecarsNode: a stream with the zone's ingress
// token that names a connected sidecar's node id and says it is an ingress
// must not be served that sidecar's configuration (its identity, with the
// key the CP made): a node's streams are all of its kind.
func TestIngressTokenCannotJoinASidecarsNode(t *testing.T) {
	zone := startCP(t, "zone", "--zone", "zone-1")
	ctl(t, zone.api, "type: Mesh\nname: default\nmtls: {enabled: true}\n", "apply", "-f", "-")
	eventually(t, "the mesh in the zone", func() bool { return zone.has(t, "/meshes/default") })
	ctl(t, zone.api, billing1, "apply", "-f", "-")
	conn := zone.dialXDS(t)
	open := func(token string, node *core.Node) discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
		return openIdentityStream(t, conn, token, node)
	}
	billing := open(zone.dataplaneToken(t, "default", "--service", "billing"), &core.Node{Id: "default.billing-1"})
	if _, svc, err := sdsIdentity(billing, "default.billing-1"); err != nil || svc != "spiffe://default/billing" {
		t.Fatalf("billing-1's own proxy: %q, %v", svc, err)
	}
	asIngress, err := structpb.NewStruct(map[string]any{api.MetadataIngress: "true"})
	if err != nil {
		t.Fatal(err)
	}
	ingressToken := ctl(t, zone.api, "", "generate", "ingress-token", "--zone", "zone-1")
	squatter := open(strings.TrimSpace(ingressToken), &core.Node{Id: "default.billing-1", Metadata: asIngress})
	s, svc, err := sdsIdentity(squatter, "default.billing-1")
	if err == nil {
		t.Fatalf("an ingress token got billing-1's identity %q (with a key: %v)", svc,
			len(s.GetTlsCertificate().GetPrivateKey().GetInlineBytes()) > 0)
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("the ingress-token stream ends with %v, want PermissionDenied", err)
	}
	// The sidecar's own stream is untouched.
	if _, svc, err := sdsIdentity(open(zone.dataplaneToken(t, "default", "--service", "billing"), &core.Node{Id: "default.billing-1"}), "default.billing-1"); err != nil || svc != "spiffe://default/billing" {
		t.Fatalf("billing-1 after the attempt: %q, %v", svc, err)
	}
}

// TestIngressTokenCannotSquatADataplanesNode: a stream with the zone's
// ingress token that takes a registered Dataplane's node id, while its proxy
// is away, must not hold that id as an ingress: the proxy, back with its own
// token, would be refused for as long as the squatter stays.
func TestIngressTokenCannotSquatADataplanesNode(t *testing.T) {
	zone := startCP(t, "zone", "--zone", "zone-1")
	ctl(t, zone.api, "type: Mesh\nname: default\nmtls: {enabled: true}\n", "apply", "-f", "-")
	eventually(t, "the mesh in the zone", func() bool { return zone.has(t, "/meshes/default") })
	ctl(t, zone.api, billing1, "apply", "-f", "-")
	eventually(t, "billing-1 in the zone", func() bool { return zone.has(t, "/meshes/default/dataplanes/billing-1") })
	conn := zone.dialXDS(t)
	open := func(token string, node *core.Node) discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
		return openIdentityStream(t, conn, token, node)
	}
	asIngress, err := structpb.NewStruct(map[string]any{api.MetadataIngress: "true"})
	if err != nil {
		t.Fatal(err)
	}
	ingressToken := strings.TrimSpace(ctl(t, zone.api, "", "generate", "ingress-token", "--zone", "zone-1"))
	squatter := open(ingressToken, &core.Node{Id: "default.billing-1", Metadata: asIngress})
	ended := make(chan error, 1)
	go func() {
		for {
			if _, err := squatter.Recv(); err != nil {
				ended <- err
				return
			}
		}
	}()
	var squatErr error
	eventually(t, "the squatting stream held as an ingress, or refused", func() bool {
		select {
		case squatErr = <-ended:
			return true
		default:
		}
		return zone.has(t, "/zone-ingress-insights/default.billing-1")
	})
	if _, svc, err := sdsIdentity(open(zone.dataplaneToken(t, "default", "--service", "billing"), &core.Node{Id: "default.billing-1"}), "default.billing-1"); err != nil || svc != "spiffe://default/billing" {
		t.Fatalf("billing-1's own proxy, back while an ingress-token stream names its node: %q, %v", svc, err)
	}
	if squatErr == nil {
		squatErr = <-ended
	}
	if status.Code(squatErr) != codes.PermissionDenied {
		t.Fatalf("the squatting stream ends with %v, want PermissionDenied", squatErr)
	}
	// Nor the id of a Dataplane yet to come (billing-2, scaled up later).
	// One stream, read until it ends: one that is served ends at its
	// deadline, and fails here.
	later := open(ingressToken, &core.Node{Id: "default.billing-2", Metadata: asIngress})
	for {
		if _, err := later.Recv(); err != nil {
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("an ingress-token stream as default.billing-2 ends with %v, want PermissionDenied", err)
			}
			break
		}
	}
}
