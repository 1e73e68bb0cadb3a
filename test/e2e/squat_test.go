package e2e

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// sdsIdentity receives on an ADS stream until an identity secret comes, and
// returns it with the SPIFFE ID its certificate names, or the stream's
// error.
func sdsIdentity(stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, node string) (*tlsv3.Secret, string, error) {
	for {
		resp, err := stream.Recv()
		if err != nil {
			return nil, "", err
		}
		stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: node}, TypeUrl: resource.SecretType,
			ResourceNames: []string{"identity"}, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce})
		for _, a := range resp.Resources {
			s := &tlsv3.Secret{}
			if a.UnmarshalTo(s) != nil || s.Name != "identity" {
				continue
			}
			block, _ := pem.Decode(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
			if block == nil {
				return s, "", nil
			}
			leaf, err := x509.ParseCertificate(block.Bytes)
			if err != nil || len(leaf.URIs) == 0 {
				return s, "", err
			}
			return s, leaf.URIs[0].String(), nil
		}
	}
}

// zoneForSquatting starts a standalone zone with an mTLS mesh and returns it
// and a function that opens an ADS stream with service's dataplane token,
// asking as node for its identity.
func zoneForSquatting(t *testing.T) (*cp, func(service, node string) discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient) {
	zone := startCP(t, "zone", "--zone", "zone-1")
	ctl(t, zone.api, "type: Mesh\nname: default\nmtls: {enabled: true}\n", "apply", "-f", "-")
	eventually(t, "the mesh in the zone", func() bool { return zone.has(t, "/meshes/default") })
	conn := zone.dialXDS(t)
	open := func(service, node string) discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
		return openIdentityStream(t, conn, zone.dataplaneToken(t, "default", "--service", service), &core.Node{Id: node})
	}
	return zone, open
}

// openIdentityStream opens an ADS stream on conn with token and asks, as
// node, for its identity.
func openIdentityStream(t *testing.T, conn *grpc.ClientConn, token string, node *core.Node) discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.SecretType, ResourceNames: []string{"identity"}}); err != nil {
		t.Fatal(err)
	}
	return stream
}

// billing1 is the Dataplane the squatting tests register as billing-1.
const billing1 = `
type: Dataplane
mesh: default
name: billing-1
networking:
  address: 127.0.0.2
  inbound:
  - {port: 10011, servicePort: 8080, tags: {ursa.io/service: billing}}
`

// TestStreamCannotRenameItsNode: a stream admitted as web-1 that names
// billing-1 in a later request is refused, rather than served billing-1's
// configuration once billing-1 is registered.
func TestStreamCannotRenameItsNode(t *testing.T) {
	zone, open := zoneForSquatting(t)
	ctl(t, zone.api, `
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
  - {port: 10010, servicePort: 8000, tags: {ursa.io/service: web}}
`, "apply", "-f", "-")
	switcher := open("web", "default.web-1")
	if _, svc, err := sdsIdentity(switcher, "default.web-1"); err != nil || svc != "spiffe://default/web" {
		t.Fatalf("web-1's identity: %q, %v", svc, err)
	}
	switcher.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "default.billing-1"}, TypeUrl: resource.ListenerType})
	if _, svc, err := sdsIdentity(switcher, "default.billing-1"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a stream of web-1 that names billing-1 next: %q, %v", svc, err)
	}
}

// TestTokenCannotHoldAnotherServicesNode: a proxy with web's token that
// connects as node default.billing-1 before billing-1 is registered, and
// presents nothing, is admitted (it gets nothing until it is registered);
// once billing-1 is registered as billing, that stream must not get
// billing's identity (its key, made by the CP, with it): it is closed, not
// covered by its token, and the real billing proxy gets its identity.
func TestTokenCannotHoldAnotherServicesNode(t *testing.T) {
	zone, open := zoneForSquatting(t)
	squatter := open("web", "default.billing-1")
	eventually(t, "the squatter connected", func() bool {
		return strings.Contains(zone.out.String(), `"proxy connected","zone":"zone-1","proxy":"default.billing-1"`)
	})
	ctl(t, zone.api, billing1, "apply", "-f", "-")
	s, svc, err := sdsIdentity(squatter, "default.billing-1")
	if err == nil {
		t.Fatalf("a proxy with web's token got billing-1's identity %q (with a key: %v)", svc,
			len(s.GetTlsCertificate().GetPrivateKey().GetInlineBytes()) > 0)
	}
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "token is for service web") {
		t.Fatalf("the squatter's stream ends with %v, want PermissionDenied naming its token's service", err)
	}
	billing := open("billing", "default.billing-1")
	if _, svc, err := sdsIdentity(billing, "default.billing-1"); err != nil || svc != "spiffe://default/billing" {
		t.Fatalf("billing-1's own proxy: %q, %v", svc, err)
	}
}
