package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

const webDataplane = `type: Dataplane
mesh: default
name: web-1
networking:
  address: 127.0.0.1
  inbound:
  - {port: %s, servicePort: %s, tags: {ursa.io/service: web}}
`

// withFlag returns args with flag's value replaced (or flag added).
func withFlag(args []string, flag, value string) []string {
	args = slices.Clone(args)
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		args[i+1] = value
		return args
	}
	return append(args, flag, value)
}

// TestXDSIsTLSByDefault: a zone CP started with its defaults speaks only TLS
// on its xDS port: a plaintext client gets nothing; its certificate names
// the --xds-tls-san given and chains to /xds/ca.pem, which anyone may fetch;
// a sidecar given another CA logs that the certificate does not verify and
// never becomes ready; and ursa-dp refuses a grpc:// address unless told
// --xds-insecure, before connecting anywhere.
func TestXDSIsTLSByDefault(t *testing.T) {
	zone := startCP(t, "zone", "--zone", "zone-1", "--xds-tls-san", "cp.zone-1.test", "--xds-tls-san", "192.0.2.10")
	ctl(t, zone.api, "type: Mesh\nname: default\n", "apply", "-f", "-")

	// Plaintext gets no answer.
	conn, err := grpc.NewClient(zone.xds, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = func() (*discovery.DiscoveryResponse, error) {
		stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
		if err != nil {
			return nil, err
		}
		stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "default.web-1"}, TypeUrl: resource.ListenerType})
		return stream.Recv()
	}()
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("a plaintext client on the xDS port: %v, want Unavailable", err)
	}

	// The certificate names the given SANs and chains to /xds/ca.pem.
	pool := x509.NewCertPool()
	pem, _ := os.ReadFile(zone.xdsCAFile(t))
	pool.AppendCertsFromPEM(pem)
	for _, name := range []string{"cp.zone-1.test", "192.0.2.10", "127.0.0.1", "localhost"} {
		c, err := tls.Dial("tcp", zone.xds, &tls.Config{RootCAs: pool, ServerName: name, NextProtos: []string{"h2"}})
		if err != nil {
			t.Errorf("TLS to the xDS port as %s: %v", name, err)
			continue
		}
		if v := c.ConnectionState().Version; v != tls.VersionTLS13 {
			t.Errorf("TLS version %x, want 1.3", v)
		}
		c.Close()
	}
	if c, err := tls.Dial("tcp", zone.xds, &tls.Config{RootCAs: pool, ServerName: "other.test"}); err == nil {
		c.Close()
		t.Error("the certificate verified for a name it was not given")
	}

	dir := t.TempDir()
	file := filepath.Join(dir, "web-1.yaml")
	os.WriteFile(file, []byte(fmt.Sprintf(webDataplane, port(freeAddr(t)), port(freeAddr(t)))), 0o600)
	flags := zone.sidecarFlags(t, "default", "web")

	// Another CA: a clear error in the log, and never ready.
	other := startCP(t, "zone", "--zone", "zone-2")
	admin := freeAddr(t)
	p := start(t, "ursa-dp", append(append([]string{"run"}, withFlag(flags, "--ca-cert-file", other.xdsCAFile(t))...),
		"--dataplane-file", file, "--admin-addr", admin)...)
	eventually(t, "the verification error logged twice", func() bool {
		return strings.Count(p.out.String(), "certificate does not verify") >= 2
	})
	if !strings.Contains(p.out.String(), `"level":"error"`) || !strings.Contains(p.out.String(), "x509: certificate signed by unknown authority") {
		t.Fatalf("the verification error is not logged as an error naming its cause:\n%s", p.out.String())
	}
	if resp, err := httpGet("http://" + admin + "/ready"); err != nil || resp != 503 {
		t.Fatalf("a sidecar that cannot verify its CP: /ready %d %v, want 503", resp, err)
	}
	if code, _ := zone.get(t, "/meshes/default/dataplanes/web-1"); code == 200 {
		t.Fatal("the sidecar that could not verify its CP registered its dataplane")
	}

	// grpc:// is refused before anything connects.
	p = start(t, "ursa-dp", append(append([]string{"run"}, withFlag(flags, "--cp-address", "grpc://"+zone.xds)...),
		"--dataplane-file", file, "--admin-addr", freeAddr(t))...)
	if err := p.wait(t); err == nil || !strings.Contains(p.out.String(), "grpc:// is plaintext") || !strings.Contains(p.out.String(), "--xds-insecure") {
		t.Fatalf("ursa-dp with grpc://: %v\n%s", err, p.out.String())
	}

	// The right CA: ready.
	admin = freeAddr(t)
	p = start(t, "ursa-dp", append(append([]string{"run"}, flags...), "--dataplane-file", file, "--admin-addr", admin)...)
	waitReady(t, "http://"+admin+"/ready", p)
}

