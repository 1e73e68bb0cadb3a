package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	xdsgrpc "google.golang.org/grpc/xds"
)

var buildGRPCXDS sync.Once

// grpcxdsBin builds (once per test binary) test/e2e/grpcxds, the xDS gRPC
// server of these tests, beside the other binaries.
func grpcxdsBin(t testing.TB) string {
	t.Helper()
	path := filepath.Join(bin, "grpcxds")
	buildGRPCXDS.Do(func() {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if out, err := exec.Command("go", "build", "-o", path, "github.com/ursamesh/ursa/test/e2e/grpcxds").CombinedOutput(); err != nil {
			t.Fatalf("build grpcxds: %v\n%s", err, out)
		}
	})
	return path
}

// proxylessApp is a proxyless gRPC application's side: its Dataplane, its
// ursa-dp proxyless agent and the directory where the agent keeps its
// bootstrap and identity.
type proxylessApp struct {
	addr  string // its Dataplane's address and inbound port
	dir   string
	agent *proc
	srv   *proc // the server, if it is one
}

// startProxylessAgent registers a Dataplane of service (tags: version and
// protocol grpc) in zone through an ursa-dp proxyless agent, and waits
// until the agent wrote the bootstrap and the identity.
func (m *meshZones) startProxylessAgent(zone, name, service, version string, flags ...string) *proxylessApp {
	m.t.Helper()
	return m.startProxylessAgentAt(zone, name, service, version, freeAddr(m.t), flags...)
}

// startProxylessAgentAt is startProxylessAgent with the Dataplane's
// address and inbound port.
func (m *meshZones) startProxylessAgentAt(zone, name, service, version, addr string, flags ...string) *proxylessApp {
	m.t.Helper()
	app := &proxylessApp{addr: addr, dir: filepath.Join(m.dir, name)}
	file := filepath.Join(m.dir, name+".yaml")
	os.WriteFile(file, []byte(fmt.Sprintf("type: Dataplane\nmesh: default\nname: %s\nnetworking:\n  address: 127.0.0.1\n  inbound:\n"+
		"  - {port: %s, tags: {ursa.io/service: %s, version: %s, ursa.io/protocol: grpc}}\n", name, port(app.addr), service, version)), 0o600)
	args := append(append([]string{"proxyless"}, m.zones[zone].cp.proxylessFlags(m.t, service)...), "--dataplane-file", file, "--cert-dir", app.dir)
	app.agent = start(m.t, "ursa-dp", append(args, flags...)...)
	eventually(m.t, name+"'s identity on disk", func() bool {
		for _, f := range []string{"bootstrap.json", "cert.pem", "key.pem", "ca.pem"} {
			if _, err := os.Stat(filepath.Join(app.dir, f)); err != nil {
				return false
			}
		}
		return true
	})
	return app
}

// proxylessFlags are sidecarFlags for ursa-dp proxyless (which answers no
// DNS).
func (c *cp) proxylessFlags(t testing.TB, service string) []string {
	t.Helper()
	return slices.DeleteFunc(c.sidecarFlags(t, "default", service), func(f string) bool { return f == "--dns-addr=" })
}

// startProxylessServer starts an instance of service in zone: the xDS gRPC
// server grpcxds (answering as name) with its agent; it returns once the
// server took its listener from the zone CP. The server shows its token as
// JWT call credentials (ursa-dp proxyless --jwt-call-creds), the clients in
// their node metadata.
func (m *meshZones) startProxylessServer(zone, name, service, version string, flags ...string) *proxylessApp {
	m.t.Helper()
	app := m.startProxylessAgent(zone, name, service, version, "--jwt-call-creds")
	cmd := exec.Command(grpcxdsBin(m.t), append([]string{"--addr", app.addr, "--name", name}, flags...)...)
	cmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP="+filepath.Join(app.dir, "bootstrap.json"), "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true")
	app.srv = launch(m.t, name, cmd)
	eventually(m.t, name+" serving", func() bool { return strings.Contains(app.srv.out.String(), "serving "+app.addr) })
	return app
}

