package zone

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/pgtest"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/postgres"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// TestReviewPGOutageReapsLiveReplica: two zone CP replicas on PostgreSQL,
// cp-a leading the reaper, cp-b holding web-1. PostgreSQL is unreachable for
// 10.3 s (a restart or a quick failover): no replica can renew its
// heartbeat meanwhile. cp-a's own heartbeat comes back 2.3 s after the
// outage; cp-b's next beat is due 4.8 s after it. At its next tick the
// leader judges cp-b dead and marks web-1 offline, although cp-b is alive
// and never had a chance to renew since PostgreSQL came back. Times are a
// virtual clock (deterministic); store, mirror and writes are real.
func TestReviewPGOutageReapsLiveReplica(t *testing.T) {
	cluster, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	ctx := context.Background()
	dsn, err := cluster.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.MigrateUp(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	st, err := postgres.Open(ctx, dsn, postgres.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	clock := time.Now()
	start := clock
	now := func() time.Time { return clock }
	if _, err := st.Apply(ctx, []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}},
		&api.DataplaneInsight{Meta: api.Meta{Type: "DataplaneInsight", Mesh: "default", Name: "web-1"},
			ProxyStatus: api.ProxyStatus{Connected: true, Instance: "cp-b", ConnectedSince: store.Now()}}}, nil); err != nil {
		t.Fatal(err)
	}
	mirror := startMirror(t, st)
	waitMesh(t, mirror)
	log := zaptest.NewLogger(t)
	pA, pB := NewPresence(st, mirror, "cp-a", log), NewPresence(st, mirror, "cp-b", log)
	pA.now, pB.now = now, now
	r := newReaper(st, mirror, now, "cp-a", log)

	caughtUp := func() {
		res, err := st.List(ctx, store.ListOptions{Type: "Lease"})
		if err != nil {
			t.Fatal(err)
		}
		testutil.Until(t, 5*time.Second, "the mirror to catch up", func() bool {
			v, _ := mirror.Current()
			return v.Revision >= res.Revision
		})
	}
	// Tenths of a second. cp-b beats at 0, 5, 10 s…; cp-a at 2.5, 7.5 s…;
	// the leader's reaper ticks at 4.9, 9.9 s…. PostgreSQL is down in
	// [19.9 s, 30.2 s): every write then fails, so nobody writes; the
	// reaper goes on ticking over the mirror's last view (it writes
	// nothing then: it judges nobody dead during the outage).
	down := func(ts int) bool { return ts >= 199 && ts < 302 }
	for ts := 0; ts <= 360; ts++ {
		clock = start.Add(time.Duration(ts) * 100 * time.Millisecond)
		if ts%50 == 0 && !down(ts) {
			if err := pB.heartbeat(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if ts%50 == 25 && !down(ts) {
			if err := pA.heartbeat(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if ts%50 == 49 {
			caughtUp()
			v, _ := mirror.Current()
			if err := r.reap(ctx, v); err != nil {
				t.Fatal(err)
			}
			if in := insightOfStore(t, st, "web-1"); !in.Connected {
				t.Fatalf("at %.1f s (PostgreSQL back since 30.2 s, cp-b's next beat due at 35.0 s): web-1 of live replica cp-b marked offline (disconnectedAt %s)",
					float64(ts)/10, in.DisconnectedAt.Sub(start))
			}
		}
	}
}
