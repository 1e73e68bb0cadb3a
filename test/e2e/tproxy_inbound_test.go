package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestTransparentInbound: with `ursa-dp run --transparent-proxy` and a
// Dataplane whose inbound port is its service port (the app binds 8080
// itself, on every address), inbound TCP to that port goes through the
// sidecar's ursa:inbound listener: a client host's app, behind its own
// transparent sidecar, reaches billing by its VIP over mTLS through both
// sidecars; a plain TCP client on a host without a sidecar gets nothing
// from the app (TLS is required) while the redirection stands, and the app
// itself once it is gone; a TrafficPermission that no longer allows the
// client stops its calls. ursa-dp's exit leaves nothing of ours in the nat
// table, and an inbound redirect port equal to the outbound one is refused
// before anything is installed.
func TestTransparentInbound(t *testing.T) {
	h := newHosts(t, "cp", "server", "client", "other")
	permission := func(source string) string {
		return fmt.Sprintf(`type: TrafficPermission
mesh: default
name: to-billing
spec:
  sources: [{match: {ursa.io/service: %s}}]
  destinations: [{match: {ursa.io/service: billing}}]
`, source)
	}
	zone := startTPZone(t, h, "cp", "type: Mesh\nname: default\nmtls: {enabled: true}\n---\n"+permission("web"))
	apply := func(doc string) { t.Helper(); zone.ctl(t, doc, "apply", "-f", "-") }
	sidecarArgs := func(host, service string, port int) []string {
		t.Helper()
		return zone.sidecarArgs(t, host, service+"-1", service, port, port, "--dns-addr=", "--transparent-proxy")
	}
	startSidecar := func(host string, args []string) *proc { t.Helper(); return zone.startSidecar(t, host, args) }
	nat := func(host string) string {
		t.Helper()
		out, err := exec.Command("ip", "netns", "exec", h.namespace(t, host), "iptables-save", "-t", "nat").CombinedOutput()
		if err != nil {
			t.Fatalf("iptables-save on %s: %v: %s", host, err, out)
		}
		return string(out)
	}
	get := func(c *http.Client, url string) (string, error) {
		resp, err := c.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	refusals := func(reason string) string {
		t.Helper()
		m, err := get(h.client(t, "server"), "http://127.0.0.1:9901/metrics")
		if err != nil {
			t.Fatalf("the server sidecar's metrics: %v", err)
		}
		for _, line := range strings.Split(m, "\n") {
			if strings.HasPrefix(line, `ursa_dp_refused_total{listener="ursa:inbound",reason="`+reason+`"} `) {
				return strings.Fields(line)[1]
			}
		}
		return "0"
	}

	// billing's app binds its port on every address of both families, as
	// on a VM.
	app := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "billing")
	})}
	go app.Serve(h.listen(t, "server", "tcp", ":8080"))
	t.Cleanup(func() { app.Close() })

	// Refused before anything is installed: the inbound port is taken.
	serverArgs := sidecarArgs("server", "billing", 8080)
	bad := h.start(t, "server", "ursa-dp", append(serverArgs, "--redirect-inbound-port", "15001")...)
	if err := bad.wait(t); err == nil || !strings.Contains(bad.out.String(), "inbound redirect ports are both 15001") {
		t.Fatalf("ursa-dp with the inbound port equal to the outbound one: %v\n%s", err, bad.out.String())
	}
	if rules := nat("server"); strings.Contains(rules, "URSA_") {
		t.Fatalf("a refused start installed rules:\n%s", rules)
	}

	server := startSidecar("server", serverArgs)
	rules := nat("server")
	for _, want := range []string{"--dport 8080 -j URSA_IN_REDIRECT", "-A URSA_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006", "-A PREROUTING -p tcp -j URSA_INBOUND"} {
		if !strings.Contains(rules, want) {
			t.Fatalf("the server's nat table lacks %q:\n%s", want, rules)
		}
	}
	// A VM's default route takes the VIPs' range somewhere: here the
	// hosts have none, and a connect to a VIP must get as far as the
	// redirection.
	ipCmd(t, "-n", h.namespace(t, "client"), "route", "add", "240.0.0.0/4", "dev", "eth0")
	startSidecar("client", sidecarArgs("client", "web", 8000))

	vip := zone.vip(t, "billing")
	// A connection per call: RBAC judges new connections.
	onHost := func(host string) *http.Client {
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: h.dialer(t, host), DisableKeepAlives: true}}
	}
	client := onHost("client")
	eventually(t, "the client host's app to reach billing by its VIP through both sidecars", func() bool {
		body, err := get(client, "http://"+vip+":8080/")
		return err == nil && body == "billing\n"
	})

	// No sidecar on other: its plaintext connection to the app's port
	// meets the inbound listener's TLS, not the app.
	other := onHost("other")
	before := refusals("tls")
	if body, err := get(other, "http://"+h.addr("server")+":8080/"); err == nil {
		t.Fatalf("a plaintext client without a sidecar reached billing's app: %q", body)
	}
	if after := refusals("tls"); after == before {
		t.Fatalf("the plaintext connection was not refused by ursa:inbound's TLS (refusals for tls: %s)", after)
	}

	// Nor over IPv6, which the app takes too: a VM's interface mostly has
	// an address of that family.
	ipCmd(t, "-n", h.namespace(t, "server"), "addr", "add", "fd77::2/64", "dev", "eth0", "nodad")
	ipCmd(t, "-n", h.namespace(t, "other"), "addr", "add", "fd77::4/64", "dev", "eth0", "nodad")
	if body, err := get(other, "http://[fd77::2]:8080/"); err == nil {
		t.Fatalf("a plaintext client without a sidecar reached billing's app over IPv6: %q", body)
	}

	// A permission that no longer names web stops its calls.
	apply(permission("admin"))
	eventually(t, "the client's calls to stop", func() bool {
		_, err := get(client, "http://"+vip+":8080/")
		return err != nil
	})
	if n := refusals("rbac"); n == "0" {
		t.Fatal("the client's calls stopped, but not by ursa:inbound's RBAC")
	}

	server.stop(t)
	if rules := nat("server"); strings.Contains(rules, "URSA_") {
		t.Fatalf("after ursa-dp exits the server's nat table still holds ours:\n%s", rules)
	}
	// Without the redirection the app's port is the app's.
	if body, err := get(other, "http://"+h.addr("server")+":8080/"); err != nil || body != "billing\n" {
		t.Fatalf("after ursa-dp exits, the app directly: %q %v", body, err)
	}
	if body, err := get(other, "http://[fd77::2]:8080/"); err != nil || body != "billing\n" {
		t.Fatalf("after ursa-dp exits, the app directly over IPv6: %q %v", body, err)
	}
}