// dial is a grpc-go client with xDS credentials whose resolver reads the
// app's bootstrap, for xds:///<service>.
func (app *proxylessApp) dial(t testing.TB, service string) testgrpc.TestServiceClient {
	t.Helper()
	boot, err := os.ReadFile(filepath.Join(app.dir, "bootstrap.json"))
	if err != nil {
		t.Fatal(err)
	}
	resolver, err := xdsgrpc.NewXDSResolverWithConfigForTesting(boot)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///"+service, grpc.WithTransportCredentials(creds), grpc.WithResolvers(resolver))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return testgrpc.NewTestServiceClient(cc)
}

// unary makes one call with metadata (pairs of key, value) and a 5 s
// deadline; it returns the answer, how long it took, and the error.
func unary(c testgrpc.TestServiceClient, md ...string) (*testgrpc.SimpleResponse, time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if len(md) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, md...)
	}
	start := time.Now()
	resp, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{})
	return resp, time.Since(start), err
}

// allFrom makes n calls, which must all succeed, and returns the servers
// that answered them, by count.
func allFrom(t *testing.T, c testgrpc.TestServiceClient, n int, md ...string) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := range n {
		resp, _, err := unary(c, md...)
		if err != nil {
			t.Fatalf("call %d of %d (metadata %q): %v", i+1, n, md, err)
		}
		got[resp.ServerId]++
	}
	return got
}

