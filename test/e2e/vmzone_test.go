package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/testutil"
)

// TestVMZones is issue 13's two-zone mesh of hosts that are not loopback:
// every host a network namespace with its own address, a global on
// PostgreSQL, and in each zone a CP host, an ingress host and two app hosts,
// the zones on the default VIP CIDR 240.0.0.0/4. Every sidecar runs
// `ursa-dp run --transparent-proxy`. On web's host in zone-1, curl, which
// knows nothing of the mesh and resolves through the host's resolv.conf,
// reaches billing.mesh (port 80 and its own port 8080), which runs only in
// zone-2, through zone-2's ingress over mTLS; a zone-1 member called at its
// own address is reached over mTLS too; a server outside the mesh is
// reached untouched; with zone-1's CP killed, names still resolve and calls
// go on; once the sidecar exits, the host's nat table holds nothing of ours.
func TestVMZones(t *testing.T) {
	for _, tool := range []string{"curl", "dig", "iptables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run deploy/deps.sh (%v)", tool, err)
		}
	}
	h := newHosts(t, "global", "cp1", "ingress1", "web1", "backend1", "cp2", "ingress2", "billing2a", "billing2b", "outside")
	dir := t.TempDir()
	file := func(name, text string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	ctlOn := func(host, stdin string, args ...string) string {
		t.Helper()
		out, stderr, err := h.ctl(t, host, nil, "http://127.0.0.1:5681", stdin, args...)
		if err != nil {
			t.Fatalf("ursactl %s on %s: %v\n%s", strings.Join(args, " "), host, err, stderr)
		}
		return out
	}

	global := h.startCP(t, "global", "global", "--store", newDatabase(t), "--api-addr", ":5681", "--kds-addr", ":5685")
	_, kdsCA := global.get(t, "/kds/ca.pem")
	ctlOn("global", openMTLSMesh, "apply", "-f", "-")
	zones := map[string]*cp{}
	for _, z := range []string{"1", "2"} {
		host := "cp" + z
		// The CP's DNS on port 53, for hosts without a sidecar; the VIP
		// CIDR its default.
		zones[z] = h.startCP(t, host, "zone", "--zone", "zone-"+z, "--api-addr", ":5681", "--xds-addr", ":5678", "--dns-addr", ":53",
			"--global-kds-address", "grpcs://"+h.addr("global")+":5685", "--global-kds-ca-file", file("kds-ca.pem", kdsCA),
			"--zone-token-file", file("zone-"+z+".token", ctlOn("global", "", "generate", "zone-token", "--zone", "zone-"+z)))
		eventually(t, "the mesh in zone-"+z, func() bool {
			_, _, err := h.ctl(t, host, nil, "http://127.0.0.1:5681", "", "get", "mesh", "default")
			return err == nil
		})
	}
	// xdsFlags are what a proxy of zone z needs to reach its CP.
	xdsFlags := func(z string) []string {
		return []string{"--cp-address", "grpcs://" + zones[z].xds, "--ca-cert-file", zones[z].xdsCAFile(t)}
	}
	ready := func(host string, p *proc, admin string) {
		t.Helper()
		waitReadyVia(t, h.client(t, host), "http://"+admin+"/ready", p)
	}
	// app serves message on host at addr, recording its callers.
	app := func(host, addr, message string) *callers {
		c := &callers{}
		srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c.add(r.RemoteAddr)
			fmt.Fprintln(w, message)
		})}
		go srv.Serve(h.listen(t, host, "tcp", addr))
		t.Cleanup(func() { srv.Close() })
		return c
	}
	// sidecar runs a transparent sidecar for service on host, its app
	// (if any) on 127.0.0.1:port, its inbound at the host's address.
	sidecar := func(z, host, service string, port int) *proc {
		t.Helper()
		token := ctlOn("cp"+z, "", "generate", "dataplane-token", "--mesh", "default", "--service", service, "--name", host)
		dp := file(host+".yaml", fmt.Sprintf("type: Dataplane\nmesh: default\nname: %s\nnetworking:\n  address: %s\n  inbound: [{port: %d, servicePort: %d, tags: {ursa.io/service: %s}}]\n",
			host, h.addr(host), port, port, service))
		p := h.start(t, host, "ursa-dp", append(xdsFlags(z), "run", "--dataplane-file", dp, "--token-file", file(host+".token", token),
			"--admin-addr", "127.0.0.1:9901", "--transparent-proxy")...)
		ready(host, p, "127.0.0.1:9901")
		return p
	}

	// zone-2: billing on two hosts, and the ingress.
	billing := map[string]*callers{}
	for _, host := range []string{"billing2a", "billing2b"} {
		billing[host] = app(host, "127.0.0.1:8080", "billing in zone-2 on "+host)
		sidecar("2", host, "billing", 8080)
	}
	ingress := func(z string) {
		host := "ingress" + z
		zi := file(host+".yaml", fmt.Sprintf("type: ZoneIngress\nname: ingress\nzone: zone-%s\nnetworking: {address: %s, port: 10001, advertisedAddress: %s, advertisedPort: 10001}\n",
			z, h.addr(host), h.addr(host)))
		p := h.start(t, host, "ursa-dp", append(xdsFlags(z), "ingress", "--zone-ingress-file", zi, "--admin-addr", "127.0.0.1:9902",
			"--token-file", file(host+".token", ctlOn("cp"+z, "", "generate", "ingress-token", "--zone", "zone-"+z)))...)
		ready(host, p, "127.0.0.1:9902")
	}
	ingress("2")
	// zone-1: backend, a local service, the ingress, and web, the client's
	// host, which resolves through zone-1's CP as a host's resolv.conf says.
	backend := app("backend1", "127.0.0.1:9000", "backend in zone-1")
	sidecar("1", "backend1", "backend", 9000)
	ingress("1")
	h.setResolvConf(t, "web1", "nameserver "+h.addr("cp1")+"\noptions timeout:1 attempts:2\n")
	web := sidecar("1", "web1", "web", 8000)
	outside := app("outside", ":7000", "outside the mesh")

	// curl runs on web's host, unmodified: its names from the host's
	// resolver, its connections where it aims them.
	curl := func(url string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", h.namespace(t, "web1"), "curl", "-sS", "--max-time", "3", url).CombinedOutput()
		return string(out), err
	}
	reaches := func(what, url, want string) {
		t.Helper()
		testutil.Eventually(t, 20*time.Second, what+": curl "+url, func() error {
			out, err := curl(url)
			if err != nil || !strings.Contains(out, want) {
				return fmt.Errorf("%s %v", out, err)
			}
			return nil
		})
	}
	dig := func(name string) string {
		t.Helper()
		out, err := exec.Command("ip", "netns", "exec", h.namespace(t, "web1"), "dig", "+short", "+time=1", "+tries=2", name).CombinedOutput()
		if err != nil {
			t.Fatalf("dig %s on web's host: %v: %s", name, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	reaches("billing.mesh, only in zone-2", "http://billing.mesh/", "billing in zone-2")
	reaches("billing.mesh at its own port", "http://billing.mesh:8080/", "billing in zone-2")
	reaches("backend.mesh, in zone-1", "http://backend.mesh:9000/", "backend in zone-1")
	// A mesh member called at its own address: the sidecar knows it and
	// goes over mTLS (backend's inbound takes nothing else).
	reaches("backend at its Dataplane address", "http://"+h.addr("backend1")+":9000/", "backend in zone-1")
	reaches("a server outside the mesh", "http://"+h.addr("outside")+":7000/", "outside the mesh")
	vip, err := netip.ParseAddr(dig("billing.mesh"))
	if err != nil || !netip.MustParsePrefix("240.0.0.0/4").Contains(vip) {
		t.Fatalf("billing.mesh on web's host is %v (%v), want a VIP in 240.0.0.0/4", vip, err)
	}
	// Through zone-2's ingress: billing's callers are its own sidecar
	// (the inbound's local connection), never web's host, and the
	// ingress counted the connections.
	for host, c := range billing {
		for _, from := range c.all() {
			if !strings.HasPrefix(from, "127.0.0.1:") {
				t.Fatalf("billing on %s was called from %s, not through its sidecar", host, from)
			}
		}
	}
	if n := len(billing["billing2a"].all()) + len(billing["billing2b"].all()); n == 0 {
		t.Fatal("no call reached billing")
	}
	// billing's app binds its inbound port itself: the calls came
	// through the sidecar's ursa:inbound, to which the port is redirected.
	inbound := 0
	for host := range billing {
		if strings.Contains(metrics(t, h.client(t, host), "http://127.0.0.1:9901/metrics"), `ursa_dp_connections_total{listener="ursa:inbound"}`) {
			inbound++
		}
	}
	if inbound == 0 {
		t.Fatal("no billing sidecar took a connection on ursa:inbound")
	}
	if m := metrics(t, h.client(t, "ingress2"), "http://127.0.0.1:9902/metrics"); !strings.Contains(m, "ursa_dp_connections_total") {
		t.Fatalf("zone-2's ingress counted no connection:\n%s", m)
	}
	if len(backend.all()) == 0 {
		t.Fatal("no call reached backend")
	}
	// Outside the mesh: the server saw web's host itself.
	for _, from := range outside.all() {
		if !strings.HasPrefix(from, h.addr("web1")+":") {
			t.Fatalf("the server outside the mesh was called from %s, want web's host %s", from, h.addr("web1"))
		}
	}

	for z, c := range zones {
		if out := c.proc.out.String(); strings.Contains(out, "rejected its configuration") {
			t.Fatalf("a proxy of zone-%s rejected its configuration:\n%s", z, out)
		}
	}

	// zone-1's CP dies: web's sidecar answers .mesh itself and keeps its
	// configuration.
	zones["1"].proc.cmd.Process.Kill()
	zones["1"].proc.done <- <-zones["1"].proc.done
	if got := dig("billing.mesh"); got != vip.String() {
		t.Fatalf("billing.mesh with zone-1's CP down: %q, want %s", got, vip)
	}
	reaches("billing.mesh with zone-1's CP down", "http://billing.mesh/", "billing in zone-2")
	reaches("backend.mesh with zone-1's CP down", "http://backend.mesh:9000/", "backend in zone-1")

	web.stop(t)
	out, err := exec.Command("ip", "netns", "exec", h.namespace(t, "web1"), "iptables-save").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables-save on web's host: %v: %s", err, out)
	}
	if strings.Contains(string(out), "URSA_") {
		t.Fatalf("after ursa-dp exited, web's host still holds ours:\n%s", out)
	}
}

// callers records the remote addresses a test server saw.
type callers struct {
	mu   sync.Mutex
	from []string
}

func (c *callers) add(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.from = append(c.from, addr)
}

func (c *callers) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.from...)
}

// metrics is the text of a /metrics page.
func metrics(t testing.TB, c *http.Client, url string) string {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
