package e2e

// Disaster-recovery figures (issue 7), on real processes:
//
//	go test ./test/e2e -run '^$' -bench ZoneShift -benchtime 1x -timeout 20m
//
// ZoneShift/policy: from `ursactl apply` of a TrafficRoute that moves all of
// billing's traffic to the other zone returning, to the last new connection
// that still went to the old zone (so: to 100 % of new connections
// following the new policy), over repeated shifts, with steady load from a
// client in zone-1; and the same from the moment ursactl was started (its
// own start-up and the PUT included). ZoneShift/failover: from zone-2's last billing instance
// being killed (both, in turn) to the first call answered by zone-3, and to zone-1's
// control plane no longer listing zone-2 as offering billing.

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	shifts    = 40
	failovers = 8
)

func BenchmarkZoneShift(b *testing.B) {
	m, vip, billing2 := startBillingAcrossZones(b)
	z1 := m.zones["zone-1"]
	route := func(to string) {
		w2, w3 := 100, 0
		if to == "zone-3" {
			w2, w3 = 0, 100
		}
		ctl(b, m.global.api, fmt.Sprintf(`
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
	l := startLoad(vip+":80", 3, time.Millisecond)
	defer l.close()
	// settled waits until a whole second of calls went to zone and returns
	// the calls from since on.
	settled := func(since time.Time, zone string) []callResult {
		deadline := time.Now().Add(20 * time.Second)
		for {
			time.Sleep(100 * time.Millisecond)
			rs := l.since(since)
			n := 0
			for i := len(rs) - 1; i >= 0 && rs[i].err == nil && rs[i].answer == zone; i-- {
				n++
				if time.Since(rs[i].start) > time.Second {
					return rs
				}
			}
			if time.Now().After(deadline) {
				b.Fatalf("traffic did not settle on %s", zone)
			}
		}
	}
	b.Run("policy", func(b *testing.B) {
		var took, fromStart []time.Duration
		failed := 0
		route("zone-2")
		settled(time.Now(), "zone-2")
		for i := range shifts {
			to := []string{"zone-3", "zone-2"}[i%2]
			invoked := time.Now()
			route(to)
			returned := time.Now()
			last := invoked
			for _, r := range settled(invoked, to) {
				if r.err != nil {
					failed++
				}
				if r.err != nil || r.answer != to {
					last = r.start
				}
			}
			took = append(took, max(last.Sub(returned), 0))
			fromStart = append(fromStart, last.Sub(invoked))
		}
		report(b, took, "policy-shift")
		report(b, fromStart, "from-invocation")
		b.ReportMetric(float64(failed), "failed-calls")
	})
	b.Run("failover", func(b *testing.B) {
		var dataPlane, controlPlane []time.Duration
		route("zone-2")
		settled(time.Now(), "zone-2")
		for range failovers {
			for _, in := range billing2 {
				in.kill()
			}
			killed := time.Now()
			offered := time.Duration(0)
			for offered == 0 {
				_, body := z1.cp.get(b, "/zone-ingresses/zone-2.ingress")
				if !strings.Contains(body, `"billing"`) {
					offered = time.Since(killed)
				}
				time.Sleep(2 * time.Millisecond)
			}
			rs := settled(killed, "zone-3")
			for _, r := range rs {
				if r.err == nil && r.answer == "zone-3" {
					dataPlane = append(dataPlane, max(r.end.Sub(killed), 0))
					break
				}
			}
			controlPlane = append(controlPlane, offered)
			for _, in := range billing2 {
				m.restart(in)
			}
			settled(time.Now(), "zone-2")
		}
		report(b, dataPlane, "first-call-elsewhere")
		report(b, controlPlane, "zone-1-cp-updated")
	})
}

// report adds p50 and p99 (ms) of durations to the benchmark's output.
func report(b *testing.B, ds []time.Duration, name string) {
	slices.Sort(ds)
	q := func(p float64) float64 {
		return float64(ds[min(len(ds)-1, int(p*float64(len(ds))))].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.5), name+"-p50-ms")
	b.ReportMetric(q(0.99), name+"-p99-ms")
	b.ReportMetric(float64(ds[len(ds)-1].Microseconds())/1000, name+"-max-ms")
	b.ReportMetric(0, "ns/op")
}
