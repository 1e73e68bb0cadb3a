package e2e

import (
	"context"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	xdsgrpc "google.golang.org/grpc/xds"
)

// backend is a real gRPC server (the standard health service) on loopback.
func backend(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return ln.Addr().String()
}

func split(v1, v2 int) string {
	return fmt.Sprintf(`
type: TrafficRoute
mesh: default
name: billing-split
spec:
  destination: {ursa.io/service: billing}
  split:
  - {weight: %d, tags: {version: v1}}
  - {weight: %d, tags: {version: v2}}
`, v1, v2)
}

// share calls billing n times on one connection and returns the fraction of
// calls that reached addr.
func share(t *testing.T, cc *grpc.ClientConn, addr string, n int) float64 {
	t.Helper()
	client := healthpb.NewHealthClient(cc)
	hits := 0
	for range n {
		var p peer.Peer
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
		cancel()
		if err != nil {
			t.Fatalf("call billing: %v", err)
		}
		if p.Addr.String() == addr {
			hits++
		}
	}
	return float64(hits) / float64(n)
}

// TestProxylessGRPC: a real grpc-go client dialing xds:///billing, with a
// bootstrap pointing at the real zone CP, calls two real gRPC servers
// registered as Dataplanes v1 and v2; the 80/20 TrafficRoute written at the
// global (and carried to the zone by KDS) is observed within ±3% over 5,000
// calls, and a new split reaches the running client on the same connection.
func TestProxylessGRPC(t *testing.T) {
	global := startCP(t, "global")
	kdsAddr := global.kds
	dir := t.TempDir()
	_, pem := global.get(t, "/kds/ca.pem")
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, []byte(pem), 0o600)
	token := filepath.Join(dir, "token")
	os.WriteFile(token, []byte(ctl(t, global.api, "", "generate", "zone-token", "--zone", "zone-1")), 0o600)
	zone := startCP(t, "zone", "--zone", "zone-1", "--global-kds-address", "grpcs://"+kdsAddr,
		"--global-kds-ca-file", ca, "--zone-token-file", token)
	xdsAddr := zone.xds

	ctl(t, global.api, "type: Mesh\nname: default\n---\n"+split(80, 20), "apply", "-f", "-")
	eventually(t, "the mesh in the zone", func() bool { return zone.has(t, "/meshes/default") })
	v1, v2 := backend(t), backend(t)
	dataplane := func(name, addr, version string) string {
		host, port, _ := net.SplitHostPort(addr)
		return fmt.Sprintf("type: Dataplane\nmesh: default\nname: %s\nnetworking:\n  address: %s\n  inbound:\n  - port: %s\n    tags: {ursa.io/service: %s, version: %s}\n---\n",
			name, host, port, strings.Split(name, "-")[0], version)
	}
	ctl(t, zone.api, dataplane("billing-v1", v1, "v1")+dataplane("billing-v2", v2, "v2")+dataplane("web-1", "127.0.0.1:1", "v1"), "apply", "-f", "-")

	bootstrap := fmt.Sprintf(`{
  "xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "tls", "config": {"ca_certificate_file": %q}}],
    "server_features": ["xds_v3", "ignore_resource_deletion"]}],
  "node": {"id": "default.web-1", "metadata": {"ursa.io/proxyless": "true", "ursa.io/token": %q}}
}`, xdsAddr, zone.xdsCAFile(t), zone.dataplaneToken(t, "default", "--service", "web"))
	resolver, err := xdsgrpc.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///billing", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(resolver))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()

	eventually(t, "the first call through xDS", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		return err == nil
	})
	if got := share(t, cc, v1, 5000); math.Abs(got-0.80) > 0.03 {
		t.Fatalf("v1 got %.3f of 5,000 calls, want 0.80 ± 0.03", got)
	}
	// The zone shows the client connected, with what it acknowledged.
	if out := ctl(t, zone.api, "", "inspect", "dataplanes"); !strings.Contains(out, "web-1") ||
		!regexp.MustCompile(`web-1\s+Online\s+proxyless`).MatchString(out) {
		t.Fatalf("inspect dataplanes:\n%s", out)
	}
	// Its insight, written by the zone (ACKed versions within 5 s).
	poll(t, "the client's ACKs in its insight", func() bool {
		_, body := zone.get(t, "/meshes/default/dataplanes/web-1/insight")
		return strings.Contains(body, `"connected":true`) && strings.Contains(body, "envoy.config.route.v3.RouteConfiguration")
	})

	// grpc-go, an independent LRS client, reports its calls to the zone
	// CP, which shows them (at the zone, and at the global via KDS).
	for _, api := range []string{zone.api, global.api} {
		poll(t, "grpc-go's calls in inspect services at "+api, func() bool {
			_, callers := inspectBilling(t, api, "zone-1")
			return callers != nil && callers.Connections >= 5000
		})
	}

	// A new split, written at the global, reaches the running client.
	ctl(t, global.api, split(50, 50), "apply", "-f", "-")
	eventually(t, "the client to follow the new split", func() bool { return share(t, cc, v1, 200) < 0.65 })
	if got := share(t, cc, v1, 5000); math.Abs(got-0.50) > 0.03 {
		t.Fatalf("after the change v1 got %.3f of 5,000 calls, want 0.50 ± 0.03", got)
	}
}
