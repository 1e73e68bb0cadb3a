package tproxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

var nsSeq atomic.Int64

// newNS makes a throwaway network namespace with lo up, 240.0.0.9 on lo and
// a route for 240.0.0.0/4 through lo, deleted when the test ends. It skips
// the test unless it runs as root with the iptables binaries.
func newNS(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces and iptables need root")
	}
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		t.Fatalf("iptables-restore not found: run deploy/deps.sh (%v)", err)
	}
	ns := fmt.Sprintf("ursatp%d-%d", os.Getpid(), nsSeq.Add(1))
	ip(t, "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil {
			t.Errorf("delete namespace %s: %v: %s", ns, err, out)
		}
	})
	ip(t, "-n", ns, "link", "set", "lo", "up")
	ip(t, "-n", ns, "addr", "add", "240.0.0.9/32", "dev", "lo")
	ip(t, "-n", ns, "route", "add", "240.0.0.0/4", "dev", "lo")
	return ns
}

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// in runs fn on an OS thread switched into namespace ns: sockets it makes
// and processes it starts live there. A thread that cannot switch back
// stays locked and dies with its goroutine.
func in(ns string, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		defer unix.Close(home)
		fd, err := unix.Open(filepath.Join("/var/run/netns", ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("enter %s: %w", ns, err)
			return
		}
		err = fn()
		if unix.Setns(home, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		done <- err
	}()
	return <-done
}

func mustIn(t *testing.T, ns string, fn func() error) {
	t.Helper()
	if err := in(ns, fn); err != nil {
		t.Fatal(err)
	}
}

// natRules is the namespace's nat table as iptables-save prints it, without
// comments and counters.
func natRules(t *testing.T, ns string) string {
	t.Helper()
	return natRulesOf(t, ns, "iptables-save")
}

// nat6Rules is natRules for IPv6.
func nat6Rules(t *testing.T, ns string) string {
	t.Helper()
	return natRulesOf(t, ns, "ip6tables-save")
}

func natRulesOf(t *testing.T, ns, save string) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, save, "-t", "nat").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables-save: %v: %s", err, out)
	}
	var keep []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "#") || l == "" {
			continue
		}
		if i := strings.Index(l, " ["); strings.HasPrefix(l, ":") && i > 0 {
			l = l[:i]
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

func testConfig() Config {
	return Config{
		OutboundPort:         15001,
		InboundPort:          15006,
		InboundPorts:         []int{8080},
		DNSPort:              15053,
		ExcludeOutboundPorts: []int{2222},
		ExcludeInboundPorts:  []int{9901},
	}
}

// listen opens a TCP listener in ns and sends every connection it accepts.
func listen(t *testing.T, ns, addr string) chan net.Conn {
	t.Helper()
	var ln net.Listener
	mustIn(t, ns, func() (err error) { ln, err = net.Listen("tcp", addr); return err })
	t.Cleanup(func() { ln.Close() })
	got := make(chan net.Conn, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			got <- c
		}
	}()
	return got
}

// dial connects from inside ns, with dialer d.
func dial(t *testing.T, ns string, d *net.Dialer, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	mustIn(t, ns, func() (err error) { c, err = d.Dial("tcp", addr); return err })
	t.Cleanup(func() { c.Close() })
	return c
}

// accepted is the connection that arrives at got within a deadline.
func accepted(t *testing.T, got chan net.Conn, what string) net.Conn {
	t.Helper()
	select {
	case c := <-got:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: no connection arrived", what)
		return nil
	}
}

