package e2e

import (
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
)

// TestTransparentInboundPassthrough: with every inbound port redirected to
// the sidecar (--redirect-all-inbound), as a VM's root sidecar that
// installs its own rules and as an injected pod's (ursa-init's
// install-transparent-proxy as root, then the sidecar as user 5678 with no
// capabilities, with the flags the injector gives them), billing's app on
// the server host answers a host without a sidecar at a port no inbound
// names (7070, undeclared) and at its metrics port (9100), both through
// the sidecar: the app sees the call come from 127.0.0.6, the inbound
// passthrough's address, and the sidecar counts it on ursa:inbound. The
// inbound's own port still takes mTLS only, and the sidecar's admin port
// is not redirected. Once the rules are gone, the app's ports are its own
// again.
func TestTransparentInboundPassthrough(t *testing.T) {
	t.Run("vm", func(t *testing.T) { testInboundPassthrough(t, false) })
	t.Run("pod", func(t *testing.T) { testInboundPassthrough(t, true) })
}

func testInboundPassthrough(t *testing.T, pod bool) {
	h := newHosts(t, "cp", "server", "other")
	zone := startTPZone(t, h, "cp", "type: Mesh\nname: default\nmtls: {enabled: true}\n")
	nat := func() string {
		t.Helper()
		out, err := exec.Command("ip", "netns", "exec", h.namespace(t, "server"), "iptables-save", "-t", "nat").CombinedOutput()
		if err != nil {
			t.Fatalf("iptables-save on the server: %v: %s", err, out)
		}
		return string(out)
	}

	// billing's app: its service port (the inbound's), a port it never
	// declared, its metrics port; each says which port answered whom.
	for _, port := range []int{8080, 7070, 9100} {
		srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			fmt.Fprintf(w, "%d from %s", port, host)
		})}
		go srv.Serve(h.listen(t, "server", "tcp", fmt.Sprintf(":%d", port)))
		t.Cleanup(func() { srv.Close() })
	}

	args := zone.sidecarArgs(t, "server", "billing-1", "billing", 8080, 8080, "--dns-addr=", "--transparent-proxy", "--redirect-all-inbound")
	var sidecar *proc
	if pod {
		sidecar = startPodSidecar(t, h, "server", args)
	} else {
		sidecar = zone.startSidecar(t, "server", args)
	}
	rules := nat()
	for _, want := range []string{"-A URSA_INBOUND -p tcp -j URSA_IN_REDIRECT", "-A URSA_INBOUND -p tcp -m tcp --dport 9901 -j RETURN"} {
		if !strings.Contains(rules, want+"\n") {
			t.Fatalf("the server's nat table lacks %q:\n%s", want, rules)
		}
	}

	other := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: h.dialer(t, "other"), DisableKeepAlives: true}}
	get := func(c *http.Client, url string) (string, error) {
		resp, err := c.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	inboundConns := func() string {
		t.Helper()
		m, err := get(h.client(t, "server"), "http://127.0.0.1:9901/metrics")
		if err != nil {
			t.Fatalf("the sidecar's metrics: %v", err)
		}
		for _, line := range strings.Split(m, "\n") {
			if strings.HasPrefix(line, `ursa_dp_connections_total{listener="ursa:inbound"} `) {
				return strings.Fields(line)[1]
			}
		}
		return "0"
	}
	server := h.addr("server")
	for _, port := range []int{7070, 9100} {
		before := inboundConns()
		var body string
		eventually(t, fmt.Sprintf("port %d through the inbound passthrough", port), func() bool {
			var err error
			body, err = get(other, fmt.Sprintf("http://%s:%d/", server, port))
			return err == nil
		})
		if want := fmt.Sprintf("%d from 127.0.0.6", port); body != want {
			t.Errorf("port %d answered %q; want %q: through the sidecar's passthrough", port, body, want)
		}
		if after := inboundConns(); after == before {
			t.Errorf("port %d: ursa:inbound counted no connection (still %s)", port, after)
		}
	}
	if body, err := get(other, "http://"+server+":8080/"); err == nil {
		t.Errorf("a plaintext client reached billing's inbound port: %q; want mTLS only", body)
	}
	// The admin port is the sidecar's, not redirected.
	if pod {
		if _, err := get(other, "http://"+server+":9901/ready"); err != nil {
			t.Errorf("the pod's admin port from another host: %v", err)
		}
	}

	sidecar.stop(t)
	if pod {
		// The pod's rules stay with its namespace; here they go by hand.
		out, err := exec.Command("ip", "netns", "exec", h.namespace(t, "server"), filepath.Join(bin, "ursa-dp"), "cleanup", "--transparent-proxy").CombinedOutput()
		if err != nil {
			t.Fatalf("ursa-dp cleanup: %v: %s", err, out)
		}
	}
	if rules := nat(); strings.Contains(rules, "URSA_") {
		t.Fatalf("the server's nat table still holds ours:\n%s", rules)
	}
	for _, port := range []int{7070, 9100} {
		if body, err := get(other, fmt.Sprintf("http://%s:%d/", server, port)); err != nil || body != fmt.Sprintf("%d from %s", port, h.addr("other")) {
			t.Errorf("without the rules, port %d answered %q, %v; want the app, called from the other host", port, body, err)
		}
	}
}