// TestXDSInsecureOnBothSides: plaintext xDS works when both the zone CP and
// ursa-dp are told --xds-insecure, and both say so in their logs; the zone
// then has no CA to hand out.
func TestXDSInsecureOnBothSides(t *testing.T) {
	zone := startCP(t, "zone", "--zone", "zone-1", "--xds-insecure")
	ctl(t, zone.api, "type: Mesh\nname: default\n", "apply", "-f", "-")
	if !strings.Contains(zone.out.String(), "INSECURE") {
		t.Fatalf("the zone does not warn that xDS is plaintext:\n%s", zone.out.String())
	}
	if code, body := zone.get(t, "/xds/ca.pem"); code != 404 || !strings.Contains(body, "without TLS") {
		t.Fatalf("/xds/ca.pem of a plaintext zone: %d %s", code, body)
	}
	file := filepath.Join(t.TempDir(), "web-1.yaml")
	os.WriteFile(file, []byte(fmt.Sprintf(webDataplane, port(freeAddr(t)), port(freeAddr(t)))), 0o600)
	admin := freeAddr(t)
	p := start(t, "ursa-dp", append(append([]string{"run"}, zone.sidecarFlags(t, "default", "web")...), "--dataplane-file", file, "--admin-addr", admin)...)
	waitReady(t, "http://"+admin+"/ready", p)
	if !strings.Contains(p.out.String(), "INSECURE") {
		t.Fatalf("ursa-dp does not warn that xDS is plaintext:\n%s", p.out.String())
	}
}

// TestXDSCAOutlivesRestarts: a zone on PostgreSQL keeps its xDS CA across a
// restart, so the ca.pem a proxy was given before still verifies after.
func TestXDSCAOutlivesRestarts(t *testing.T) {
	dsn, err := cluster.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p := start(t, "ursa-cp", "migrate", "up", "--store", dsn); p.wait(t) != nil {
		t.Fatalf("migrate: %s", p.out.String())
	}
	zone := startCP(t, "zone", "--zone", "zone-1", "--store", dsn)
	ctl(t, zone.api, "type: Mesh\nname: default\n", "apply", "-f", "-")
	flags := zone.sidecarFlags(t, "default", "web")
	_, before := zone.get(t, "/xds/ca.pem")
	zone.stop(t)
	zone.restart(t)
	if _, after := zone.get(t, "/xds/ca.pem"); after != before {
		t.Fatal("the zone made a new xDS CA at its restart")
	}
	file := filepath.Join(t.TempDir(), "web-1.yaml")
	os.WriteFile(file, []byte(fmt.Sprintf(webDataplane, port(freeAddr(t)), port(freeAddr(t)))), 0o600)
	admin := freeAddr(t)
	p := start(t, "ursa-dp", append(append([]string{"run"}, flags...), "--dataplane-file", file, "--admin-addr", admin)...)
	waitReady(t, "http://"+admin+"/ready", p)
}

