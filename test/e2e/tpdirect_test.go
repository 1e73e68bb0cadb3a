package e2e

import (
	"io"
	"net/http"
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
	zone := startTPZone(t, h, "cp", `
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
`)
	sidecar := func(host, name, service string, inbound, app int, extra ...string) *proc {
		t.Helper()
		return zone.startSidecar(t, host, zone.sidecarArgs(t, host, name, service, inbound, app, extra...))
	}

	// billing's app on its host's loopback, behind its sidecar, which
	// binds the host's address at the inbound port with mTLS.
	h.serveText(t, "server", "127.0.0.1:8080", "billing-1")
	sidecar("server", "billing-1", "billing", 10011, 8080)
	sidecar("client", "web-1", "web", 10010, 8000, "--transparent-proxy")

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
