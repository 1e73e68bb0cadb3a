package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/ursamesh/ursa/pkg/testutil"
)

// cp is a control-plane process and the addresses it listens on.
type cp struct {
	*proc
	api      string // http://host:port
	apiTLS   string // https://host:port
	xds, dns string // a zone's, host:port
	kds      string // a global's, host:port
	args     []string
	// start and http, when set, start the process and reach its API on
	// another host (hosts.startCP); by default both are this one's.
	start func(t testing.TB, name string, args ...string) *proc
	http  *http.Client
	// host reaches a listener bound to every address (":5681"):
	// 127.0.0.1 when empty.
	host string
	// xdsCA is a file holding the zone's /xds/ca.pem, fetched once per
	// start of the process (a zone on the memory store makes a new CA at
	// each start).
	xdsCA string
}

// reachable is a listener's address as a client dials it: host in place of
// an unspecified IP ("[::]:5681" → "10.77.0.1:5681").
func reachable(addr, host string) string {
	h, port, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(h); err != nil || ip == nil || !ip.IsUnspecified() {
		return addr
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// cpAddrs are the flags of a CP's listeners and the log keys it reports
// the bound addresses under.
var cpAddrs = map[string][][2]string{
	"global": {{"--api-addr", "api_addr"}, {"--api-tls-addr", "api_tls_addr"}, {"--kds-addr", "kds_addr"}},
	"zone":   {{"--api-addr", "api_addr"}, {"--api-tls-addr", "api_tls_addr"}, {"--xds-addr", "xds_addr"}, {"--dns-addr", "dns_addr"}},
}

// startCP starts `ursa-cp global|zone args…`. Every listener the args do
// not place is bound on port 0 by the CP itself, and its address read back
// from the CP's log, so no port is picked, freed and taken by another; a
// restart binds the same addresses again.
//
// A zone started here admits loopback Dataplanes: every host of these tests
// is this one. (Tests in network namespaces, newHosts, run zones on their
// defaults, with real addresses.)
func startCP(t testing.TB, args ...string) *cp {
	t.Helper()
	if args[0] == "zone" && !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--xds-allow-loopback-dataplanes") }) {
		args = append(args, "--xds-allow-loopback-dataplanes")
	}
	c := &cp{args: placeListeners(args, "127.0.0.1")}
	c.run(t)
	return c
}

// placeListeners binds every listener args do not place on host, port 0.
func placeListeners(args []string, host string) []string {
	for _, f := range cpAddrs[args[0]] {
		if !slices.Contains(args, f[0]) {
			args = append(args, f[0], host+":0")
		}
	}
	return args
}

// run starts the process, reads its addresses and waits until it is ready;
// the args then name the bound addresses, for a restart.
func (c *cp) run(t testing.TB) {
	t.Helper()
	launch := c.start
	if launch == nil {
		launch = start
	}
	c.proc = launch(t, "ursa-cp", c.args...)
	c.xdsCA = ""
	for _, f := range cpAddrs[c.args[0]] {
		addr := c.proc.logged(t, f[1])
		c.args[slices.Index(c.args, f[0])+1] = addr
		addr = reachable(addr, c.host)
		switch f[0] {
		case "--api-addr":
			c.api = "http://" + addr
		case "--api-tls-addr":
			c.apiTLS = "https://" + addr
		case "--xds-addr":
			c.xds = addr
		case "--dns-addr":
			c.dns = addr
		case "--kds-addr":
			c.kds = addr
		}
	}
	waitReadyVia(t, c.client(), c.api+"/readyz", c.proc)
}

// client reaches the CP's API.
func (c *cp) client() *http.Client {
	if c.http != nil {
		return c.http
	}
	return http.DefaultClient
}

func (c *cp) restart(t testing.TB) {
	t.Helper()
	c.run(t)
}

// get returns the body and status of a GET on the CP's API.
func (c *cp) get(t testing.TB, path string) (int, string) {
	t.Helper()
	resp, err := c.client().Get(c.api + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// sidecarFlags are the flags with which a sidecar of service in mesh
// reaches this zone CP's xDS server: its address and whatever the zone
// requires of a proxy, here a dataplane token for service (any service of
// the mesh when empty) that this CP issues once the mesh has reached it.
// Every ursa-dp run in these tests takes them from here, so a change of
// what a zone requires is made once.
func (c *cp) sidecarFlags(t testing.TB, mesh, service string) []string {
	t.Helper()
	eventually(t, "mesh "+mesh+" in the zone, for a dataplane token", func() bool { return c.has(t, "/meshes/"+mesh) })
	args := []string{"generate", "dataplane-token", "--mesh", mesh}
	if service != "" {
		args = append(args, "--service", service)
	}
	// No DNS listener: sidecars of one host would contend for one port
	// (TestSidecarDNS gives its own --dns-addr, which a later flag wins).
	return append(c.xdsFlags(t), "--token-file", tokenFile(t, ctl(t, c.api, "", args...)), "--dns-addr=")
}

// ingressFlags are sidecarFlags for a zone ingress of zone: an ingress
// token this CP issues.
func (c *cp) ingressFlags(t testing.TB, zone string) []string {
	t.Helper()
	token := ctl(t, c.api, "", "generate", "ingress-token", "--zone", zone)
	return append(c.xdsFlags(t), "--token-file", tokenFile(t, token))
}

// dataplaneToken has this zone CP issue a dataplane token for mesh, with
// the further flags of ursactl generate dataplane-token.
func (c *cp) dataplaneToken(t testing.TB, mesh string, flags ...string) string {
	t.Helper()
	return strings.TrimSpace(ctl(t, c.api, "", append([]string{"generate", "dataplane-token", "--mesh", mesh}, flags...)...))
}

// tokenFile writes a token to a file of its own and returns its path.
func tokenFile(t testing.TB, token string) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "token")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(strings.TrimSpace(token)); err != nil {
		t.Fatal(err)
	}
	return f.Name()
}

// xdsFlags say where the zone's xDS server is and how to verify it: with
// its /xds/ca.pem, or not at all when the zone was started --xds-insecure.
func (c *cp) xdsFlags(t testing.TB) []string {
	t.Helper()
	if slices.Contains(c.args, "--xds-insecure") {
		return []string{"--cp-address", "grpc://" + c.xds, "--xds-insecure"}
	}
	return []string{"--cp-address", "grpcs://" + c.xds, "--ca-cert-file", c.xdsCAFile(t)}
}

// xdsCAFile returns a file holding the CA the zone's xDS certificate
// chains to, fetched from its /xds/ca.pem.
func (c *cp) xdsCAFile(t testing.TB) string {
	t.Helper()
	if c.xdsCA != "" {
		return c.xdsCA
	}
	code, pem := c.get(t, "/xds/ca.pem")
	if code != 200 || !strings.Contains(pem, "BEGIN CERTIFICATE") {
		t.Fatalf("GET %s/xds/ca.pem: %d %s", c.api, code, pem)
	}
	f, err := os.CreateTemp(t.TempDir(), "xds-ca-*.pem")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(pem); err != nil {
		t.Fatal(err)
	}
	c.xdsCA = f.Name()
	return c.xdsCA
}

// dialXDS connects to the zone's xDS server over TLS, verified with its
// /xds/ca.pem, as a proxy would.
func (c *cp) dialXDS(t testing.TB) *grpc.ClientConn {
	t.Helper()
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(c.xdsCAFile(t))
	if err != nil || !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("the zone's CA: %v", err)
	}
	host, _, _ := net.SplitHostPort(c.xds)
	conn, err := grpc.NewClient(c.xds, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: host})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func (c *cp) has(t testing.TB, path string) bool {
	code, _ := c.get(t, path)
	return code == 200
}

