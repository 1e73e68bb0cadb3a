package e2e

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestTransparentProxyLifecycle: `ursa-dp run --transparent-proxy` on a
// host of its own installs the redirection before it connects (its own
// connection to the zone CP on another host, marked, is not redirected: it
// gets ready), an app's call outside the mesh is passed through by the
// original-destination listener the zone sends it, it removes exactly that on SIGTERM, and after a SIGKILL the
// next start replaces the leftovers instead of adding to them. Bad flags
// change nothing.
func TestTransparentProxyLifecycle(t *testing.T) {
	h := newHosts(t, "cp", "app")
	zone := startTPZone(t, h, "cp", "type: Mesh\nname: default\n")
	args := zone.sidecarArgs(t, "app", "web-1", "web", 10011, 18080, "--transparent-proxy")

	nat := func() string {
		t.Helper()
		out, err := exec.Command("ip", "netns", "exec", h.namespace(t, "app"), "iptables-save", "-t", "nat").CombinedOutput()
		if err != nil {
			t.Fatalf("iptables-save on app: %v: %s", err, out)
		}
		return string(out)
	}
	onApp := h.client(t, "app")
	ready := func(p *proc) { t.Helper(); waitReadyVia(t, onApp, "http://127.0.0.1:9901/ready", p) }

	etc := filepath.Join("/etc/netns", h.namespace(t, "app"))
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver 127.0.0.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := h.start(t, "app", "ursa-dp", args...)
	ready(p)
	rules := nat()
	for _, want := range []string{`-A OUTPUT -m comment --comment "ursa-dp:default.web-1" -j URSA_OUTPUT`, "-A URSA_REDIRECT -p tcp -j REDIRECT --to-ports 15001", "-A URSA_OUTPUT -m mark --mark 0x7572 -j RETURN",
		// DNS to the host's resolvers only (a local one asks its
		// upstreams on port 53 too).
		"-A URSA_OUTPUT -d 127.0.0.53/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053", "-A URSA_OUTPUT -d 127.0.0.53/32 -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053"} {
		if !strings.Contains(rules, want+"\n") {
			t.Fatalf("the app host's nat table lacks %q:\n%s", want, rules)
		}
	}
	// An app's call to a server outside the mesh (the CP host's API)
	// goes through the sidecar's original-destination listener, which the
	// zone sent it, and is passed through to where it was headed.
	eventually(t, "a call from the app host to the CP host, passed through the sidecar", func() bool {
		resp, err := onApp.Get("http://" + h.addr("cp") + ":5681/meshes")
		if err != nil {
			return false
		}
		resp.Body.Close()
		resp, err = onApp.Get("http://127.0.0.1:9901/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), `ursa_dp_connections_total{listener="ursa:outbound"}`)
	})
	p.stop(t)
	if rules := nat(); strings.Contains(rules, "URSA_") {
		t.Fatalf("after SIGTERM the nat table still holds ours:\n%s", rules)
	}

	// SIGKILL leaves the rules; the next start takes them over.
	p = h.start(t, "app", "ursa-dp", append(args, "--exclude-outbound-ports", "22")...)
	ready(p)
	p.cmd.Process.Kill()
	p.done <- <-p.done
	if rules := nat(); !strings.Contains(rules, "--dport 22 -j RETURN") {
		t.Fatalf("after SIGKILL the rules are gone (want them left):\n%s", rules)
	}
	p = h.start(t, "app", "ursa-dp", args...)
	ready(p)
	rules = nat()
	if strings.Count(rules, "-j URSA_OUTPUT") != 1 || strings.Contains(rules, "--dport 22 ") {
		t.Fatalf("after a restart the leftovers are not replaced:\n%s", rules)
	}
	// ursa-dp cleanup (the unit's ExecStopPost) leaves a running proxy's
	// rules alone, and removes a killed one's.
	cleanup := func() {
		t.Helper()
		c := h.start(t, "app", "ursa-dp", "cleanup", "--transparent-proxy")
		if err := c.wait(t); err != nil {
			t.Fatalf("ursa-dp cleanup: %v\n%s", err, c.out.String())
		}
	}
	ours := func(rules string) (lines []string) {
		for _, l := range strings.Split(rules, "\n") {
			if strings.HasPrefix(l, "-A ") && strings.Contains(l, "URSA_") {
				lines = append(lines, l)
			}
		}
		return lines
	}
	cleanup()
	if now := nat(); !slices.Equal(ours(now), ours(rules)) {
		t.Fatalf("cleanup changed a running proxy's rules:\n%s\nwant\n%s", now, rules)
	}
	p.cmd.Process.Kill()
	p.done <- <-p.done
	cleanup()
	if rules := nat(); strings.Contains(rules, "URSA_") {
		t.Fatalf("after cleanup the killed proxy's rules are still there:\n%s", rules)
	}

	// A bad port list: a clear error, nothing installed.
	p = h.start(t, "app", "ursa-dp", append(args, "--exclude-outbound-ports", "22,0")...)
	if err := p.wait(t); err == nil || !strings.Contains(p.out.String(), "--exclude-outbound-ports") {
		t.Fatalf("ursa-dp with a bad port list: %v\n%s", err, p.out.String())
	}
	if rules := nat(); strings.Contains(rules, "URSA_") {
		t.Fatalf("a refused start installed rules:\n%s", rules)
	}
	refused := func(p *proc, want string) {
		t.Helper()
		if err := p.wait(t); err == nil || !strings.Contains(p.out.String(), want) {
			t.Fatalf("ursa-dp exited with %v, want an error saying %q:\n%s", err, want, p.out.String())
		}
		if rules := nat(); strings.Contains(rules, "URSA_") {
			t.Fatalf("a refused start installed rules:\n%s", rules)
		}
	}
	// An unknown flag.
	refused(h.start(t, "app", "ursa-dp", append(args, "--redirect-everything")...), "unknown flag: --redirect-everything")
	// A --dns-addr the redirected DNS would not reach.
	refused(h.start(t, "app", "ursa-dp", append(args, "--dns-addr", "127.0.0.1:5353")...), "--redirect-dns-port")
	// A redirect port another process holds: the host's traffic would
	// go to it.
	for _, held := range []struct{ network, addr, want string }{
		{"tcp", ":15001", "the outbound redirect port (TCP 0.0.0.0:15001) is not free"},
		{"udp", "127.0.0.1:15053", "the DNS redirect port (UDP 127.0.0.1:15053) is not free"},
	} {
		var closer io.Closer
		if held.network == "udp" {
			closer = h.listenPacket(t, "app", held.network, held.addr)
		} else {
			closer = h.listen(t, "app", held.network, held.addr)
		}
		refused(h.start(t, "app", "ursa-dp", args...), held.want)
		closer.Close()
	}
	// Without CAP_NET_ADMIN (root without it in its bounding set).
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.namespace(t, "app"), "setpriv", "--bounding-set=-net_admin", filepath.Join(bin, "ursa-dp")}, args...)...)
	refused(launch(t, "ursa-dp without CAP_NET_ADMIN", cmd), "needs the CAP_NET_ADMIN capability")
}