func TestInstallRedirectsByOriginalDestination(t *testing.T) {
	ns := newNS(t)
	ctx := context.Background()
	mustIn(t, ns, func() error { return Install(ctx, zap.NewNop(), testConfig()) })

	rules := natRules(t, ns)
	for _, want := range []string{
		"-A OUTPUT -j URSA_OUTPUT",
		"-A PREROUTING -p tcp -j URSA_INBOUND",
		// The sidecar's own connection to this host's address at an inbound
		// port goes to the inbound listener.
		"-A URSA_OUTPUT ! -d 127.0.0.0/8 -o lo -p tcp -m tcp --dport 8080 -m mark --mark 0x7572 -j URSA_IN_REDIRECT",
		"-A URSA_OUTPUT -m mark --mark 0x7572 -j RETURN",
		"-A URSA_OUTPUT -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053",
		"-A URSA_OUTPUT -p tcp -m tcp --dport 53 -j REDIRECT --to-ports 15053",
		"-A URSA_OUTPUT -d 127.0.0.0/8 -j RETURN",
		"-A URSA_OUTPUT -p tcp -m tcp --dport 2222 -j RETURN",
		"-A URSA_OUTPUT -p tcp -j URSA_REDIRECT",
		"-A URSA_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
		"-A URSA_INBOUND -p tcp -m tcp --dport 8080 -j URSA_IN_REDIRECT",
		"-A URSA_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
	} {
		if !strings.Contains(rules, want+"\n") {
			t.Errorf("nat table lacks %q:\n%s", want, rules)
		}
	}

	outbound := listen(t, ns, "0.0.0.0:15001")
	direct := listen(t, ns, "240.0.0.9:9000")
	excluded := listen(t, ns, "240.0.0.9:2222")
	loop := listen(t, ns, "127.0.0.1:9000")

	// An app's connect to an address nothing listens on lands on the
	// outbound port, which learns where it was headed.
	dial(t, ns, &net.Dialer{}, "240.0.0.7:80")
	c := accepted(t, outbound, "connect to 240.0.0.7:80")
	if dst, err := OriginalDst(c); err != nil || dst != netip.MustParseAddrPort("240.0.0.7:80") {
		t.Errorf("original destination %v, %v; want 240.0.0.7:80", dst, err)
	}
	dial(t, ns, &net.Dialer{}, "240.0.0.9:9000")
	c = accepted(t, outbound, "connect to 240.0.0.9:9000")
	if dst, err := OriginalDst(c); err != nil || dst != netip.MustParseAddrPort("240.0.0.9:9000") {
		t.Errorf("original destination %v, %v; want 240.0.0.9:9000", dst, err)
	}

	// The proxy's own marked sockets, excluded ports and loopback reach
	// their destination.
	dial(t, ns, &net.Dialer{Control: MarkControl(DefaultMark)}, "240.0.0.9:9000")
	accepted(t, direct, "marked connect to 240.0.0.9:9000")
	dial(t, ns, &net.Dialer{}, "240.0.0.9:2222")
	accepted(t, excluded, "connect to excluded port 2222")
	dial(t, ns, &net.Dialer{}, "127.0.0.1:9000")
	c = accepted(t, loop, "connect to 127.0.0.1:9000")
	if dst, err := OriginalDst(c); err != nil || dst != netip.MustParseAddrPort("127.0.0.1:9000") {
		t.Errorf("unredirected connection's original destination %v, %v; want its own address", dst, err)
	}

	// DNS to any resolver goes to the DNS port.
	var dns net.PacketConn
	mustIn(t, ns, func() (err error) { dns, err = net.ListenPacket("udp", "0.0.0.0:15053"); return err })
	defer dns.Close()
	var q net.Conn
	mustIn(t, ns, func() (err error) { q, err = net.Dial("udp", "240.0.0.9:53"); return err })
	defer q.Close()
	if _, err := q.Write([]byte("query")); err != nil {
		t.Fatal(err)
	}
	dns.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	if n, _, err := dns.ReadFrom(buf); err != nil || string(buf[:n]) != "query" {
		t.Errorf("DNS port read %q, %v; want the query", buf[:n], err)
	}

	// Remove leaves nothing of ours, and the nat table as it was.
	mustIn(t, ns, func() error { return Remove(ctx, zap.NewNop(), "") })
	if after := natRules(t, ns); strings.Contains(after, ChainPrefix) {
		t.Errorf("after Remove the nat table still holds ours:\n%s", after)
	}
	mustIn(t, ns, func() error { return Remove(ctx, zap.NewNop(), "") })
	dial(t, ns, &net.Dialer{}, "240.0.0.9:9000")
	accepted(t, direct, "connect to 240.0.0.9:9000 after Remove")
}

