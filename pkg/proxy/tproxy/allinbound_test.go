package tproxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// newPeer makes a second throwaway namespace joined to ns by a veth pair:
// ns gets 10.77.0.1/24, the peer 10.77.0.2/24. Its connections to ns arrive
// there as another host's would, through PREROUTING. Both ends go with the
// peer namespace, deleted when the test ends.
func newPeer(t *testing.T, ns string) string {
	t.Helper()
	peer := fmt.Sprintf("ursatpp%d-%d", os.Getpid(), nsSeq.Add(1))
	ip(t, "netns", "add", peer)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", peer).CombinedOutput(); err != nil {
			t.Errorf("delete namespace %s: %v: %s", peer, err, out)
		}
	})
	ip(t, "-n", peer, "link", "set", "lo", "up")
	ip(t, "-n", peer, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", ns)
	ip(t, "-n", peer, "addr", "add", "10.77.0.2/24", "dev", "eth0")
	ip(t, "-n", ns, "addr", "add", "10.77.0.1/24", "dev", "eth0")
	ip(t, "-n", peer, "link", "set", "eth0", "up")
	ip(t, "-n", ns, "link", "set", "eth0", "up")
	return peer
}

// TestInstallRedirectsAllInbound: with InboundAllPorts, another host's TCP
// to any port of this one reaches the inbound listener, knowing where it
// was headed, but for the excluded ports, SSH's (22, as Istio leaves it)
// and the sidecar's own (its admin port, its redirect ports); the sidecar's connections from ProbeSource
// (its inbound passthrough) reach the app at this host's address, while
// its others there go to its inbound listener, and another user's from
// ProbeSource to the outbound listener, not around the sidecar. Over IPv6
// every port but the excluded ones goes to the inbound port too.
func TestInstallRedirectsAllInbound(t *testing.T) {
	ns := newNS(t)
	peer := newPeer(t, ns)
	ctx := context.Background()
	c := Config{OutboundPort: 15001, InboundPort: 15006, DNSPort: 15053, InboundAllPorts: true, SidecarPorts: []int{9901},
		InboundPorts: []int{8080}, ExcludeInboundPorts: []int{2222}, ExcludeUIDs: []int{5678}, SidecarUIDs: []int{5678}}
	mustIn(t, ns, func() error { return Install(ctx, zap.NewNop(), c) })

	rules := natRules(t, ns)
	for _, want := range []string{
		"-A PREROUTING -p tcp -j URSA_INBOUND",
		"-A URSA_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
		"-A URSA_INBOUND -p tcp -m tcp --dport 2222 -j RETURN",
		"-A URSA_INBOUND -p tcp -m tcp --dport 9901 -j RETURN",
		"-A URSA_INBOUND -p tcp -m tcp --dport 15001 -j RETURN",
		"-A URSA_INBOUND -p tcp -m tcp --dport 15006 -j RETURN",
		"-A URSA_INBOUND -p tcp -m tcp --dport 15053 -j RETURN",
		"-A URSA_INBOUND -p tcp -j URSA_IN_REDIRECT",
		"-A URSA_OUTPUT -s 127.0.0.6/32 -o lo -m mark --mark 0x7572 -j RETURN",
		"-A URSA_OUTPUT -s 127.0.0.6/32 -o lo -m owner --uid-owner 5678 -j RETURN",
		"-A URSA_OUTPUT ! -d 127.0.0.0/8 -o lo -p tcp -m mark --mark 0x7572 -j URSA_INBOUND",
		"-A URSA_OUTPUT ! -d 127.0.0.0/8 -o lo -p tcp -m owner --uid-owner 5678 -j URSA_INBOUND",
	} {
		if !strings.Contains(rules, want+"\n") {
			t.Errorf("nat table lacks %q:\n%s", want, rules)
		}
	}
	// InboundPorts add nothing: every port is redirected.
	if strings.Contains(rules, "--dport 8080") {
		t.Errorf("a rule for inbound port 8080 beside the redirection of every port:\n%s", rules)
	}
	if r6 := nat6Rules(t, ns); !strings.Contains(r6, "-A URSA_INBOUND -p tcp -j URSA_IN_REDIRECT\n") ||
		!strings.Contains(r6, "-A URSA_INBOUND -p tcp -m tcp --dport 2222 -j RETURN\n") {
		t.Errorf("ip6tables' nat table lacks the redirection of every port:\n%s", r6)
	}

	got := map[string]chan net.Conn{
		"inbound listener (15006)":  listen(t, ns, "0.0.0.0:15006"),
		"outbound listener (15001)": listen(t, ns, "0.0.0.0:15001"),
		"app (7070)":                listen(t, ns, "0.0.0.0:7070"),
		"ssh (22)":                  listen(t, ns, "0.0.0.0:22"),
		"excluded (2222)":           listen(t, ns, "0.0.0.0:2222"),
		"admin (9901)":              listen(t, ns, "0.0.0.0:9901"),
	}
	// Another host's, to a port nothing declares: the inbound listener,
	// which learns where it was headed.
	dial(t, peer, &net.Dialer{}, "10.77.0.1:7070")
	inbound := accepted(t, got["inbound listener (15006)"], "peer to 10.77.0.1:7070")
	if dst, err := OriginalDst(inbound); err != nil || dst != netip.MustParseAddrPort("10.77.0.1:7070") {
		t.Errorf("original destination %v, %v; want 10.77.0.1:7070", dst, err)
	}
	for _, tc := range []struct{ addr, want string }{
		{"10.77.0.1:22", "ssh (22)"},
		{"10.77.0.1:2222", "excluded (2222)"},
		{"10.77.0.1:9901", "admin (9901)"},
	} {
		dial(t, peer, &net.Dialer{}, tc.addr)
		if w := whichGot(t, got); w != tc.want {
			t.Errorf("peer to excluded %s reached the %s; want the %s", tc.addr, w, tc.want)
		}
	}

	// This host's own connections to its address.
	for _, tc := range []struct {
		name string
		dial func()
		want string
	}{
		{"the sidecar's passthrough (user 5678, from 127.0.0.6)", func() { dialAs(t, ns, 5678, "127.0.0.6", "10.77.0.1:7070") }, "app (7070)"},
		{"the sidecar's passthrough (marked, from 127.0.0.6)", func() {
			dial(t, ns, &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.6")}, Control: MarkControl(DefaultMark)}, "10.77.0.1:7070")
		}, "app (7070)"},
		{"the sidecar's own call (user 5678)", func() { dialAs(t, ns, 5678, "", "10.77.0.1:7070") }, "inbound listener (15006)"},
		{"the sidecar's own call (marked)", func() { dial(t, ns, &net.Dialer{Control: MarkControl(DefaultMark)}, "10.77.0.1:7070") }, "inbound listener (15006)"},
		{"the sidecar's call to its admin port (marked)", func() { dial(t, ns, &net.Dialer{Control: MarkControl(DefaultMark)}, "10.77.0.1:9901") }, "admin (9901)"},
		{"another user from 127.0.0.6", func() { dialAs(t, ns, 1000, "127.0.0.6", "10.77.0.1:7070") }, "outbound listener (15001)"},
	} {
		tc.dial()
		if w := whichGot(t, got); w != tc.want {
			t.Errorf("%s reached the %s; want the %s", tc.name, w, tc.want)
		}
	}

	mustIn(t, ns, func() error { return Remove(ctx, zap.NewNop(), "") })
	if after := natRules(t, ns) + nat6Rules(t, ns); strings.Contains(after, ChainPrefix) {
		t.Errorf("after Remove the nat tables still hold ours:\n%s", after)
	}
	dial(t, peer, &net.Dialer{}, "10.77.0.1:7070")
	if w := whichGot(t, got); w != "app (7070)" {
		t.Errorf("after Remove, peer to 10.77.0.1:7070 reached the %s", w)
	}
}
