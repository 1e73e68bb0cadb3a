package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/proxy/tproxy"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// TestReviewPassthroughExposesLoopback: a host on the pod's link (another
// pod on the same bridge, the node, a VM's LAN neighbour) sends a SYN to
// the pod's MAC addressed to 127.0.0.1:8888. PREROUTING's
// "-p tcp -j URSA_INBOUND" REDIRECTs it to 15006 before the routing
// decision (so no martian-destination check), and the inbound listener's
// default chain passes it through to its original destination,
// 127.0.0.1:8888, from 127.0.0.6, which the rules let out: the app's
// loopback-only service (here "secret") answers the neighbour.
//
// Namespaces: V is billing-1 (10.0.0.7, the real rules of
// --redirect-all-inbound, the real generated ursa:inbound), A the
// neighbour (10.0.0.8), which routes 127.0.0.1 out its veth (its own
// choice: route_localnet on its side only; V keeps the defaults).
//
// And any other host (no trick needed): V also runs a zone CP's REST API
// on its default api.addr :5681 (README: "A zone CP on the same host, run
// by its unit as the ursa user, passes the rules as the sidecar does").
// Its plain port makes a tokenless loopback caller an admin; the
// passthrough connects from 127.0.0.6, a loopback address, so a remote
// PUT without a token is accepted.
func TestReviewPassthroughExposesLoopback(t *testing.T) {
	out, ok := reviewPassthroughHarness(t)
	if ok && strings.Contains(out, "loopback: secret") {
		t.Errorf("a neighbour reached the app's loopback-only 127.0.0.1:8888 through the inbound passthrough")
	}
}

// TestReviewPassthroughMakesRemoteCallersLoopbackAdmins: see above; the
// zone CP on the host.
func TestReviewPassthroughMakesRemoteCallersLoopbackAdmins(t *testing.T) {
	out, ok := reviewPassthroughHarness(t)
	if ok && !strings.Contains(out, "cp: PUT /meshes/owned without a token: 4") {
		t.Errorf("another host wrote to the zone CP on this host (api.addr :5681, as README's VM set-up) without a token: the passthrough made it a loopback caller, an admin")
	}
}

// reviewPassthroughHarness runs the victim and the neighbour (or, in a
// child, its role) and returns what the neighbour saw; false in a child.
func reviewPassthroughHarness(t *testing.T) (string, bool) {
	switch os.Getenv("URSA_REVIEW_ROLE") {
	case "victim":
		reviewVictim(t)
		return "", false
	case "attacker":
		reviewAttacker(t)
		return "", false
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	t.Helper()
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	v := fmt.Sprintf("rvpV%d", os.Getpid())
	a := fmt.Sprintf("rvpA%d", os.Getpid())
	for _, ns := range []string{v, a} {
		run("ip", "netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "delete", ns).Run() })
		run("ip", "-n", ns, "link", "set", "lo", "up")
	}
	run("ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", v)
	run("ip", "-n", v, "addr", "add", "10.0.0.7/24", "dev", "eth0")
	run("ip", "-n", a, "addr", "add", "10.0.0.8/24", "dev", "eth0")
	run("ip", "-n", v, "link", "set", "eth0", "up")
	run("ip", "-n", a, "link", "set", "eth0", "up")
	// The neighbour's own routing: 127.0.0.1 goes out to 10.0.0.7.
	run("ip", "netns", "exec", a, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1", "net.ipv4.conf.eth0.route_localnet=1")
	run("ip", "-n", a, "rule", "add", "pref", "10", "to", "127.0.0.1", "lookup", "100")
	run("ip", "-n", a, "rule", "del", "pref", "0", "lookup", "local")
	run("ip", "-n", a, "rule", "add", "pref", "100", "lookup", "local")
	run("ip", "-n", a, "route", "add", "127.0.0.1/32", "via", "10.0.0.7", "dev", "eth0", "table", "100", "onlink")

	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	victim := exec.CommandContext(ctx, "ip", "netns", "exec", v, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	victim.Env = append(os.Environ(), "URSA_REVIEW_ROLE=victim", "URSA_REVIEW_DIR="+dir)
	var vout strings.Builder
	victim.Stdout, victim.Stderr = &vout, &vout
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		os.WriteFile(filepath.Join(dir, "done"), nil, 0o644)
		victim.Wait()
		if t.Failed() {
			t.Logf("victim:\n%s", vout.String())
		}
	}()
	testutil.Eventually(t, 60*time.Second, "the victim's proxy and rules", func() error {
		_, err := os.Stat(filepath.Join(dir, "ready"))
		return err
	})
	// The neighbour calls 10.0.0.7:7070 first: V then knows its MAC, as after any exchange.
	att := exec.CommandContext(ctx, "ip", "netns", "exec", a, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	att.Env = append(os.Environ(), "URSA_REVIEW_ROLE=attacker")
	out, _ := att.CombinedOutput()
	t.Logf("neighbour:\n%s", out)
	if !strings.Contains(string(out), "metrics: app at 10.0.0.7:7070") {
		t.Fatalf("precondition: the passthrough of 10.0.0.7:7070 did not work")
	}
	return string(out), true
}

func reviewAttacker(t *testing.T) {
	call := func(addr string) string {
		c, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			return "error: " + err.Error()
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintln(c, "hi")
		s, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return "error: " + err.Error()
		}
		return s
	}
	fmt.Printf("metrics: %s", call("10.0.0.7:7070"))
	fmt.Printf("\nloopback: %s\n", call("127.0.0.1:8888"))
	req, _ := http.NewRequest("PUT", "http://10.0.0.7:5681/meshes/owned", strings.NewReader(`{"type":"Mesh","name":"owned"}`))
	if resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req); err != nil {
		fmt.Printf("cp: error %v\n", err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("cp: PUT /meshes/owned without a token: %d %s\n", resp.StatusCode, strings.TrimSpace(string(b)))
	}
}

func reviewVictim(t *testing.T) {
	dir := os.Getenv("URSA_REVIEW_DIR")
	cfg := inboundPassthroughConfig(t)
	ctx := context.Background()
	log := zaptest.NewLogger(t)
	// As ursa-dp run --transparent-proxy --redirect-all-inbound (root, marking).
	c := tproxy.Config{OutboundPort: 15001, InboundPort: 15006, InboundAllPorts: true, SidecarPorts: []int{9901}}
	if err := tproxy.Install(ctx, log, c); err != nil {
		t.Fatal(err)
	}
	defer tproxy.Remove(ctx, log, "")
	for addr, what := range map[string]string{"10.0.0.7:7070": "app", "127.0.0.1:8888": "secret"} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go testutil.ServeEach(ln, func(c net.Conn) {
			if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
				if what == "app" {
					fmt.Fprintf(c, "app at %s from %s\n", c.LocalAddr(), c.RemoteAddr().(*net.TCPAddr).IP)
				} else {
					fmt.Fprintln(c, "secret")
				}
			}
		})
	}
	api, err := apiserver.New(apiserver.Deps{Store: store.NewMemory(0), Log: log, Registry: prometheus.NewRegistry(), Mode: apiserver.ModeStandalone})
	if err != nil {
		t.Fatal(err)
	}
	apiLn, err := net.Listen("tcp", apiserver.DefaultConfig().Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer apiLn.Close()
	go http.Serve(apiLn, api)
	p, err := New(log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Mark = tproxy.DefaultMark
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	os.WriteFile(filepath.Join(dir, "ready"), nil, 0o644)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(filepath.Join(dir, "done")); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
