package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ursamesh/ursa/pkg/mtls"
)

// meshSidecar is an ursa-dp sidecar started for a test, with its admin
// address (metrics) and the address of its inbound.
type meshSidecar struct {
	*proc
	admin, inbound string
}

// startSidecar runs ursa-dp for a Dataplane of service with tags (YAML
// flow map entries) whose inbound forwards to app, and whose explicit
// outbounds are outbound (YAML flow maps).
func startSidecar(t *testing.T, zone *cp, dir, name, service, tags, app string, outbound ...string) *meshSidecar {
	t.Helper()
	s := &meshSidecar{inbound: freeAddr(t), admin: freeAddr(t)}
	doc := fmt.Sprintf("type: Dataplane\nmesh: default\nname: %s\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - {port: %s, servicePort: %s, tags: {ursa.io/service: %s, %s}}\n",
		name, port(s.inbound), port(app), service, tags)
	if len(outbound) > 0 {
		doc += "  outbound:\n"
		for _, o := range outbound {
			doc += "  - " + o + "\n"
		}
	}
	file := filepath.Join(dir, name+".yaml")
	if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	s.proc = start(t, "ursa-dp", append(append([]string{"run"}, zone.sidecarFlags(t, "default", service)...),
		"--dataplane-file", file, "--admin-addr", s.admin)...)
	waitReady(t, "http://"+s.admin+"/ready", s.proc)
	return s
}

// metric sums a counter of the sidecar's /metrics over the series whose
// labels contain every one of labels (`name="value"`).
func (s *meshSidecar) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + s.admin + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var sum float64
	line := regexp.MustCompile(`^` + name + `\{([^}]*)\} (\S+)$`)
	for _, l := range strings.Split(string(body), "\n") {
		m := line.FindStringSubmatch(l)
		if m == nil || !allIn(m[1], labels) {
			continue
		}
		v, _ := strconv.ParseFloat(m[2], 64)
		sum += v
	}
	return sum
}

func allIn(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// serverCert TLS-dials addr and returns the certificate its server
// presents (the handshake itself may then fail: the test has no client
// certificate).
func serverCert(t *testing.T, addr string) *x509.Certificate {
	t.Helper()
	var leaf *x509.Certificate
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, &tls.Config{InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			leaf = cs.PeerCertificates[0]
			return nil
		}})
	if err == nil {
		c.Close()
	}
	if leaf == nil {
		t.Fatalf("%s presented no certificate: %v", addr, err)
	}
	return leaf
}

// checkCSRIdentity connects over ADS as the registered Dataplane name of
// service, presenting a CSR in its node metadata: its identity secret
// comes without a key, its certificate certifies the CSR's key and names
// service (never what the CSR asks for). A CSR that is not one is refused
// with a reason.
func checkCSRIdentity(t *testing.T, conn *grpc.ClientConn, zone *cp, name, service string) {
	t.Helper()
	open := func(csr string) (discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		t.Cleanup(cancel)
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+zone.dataplaneToken(t, "default", "--service", service))
		stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
		if err != nil {
			return nil, err
		}
		node := &core.Node{Id: "default." + name, Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{"ursa.io/csr": structpb.NewStringValue(csr)}}}
		if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.SecretType, ResourceNames: []string{"identity"}}); err != nil {
			return nil, err
		}
		return stream, nil
	}
	stream, err := open("not a CSR")
	if err == nil {
		_, err = stream.Recv()
	}
	if err == nil || !strings.Contains(err.Error(), "CSR is not PEM") {
		t.Fatalf("a proxy presenting a broken CSR: %v", err)
	}

	key, csr, err := mtls.NewKeyAndCSR("default." + name)
	if err != nil {
		t.Fatal(err)
	}
	if stream, err = open(string(csr)); err != nil {
		t.Fatal(err)
	}
	var identity *tlsv3.Secret
	for identity == nil {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("SDS with a CSR: %v", err)
		}
		stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "default." + name}, TypeUrl: resource.SecretType,
			ResourceNames: []string{"identity"}, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce})
		for _, a := range resp.Resources {
			s := &tlsv3.Secret{}
			if err := a.UnmarshalTo(s); err == nil && s.Name == "identity" {
				identity = s
			}
		}
	}
	if len(identity.GetTlsCertificate().GetPrivateKey().GetInlineBytes()) != 0 {
		t.Fatal("a proxy that sent a CSR was sent a key")
	}
	block, _ := pem.Decode(identity.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !mtls.SameKey(leaf, key) || leaf.URIs[0].String() != "spiffe://default/"+service {
		t.Fatalf("the certificate for a CSR certifies its key: %v, names %v", mtls.SameKey(leaf, key), leaf.URIs)
	}
}

