package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// shares counts who answered the calls started in [from, from+d) and the
// failures.
func shares(rs []callResult) (map[string]int, int) {
	who, failed := map[string]int{}, 0
	for _, r := range rs {
		if r.err != nil {
			failed++
			continue
		}
		who[r.answer]++
	}
	return who, failed
}

// converge waits until every call started in a half-second window was
// answered by want (and there were enough of them).
func converge(t *testing.T, l *load, what, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		mark := time.Now()
		time.Sleep(500 * time.Millisecond)
		who, failed := shares(l.since(mark))
		if failed == 0 && who[want] >= 10 && len(who) == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: calls in the last half second went to %v (%d failed), want all to %s", what, who, failed, want)
		}
	}
}

// balanced waits until calls in a one-second window went to both zone-2
// and zone-3, each taking at least min percent.
func balanced(t *testing.T, l *load, what string, min int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		mark := time.Now()
		time.Sleep(time.Second)
		who, failed := shares(l.since(mark))
		n := who["zone-2"] + who["zone-3"]
		if failed == 0 && n >= 20 && who["zone-2"]*100/n >= min && who["zone-3"]*100/n >= min {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: calls in the last second went to %v (%d failed)", what, who, failed)
		}
	}
}

// TestDisasterRecovery: three zones, billing in zone-2 (two instances) and
// zone-3, steady load from a client in zone-1. Weights 50/50, then 100/0;
// back to 50/50 with zone-3 drained; every billing in zone-2 killed →
// traffic moves to zone-3 (drained, but the last zone left); restored →
// back to zone-2; undrained; zone-2's ingress killed → zone-3 again;
// restored → traffic returns; a drill, and a drill whose CLI is killed. No
// call fails but those in flight when something was killed.
func TestDisasterRecovery(t *testing.T) {
	m, vip, zone2 := startBillingAcrossZones(t)

	phase := func(what string) { t.Logf("%s %s", time.Now().Format("15:04:05.000"), what) }
	route := func(w2, w3 int) {
		phase(fmt.Sprintf("route %d/%d", w2, w3))
		ctl(t, m.global.api, fmt.Sprintf(`
type: TrafficRoute
mesh: default
name: billing-by-zone
spec:
  destination: {ursa.io/service: billing}
  split:
  - {weight: %d, tags: {ursa.io/zone: zone-2}}
  - {weight: %d, tags: {ursa.io/zone: zone-3}}
`, w2, w3), "apply", "-f", "-")
	}
	l := startLoad(vip+":80", 3, 10*time.Millisecond)
	var kills [][2]time.Time // when something was being killed
	kill := func(what string, f func()) {
		phase("kill " + what)
		start := time.Now()
		f()
		kills = append(kills, [2]time.Time{start, time.Now()})
	}

	// 50/50: both zones take a fair share.
	route(50, 50)
	balanced(t, l, "a 50/50 split", 30)
	route(100, 0)
	converge(t, l, "100/0", "zone-2")

	// Back to 50/50 with zone-3 drained: the drain wins, all to zone-2.
	route(50, 50)
	phase("drain zone-3")
	ctl(t, m.global.api, "", "zone", "drain", "zone-3")
	converge(t, l, "50/50 with zone-3 drained", "zone-2")

	// Every billing in zone-2 dies: the drained zone-3 is all that is left.
	kill("billing in zone-2", func() {
		for _, in := range zone2 {
			in.kill()
		}
	})
	converge(t, l, "zone-2's instances killed", "zone-3")
	phase("restart billing in zone-2")
	for _, in := range zone2 {
		m.restart(in)
	}
	phase("billing in zone-2 ready")
	converge(t, l, "zone-2's instances back", "zone-2")

	// Undrained: 50/50 again. Then zone-2's ingress dies.
	phase("undrain zone-3")
	ctl(t, m.global.api, "", "zone", "undrain", "zone-3")
	balanced(t, l, "50/50 after undrain", 20)
	kill("zone-2's ingress", func() {
		p := m.zones["zone-2"].ingress
		p.cmd.Process.Kill()
		err := <-p.done
		p.done <- err
	})
	converge(t, l, "zone-2's ingress killed", "zone-3")
	phase("restart zone-2's ingress")
	m.startIngress("zone-2")
	phase("zone-2's ingress started")
	balanced(t, l, "traffic back in zone-2 after its ingress returned", 20)

	// A drill: zone-3 drained for a few seconds, reported live from the
	// proxies' load reports, then undrained.
	phase("drill zone-3")
	out := ctl(t, m.global.api, "", "zone", "drill", "zone-3", "--for", "4s", "--every", "500ms", "--service", "billing")
	t.Logf("ursactl zone drill:\n%s", out)
	if !strings.Contains(out, "from zone-1: zone-2 100%") || !strings.Contains(out, "drill over") {
		t.Fatalf("the drill did not report all of zone-1's traffic going to zone-2:\n%s", out)
	}
	if got := ctl(t, m.global.api, "", "get", "failovers", "-m", "default", "-o", "json"); strings.Contains(got, "drain-zone-3") {
		t.Fatalf("the drill left its drain:\n%s", got)
	}
	balanced(t, l, "50/50 after the drill", 20)

	// A drill whose CLI is killed: the global ends the drain on time.
	phase("drill zone-3, CLI killed")
	drill := exec.Command(filepath.Join(bin, "ursactl"), "--api-server", m.global.api, "zone", "drill", "zone-3", "--for", "2s")
	if err := drill.Start(); err != nil {
		t.Fatal(err)
	}
	converge(t, l, "drilled", "zone-2")
	drill.Process.Kill()
	drill.Wait()
	killedAt := time.Now()
	balanced(t, l, "50/50 after the killed drill's drain expired", 20)
	if got := ctl(t, m.global.api, "", "get", "failovers", "-m", "default", "-o", "json"); strings.Contains(got, "drain-zone-3") {
		t.Fatalf("the killed drill's drain is still there:\n%s", got)
	}
	t.Logf("the killed drill's drain ended %s after the kill", time.Since(killedAt).Round(100*time.Millisecond))
	l.close()

	// Count the failures: only calls in flight while something was being
	// killed may have failed.
	all := l.all()
	var failed []callResult
	inFlight := 0
	for _, r := range all {
		if r.err == nil {
			continue
		}
		during := false
		for _, k := range kills {
			if r.start.Before(k[1]) && r.end.After(k[0]) {
				during = true
			}
		}
		if during {
			inFlight++
		} else {
			failed = append(failed, r)
		}
	}
	t.Logf("%d calls, %d failed while in flight at a kill", len(all), inFlight)
	if len(failed) > 0 {
		for _, r := range failed[:min(len(failed), 10)] {
			t.Errorf("call at %s failed: %v", r.start.Format("15:04:05.000"), r.err)
		}
		t.Fatalf("%d of %d calls failed outside a kill", len(failed), len(all))
	}
}

