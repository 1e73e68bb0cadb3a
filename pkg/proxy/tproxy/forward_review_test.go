package tproxy

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"go.uber.org/zap"
)

// TestReviewAllInboundLeavesForwardedTraffic: a VM whose root sidecar runs
// --redirect-all-inbound and that also routes for others (Docker's or
// podman's bridge, a k3s node, a VPN gateway): the TCP it forwards passes
// PREROUTING, whose "-p tcp -j URSA_INBOUND" now REDIRECTs every port, so a
// container's connection to another host reaches the sidecar's inbound
// listener instead (whose passthrough then dials it from 127.0.0.6, which
// cannot leave the host). Before, only the Dataplane's inbound ports were
// redirected. Namespaces: vm (10.77.0.1 to the container side, 10.88.0.1
// to the LAN, forwarding), ctr (10.77.0.2, routes via vm), srv (10.88.0.2).
func TestReviewAllInboundLeavesForwardedTraffic(t *testing.T) {
	vm := newNS(t)
	ctr := newPeer(t, vm)
	srv := fmt.Sprintf("ursatps%d-%d", os.Getpid(), nsSeq.Add(1))
	ip(t, "netns", "add", srv)
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", srv).Run() })
	ip(t, "-n", srv, "link", "set", "lo", "up")
	ip(t, "-n", srv, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1", "netns", vm)
	ip(t, "-n", srv, "addr", "add", "10.88.0.2/24", "dev", "eth1")
	ip(t, "-n", vm, "addr", "add", "10.88.0.1/24", "dev", "eth1")
	ip(t, "-n", srv, "link", "set", "eth1", "up")
	ip(t, "-n", vm, "link", "set", "eth1", "up")
	ip(t, "-n", ctr, "route", "add", "10.88.0.0/24", "via", "10.77.0.1")
	ip(t, "-n", srv, "route", "add", "10.77.0.0/24", "via", "10.88.0.1")
	if out, err := exec.Command("ip", "netns", "exec", vm, "sysctl", "-qw", "net.ipv4.ip_forward=1").CombinedOutput(); err != nil {
		t.Fatalf("sysctl: %v: %s", err, out)
	}
	server := listen(t, srv, "10.88.0.2:443")
	sidecar := listen(t, vm, "0.0.0.0:15006")
	got := map[string]chan net.Conn{"server (10.88.0.2:443)": server, "VM's inbound listener (15006)": sidecar}

	dial(t, ctr, &net.Dialer{Timeout: 3 * time.Second}, "10.88.0.2:443")
	if w := whichGot(t, got); w != "server (10.88.0.2:443)" {
		t.Fatalf("precondition: without rules the container's connection reached the %s", w)
	}
	c := Config{OutboundPort: 15001, InboundPort: 15006, InboundAllPorts: true, SidecarPorts: []int{9901}}
	mustIn(t, vm, func() error { return Install(context.Background(), zap.NewNop(), c) })
	t.Cleanup(func() { in(vm, func() error { return Remove(context.Background(), zap.NewNop(), "") }) })
	dial(t, ctr, &net.Dialer{Timeout: 3 * time.Second}, "10.88.0.2:443")
	if w := whichGot(t, got); w != "server (10.88.0.2:443)" {
		t.Errorf("with --redirect-all-inbound, a connection the VM forwards (10.77.0.2 → 10.88.0.2:443) reached the %s, not its destination", w)
	}
}