// TestProxylessL7: grpc-go's xDS client, an implementation independent of
// Ursa's proxy, honours what the zone CP generated for it: a header route
// (x-canary: 1 → v2), a retry policy (a server failing every other call
// with UNAVAILABLE → every call succeeds), a timeout (DEADLINE_EXCEEDED
// at the set time), a fault (aborted calls) and, over mTLS through the
// other zone's ingress (SNI), a service that runs only there, whose server
// sees the client's SPIFFE ID and whose RBAC refuses it once a
// TrafficPermission denies it; when this zone's instance of a service
// dies, calls fail over to the other zone's (EDS priorities). A client
// whose endpoint turns out to be another service's server refuses it (its
// cluster accepts only the service's SPIFFE ID). The servers are grpc-go xDS servers taking
// their listeners, certificates and RBAC from their zone CPs. Every
// identity comes from ursa-dp proxyless agents (SDS → files → grpc-go's
// file_watcher certificate provider). The client runs in a child process
// with GRPC_EXPERIMENTAL_XDS_SNI=true, without which grpc-go v1.85 sends
// no SNI.
func TestProxylessL7(t *testing.T) {
	if !rerunWith(t, "GRPC_EXPERIMENTAL_XDS_SNI=true") {
		return
	}
	m := startZones(t, "zone-1", "zone-2")
	ctl(t, m.global.api, openMTLSMesh+`type: TrafficRoute
mesh: default
name: billing-canary
spec:
  destination: {ursa.io/service: billing}
  http:
  - match:
      headers: {x-canary: {exact: "1"}}
    split: [{weight: 100, tags: {version: v2}}]
  split:
  - {weight: 100, tags: {version: v1}}
`, "apply", "-f", "-")
	for name, z := range m.zones {
		eventually(t, "the mesh in "+name, func() bool { return z.cp.has(t, "/meshes/default") })
	}
	m.startIngress("zone-2")
	billingV1 := m.startProxylessServer("zone-1", "billing-v1", "billing", "v1")
	m.startProxylessServer("zone-2", "billing-z2", "billing", "v1")
	billingV2 := m.startProxylessServer("zone-1", "billing-v2", "billing", "v2")
	m.startProxylessServer("zone-1", "flaky-1", "flaky", "v1", "--fail-every", "2")
	m.startProxylessServer("zone-2", "payments-1", "payments", "v1")
	web := m.startProxylessAgent("zone-1", "web-1", "web", "v1")

	// The header route: x-canary: 1 reaches v2, the rest v1, over mTLS
	// (the server sees web's SPIFFE ID).
	billing := web.dial(t, "billing")
	eventually(t, "the first call to billing", func() bool { _, _, err := unary(billing); return err == nil })
	if got := allFrom(t, billing, 50, "x-canary", "1"); got["billing-v2"] != 50 {
		t.Fatalf("x-canary: 1 reached %v, want billing-v2 only", got)
	}
	if got := allFrom(t, billing, 50); got["billing-v1"] != 50 {
		t.Fatalf("without x-canary reached %v, want billing-v1 only", got)
	}
	if got := allFrom(t, billing, 20, "x-canary", "2"); got["billing-v1"] != 20 {
		t.Fatalf("x-canary: 2 reached %v, want billing-v1 only", got)
	}
	if resp, _, err := unary(billing); err != nil || !strings.Contains(resp.Hostname, "spiffe://default/web") {
		t.Fatalf("billing saw caller %q (%v), want web's SPIFFE ID", resp.GetHostname(), err)
	}

	// The client checks the server's SPIFFE ID: ghost's only endpoint is
	// billing-v2's server (its Dataplane names that address), whose
	// certificate is billing's, not ghost's.
	m.startProxylessAgentAt("zone-1", "ghost-1", "ghost", "v1", billingV2.addr)
	ghost := web.dial(t, "ghost")
	var ghostErr error
	eventually(t, "the call to ghost to fail the server's identity check", func() bool {
		_, _, ghostErr = unary(ghost)
		return status.Code(ghostErr) == codes.Unavailable && strings.Contains(ghostErr.Error(), "do not match any of the accepted SANs") &&
			strings.Contains(ghostErr.Error(), "spiffe://default/billing")
	})
	t.Logf("a call to ghost reaching billing-v2: %v", ghostErr)

	// The retry policy: without it, every other call fails; with it, none.
	flaky := web.dial(t, "flaky")
	eventually(t, "flaky to answer", func() bool { _, _, err := unary(flaky); return err == nil })
	failed := 0
	for range 20 {
		if _, _, err := unary(flaky); status.Code(err) == codes.Unavailable {
			failed++
		}
	}
	if failed == 0 {
		t.Fatal("flaky failed no call of 20 without a retry policy: the test proves nothing")
	}
	ctl(t, m.global.api, `
type: Retry
mesh: default
name: web-to-flaky
spec:
  sources: [{match: {ursa.io/service: web}}]
  destinations: [{match: {ursa.io/service: flaky}}]
  grpc: {numRetries: 3, retryOn: [unavailable], backOff: {base: 5ms, max: 20ms}}
`, "apply", "-f", "-")
	eventually(t, "the retry policy at the client", func() bool {
		for range 10 {
			if _, _, err := unary(flaky); err != nil {
				return false
			}
		}
		return true
	})
	if got := allFrom(t, flaky, 200); got["flaky-1"] != 200 {
		t.Fatalf("with retries: %v", got)
	}

	// The timeout: a call billing answers after 2 s ends at 500 ms.
	if _, took, err := unary(billing, "x-delay", "1s"); err != nil || took < time.Second {
		t.Fatalf("before the Timeout, a call billing answers after 1s: %v after %v", err, took)
	}
	ctl(t, m.global.api, `
type: Timeout
mesh: default
name: web-to-billing
spec:
  sources: [{match: {ursa.io/service: web}}]
  destinations: [{match: {ursa.io/service: billing}}]
  http: {requestTimeout: 500ms}
`, "apply", "-f", "-")
	eventually(t, "the timeout at the client", func() bool {
		_, _, err := unary(billing, "x-delay", "2s")
		return status.Code(err) == codes.DeadlineExceeded
	})
	_, took, err := unary(billing, "x-delay", "2s")
	if status.Code(err) != codes.DeadlineExceeded || took < 500*time.Millisecond || took >= 2*time.Second {
		t.Fatalf("with requestTimeout 500ms, a call billing answers after 2s: %v after %v; want DEADLINE_EXCEEDED after 500ms", err, took)
	}
	t.Logf("DEADLINE_EXCEEDED after %v (requestTimeout 500ms)", took)
	if got := allFrom(t, billing, 20); got["billing-v1"] != 20 {
		t.Fatalf("quick calls with the timeout: %v", got)
	}

	// Across zones, over mTLS: payments runs only in zone-2, behind its
	// ingress, which routes by the SNI grpc-go sends.
	payments := web.dial(t, "payments")
	eventually(t, "a call to payments in zone-2", func() bool { _, _, err := unary(payments); return err == nil })
	if got := allFrom(t, payments, 20); got["payments-1"] != 20 {
		t.Fatalf("payments: %v", got)
	}
	resp, _, err := unary(payments)
	if err != nil || !strings.Contains(resp.Hostname, "spiffe://default/web") {
		t.Fatalf("payments in zone-2 saw caller %q (%v), want web's SPIFFE ID", resp.GetHostname(), err)
	}
	t.Logf("payments-1 in zone-2 saw the caller as %s", resp.Hostname)

	// Its RBAC, from the TrafficPermissions: denied, web is refused.
	ctl(t, m.global.api, `
type: TrafficPermission
mesh: default
name: no-web-to-payments
spec:
  sources: [{match: {ursa.io/service: web}}]
  destinations: [{match: {ursa.io/service: payments}}]
  action: DENY
`, "apply", "-f", "-")
	eventually(t, "payments' RBAC to refuse web", func() bool {
		_, _, err := unary(payments)
		return status.Code(err) == codes.PermissionDenied
	})

	// The fault filter: every call to billing aborted with 503
	// (UNAVAILABLE), delayed ones slowed down.
	ctl(t, m.global.api, `
type: FaultInjection
mesh: default
name: billing-chaos
spec:
  sources: [{match: {ursa.io/service: web}}]
  destinations: [{match: {ursa.io/service: billing}}]
  abort: {percentage: 100, httpStatus: 503}
`, "apply", "-f", "-")
	eventually(t, "the fault at the client", func() bool {
		_, _, err := unary(billing)
		return status.Code(err) == codes.Unavailable
	})
	for range 20 {
		if _, _, err := unary(billing); status.Code(err) != codes.Unavailable {
			t.Fatalf("with a 100%% abort: %v", err)
		}
	}
	ctl(t, m.global.api, "", "delete", "fault-injection", "billing-chaos", "-m", "default")
	eventually(t, "billing without the fault", func() bool { _, _, err := unary(billing); return err == nil })

	// Failover: billing v1 runs here and in zone-2, here first (priority
	// 0). Its server here dies (its agent, and so its endpoint, stays):
	// grpc-go moves to the next priority, zone-2's ingress, by itself.
	if got := allFrom(t, billing, 20); got["billing-v1"] != 20 {
		t.Fatalf("before the failover: %v, want this zone's billing-v1 only", got)
	}
	billingV1.srv.cmd.Process.Kill()
	eventually(t, "billing from zone-2", func() bool {
		for range 10 {
			if resp, _, err := unary(billing); err != nil || resp.ServerId != "billing-z2" {
				return false
			}
		}
		return true
	})
	if got := allFrom(t, billing, 50); got["billing-z2"] != 50 {
		t.Fatalf("after billing-v1 died: %v, want zone-2's billing-z2 only", got)
	}

	// grpc-go accepted everything it was sent: no proxyless node NACKed.
	for zone, names := range map[string][]string{"zone-1": {"web-1", "billing-v2", "flaky-1"}, "zone-2": {"payments-1", "billing-z2"}} {
		for _, name := range names {
			_, body := m.zones[zone].cp.get(t, "/meshes/default/dataplanes/"+name+"/insight")
			if !strings.Contains(body, `"nacks":0`) || strings.Contains(body, "lastNack") {
				t.Errorf("%s in %s NACKed: %s", name, zone, body)
			}
		}
	}
}

