package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestSidecarDNS: a real ursa-dp sidecar answers billing.mesh with the VIP
// the zone's DNS gives it, from the DNS listener the zone CP sends (the
// real dig, over UDP and TCP), NXDOMAIN for an unknown .mesh name, and
// keeps answering after the zone CP is killed.
func TestSidecarDNS(t *testing.T) {
	zone := startCP(t, "zone", "--zone", "zone-1", "--vip-cidr", "127.240.0.0/16")
	ctl(t, zone.api, "type: Mesh\nname: default\n", "apply", "-f", "-")
	dir := t.TempDir()
	sidecar := func(name, service string, flags ...string) {
		file := filepath.Join(dir, name+".yaml")
		os.WriteFile(file, []byte(fmt.Sprintf(`type: Dataplane
mesh: default
name: %s
networking:
  address: 127.0.0.1
  inbound:
  - {port: %s, servicePort: %s, tags: {ursa.io/service: %s}}
`, name, port(freeAddr(t)), port(freeAddr(t)), service)), 0o600)
		admin := freeAddr(t)
		args := append(append([]string{"run"}, zone.sidecarFlags(t, "default", service)...), "--dataplane-file", file, "--admin-addr", admin)
		waitReady(t, "http://"+admin+"/ready", start(t, "ursa-dp", append(args, flags...)...))
	}
	resolv := filepath.Join(dir, "resolv.conf")
	os.WriteFile(resolv, []byte("# no resolvers: names outside .mesh are refused\n"), 0o600)
	dnsAddr := freeAddr(t)
	sidecar("billing-1", "billing")
	sidecar("web-1", "web", "--dns-addr", dnsAddr, "--resolv-conf", resolv)

	var vip string
	eventually(t, "billing.mesh at the zone's DNS", func() bool {
		vip = dig(t, zone.dns, "billing.mesh", "+short")
		return strings.HasPrefix(vip, "127.240.")
	})
	eventually(t, "billing.mesh at the sidecar", func() bool { return dig(t, dnsAddr, "billing.mesh", "+short") == vip })
	if got := dig(t, dnsAddr, "BILLING.default.mesh", "+short", "+tcp"); got != vip {
		t.Fatalf("over TCP, mixed case, mesh form: %q, want %q", got, vip)
	}
	if out := dig(t, dnsAddr, "nope.mesh"); !strings.Contains(out, "status: NXDOMAIN") {
		t.Fatalf("unknown name: %s", out)
	}
	if out := dig(t, dnsAddr, "example.com"); !strings.Contains(out, "status: REFUSED") {
		t.Fatalf("name outside .mesh without resolvers: %s", out)
	}

	// The zone CP dies without a word: the sidecar answers from its last
	// table.
	zone.proc.cmd.Process.Signal(syscall.SIGKILL)
	err := <-zone.proc.done
	zone.proc.done <- err // for the cleanup
	if got := dig(t, dnsAddr, "billing.mesh", "+short"); got != vip {
		t.Fatalf("after the zone CP was killed: %q, want %q", got, vip)
	}
	if got := dig(t, dnsAddr, "billing.default.mesh", "+short", "+tcp"); got != vip {
		t.Fatalf("after the zone CP was killed, over TCP: %q, want %q", got, vip)
	}
}
