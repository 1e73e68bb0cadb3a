package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPodStyleTransparentProxy runs the two commands an injected pod runs
// (zone/kubernetes/inject.go), on a host of their own, as a kubelet would:
// `ursa-dp install-transparent-proxy` as root installs the redirection and
// exits; then `ursa-dp run --transparent-proxy --transparent-proxy-installed`
// runs as user 5678 with no capabilities, the zone CP's CA in URSA_CA_CERT.
// Its own connection to the CP is let through by its user (it cannot mark
// sockets): it gets ready; an app's call is passed through its outbound
// listener; the app's probe the injector rewrote is made through it; and it
// leaves the rules in place when it stops.
func TestPodStyleTransparentProxy(t *testing.T) {
	h := newHosts(t, "cp", "pod")
	zone := startTPZone(t, h, "cp", "type: Mesh\nname: default\n")
	h.setResolvConf(t, "pod", "nameserver 127.0.0.53\n")
	nat := func() string {
		t.Helper()
		out, err := exec.Command("ip", "netns", "exec", h.namespace(t, "pod"), "iptables-save", "-t", "nat").CombinedOutput()
		if err != nil {
			t.Fatalf("iptables-save on the pod: %v: %s", err, out)
		}
		return string(out)
	}

	// What user 5678 runs and reads must be readable by it: the test's
	// own folders are root's alone.
	dir, err := os.MkdirTemp("", "ursa-pod")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	copyTo := func(src, name string, mode os.FileMode) string {
		t.Helper()
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, name)
		if err := os.WriteFile(dst, b, mode); err != nil {
			t.Fatal(err)
		}
		return dst
	}
	dp := copyTo(filepath.Join(bin, "ursa-dp"), "ursa-dp", 0o755)
	args := zone.sidecarArgs(t, "pod", "web-1", "web", 10011, 18080, "--transparent-proxy", "--transparent-proxy-installed", "--app-probes", "10011/ready", "--app-probe-host", h.addr("pod"))
	for i := range args {
		// Its files, readable by the sidecar's user; its CA as the
		// injector gives it, in the environment.
		if i > 0 && (args[i-1] == "--token-file" || args[i-1] == "--dataplane-file") {
			args[i] = copyTo(args[i], filepath.Base(args[i]), 0o644)
		}
	}
	var ca string
	for i := range args {
		if args[i] == "--ca-cert-file" {
			b, err := os.ReadFile(args[i+1])
			if err != nil {
				t.Fatal(err)
			}
			ca = string(b)
			args = append(args[:i:i], args[i+2:]...)
			break
		}
	}

	// With a redirect port held by another process it installs nothing:
	// the rules would hand that process the pod's traffic.
	squatter := h.listen(t, "pod", "tcp", "0.0.0.0:15001")
	held := launch(t, "ursa-dp install-transparent-proxy (port held)", exec.CommandContext(context.Background(), "ip", "netns", "exec", h.namespace(t, "pod"),
		dp, "install-transparent-proxy", "--inbound-ports", "10011", "--exclude-outbound-uids", "5678", "--sidecar-uid", "5678"))
	if err := held.wait(t); err == nil || !strings.Contains(held.out.String(), "15001") {
		t.Fatalf("install-transparent-proxy with port 15001 held: %v; want a refusal naming the port\n%s", err, held.out.String())
	}
	if rules := nat(); strings.Contains(rules, "URSA_") {
		t.Fatalf("a refused install left rules:\n%s", rules)
	}
	squatter.Close()

	install := launch(t, "ursa-dp install-transparent-proxy", exec.CommandContext(context.Background(), "ip", "netns", "exec", h.namespace(t, "pod"),
		dp, "install-transparent-proxy", "--inbound-ports", "10011", "--exclude-outbound-uids", "5678", "--sidecar-uid", "5678"))
	if err := install.wait(t); err != nil {
		t.Fatalf("install-transparent-proxy: %v\n%s", err, install.out.String())
	}
	rules := nat()
	for _, want := range []string{"-A URSA_OUTPUT -m owner --uid-owner 5678 -j RETURN", "-A URSA_INBOUND -p tcp -m tcp --dport 10011 -j URSA_IN_REDIRECT",
		"-A URSA_OUTPUT -d 127.0.0.53/32 -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053"} {
		if !strings.Contains(rules, want+"\n") {
			t.Fatalf("the pod's nat table lacks %q:\n%s", want, rules)
		}
	}

	cmd := exec.CommandContext(context.Background(), "ip", append([]string{"netns", "exec", h.namespace(t, "pod"),
		"setpriv", "--reuid=5678", "--regid=5678", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--", dp}, args...)...)
	cmd.Env = append(os.Environ(), "URSA_CA_CERT="+ca)
	p := launch(t, "ursa-dp run (user 5678)", cmd)
	onPod := h.client(t, "pod")
	waitReadyVia(t, onPod, "http://127.0.0.1:9901/ready", p)
	if out := p.out.String(); !strings.Contains(out, "transparent proxy installed by ursa-dp install-transparent-proxy") {
		t.Errorf("the sidecar did not say it left the rules alone:\n%s", out)
	}
	eventually(t, "a call from the pod to the CP host, passed through the sidecar", func() bool {
		resp, err := onPod.Get("http://" + h.addr("cp") + ":5681/meshes")
		if err != nil {
			return false
		}
		resp.Body.Close()
		resp, err = onPod.Get("http://127.0.0.1:9901/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), `ursa_dp_connections_total{listener="ursa:outbound"}`)
	})
	// The kubelet's probe of the app, rewritten by the injector, made by
	// the sidecar at the pod's address and a redirected port: as user
	// 5678, its connection is not redirected.
	appLn := h.listen(t, "pod", "tcp", h.addr("pod")+":10011")
	go http.Serve(appLn, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ready" {
			http.NotFound(w, r)
		}
	}))
	for path, want := range map[string]int{"/probes/10011/ready": http.StatusOK, "/probes/10011/other": http.StatusNotFound} {
		resp, err := onPod.Get("http://127.0.0.1:9901" + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET :9901%s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	// The pod's app calling its own address at its inbound port (an
	// instance of a service calling itself as a peer): the sidecar, which
	// cannot mark its sockets, takes it to its own inbound listener by its
	// user, and so to the app at its service port, not around it to
	// whatever listens at the inbound port (here the probes' app).
	h.serveText(t, "pod", "127.0.0.1:18080", "web-1")
	self := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: h.dialer(t, "pod"), DisableKeepAlives: true}}
	eventually(t, "the pod to reach itself at its own address through its inbound listener", func() bool {
		resp, err := self.Get("http://" + h.addr("pod") + ":10011/")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b) == "web-1"
	})
	p.stop(t)
	if after := nat(); !strings.Contains(after, "-A OUTPUT -j URSA_OUTPUT") {
		t.Fatalf("the sidecar removed the init container's rules:\n%s", after)
	}
}