// startPodSidecar runs on host what an injected pod runs
// (zone/kubernetes/inject.go): ursa-init's install-transparent-proxy as
// root, then ursa-dp run as user 5678 without capabilities, its CA in
// URSA_CA_CERT; run's args (sidecarArgs's) get the injector's
// --transparent-proxy-installed. It waits until the sidecar is ready.
func startPodSidecar(t *testing.T, h *hosts, host string, args []string) *proc {
	t.Helper()
	// What user 5678 runs and reads must be readable by it.
	dir, err := os.MkdirTemp("", "ursa-pod")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	copyTo := func(src string, mode os.FileMode) string {
		t.Helper()
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, filepath.Base(src))
		if err := os.WriteFile(dst, b, mode); err != nil {
			t.Fatal(err)
		}
		return dst
	}
	dp := copyTo(filepath.Join(bin, "ursa-dp"), 0o755)
	var ca string
	var run []string
	for i := 0; i < len(args); i++ {
		switch {
		case args[i] == "--ca-cert-file":
			b, err := os.ReadFile(args[i+1])
			if err != nil {
				t.Fatal(err)
			}
			ca = string(b)
			i++
		case i > 0 && (args[i-1] == "--token-file" || args[i-1] == "--dataplane-file"):
			run = append(run, copyTo(args[i], 0o644))
		default:
			run = append(run, args[i])
		}
	}
	install := launch(t, "ursa-dp install-transparent-proxy", exec.CommandContext(context.Background(), "ip", "netns", "exec", h.namespace(t, host),
		dp, "install-transparent-proxy", "--redirect-all-inbound", "--admin-addr", ":9901", "--redirect-dns-port", "0", "--exclude-outbound-uids", "5678", "--sidecar-uid", "5678"))
	if err := install.wait(t); err != nil {
		t.Fatalf("install-transparent-proxy: %v\n%s", err, install.out.String())
	}
	run = append(run, "--transparent-proxy-installed", "--admin-addr", ":9901")
	cmd := exec.CommandContext(context.Background(), "ip", append([]string{"netns", "exec", h.namespace(t, host),
		"setpriv", "--reuid=5678", "--regid=5678", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--", dp}, run...)...)
	cmd.Env = append(os.Environ(), "URSA_CA_CERT="+ca)
	p := launch(t, "ursa-dp run (user 5678)", cmd)
	waitReadyVia(t, h.client(t, host), "http://127.0.0.1:9901/ready", p)
	return p
}
