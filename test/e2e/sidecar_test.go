package e2e

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/metadata"
)

// adsGet asks, on an ADS stream as node, for resources of one type, ACKs,
// and returns them.
func adsGet(t *testing.T, stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, node, typeURL string, names []string) *discovery.DiscoveryResponse {
	t.Helper()
	if err := stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: node}, TypeUrl: typeURL, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("ADS %s: %v", typeURL, err)
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: node}, TypeUrl: typeURL, ResourceNames: names,
		VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}); err != nil {
		t.Fatal(err)
	}
	return resp
}

// TestSidecarMTLS: a mesh that turns mTLS on at the global gets a CA there,
// KDS carries it to the zone, and a sidecar connecting over ADS gets TLS
// listeners and, over SDS, a workload certificate with its SPIFFE ID that
// chains to the mesh's CA. The CA's key is never served by the REST API.
func TestSidecarMTLS(t *testing.T) {
	global := startCP(t, "global")
	kdsAddr := global.kds
	dir := t.TempDir()
	_, pem1 := global.get(t, "/kds/ca.pem")
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, []byte(pem1), 0o600)
	token := filepath.Join(dir, "token")
	os.WriteFile(token, []byte(ctl(t, global.api, "", "generate", "zone-token", "--zone", "zone-1")), 0o600)
	// Loopback VIPs: a sidecar that is not transparent listens on those
	// only (its outbound to billing, checked below).
	zone := startCP(t, "zone", "--zone", "zone-1", "--global-kds-address", "grpcs://"+kdsAddr,
		"--global-kds-ca-file", ca, "--zone-token-file", token, "--vip-cidr", "127.240.0.0/16")
	ctl(t, global.api, "type: Mesh\nname: default\nmtls: {enabled: true}\n", "apply", "-f", "-")
	eventually(t, "the mesh in the zone", func() bool { return zone.has(t, "/meshes/default") })
	ctl(t, zone.api, `
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
  - {port: 10010, servicePort: 8000, tags: {ursa.io/service: web}}
---
type: Dataplane
mesh: default
name: billing-1
networking:
  address: 127.0.0.2
  inbound:
  - {port: 10011, servicePort: 8080, tags: {ursa.io/service: billing}}
`, "apply", "-f", "-")

	conn := zone.dialXDS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+zone.dataplaneToken(t, "default", "--service", "web"))
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lds := adsGet(t, stream, "default.web-1", resource.ListenerType, nil)
	var inboundTLS bool
	for _, a := range lds.Resources {
		l := &listener.Listener{}
		if err := a.UnmarshalTo(l); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(l.Name, "inbound:") && l.FilterChains[0].TransportSocket != nil {
			inboundTLS = true
		}
	}
	if !inboundTLS || len(lds.Resources) < 2 {
		t.Fatalf("listeners: %d, inbound with TLS: %v", len(lds.Resources), inboundTLS)
	}

	// The secrets arrive once the mesh's CA has reached the zone.
	var identity, meshCA *tlsv3.Secret
	deadline := time.Now().Add(15 * time.Second)
	for identity == nil || meshCA == nil {
		if time.Now().After(deadline) {
			t.Fatal("no SDS secrets for the sidecar")
		}
		sds := adsGet(t, stream, "default.web-1", resource.SecretType, []string{"identity", "mesh-ca"})
		for _, a := range sds.Resources {
			s := &tlsv3.Secret{}
			if err := a.UnmarshalTo(s); err != nil {
				t.Fatal(err)
			}
			switch s.Name {
			case "identity":
				identity = s
			case "mesh-ca":
				meshCA = s
			}
		}
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(meshCA.GetValidationContext().GetTrustedCa().GetInlineBytes()) {
		t.Fatal("mesh-ca holds no certificate")
	}
	// The leaf, then the zone's intermediate CA.
	block, rest := pem.Decode(identity.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AppendCertsFromPEM(rest)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("the workload certificate does not chain to the mesh CA: %v", err)
	}
	var sans []string
	for _, u := range leaf.URIs {
		sans = append(sans, u.String())
	}
	if want := []string{"spiffe://default/web", "ursa://ursa.io/service/web", "ursa://ursa.io/zone/zone-1"}; !slices.Equal(sans, want) {
		t.Fatalf("workload identity %q, want %q", sans, want)
	}
	if len(identity.GetTlsCertificate().GetPrivateKey().GetInlineBytes()) == 0 {
		t.Fatal("a proxy without a CSR got no key")
	}
	checkCSRIdentity(t, conn, zone, "billing-1", "billing")
	if ttl := leaf.NotAfter.Sub(leaf.NotBefore); ttl > 25*time.Hour {
		t.Fatalf("workload certificate valid for %s: not short-lived", ttl)
	}
	// The CA's private key is served by neither CP's REST API nor logged.
	for _, cp := range []*cp{global, zone} {
		for _, path := range []string{"/meshes/default/mesh-cas", "/meshes/default/mesh-cas/ca", "/meshes/default/secrets"} {
			if _, body := cp.get(t, path); strings.Contains(body, "PRIVATE KEY") {
				t.Fatalf("GET %s serves a private key", path)
			}
		}
		if strings.Contains(cp.out.String(), "PRIVATE KEY") {
			t.Fatal("a private key appears in the logs")
		}
	}
}

// TestOfflineDataplaneIsRemoved: the zone tags a registered Dataplane with
// its zone, shows its proxy offline once it disconnects, and removes it
// after the configured time.
func TestOfflineDataplaneIsRemoved(t *testing.T) {
	zone := startCP(t, "zone", "--zone", "zone-1", "--xds-offline-removal", "1s")
	ctl(t, zone.api, `
type: Mesh
name: default
---
type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
  - {port: 10010, tags: {ursa.io/service: web}}
`, "apply", "-f", "-")
	if _, body := zone.get(t, "/meshes/default/dataplanes/web-1"); !strings.Contains(body, `"ursa.io/zone":"zone-1"`) {
		t.Fatalf("the zone did not tag its dataplane: %s", body)
	}
	conn := zone.dialXDS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+zone.dataplaneToken(t, "default", "--service", "web"))
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	adsGet(t, stream, "default.web-1", resource.ListenerType, nil)
	if _, body := zone.get(t, "/meshes/default/dataplanes/web-1/insight"); !strings.Contains(body, `"connected":true`) {
		t.Fatalf("insight while connected: %s", body)
	}
	cancel()
	conn.Close()
	eventually(t, "the proxy shown offline", func() bool {
		code, body := zone.get(t, "/meshes/default/dataplanes/web-1/insight")
		return code == 404 || strings.Contains(body, `"connected":false`)
	})
	eventually(t, "the offline Dataplane removed", func() bool {
		code, _ := zone.get(t, "/meshes/default/dataplanes/web-1")
		return code == 404
	})
}