// httpGet returns the status of a GET.
func httpGet(url string) (int, error) {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestTLSFromAnotherHost: CPs deployed as they are (listening on every
// address of their host) are verified from another host, over a veth pair,
// with nothing but the CA they publish. The global on host A: a zone CP on
// host B dials its KDS at A's address with --global-kds-ca-file, and a TLS
// client on B verifies it as the --kds-tls-san name too. The zone on B: a
// sidecar on A dials its xDS at B's address with B's /xds/ca.pem and gets
// its configuration.
func TestTLSFromAnotherHost(t *testing.T) {
	h := newHosts(t, "a", "b")
	global := h.startCP(t, "a", "global", "--api-addr", ":5681", "--kds-addr", ":5685", "--kds-tls-san", "kds.mesh.test")
	dir := t.TempDir()
	_, kdsCA := global.get(t, "/kds/ca.pem")
	kdsCAFile := filepath.Join(dir, "kds-ca.pem")
	os.WriteFile(kdsCAFile, []byte(kdsCA), 0o600)
	onA := func(args ...string) string {
		t.Helper()
		out, stderr, err := h.ctl(t, "a", nil, "http://127.0.0.1:5681", "", args...)
		if err != nil {
			t.Fatalf("ursactl %s on A: %v %s", strings.Join(args, " "), err, stderr)
		}
		return out
	}
	zoneToken := filepath.Join(dir, "zone-b.token")
	os.WriteFile(zoneToken, []byte(onA("generate", "zone-token", "--zone", "zone-b")), 0o600)

	// B's zone verifies the global at A's address.
	zone := h.startCP(t, "b", "zone", "--zone", "zone-b", "--api-addr", ":5681", "--xds-addr", ":5678",
		"--global-kds-address", "grpcs://"+h.addr("a")+":5685", "--global-kds-ca-file", kdsCAFile, "--zone-token-file", zoneToken)
	if _, stderr, err := h.ctl(t, "a", nil, "http://127.0.0.1:5681", "type: Mesh\nname: default\n", "apply", "-f", "-"); err != nil {
		t.Fatalf("apply the mesh: %v %s", err, stderr)
	}
	// Loopback callers on B are admins (from here, B's API wants a token).
	eventually(t, "the mesh in zone-b, over KDS from another host", func() bool {
		_, _, err := h.ctl(t, "b", nil, "http://127.0.0.1:5681", "", "get", "mesh", "default")
		return err == nil
	})

	// The --kds-tls-san name verifies too (from B, at A's address).
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(kdsCA))
	raw, err := h.dialer(t, "b")(context.Background(), "tcp", h.addr("a")+":5685")
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, &tls.Config{RootCAs: pool, ServerName: "kds.mesh.test", NextProtos: []string{"h2"}})
	if err := c.Handshake(); err != nil {
		t.Fatalf("the KDS certificate as kds.mesh.test: %v", err)
	}
	c.Close()

	// A sidecar on A verifies B's zone at B's address.
	token, stderr, err := h.ctl(t, "b", nil, "http://127.0.0.1:5681", "", "generate", "dataplane-token", "--mesh", "default", "--service", "web")
	if err != nil {
		t.Fatalf("a dataplane token on B: %v %s", err, stderr)
	}
	tokenFile := filepath.Join(dir, "web.token")
	os.WriteFile(tokenFile, []byte(token), 0o600)
	dpFile := filepath.Join(dir, "web-1.yaml")
	os.WriteFile(dpFile, []byte(strings.Replace(fmt.Sprintf(webDataplane, "10011", "18080"), "127.0.0.1", h.addr("a"), 1)), 0o600)
	if zone.xds != h.addr("b")+":5678" {
		t.Fatalf("zone-b's xDS is reached at %s, want B's address", zone.xds)
	}
	p := h.start(t, "a", "ursa-dp", "run", "--cp-address", "grpcs://"+zone.xds, "--ca-cert-file", zone.xdsCAFile(t),
		"--token-file", tokenFile, "--dataplane-file", dpFile, "--admin-addr", "127.0.0.1:9901")
	onAClient := h.client(t, "a")
	eventually(t, "the sidecar on A ready, configured by zone-b over TLS", func() bool {
		resp, err := onAClient.Get("http://127.0.0.1:9901/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if strings.Contains(p.out.String(), "does not verify") {
		t.Fatalf("the sidecar logged a verification failure:\n%s", p.out.String())
	}
}
