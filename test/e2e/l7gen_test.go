package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// httpVersion serves HTTP on a loopback port, answering every request with
// "<version> <the request's x-routed header>" and a header x-version.
func httpVersion(t *testing.T, version string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("x-version", version)
		w.Header().Set("x-uri", r.RequestURI)
		w.Header().Set("x-host", r.Host)
		fmt.Fprintf(w, "%s %s", version, r.Header.Get("x-routed"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// TestL7GenSmoke: sidecars of services whose inbounds say ursa.io/protocol:
// http, on the generator's HTTP connection managers: a request with
// x-canary: 1 takes the TrafficRoute's http rule to v2, with the header the
// rule sets; any other goes to v1 by the default route; a rule's path and
// Host rewrites reach the application; over mTLS, the inbound's HTTP RBAC
// answers a denied caller 403.
func TestL7GenSmoke(t *testing.T) {
	zone := startCP(t, "zone", "--zone", "zone-1", "--vip-cidr", "127.241.0.0/16")
	ctl(t, zone.api, `
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
---
type: TrafficRoute
mesh: default
name: billing-canary
spec:
  destination: {ursa.io/service: billing}
  http:
  - match: {headers: {x-canary: {exact: "1"}}}
    split: [{weight: 100, tags: {version: v2}}]
    modify: {requestHeaders: {set: {x-routed: canary}}}
  - match: {path: {prefix: /legacy/}}
    modify: {path: {replacePrefix: /api/}, host: billing.internal}
  split: [{weight: 100, tags: {version: v1}}]
`, "apply", "-f", "-")
	dir := t.TempDir()
	sidecar := func(name, service, version, app string) {
		file := filepath.Join(dir, name+".yaml")
		os.WriteFile(file, []byte(fmt.Sprintf(`type: Dataplane
mesh: default
name: %s
networking:
  address: 127.0.0.1
  inbound:
  - {port: %s, servicePort: %s, tags: {ursa.io/service: %s, version: %s, ursa.io/protocol: http}}
`, name, port(freeAddr(t)), port(app), service, version)), 0o600)
		admin := freeAddr(t)
		p := start(t, "ursa-dp", append(append([]string{"run"}, zone.sidecarFlags(t, "default", service)...), "--dataplane-file", file, "--admin-addr", admin)...)
		waitReady(t, "http://"+admin+"/ready", p)
	}
	sidecar("billing-1", "billing", "v1", httpVersion(t, "v1"))
	sidecar("billing-2", "billing", "v2", httpVersion(t, "v2"))
	sidecar("web-1", "web", "v1", freeAddr(t))

	var vip string
	eventually(t, "billing.mesh", func() bool {
		vip = dig(t, zone.dns, "billing.mesh", "+short")
		return strings.HasPrefix(vip, "127.241.")
	})
	client := &http.Client{Timeout: 5 * time.Second}
	get := func(canary bool) (int, string, error) {
		req, _ := http.NewRequest("GET", "http://"+vip+"/api/x", nil)
		if canary {
			req.Header.Set("x-canary", "1")
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	eventually(t, "a request through both sidecars to v1", func() bool {
		code, body, err := get(false)
		return err == nil && code == 200 && body == "v1 "
	})
	for range 20 {
		if code, body, err := get(true); err != nil || code != 200 || body != "v2 canary" {
			t.Fatalf("x-canary: 1: %d %q %v, want v2 with x-routed: canary", code, body, err)
		}
		if code, body, err := get(false); err != nil || code != 200 || body != "v1 " {
			t.Fatalf("no x-canary: %d %q %v, want v1", code, body, err)
		}
	}

	// /legacy/ is /api/ to the application, on the Host the rule sets; a
	// path the rule does not match goes as it came.
	for path, want := range map[string][2]string{"/legacy/x?y=%2F": {"/api/x?y=%2F", "billing.internal"}, "/api/x": {"/api/x", vip}} {
		resp, err := client.Get("http://" + vip + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := [2]string{resp.Header.Get("x-uri"), resp.Header.Get("x-host")}; resp.StatusCode != 200 || got != want {
			t.Fatalf("%s: %d, the application saw %q; want %q", path, resp.StatusCode, got, want)
		}
	}

	// A DENY for web: billing's inbounds answer 403 at L7.
	ctl(t, zone.api, `
type: TrafficPermission
mesh: default
name: no-web
spec:
  sources: [{match: {ursa.io/service: web}}]
  destinations: [{match: {ursa.io/service: billing}}]
  action: DENY
`, "apply", "-f", "-")
	eventually(t, "the DENY to answer 403", func() bool {
		code, _, err := get(false)
		return err == nil && code == http.StatusForbidden
	})
}