// TestProxylessOutlierDetection: grpc-go's xDS client (gRFC A50) ejects,
// by the failure percentage a CircuitBreaker sets, the one server of five
// that fails every other call: without the policy its failures reach the
// caller; with it, after an interval, no call does.
func TestProxylessOutlierDetection(t *testing.T) {
	m := startZones(t, "zone-1")
	ctl(t, m.global.api, openMTLSMesh, "apply", "-f", "-")
	eventually(t, "the mesh in zone-1", func() bool { return m.zones["zone-1"].cp.has(t, "/meshes/default") })
	for i := range 4 {
		m.startProxylessServer("zone-1", fmt.Sprintf("pool-%d", i), "pool", "v1")
	}
	m.startProxylessServer("zone-1", "pool-flaky", "pool", "v1", "--fail-every", "2")
	web := m.startProxylessAgent("zone-1", "web-1", "web", "v1")
	pool := web.dial(t, "pool")
	// calls makes n calls: the servers that answered, and the calls that
	// failed.
	calls := func(n int) (map[string]int, int) {
		got, failed := map[string]int{}, 0
		for range n {
			if resp, _, err := unary(pool); err != nil {
				failed++
			} else {
				got[resp.ServerId]++
			}
		}
		return got, failed
	}
	eventually(t, "all five servers answering", func() bool { got, _ := calls(50); return len(got) == 5 })
	if _, failed := calls(100); failed == 0 {
		t.Fatal("no call of 100 failed without outlier detection: the test proves nothing")
	}
	ctl(t, m.global.api, `type: CircuitBreaker
mesh: default
name: pool-outliers
spec:
  sources: [{match: {ursa.io/service: web}}]
  destinations: [{match: {ursa.io/service: pool}}]
  outlierDetection:
    interval: 1s
    baseEjectionTime: 1m
    maxEjectionPercent: 20
    failurePercentage: {threshold: 40, requestVolume: 10, minimumHosts: 5}
`, "apply", "-f", "-")
	eventually(t, "pool-flaky ejected", func() bool {
		got, failed := calls(100)
		return failed == 0 && got["pool-flaky"] == 0 && len(got) == 4
	})
}

