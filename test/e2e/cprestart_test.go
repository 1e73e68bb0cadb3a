package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestZoneRestartKeepsTraffic: a zone CP (on PostgreSQL) restarted under
// its sidecars costs their traffic nothing. Calls from web to billing,
// each a new connection and so a new mTLS handshake between the
// sidecars, go on through the stop, the restart and both sidecars'
// reconnects: each keeps running what it had until its new stream
// replaces it (identity, clusters, endpoints), as Envoy does, and the
// stopped replica leaves its proxies connected, to be written so again
// by the replica they reach. A third sidecar, killed while the CP is
// down, is marked offline once the restarted CP has given it time to
// come back: here, under a new instance name (the default), by the
// leader's reaper when the old replica's heartbeat has expired.
func TestZoneRestartKeepsTraffic(t *testing.T) { zoneRestart(t) }

// TestZoneRestartSameInstanceKeepsTraffic: the same, the CP restarted
// under the same --instance (a StatefulSet pod's name): the dead sidecar is
// marked offline by the restarted process itself, after reconnectGrace.
func TestZoneRestartSameInstanceKeepsTraffic(t *testing.T) { zoneRestart(t, "--instance", "zone-a") }

// zoneRestart is the restart tests' body, the CP started with instance.
func zoneRestart(t *testing.T, instance ...string) {
	dsn, err := cluster.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p := start(t, "ursa-cp", "migrate", "up", "--store", dsn); p.wait(t) != nil {
		t.Fatalf("migrate: %s", p.out.String())
	}
	zone := startCP(t, append([]string{"zone", "--zone", "zone-1", "--store", dsn, "--vip-cidr", "127.240.0.0/16"}, instance...)...)
	ctl(t, zone.api, openMTLSMesh, "apply", "-f", "-")
	dir := t.TempDir()
	toBilling := freeAddr(t)
	billing := startSidecar(t, zone, dir, "billing-1", "billing", "version: v1", echo(t, "billing-1"))
	web := startSidecar(t, zone, dir, "web-1", "web", "version: v1", echo(t, "web-1"),
		fmt.Sprintf("{address: 127.0.0.1, port: %s, tags: {ursa.io/service: billing}}", port(toBilling)))
	gone := startSidecar(t, zone, dir, "gone-1", "gone", "version: v1", echo(t, "gone-1"))
	eventually(t, "web's calls to reach billing", func() bool {
		answer, err := call(toBilling, "hi")
		return err == nil && answer == "billing-1: hi"
	})
	connected := func(name string) bool {
		_, body := zone.get(t, "/meshes/default/dataplanes/"+name+"/insight")
		return strings.Contains(body, `"connected":true`)
	}
	eventually(t, "gone-1 connected", func() bool { return connected("gone-1") })
	var restarted time.Time
	failed, calls := callsAcross(t, toBilling, "billing-1: hi", func() {
		zone.proc.stop(t)
		gone.cmd.Process.Signal(syscall.SIGKILL) // dies while the CP is down
		zone.restart(t)
		restarted = time.Now()
		for _, s := range []*meshSidecar{web, billing} {
			eventually(t, "each sidecar to reconnect", func() bool {
				return strings.Count(zone.out.String(), "proxy connected") >= 2 && strings.Contains(s.out.String(), "reconnecting")
			})
		}
	})
	if len(failed) > 0 {
		t.Fatalf("%d of %d calls failed across the zone CP's restart:\n%s", len(failed), calls, strings.Join(failed, "\n"))
	}
	if !connected("gone-1") {
		t.Errorf("gone-1 offline within the grace (%v after the restart)", time.Since(restarted))
	}
	deadline := time.Now().Add(40 * time.Second)
	for connected("gone-1") {
		if time.Now().After(deadline) {
			t.Fatalf("gone-1 still connected %v after the restart", time.Since(restarted))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("gone-1 offline %v after the restart", time.Since(restarted))
	time.Sleep(6 * time.Second)
	for _, n := range []string{"web-1", "billing-1"} {
		if !connected(n) {
			_, body := zone.get(t, "/meshes/default/dataplanes/"+n+"/insight")
			t.Errorf("%s after the grace: %s", n, body)
		}
	}
	if answer, err := call(toBilling, "hi"); err != nil || answer != "billing-1: hi" {
		t.Errorf("after the grace: %q %v", answer, err)
	}
}

// TestGlobalRestartKeepsTraffic: the global CP (on PostgreSQL) restarted
// under two zones costs the traffic between them nothing: web in zone-1
// calls billing, which runs in zone-2 alone (through zone-2's ingress),
// through the stop, the restart and both zones' reconnects. The zones
// keep what the global gave them and what they learned of each other.
func TestGlobalRestartKeepsTraffic(t *testing.T) {
	dsn, err := cluster.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p := start(t, "ursa-cp", "migrate", "up", "--store", dsn); p.wait(t) != nil {
		t.Fatalf("migrate: %s", p.out.String())
	}
	m := startZonesWith(t, []string{"--store", dsn}, "zone-1", "zone-2")
	ctl(t, m.global.api, openMTLSMesh, "apply", "-f", "-")
	for name, z := range m.zones {
		eventually(t, "the mesh in "+name, func() bool { return z.cp.has(t, "/meshes/default") })
	}
	m.startIngress("zone-2")
	m.startInstance("zone-2", "billing-2", "billing", "zone-2")
	m.startInstance("zone-1", "web-1", "web", "web")
	z1 := m.zones["zone-1"]
	var vip string
	eventually(t, "billing.mesh in zone-1", func() bool {
		vip = dig(t, z1.dns, "billing.mesh", "+short")
		return strings.HasPrefix(vip, "127.240.")
	})
	eventually(t, "web's calls to reach billing in zone-2", func() bool {
		answer, err := call(vip+":80", "hi")
		return err == nil && answer == "zone-2: hi"
	})
	failed, calls := callsAcross(t, vip+":80", "zone-2: hi", func() {
		m.global.proc.stop(t)
		m.global.restart(t)
		eventually(t, "both zones to reconnect", func() bool { return strings.Count(m.global.out.String(), "zone connected") >= 2 })
	})
	if len(failed) > 0 {
		t.Fatalf("%d of %d calls failed across the global CP's restart:\n%s", len(failed), calls, strings.Join(failed, "\n"))
	}
}

// callsAcross calls addr (a line, a new connection each time) every 5 ms
// from 300 ms before restart runs until a second after it has, and
// returns the calls that did not get want, and how many were made. It
// fails the test when fewer than 50 were.
func callsAcross(t *testing.T, addr, want string, restart func()) (failed []string, calls int) {
	t.Helper()
	var mu sync.Mutex
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			answer, err := call(addr, "hi")
			mu.Lock()
			calls++
			if err != nil || answer != want {
				failed = append(failed, fmt.Sprintf("%s: %q %v", time.Now().Format("15:04:05.000"), answer, err))
			}
			mu.Unlock()
		}
	}()
	end := func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-done
	}
	defer end() // restart may fail the test
	time.Sleep(300 * time.Millisecond)
	t.Logf("restarting at %s", time.Now().Format("15:04:05.000"))
	restart()
	time.Sleep(time.Second)
	end()
	t.Logf("%d calls across the restart, %d failed", calls, len(failed))
	if calls < 50 {
		t.Fatalf("only %d calls across the restart", calls)
	}
	return failed, calls
}