// TestDeletedZoneLeavesTheMesh: billing in zone-2 and zone-3 under load
// from zone-1; zone-2's CP stops and the zone is deleted at the global:
// its ingress leaves the global and zone-1 (Kuma deletes a zone's resources
// with it), and calls go to zone-3 alone.
func TestDeletedZoneLeavesTheMesh(t *testing.T) {
	m, vip, _ := startBillingAcrossZones(t)
	l := startLoad(vip+":80", 3, 20*time.Millisecond)
	defer l.close()
	balanced(t, l, "both zones", 10)
	m.zones["zone-2"].cp.proc.stop(t)
	ctl(t, m.global.api, "", "delete", "zone", "zone-2")
	eventually(t, "zone-2's ingress to leave the global and zone-1", func() bool {
		_, global := m.global.get(t, "/zone-ingresses")
		_, zone1 := m.zones["zone-1"].cp.get(t, "/zone-ingresses")
		return !strings.Contains(global, `"zone-2.ingress"`) && !strings.Contains(zone1, `"zone-2.ingress"`)
	})
	mark := time.Now()
	time.Sleep(2 * time.Second)
	if who, failed := shares(l.since(mark)); who["zone-2"] > 0 || who["zone-3"] == 0 || failed > 0 {
		t.Fatalf("calls after zone-2 left the mesh: %v, %d failed", who, failed)
	}
}

// TestHungZoneIngress: zone-2's ingress hangs (SIGSTOP: the kernel still
// takes connections for it, nothing answers) under a 50/50 split from
// zone-1, without a HealthCheck. Its share moves to zone-3 and stays
// there: once an ejection of the ingress is over, one connection tries it
// again while every other keeps going to zone-3, so calls do not stall
// every few seconds behind the hung ingress.
func TestHungZoneIngress(t *testing.T) {
	m, vip, _ := startBillingAcrossZones(t)
	ctl(t, m.global.api, `type: TrafficRoute
mesh: default
name: billing-by-zone
spec:
  destination: {ursa.io/service: billing}
  split:
  - {weight: 50, tags: {ursa.io/zone: zone-2}}
  - {weight: 50, tags: {ursa.io/zone: zone-3}}
`, "apply", "-f", "-")
	l := startLoad(vip+":80", 4, 20*time.Millisecond)
	defer l.close()
	balanced(t, l, "50/50", 30)
	ing := m.zones["zone-2"].ingress.cmd.Process
	ing.Signal(syscall.SIGSTOP)
	defer ing.Signal(syscall.SIGCONT)
	hung := time.Now()
	time.Sleep(25 * time.Second)
	// From 10 s on, in 2-second windows: calls in every one (no stall),
	// zone-3 answering, at most the trials failing.
	failures := 0
	for from := hung.Add(10 * time.Second); from.Add(2 * time.Second).Before(hung.Add(25 * time.Second)); from = from.Add(2 * time.Second) {
		who, failed := shares(inWindow(l, from, from.Add(2*time.Second)))
		if who["zone-3"] < 20 || who["zone-2"] > 0 {
			t.Errorf("+%s: calls %v, %d failed: zone-2's share did not stay on zone-3", from.Sub(hung).Round(time.Second), who, failed)
		}
		failures += failed
	}
	if failures > 4 {
		t.Errorf("%d calls failed 10-25 s after zone-2's ingress hung; want at most the trials of it (one every 5-10 s)", failures)
	}
}

// inWindow is what l called from from until to.
func inWindow(l *load, from, to time.Time) []callResult {
	var out []callResult
	for _, r := range l.since(from) {
		if r.start.Before(to) {
			out = append(out, r)
		}
	}
	return out
}