// TestIdentityAndPeerVerification, on one zone with mTLS, with real
// sidecars:
//   - a sidecar refuses an upstream whose certificate names another
//     service: a Dataplane of billing registered through the zone's API at
//     what is really web's inbound gets no call through (refusals logged
//     and counted by the caller's sidecar); calls succeed once real billing
//     instances serve;
//   - a permission whose source is {version: v1} admits web's v1 instance
//     and refuses its v2 instance;
//   - the two billing instances hold different keys, each with a
//     certificate naming billing's SPIFFE ID and its own tags.
func TestIdentityAndPeerVerification(t *testing.T) {
	zone := startCP(t, "zone", "--zone", "zone-1", "--vip-cidr", "127.240.0.0/16")
	ctl(t, zone.api, `
type: Mesh
name: default
mtls: {enabled: true}
---
type: TrafficPermission
mesh: default
name: v1-to-billing
spec:
  sources: [{match: {version: v1}}]
  destinations: [{match: {ursa.io/service: billing}}]
`, "apply", "-f", "-")
	dir := t.TempDir()
	toBillingV1, toBillingV2 := freeAddr(t), freeAddr(t)
	outbound := func(addr string) string {
		return fmt.Sprintf("{address: 127.0.0.1, port: %s, tags: {ursa.io/service: billing}}", port(addr))
	}
	webV1 := startSidecar(t, zone, dir, "web-v1", "web", "version: v1", echo(t, "web-v1"), outbound(toBillingV1))
	webV2 := startSidecar(t, zone, dir, "web-v2", "web", "version: v2", echo(t, "web-v2"), outbound(toBillingV2))

	// An impostor: "billing" at web-v2's inbound, whose sidecar presents
	// web's certificate.
	ctl(t, zone.api, fmt.Sprintf(`
type: Dataplane
mesh: default
name: billing-impostor
networking:
  address: 127.0.0.1
  inbound:
  - {port: %s, tags: {ursa.io/service: billing, version: v1}}
`, port(webV2.inbound)), "apply", "-f", "-")
	eventually(t, "web-v1's sidecar to refuse the impostor's certificate", func() bool {
		if answer, err := call(toBillingV1, "hi"); err == nil {
			t.Fatalf("a call to billing reached %q, which is web", answer)
		}
		return webV1.metric(t, "ursa_dp_upstream_tls_failures_total", `cluster="billing"`, `reason="wrong_identity"`) > 0
	})
	if !strings.Contains(webV1.out.String(), "refused an upstream whose certificate names another workload") {
		t.Fatalf("the refusal was not logged:\n%s", webV1.out.String())
	}

	// Real billing instances; the impostor goes.
	billing1 := startSidecar(t, zone, dir, "billing-1", "billing", "version: v1", echo(t, "billing-1"))
	billing2 := startSidecar(t, zone, dir, "billing-2", "billing", "version: v2", echo(t, "billing-2"))
	ctl(t, zone.api, "", "delete", "dataplane", "billing-impostor", "-m", "default")
	eventually(t, "web-v1's calls to reach billing", func() bool {
		for range 10 {
			if answer, err := call(toBillingV1, "hi"); err != nil || !strings.HasPrefix(answer, "billing-") {
				return false
			}
		}
		return true
	})

	// web-v2 reaches billing's sidecars (its configuration names them)
	// and is refused there: its certificate carries version v2.
	eventually(t, "billing's sidecars to refuse web-v2", func() bool {
		call(toBillingV2, "hi")
		return billing1.metric(t, "ursa_dp_refused_total", `reason="rbac"`)+billing2.metric(t, "ursa_dp_refused_total", `reason="rbac"`) > 0
	})
	for range 10 {
		if answer, err := call(toBillingV2, "hi"); err == nil && answer != "" {
			t.Fatalf("web v2 got through to billing: %q", answer)
		}
	}

	// Two instances, two keys, each named with its own tags.
	c1, c2 := serverCert(t, billing1.inbound), serverCert(t, billing2.inbound)
	if c1.PublicKey.(*ecdsa.PublicKey).Equal(c2.PublicKey) {
		t.Fatal("the two billing instances share a key")
	}
	for _, tc := range []struct {
		cert    *x509.Certificate
		version string
	}{{c1, "v1"}, {c2, "v2"}} {
		var sans []string
		for _, u := range tc.cert.URIs {
			sans = append(sans, u.String())
		}
		want := []string{"spiffe://default/billing", "ursa://ursa.io/service/billing", "ursa://ursa.io/zone/zone-1", "ursa://version/" + tc.version}
		if !slices.Equal(sans, want) {
			t.Fatalf("billing %s presents %q, want %q", tc.version, sans, want)
		}
	}
}
