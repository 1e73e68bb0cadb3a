package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestTransparentDirectToInstance: an app on a host whose sidecar runs the
// transparent proxy calls another mesh member by its own address and
// inbound port (as an app that got the address from elsewhere does), not
// by a VIP. The sidecar's original-destination listener takes that
// connection on the chain of the instance's service, to direct:billing,
// which connects to exactly that address over mTLS with billing's identity
// check; billing's sidecar, which admits only mTLS callers (a plain client
// on a host without a sidecar is refused at the same address and port),
// hands it to its app.
func TestTransparentDirectToInstance(t *testing.T) {
	h := newHosts(t, "cp", "server", "client", "plain")
	if _, err := exec.LookPath("iptables-save"); err != nil {
		t.Fatalf("iptables-save not found: run deploy/deps.sh (%v)", err)
	}
	zone := h.startCP(t, "cp", "zone", "--zone", "zone-1", "--api-addr", ":5681", "--xds-addr", ":5678")
	api := "http://127.0.0.1:5681"
	ctlOn := func(stdin string, args ...string) string {
		t.Helper()
		out, stderr, err := h.ctl(t, "cp", nil, api, stdin, args...)
		if err != nil {
			t.Fatalf("ursactl %s: %v %s", strings.Join(args, " "), err, stderr)
		}
		return out
	}
	ctlOn(`
type: Mesh
name: default
mtls: {enabled: true}
---
type: TrafficPermission
mesh: default
name: web-to-billing
spec:
  sources: [{match: {ursa.io/service: web}}]
  destinations: [{match: {ursa.io/service: billing}}]
`, "apply", "-f", "-")
	eventually(t, "the mesh in the zone", func() bool {
		_, _, err := h.ctl(t, "cp", nil, api, "", "get", "mesh", "default")
		return err == nil
	})
	dir := t.TempDir()
	sidecar := func(host, name, service, inbound, app string, extra ...string) *proc {
		t.Helper()
		token := filepath.Join(dir, name+".token")
		os.WriteFile(token, []byte(ctlOn("", "generate", "dataplane-token", "--mesh", "default", "--service", service)), 0o600)
		file := filepath.Join(dir, name+".yaml")
		os.WriteFile(file, []byte(fmt.Sprintf("type: Dataplane\nmesh: default\nname: %s\nnetworking:\n  address: %s\n  inbound:\n  - {port: %s, servicePort: %s, tags: {ursa.io/service: %s}}\n",
			name, h.addr(host), inbound, app, service)), 0o600)
		p := h.start(t, host, "ursa-dp", append([]string{"run", "--cp-address", "grpcs://" + zone.xds, "--ca-cert-file", zone.xdsCAFile(t),
			"--token-file", token, "--dataplane-file", file, "--admin-addr", "127.0.0.1:9901"}, extra...)...)
		waitReadyVia(t, h.client(t, host), "http://127.0.0.1:9901/ready", p)
		return p
	}

	// billing's app on its host's loopback, behind its sidecar, which
	// binds the host's address at the inbound port with mTLS.
	app := h.listen(t, "server", "tcp", "127.0.0.1:8080")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "billing-1") })}
	go srv.Serve(app)
	t.Cleanup(func() { srv.Close() })
	sidecar("server", "billing-1", "billing", "10011", "8080")
	sidecar("client", "web-1", "web", "10010", "8000", "--transparent-proxy")

	target := "http://" + h.addr("server") + ":10011/"
	onClient := h.client(t, "client")
	get := func(c *http.Client, url string) (string, error) {
		resp, err := c.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	var answer string
	eventually(t, "the client host's app calling billing-1 at its address and inbound port", func() bool {
		var err error
		answer, err = get(onClient, target)
		return err == nil
	})
	if answer != "billing-1" {
		t.Fatalf("the client host's app got %q from %s", answer, target)
	}
	metrics, err := get(onClient, "http://127.0.0.1:9901/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(metrics, `ursa_dp_bytes_total{cluster="direct:billing",direction="upstream"}`) {
		t.Fatalf("the client's sidecar did not take the call through direct:billing:\n%s", metrics)
	}
	if got, err := get(h.client(t, "plain"), target); err == nil {
		t.Fatalf("a plain client on a host without a sidecar got %q from %s; want it refused (mTLS only)", got, target)
	}
	inbound, err := get(h.client(t, "server"), "http://127.0.0.1:9901/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(inbound, `ursa_dp_connections_total{listener="inbound:`+h.addr("server")+`:10011"}`) {
		t.Fatalf("billing-1's sidecar did not take the call on its inbound:\n%s", inbound)
	}
}