func TestInstallReplacesLeftoversAndKeepsOthers(t *testing.T) {
	ns := newNS(t)
	ctx := context.Background()
	// Someone else's rules, which nothing of ours may touch.
	foreign := "*nat\n:OTHER - [0:0]\n-A OTHER -p tcp -j RETURN\n-A OUTPUT -p tcp -j OTHER\n-A PREROUTING -p udp -j OTHER\nCOMMIT\n"
	cmd := exec.Command("ip", "netns", "exec", ns, "iptables-restore", "--noflush")
	cmd.Stdin = strings.NewReader(foreign)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("iptables-restore: %v: %s", err, out)
	}
	before := natRules(t, ns)

	before6 := nat6Rules(t, ns)
	mustIn(t, ns, func() error { return Install(ctx, zap.NewNop(), testConfig()) })
	once := natRules(t, ns)
	// IPv6 to an inbound port goes to the inbound port as well, where
	// nothing takes it: never to the app around the sidecar.
	for _, want := range []string{"-A PREROUTING -p tcp -j URSA_INBOUND", "--dport 8080 -j URSA_IN_REDIRECT", "-A URSA_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"} {
		if got := nat6Rules(t, ns); !strings.Contains(got, want) {
			t.Errorf("ip6tables' nat table lacks %q:\n%s", want, got)
		}
	}
	mustIn(t, ns, func() error { return Install(ctx, zap.NewNop(), testConfig()) })
	if twice := natRules(t, ns); twice != once {
		t.Errorf("a second Install changed the rules:\n%s\nwant\n%s", twice, once)
	}

	// A restart with other flags (as after SIGKILL) replaces ours.
	other := Config{OutboundPort: 16001, ExcludeUIDs: []int{1337}}
	mustIn(t, ns, func() error { return Install(ctx, zap.NewNop(), other) })
	if got := nat6Rules(t, ns); got != before6 {
		t.Errorf("a reinstall without inbound ports left IPv6 rules:\n%s", got)
	}
	mustIn(t, ns, func() error { return Install(ctx, zap.NewNop(), testConfig()) })
	mustIn(t, ns, func() error { return Install(ctx, zap.NewNop(), other) })
	got := natRules(t, ns)
	for _, gone := range []string{"15001", "15006", "15053", "8080", "2222"} {
		if strings.Contains(got, gone) {
			t.Errorf("after reinstall the rules still mention %s:\n%s", gone, got)
		}
	}
	for _, want := range []string{"--to-ports 16001", "--uid-owner 1337", "-A OTHER -p tcp -j RETURN", "-A OUTPUT -p tcp -j OTHER"} {
		if !strings.Contains(got, want) {
			t.Errorf("after reinstall the rules lack %q:\n%s", want, got)
		}
	}
	if strings.Count(got, "-j URSA_OUTPUT") != 1 || strings.Count(got, "-j URSA_INBOUND") != 1 {
		t.Errorf("want exactly one jump to each of our chains:\n%s", got)
	}
	if ok, err := func() (ok bool, err error) {
		err = in(ns, func() (e error) { ok, e = Installed(ctx, ""); return e })
		return
	}(); err != nil || !ok {
		t.Errorf("Installed = %v, %v; want true", ok, err)
	}

	mustIn(t, ns, func() error { return Remove(ctx, zap.NewNop(), "") })
	if after := natRules(t, ns); after != before {
		t.Errorf("after Remove the nat table is\n%s\nwant it as before Install:\n%s", after, before)
	}
	mustIn(t, ns, func() error { return Install(ctx, zap.NewNop(), testConfig()) })
	mustIn(t, ns, func() error { return Remove(ctx, zap.NewNop(), "") })
	if after := nat6Rules(t, ns); after != before6 {
		t.Errorf("after Remove ip6tables' nat table is\n%s\nwant it as before Install:\n%s", after, before6)
	}
}

func TestInstallFailsBeforeChangingAnything(t *testing.T) {
	ctx := context.Background()
	c := testConfig()
	c.BinDir = t.TempDir()
	err := Install(ctx, zap.NewNop(), c)
	if err == nil || !strings.Contains(err.Error(), "iptables-save not found") || !strings.Contains(err.Error(), "apt-get install iptables") {
		t.Errorf("Install without the binaries: %v; want it to name iptables-save and the package", err)
	}
	if err := Remove(ctx, zap.NewNop(), c.BinDir); err == nil {
		t.Error("Remove without the binaries succeeded")
	}
	for _, bad := range []Config{
		{},
		{OutboundPort: 70000},
		{OutboundPort: 15001, DNSPort: 15001},
		{OutboundPort: 15001, InboundPorts: []int{80}},
		{OutboundPort: 15001, ExcludeOutboundPorts: []int{0}},
		{OutboundPort: 15001, ExcludeUIDs: []int{-1}},
	} {
		bad.BinDir = c.BinDir
		if err := Install(ctx, zap.NewNop(), bad); err == nil || strings.Contains(err.Error(), "not found") {
			t.Errorf("Install(%+v) = %v; want the config refused first", bad, err)
		}
	}
}