// eventually polls cond for up to 15 s (testutil.Until, with this
// package's bound).
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testutil.Until(t, 15*time.Second, what, cond)
}

const policy = `
type: Mesh
name: default
---
type: TrafficRoute
mesh: default
name: billing-split
spec:
  destination: {ursa.io/service: billing}
  split:
  - {weight: 90, tags: {ursa.io/zone: zone-a}}
  - {weight: 10, tags: {ursa.io/zone: zone-b}}
`

// TestMultiZone runs a global CP on PostgreSQL and three zone CPs as real
// processes: policies reach every zone and go away everywhere, ingresses are
// re-broadcast to the other zones, zones keep serving while the global is
// killed, and everything converges when it returns.
func TestMultiZone(t *testing.T) {
	dsn, err := cluster.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p := start(t, "ursa-cp", "migrate", "up", "--store", dsn); p.wait(t) != nil {
		t.Fatalf("migrate: %s", p.out.String())
	}
	global := startCP(t, "global", "--store", dsn, "--kds-ack-timeout", "5s")
	kdsAddr := global.kds
	dir := t.TempDir()
	ca := filepath.Join(dir, "kds-ca.pem")
	_, pem := global.get(t, "/kds/ca.pem")
	if !strings.Contains(pem, "BEGIN CERTIFICATE") {
		t.Fatalf("GET /kds/ca.pem: %s", pem)
	}
	os.WriteFile(ca, []byte(pem), 0o600)

	zoneDB, err := cluster.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p := start(t, "ursa-cp", "migrate", "up", "--store", zoneDB); p.wait(t) != nil {
		t.Fatalf("migrate zone db: %s", p.out.String())
	}
	zones := map[string]*cp{}
	for _, name := range []string{"zone-a", "zone-b", "zone-c"} {
		token := strings.TrimSpace(ctl(t, global.api, "", "generate", "zone-token", "--zone", name))
		tokenFile := filepath.Join(dir, name+".token")
		os.WriteFile(tokenFile, []byte(token), 0o600)
		st := "memory"
		if name == "zone-c" {
			st = zoneDB
		}
		zones[name] = startCP(t, "zone", "--zone", name, "--global-kds-address", "grpcs://"+kdsAddr,
			"--global-kds-ca-file", ca, "--zone-token-file", tokenFile, "--store", st)
	}

	ctl(t, global.api, policy, "apply", "-f", "-")
	for name, z := range zones {
		eventually(t, "the route in "+name, func() bool { return z.has(t, "/meshes/default/traffic-routes/billing-split") })
	}
	// What came from the global is read-only in a zone.
	if _, stderr, err := ctlResult(zones["zone-a"].api, policy, "apply", "-f", "-"); err == nil || !strings.Contains(stderr, "global control plane") {
		t.Fatalf("a zone accepted a write of a global policy: %v %s", err, stderr)
	}

	// Zone A's ingress appears in B and C, not in A.
	ingress := `
type: ZoneIngress
name: ingress
zone: zone-a
networking: {address: 127.0.0.1, port: 10001, advertisedAddress: 127.0.0.1, advertisedPort: 10001}
`
	ctl(t, zones["zone-a"].api, ingress, "apply", "-f", "-")
	for _, name := range []string{"zone-b", "zone-c"} {
		z := zones[name]
		eventually(t, "zone A's ingress in "+name, func() bool { return z.has(t, "/zone-ingresses/zone-a.ingress") })
	}
	if zones["zone-a"].has(t, "/zone-ingresses/zone-a.ingress") {
		t.Fatal("zone A was sent its own ingress back")
	}

	// Deleted at the global, the policy disappears everywhere.
	ctl(t, global.api, "", "delete", "traffic-route", "billing-split", "-m", "default")
	for name, z := range zones {
		eventually(t, "the route gone from "+name, func() bool {
			code, _ := z.get(t, "/meshes/default/traffic-routes/billing-split")
			return code == 404
		})
	}
	ctl(t, global.api, policy, "apply", "-f", "-")
	for name, z := range zones {
		eventually(t, "the route back in "+name, func() bool { return z.has(t, "/meshes/default/traffic-routes/billing-split") })
	}

	// The global's insight lists the zones as online.
	eventually(t, "three zones online", func() bool {
		out, _, err := ctlResult(global.api, "", "inspect", "zones")
		return err == nil && strings.Count(out, "Online") == 3
	})

	// kill -9 of the global: every zone keeps serving what it has.
	global.cmd.Process.Signal(syscall.SIGKILL)
	global.wait(t)
	for name, z := range zones {
		if !z.has(t, "/meshes/default/traffic-routes/billing-split") {
			t.Fatalf("%s lost the route when the global died", name)
		}
	}
	// Zone C, on PostgreSQL, restarted while the global is down, comes back
	// with its last state.
	zc := zones["zone-c"]
	zc.stop(t)
	zc.restart(t)
	if !zc.has(t, "/meshes/default/traffic-routes/billing-split") || !zc.has(t, "/zone-ingresses/zone-a.ingress") {
		t.Fatal("zone C on PostgreSQL lost its state across a restart while the global was down")
	}

	// The global returns; a new policy reaches every zone.
	global.restart(t)
	ctl(t, global.api, `
type: TrafficPermission
mesh: default
name: web-to-billing
spec:
  sources: [{match: {ursa.io/service: web}}]
  destinations: [{match: {ursa.io/service: billing}}]
`, "apply", "-f", "-")
	for name, z := range zones {
		eventually(t, "the permission in "+name, func() bool { return z.has(t, "/meshes/default/traffic-permissions/web-to-billing") })
	}
	code, body := global.get(t, "/zones/zone-a/insight")
	var insight struct {
		Connected bool `json:"connected"`
	}
	if json.Unmarshal([]byte(body), &insight); code != 200 || !insight.Connected {
		t.Fatalf("zone-a insight after convergence: %d %s", code, body)
	}
	fmt.Fprint(io.Discard, body)
}
