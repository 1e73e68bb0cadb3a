package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
)

// TestIngressDoesNotMakeACallerLocal: a zone ingress passes TLS through,
// untouched, to whatever address a Dataplane of the SNI's service
// registered. With nothing but web's dataplane token, a Dataplane of web at
// 127.0.0.1 on the zone CP's HTTPS API port turns an ingress on the CP's
// host into a way in from the network that arrives from 127.0.0.1. The
// HTTPS port must not take that for the CP's own host: no token, 401.
func TestIngressDoesNotMakeACallerLocal(t *testing.T) {
	zone := startCP(t, "zone", "--zone", "zone-1")
	ctl(t, zone.api, "type: Mesh\nname: default\nmtls: {enabled: true}\n", "apply", "-f", "-") // the ingress carries only meshes with mTLS
	eventually(t, "the mesh in the zone", func() bool { return zone.has(t, "/meshes/default") })
	apiTLS := strings.TrimPrefix(zone.apiTLS, "https://")

	// The attacker: web's token, presenting web-evil at the API's port.
	registerOverADS(t, zone, "web-evil", "web", apiTLS)

	// The zone's ingress, on the CP's host.
	dir := t.TempDir()
	listen := freeAddr(t)
	file := filepath.Join(dir, "ingress.yaml")
	if err := os.WriteFile(file, []byte(fmt.Sprintf("type: ZoneIngress\nname: ingress\nzone: zone-1\nnetworking: {address: 127.0.0.1, port: %s}\n", port(listen))), 0o600); err != nil {
		t.Fatal(err)
	}
	start(t, "ursa-dp", append(append([]string{"ingress"}, zone.ingressFlags(t, "zone-1")...), "--zone-ingress-file", file, "--admin-addr", freeAddr(t))...)

	// From "the network": through the ingress, with web's SNI, no token.
	sni := catalog.SNI("default", map[string]string{api.TagService: "web"})
	var code int
	eventually(t, "an answer from behind the ingress", func() bool {
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			return false
		}
		req, _ := http.NewRequest("GET", "https://"+apiTLS+"/meshes/default/secrets", nil)
		if err := req.Write(tc); err != nil {
			return false
		}
		resp, err := http.ReadResponse(bufio.NewReader(tc), req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		code = resp.StatusCode
		return true
	})
	if code != http.StatusUnauthorized {
		t.Fatalf("a tokenless call to the HTTPS API through the ingress: %d, want 401", code)
	}
}

// registerOverADS registers Dataplane default/NAME of service, its inbound
// at addr's port on 127.0.0.1 (service port 9), as a proxy does when it
// connects over ADS with a dataplane token; the stream stays open until
// the test ends.
func registerOverADS(t *testing.T, zone *cp, name, service, addr string) {
	t.Helper()
	meta, err := structpb.NewStruct(map[string]any{api.MetadataDataplane: fmt.Sprintf(
		`{"type": "Dataplane", "mesh": "default", "name": %q, "networking": {"address": "127.0.0.1", "inbound": [{"port": %s, "servicePort": 9, "tags": {"ursa.io/service": %q}}]}}`,
		name, port(addr), service)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	sctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+zone.dataplaneToken(t, "default", "--service", service))
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(zone.dialXDS(t)).StreamAggregatedResources(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "default." + name, Metadata: meta}, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	eventually(t, name+" registered", func() bool { return zone.has(t, "/meshes/default/dataplanes/"+name) })
}
