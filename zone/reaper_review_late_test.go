package zone

import (
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// reapLatency simulates, on a virtual clock and with a healthy store, the
// leader's reaper (run.Every: a fixed 5 s ticker) and two replicas whose
// beat() writes a heartbeat taking writeLatency, then waits heartbeatEvery
// (time.After), so a renewal lands every heartbeatEvery+writeLatency. Replica
// b stops after its deathBeat-th renewal. It returns how long after b's last
// renewal its proxy was marked dead (-1: not within 3 minutes).
func reapLatency(t *testing.T, writeLatency, leadPhase time.Duration, deathBeat int) time.Duration {
	t0 := time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	r := newReaper(nil, nil, func() time.Time { return now }, "a", zap.NewNop())
	insight := &api.DataplaneInsight{Meta: api.Meta{Type: "DataplaneInsight", Mesh: "default", Name: "web-1"},
		ProxyStatus: api.ProxyStatus{Connected: true, Instance: "b"}}
	lease := func(holder string, v int64) api.Resource {
		return &api.Lease{Meta: api.Meta{Type: "Lease", Name: heartbeatName(holder), Version: v}, Holder: holder}
	}
	var va, vb int64
	// Renewals land at start+writeLatency; the next starts heartbeatEvery later.
	next := t0.Add(100*time.Millisecond + writeLatency)
	var bLast time.Time
	// The leader's two tickers (run.Every, heartbeatEvery each): watch's
	// from the process start, lead's from when it became leader (phase
	// later); both judge by r.dead, lead's reaps.
	watchTick, leadTick := t0.Add(heartbeatEvery), t0.Add(heartbeatEvery+leadPhase)
	for {
		isLead := leadTick.Before(watchTick)
		tick := watchTick
		if isLead {
			tick = leadTick
			leadTick = leadTick.Add(heartbeatEvery)
		} else {
			watchTick = watchTick.Add(heartbeatEvery)
		}
		for !next.After(tick) {
			va++
			if int(va) <= deathBeat {
				vb = va
				bLast = next
			}
			next = next.Add(heartbeatEvery + writeLatency)
		}
		now = tick
		view := store.NewView([]api.Resource{lease("a", va), lease("b", vb), insight}, "Lease", "DataplaneInsight", "ZoneIngressInsight")
		dead, err := r.dead(view)
		if err != nil {
			t.Fatal(err)
		}
		if isLead && len(dead) > 0 && int(va) > deathBeat {
			return now.Sub(bLast)
		}
		if int(va) > deathBeat && now.Sub(bLast) > 3*time.Minute {
			return -1
		}
	}
}

// TestReviewLateReaperSpuriousOutage: with no outage at all, a heartbeat
// write that takes a little time makes the renewals drift against the
// reaper's fixed ticker; each time one tick sees no renewal, the next sees
// a 10 s gap in its own heartbeat, takes it for a store outage and starts
// everyone's clock again, so a dead replica's proxies stay connected
// longer than heartbeatTTL and a couple of ticks (and, when a write takes
// 2.5 s or more, are never reaped).
func TestReviewLateReaperSpuriousOutage(t *testing.T) {
	const bound = heartbeatTTL + 2*heartbeatEvery
	for _, lat := range []time.Duration{20 * time.Millisecond, 2600 * time.Millisecond} {
		worst := time.Duration(0)
		for death := 5; death < 300; death++ {
			l := reapLatency(t, lat, 1300*time.Millisecond, death)
			if l < 0 {
				t.Errorf("heartbeat write latency %v: replica b dead after renewal %d: its proxy is never reaped", lat, death)
				break
			}
			worst = max(worst, l)
		}
		if worst > bound {
			t.Errorf("heartbeat write latency %v, no store outage: a dead replica's proxy reaped up to %v after its last heartbeat, want at most %v", lat, worst, bound)
		}
	}
}