func TestHasNetAdmin(t *testing.T) {
	for status, want := range map[string]bool{
		"Name:\tx\nCapEff:\t000001ffffffffff\n": true,
		"CapEff:\t0000000000001000\n":           true,
		"CapEff:\t0000000000000000\n":           false,
		"CapEff:\t00000000a80425fb\n":           false, // Docker's default set
	} {
		if got, err := hasNetAdmin(status); err != nil || got != want {
			t.Errorf("hasNetAdmin(%q) = %v, %v; want %v", status, got, err, want)
		}
	}
	for _, bad := range []string{"", "CapEff:\tzz\n"} {
		if _, err := hasNetAdmin(bad); err == nil {
			t.Errorf("hasNetAdmin(%q) succeeded", bad)
		}
	}
}

func TestRemoval(t *testing.T) {
	saved := `# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [3:180]
:URSA_OUTPUT - [0:0]
:URSA_REDIRECT - [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -j URSA_OUTPUT
-A URSA_OUTPUT -p tcp -j URSA_REDIRECT
-A URSA_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A DOCKER -i docker0 -j RETURN
COMMIT
`
	want := []string{"-D OUTPUT -j URSA_OUTPUT", ":URSA_OUTPUT - [0:0]", ":URSA_REDIRECT - [0:0]", "-X URSA_OUTPUT", "-X URSA_REDIRECT"}
	if got := removal([]byte(saved)); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("removal =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestParsePorts(t *testing.T) {
	for in, want := range map[string]string{"": "[]", "22": "[22]", " 22, 8080 ": "[22 8080]", "65535": "[65535]"} {
		got, err := ParsePorts(in)
		if err != nil || fmt.Sprint(got) != want && !(want == "[]" && got == nil) {
			t.Errorf("ParsePorts(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"0", "65536", "22,", "a", "22;80", "-1", "1e3"} {
		if _, err := ParsePorts(bad); err == nil || !strings.Contains(err.Error(), "port list") {
			t.Errorf("ParsePorts(%q) = %v; want an error naming the port list", bad, err)
		}
	}
}

func TestDNSServersLimitTheDNSRedirect(t *testing.T) {
	dns := func(c Config) (out []string) {
		for _, r := range c.rules() {
			if strings.Contains(r, "--dport 53 ") {
				out = append(out, r)
			}
		}
		return out
	}
	c := testConfig()
	if got := dns(c); len(got) != 2 || strings.Contains(got[0], " -d ") {
		t.Errorf("without DNSServers: %q; want UDP and TCP to any address", got)
	}
	c.DNSServers = []netip.Addr{netip.MustParseAddr("127.0.0.53"), netip.MustParseAddr("::1"), netip.MustParseAddr("::ffff:10.0.0.2"), netip.MustParseAddr("127.0.0.53")}
	want := []string{
		"-A URSA_OUTPUT -d 127.0.0.53 -p udp --dport 53 -j REDIRECT --to-ports 15053",
		"-A URSA_OUTPUT -d 127.0.0.53 -p tcp --dport 53 -j REDIRECT --to-ports 15053",
		"-A URSA_OUTPUT -d 10.0.0.2 -p udp --dport 53 -j REDIRECT --to-ports 15053",
		"-A URSA_OUTPUT -d 10.0.0.2 -p tcp --dport 53 -j REDIRECT --to-ports 15053",
	}
	if got := dns(c); !slices.Equal(got, want) {
		t.Errorf("with DNSServers: %q; want %q", got, want)
	}
	c.DNSServers = []netip.Addr{netip.MustParseAddr("::1")}
	if got := dns(c); len(got) != 0 {
		t.Errorf("with IPv6 DNSServers only: %q; want no DNS redirected", got)
	}
}

// TestIPv6NeededForInboundOnly: without ip6tables, a Config that redirects
// no inbound port installs (and removes) as before; one that does is
// refused before anything changes, naming what is missing.
func TestIPv6NeededForInboundOnly(t *testing.T) {
	ns := newNS(t)
	ctx := context.Background()
	dir := t.TempDir()
	for _, b := range []string{"iptables-save", "iptables-restore"} {
		path, err := exec.LookPath(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(path, filepath.Join(dir, b)); err != nil {
			t.Fatal(err)
		}
	}
	c := testConfig()
	c.BinDir = dir
	err := in(ns, func() error { return Install(ctx, zap.NewNop(), c) })
	if err == nil || !strings.Contains(err.Error(), "ip6tables-save not found") {
		t.Errorf("Install with inbound ports without ip6tables: %v; want it to name ip6tables-save", err)
	}
	if rules := natRules(t, ns); strings.Contains(rules, ChainPrefix) {
		t.Errorf("a refused Install installed rules:\n%s", rules)
	}
	c.InboundPorts = nil
	mustIn(t, ns, func() error { return Install(ctx, zap.NewNop(), c) })
	if rules := natRules(t, ns); !strings.Contains(rules, "-j URSA_OUTPUT") {
		t.Errorf("outbound only, without ip6tables: not installed:\n%s", rules)
	}
	mustIn(t, ns, func() error { return Remove(ctx, zap.NewNop(), dir) })
	if rules := natRules(t, ns); strings.Contains(rules, ChainPrefix) {
		t.Errorf("after Remove:\n%s", rules)
	}
}

// TestInstallRefusesARunningProxysRules: rules whose outbound port a
// process listens on are a running ursa-dp's, not leftovers: Install
// refuses to replace them (the other's exit would remove its own rules
// with them, leaving its inbound ports open), and RemoveLeftovers leaves
// them; once nothing listens there, both take them.
func TestInstallRefusesARunningProxysRules(t *testing.T) {
	ns := newNS(t)
	ctx := context.Background()
	mustIn(t, ns, func() error { return Install(ctx, zap.NewNop(), testConfig()) })
	installed := natRules(t, ns)
	var l net.Listener
	mustIn(t, ns, func() (err error) { l, err = net.Listen("tcp", "0.0.0.0:15001"); return err })
	other := Config{OutboundPort: 16001}
	err := in(ns, func() error { return Install(ctx, zap.NewNop(), other) })
	if err == nil || !strings.Contains(err.Error(), "outbound port 15001 is in use") {
		t.Errorf("Install over a running proxy's rules: %v; want a refusal naming its port", err)
	}
	mustIn(t, ns, func() error { return RemoveLeftovers(ctx, zap.NewNop(), "", "") })
	if got := natRules(t, ns); got != installed {
		t.Errorf("the running proxy's rules changed:\n%s\nwant\n%s", got, installed)
	}
	l.Close()
	mustIn(t, ns, func() error { return RemoveLeftovers(ctx, zap.NewNop(), "", "") })
	if got := natRules(t, ns); strings.Contains(got, ChainPrefix) {
		t.Errorf("RemoveLeftovers left a killed proxy's rules:\n%s", got)
	}
	mustIn(t, ns, func() error { return Install(ctx, zap.NewNop(), testConfig()) })
	mustIn(t, ns, func() error { return Install(ctx, zap.NewNop(), other) })
	mustIn(t, ns, func() error { return Remove(ctx, zap.NewNop(), "") })
}

// TestInstallRefusesAnotherOwnersRules: rules written for one sidecar
// (Config.Owner, on the jump from OUTPUT) are refused to another's Install
// and left by another's RemoveLeftovers, also while their owner does not
// yet listen on the outbound port (it waits for its zone CP); their
// owner's own restart replaces them, and its cleanup, or one naming no
// owner, removes them. Both iptables back ends.
func TestInstallRefusesAnotherOwnersRules(t *testing.T) {
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			dir := t.TempDir()
			for _, name := range []string{"iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore"} {
				bin, err := exec.LookPath(strings.Replace(name, "tables-", "tables-"+backend+"-", 1))
				if err != nil {
					t.Skipf("%s: %v", backend, err)
				}
				if err := os.Symlink(bin, filepath.Join(dir, name)); err != nil {
					t.Fatal(err)
				}
			}
			ns := newNS(t)
			ctx := context.Background()
			billing := testConfig()
			billing.BinDir, billing.Owner = dir, "default.billing"
			mustIn(t, ns, func() error { return Install(ctx, zap.NewNop(), billing) })
			installed := natRulesOf(t, ns, filepath.Join(dir, "iptables-save"))
			if !strings.Contains(installed, `--comment "ursa-dp:default.billing"`) {
				t.Fatalf("no owner on the rules:\n%s", installed)
			}
			web := billing
			web.Owner = "default.web"
			err := in(ns, func() error { return Install(ctx, zap.NewNop(), web) })
			if err == nil || !strings.Contains(err.Error(), "the transparent proxy of default.billing is installed") {
				t.Errorf("another sidecar's Install: %v; want a refusal naming default.billing", err)
			}
			mustIn(t, ns, func() error { return RemoveLeftovers(ctx, zap.NewNop(), dir, "default.web") })
			if got := natRulesOf(t, ns, filepath.Join(dir, "iptables-save")); got != installed {
				t.Errorf("another sidecar's cleanup changed billing's rules:\n%s\nwant\n%s", got, installed)
			}
			mustIn(t, ns, func() error { return Install(ctx, zap.NewNop(), billing) }) // its restart
			mustIn(t, ns, func() error { return RemoveLeftovers(ctx, zap.NewNop(), dir, "default.billing") })
			if got := natRulesOf(t, ns, filepath.Join(dir, "iptables-save")); strings.Contains(got, ChainPrefix) {
				t.Errorf("its own cleanup left:\n%s", got)
			}
			mustIn(t, ns, func() error { return Install(ctx, zap.NewNop(), billing) })
			mustIn(t, ns, func() error { return RemoveLeftovers(ctx, zap.NewNop(), dir, "") })
			if got := natRulesOf(t, ns, filepath.Join(dir, "iptables-save")); strings.Contains(got, ChainPrefix) {
				t.Errorf("a cleanup naming no owner left:\n%s", got)
			}
		})
	}
}

// TestValidate names what is wrong with a Config: ports, a clash of
// redirect ports, inbound ports without their port, a negative uid, an
// owner that is no single printable word.
func TestValidate(t *testing.T) {
	good := testConfig()
	good.Owner = "default.billing-1"
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for want, change := range map[string]func(c *Config){
		"outbound port 0 is not a port":         func(c *Config) { c.OutboundPort = 0 },
		"redirect ports are both":               func(c *Config) { c.InboundPort = c.OutboundPort },
		"inbound port 70000 is not a port":      func(c *Config) { c.InboundPorts = []int{70000} },
		"without an inbound redirect port":      func(c *Config) { c.InboundPort = 0 },
		"every inbound port redirected without": func(c *Config) { c.InboundPort, c.InboundPorts, c.InboundAllPorts = 0, nil, true },
		"sidecar port 0 is not a port":          func(c *Config) { c.SidecarPorts = []int{0} },
		"uid -1 is negative":                    func(c *Config) { c.ExcludeUIDs = []int{-1} },
		"sidecar uid 7 is not among":            func(c *Config) { c.SidecarUIDs = []int{7} },
		`owner "a b": want OwnerOf a node id`:   func(c *Config) { c.Owner = "a b" },
		`owner "a\"b": want OwnerOf a node id`:  func(c *Config) { c.Owner = `a"b` },
		"dots and dashes, at most 200":          func(c *Config) { c.Owner = strings.Repeat("a", 201) },
		"café\": want OwnerOf":                  func(c *Config) { c.Owner = "café" },
	} {
		c := good
		change(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v; want an error about %q", err, want)
		}
	}
}

// TestOwnerOf: a node id of DNS characters names its rules as it is; one
// longer than an iptables comment takes, or holding characters
// iptables-save would escape, by a digest that Validate takes, the same
// each time, and another's for another id.
func TestOwnerOf(t *testing.T) {
	if got := OwnerOf("default.billing-1"); got != "default.billing-1" {
		t.Errorf("OwnerOf(default.billing-1) = %q", got)
	}
	long := "default." + strings.Repeat("a", 240)
	for _, id := range []string{long, "m.a'b", "m.a b", "Mesh.X"} {
		got := OwnerOf(id)
		c := testConfig()
		c.Owner = got
		if err := c.Validate(); err != nil || got == id || got != OwnerOf(id) {
			t.Errorf("OwnerOf(%q) = %q (%v)", id, got, err)
		}
	}
	if OwnerOf(long) == OwnerOf(long+"b") {
		t.Error("two long node ids share an owner")
	}
}
