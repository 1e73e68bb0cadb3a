package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// echo runs a TCP server that answers each line with "<name>: <line>".
func echo(t testing.TB, name string) string {
	t.Helper()
	return serveLines(t, "127.0.0.1:0", name).Addr().String()
}

// call sends one line through addr and returns the answer, or an error.
func call(addr, line string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintln(c, line); err != nil {
		return "", err
	}
	answer, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(answer), err
}

// port returns the port of host:port.
func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// TestSidecarTraffic: two real ursa-dp sidecars in one zone carry real
// bytes from a client to billing over mTLS: the client calls billing.mesh's
// VIP (from the zone's DNS, in 127.240.0.0/16), its sidecar originates mTLS
// to billing's sidecar, which checks the caller's SPIFFE ID against the
// TrafficPermissions and forwards to billing. Billing's inbound accepts no
// plaintext, and a DENY written later refuses new connections.
func TestSidecarTraffic(t *testing.T) {
	zone := startCP(t, "zone", "--zone", "zone-1", "--vip-cidr", "127.240.0.0/16")
	dnsAddr := zone.dns
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
`, "apply", "-f", "-")
	billingApp := echo(t, "billing")
	billingInbound := freeAddr(t)
	dir := t.TempDir()
	sidecar := func(name, service, inbound, app string) *proc {
		file := filepath.Join(dir, name+".yaml")
		os.WriteFile(file, []byte(fmt.Sprintf(`type: Dataplane
mesh: default
name: %s
networking:
  address: 127.0.0.1
  inbound:
  - {port: %s, servicePort: %s, tags: {ursa.io/service: %s}}
`, name, port(inbound), port(app), service)), 0o600)
		admin := freeAddr(t)
		p := start(t, "ursa-dp", append(append([]string{"run"}, zone.sidecarFlags(t, "default", service)...), "--dataplane-file", file, "--admin-addr", admin)...)
		waitReady(t, "http://"+admin+"/ready", p)
		return p
	}
	sidecar("billing-1", "billing", billingInbound, billingApp)
	sidecar("web-1", "web", freeAddr(t), freeAddr(t))

	var vip string
	eventually(t, "billing.mesh", func() bool {
		vip = dig(t, dnsAddr, "billing.mesh", "+short")
		return strings.HasPrefix(vip, "127.240.")
	})
	var answer string
	eventually(t, "a call through both sidecars", func() bool {
		var err error
		answer, err = call(vip+":80", "hello")
		return err == nil
	})
	if answer != "billing: hello" {
		t.Fatalf("through the mesh: %q", answer)
	}
	if got, err := call(net.JoinHostPort(vip, port(billingApp)), "on the service port"); err != nil || got != "billing: on the service port" {
		t.Fatalf("VIP at the service's port: %q %v", got, err)
	}
	// Billing's sidecar speaks only mTLS: a plaintext client gets nothing.
	if got, err := call(billingInbound, "plaintext"); err == nil && got != "" {
		t.Fatalf("billing's inbound answered plaintext: %q", got)
	}
	// A DENY for web refuses new connections.
	ctl(t, zone.api, `
type: TrafficPermission
mesh: default
name: no-web
spec:
  sources: [{match: {ursa.io/service: web}}]
  destinations: [{match: {ursa.io/service: billing}}]
  action: DENY
`, "apply", "-f", "-")
	eventually(t, "the DENY to refuse new connections", func() bool {
		_, err := call(vip+":80", "denied?")
		return err != nil
	})
}

// TestEnvoyModeNeedsEnvoy: --proxy envoy without envoy on PATH stops with a
// message that says so.
func TestEnvoyModeNeedsEnvoy(t *testing.T) {
	file := filepath.Join(t.TempDir(), "dp.yaml")
	os.WriteFile(file, []byte("type: Dataplane\nmesh: default\nname: d\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - {port: 1, tags: {ursa.io/service: s}}\n"), 0o600)
	p := startEnv(t, []string{"PATH=/nonexistent"}, "ursa-dp", "run", "--proxy", "envoy", "--dataplane-file", file)
	if err := p.wait(t); err == nil || !strings.Contains(p.out.String(), "envoy is not on PATH") {
		t.Fatalf("ursa-dp --proxy envoy without envoy: %v %s", err, p.out.String())
	}
}
