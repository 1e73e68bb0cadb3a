package e2e

import (
	"context"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
)

// dig runs the real dig against addr and returns its short answer.
func dig(t testing.TB, addr string, args ...string) string {
	t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	out, err := exec.Command("dig", append([]string{"@" + host, "-p", port, "+time=2", "+tries=1"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("dig %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestDig: the real dig resolves billing.mesh against the real zone CP, over
// UDP and TCP, and gets the same VIP after the CP restarts on PostgreSQL.
func TestDig(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Fatal("dig is not installed (apt-get install dnsutils); .ci/run installs it")
	}
	dsn, err := cluster.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p := start(t, "ursa-cp", "migrate", "up", "--store", dsn); p.wait(t) != nil {
		t.Fatalf("migrate: %s", p.out.String())
	}
	z := startCP(t, "zone", "--zone", "zone-1", "--store", dsn)
	dnsAddr := z.dns
	ctl(t, z.api, `
type: Mesh
name: default
---
type: Dataplane
mesh: default
name: billing-1
networking:
  address: 127.0.0.1
  inbound:
  - {port: 10011, servicePort: 8080, tags: {ursa.io/service: billing}}
`, "apply", "-f", "-")
	var vip string
	eventually(t, "billing.mesh to resolve", func() bool {
		vip = dig(t, dnsAddr, "billing.mesh", "+short")
		return vip != ""
	})
	if ip, err := netip.ParseAddr(vip); err != nil || !netip.MustParsePrefix("240.0.0.0/4").Contains(ip) {
		t.Fatalf("billing.mesh = %q, want a VIP in 240.0.0.0/4", vip)
	}
	if got := dig(t, dnsAddr, "BILLING.default.mesh", "+short", "+tcp"); got != vip {
		t.Fatalf("over TCP, mixed case, mesh form: %q, want %q", got, vip)
	}
	if out := dig(t, dnsAddr, "nope.mesh"); !strings.Contains(out, "status: NXDOMAIN") {
		t.Fatalf("unknown name: %s", out)
	}
	if out := dig(t, dnsAddr, "example.com"); !strings.Contains(out, "status: REFUSED") {
		t.Fatalf("name outside the domain: %s", out)
	}
	z.stop(t)
	z.restart(t)
	eventually(t, "billing.mesh after the restart", func() bool { return dig(t, dnsAddr, "billing.mesh", "+short") != "" })
	if got := dig(t, dnsAddr, "billing.mesh", "+short"); got != vip {
		t.Fatalf("after a restart billing.mesh = %q, before %q", got, vip)
	}
}