// TestProxylessServerOnWildcardAddress: a grpc-go xDS server bound to a
// wildcard address (net.Listen(":PORT"), as in Istio's proxyless
// examples) asks for the listener of [::]:PORT and serves only one whose
// address is that; the CP sends it beside its Dataplane address's, and a
// proxyless client's calls reach it over mTLS (it stayed NOT_SERVING).
func TestProxylessServerOnWildcardAddress(t *testing.T) {
	m := startZones(t, "zone-1")
	ctl(t, m.global.api, openMTLSMesh, "apply", "-f", "-")
	z := m.zones["zone-1"]
	eventually(t, "the mesh in zone-1", func() bool { return z.cp.has(t, "/meshes/default") })
	app := m.startProxylessAgent("zone-1", "billing-1", "billing", "v1", "--jwt-call-creds")
	wildcard := ":" + port(app.addr)
	cmd := exec.Command(grpcxdsBin(t), "--addr", wildcard, "--name", "billing-1")
	cmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP="+filepath.Join(app.dir, "bootstrap.json"), "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true")
	srv := launch(t, "billing-1", cmd)
	eventually(t, "billing-1 serving on "+wildcard, func() bool { return strings.Contains(srv.out.String(), "serving [::]"+wildcard) })
	web := m.startProxylessAgent("zone-1", "web-1", "web", "v1")
	billing := web.dial(t, "billing")
	eventually(t, "a call to billing", func() bool { _, _, err := unary(billing); return err == nil })
	if resp, _, err := unary(billing); err != nil || resp.ServerId != "billing-1" || !strings.Contains(resp.Hostname, "spiffe://default/web") {
		t.Fatalf("call to billing: %v %v, want billing-1 seeing web's SPIFFE ID", resp, err)
	}
}
