package zone

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/types/known/structpb"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/xds"
)

func newZoneStore(t *testing.T) (store.Store, *store.Mirror) {
	st := store.NewMemory(0)
	if _, err := st.Apply(context.Background(), []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}}, nil); err != nil {
		t.Fatal(err)
	}
	m := startMirror(t, st)
	waitMesh(t, m)
	return st, m
}

// A proxy flaps (disconnect, reconnect, disconnect) on one replica between
// two flushes: it ends offline. (Tests in this file come from review.)
func TestFlapLeavesOffline(t *testing.T) {
	ctx := context.Background()
	st, mirror := newZoneStore(t)
	p := NewPresence(st, mirror, "cp-a", zaptest.NewLogger(t))
	t0 := time.Now()
	p.Observe(xds.StreamEvent{Op: xds.OpConnected, Node: "default.web-1", Kind: xds.KindSidecar, At: t0})
	p.flush(ctx)
	p.Observe(xds.StreamEvent{Op: xds.OpDisconnected, Node: "default.web-1", At: t0.Add(1 * time.Second)})
	p.Observe(xds.StreamEvent{Op: xds.OpConnected, Node: "default.web-1", Kind: xds.KindSidecar, At: t0.Add(2 * time.Second)})
	p.Observe(xds.StreamEvent{Op: xds.OpDisconnected, Node: "default.web-1", At: t0.Add(3 * time.Second)})
	p.flush(ctx)
	p.repair()
	p.flush(ctx)
	if in := insightOfStore(t, st, "web-1"); in.Connected {
		t.Fatalf("web-1 is gone but its insight says connected to %s since %s", in.Instance, in.ConnectedSince)
	}
}

// Replica a's clock runs 10 s ahead of b's. web-1 connects to a, a writes
// its disconnection, web-1 reconnects to b 5 s later (real time): b writes
// it online all the same.
func TestClockSkewCannotHideProxy(t *testing.T) {
	ctx := context.Background()
	st, mirror := newZoneStore(t)
	a := NewPresence(st, mirror, "cp-a", zaptest.NewLogger(t))
	b := NewPresence(st, mirror, "cp-b", zaptest.NewLogger(t))
	real := time.Now()
	skew := 10 * time.Second
	a.Observe(xds.StreamEvent{Op: xds.OpConnected, Node: "default.web-1", Kind: xds.KindSidecar, At: real.Add(skew)})
	a.flush(ctx)
	a.Observe(xds.StreamEvent{Op: xds.OpDisconnected, Node: "default.web-1", At: real.Add(skew + time.Second)})
	a.flush(ctx)
	b.Observe(xds.StreamEvent{Op: xds.OpConnected, Node: "default.web-1", Kind: xds.KindSidecar, At: real.Add(5 * time.Second)})
	b.flush(ctx)
	testutil.Until(t, 5*time.Second, "mirror", func() bool {
		v, _ := mirror.Current()
		in, ok, _ := store.Get[*api.DataplaneInsight](v, "default", "web-1")
		return ok && in.Version == insightOfStore(t, st, "web-1").Version
	})
	b.repair()
	b.flush(ctx)
	if in := insightOfStore(t, st, "web-1"); !in.Connected || in.Instance != "cp-b" {
		t.Fatalf("web-1 is connected to cp-b, but its insight says connected=%v instance=%s", in.Connected, in.Instance)
	}
}

// A restarted process (same instance name) sweeps what the previous one
// left connected; one of those proxies has meanwhile reconnected to b, and
// b's write is not in the sweeper's view yet: the sweep decides again from
// the store and marks the others offline.
func TestSweepDecidesAgainOnConflict(t *testing.T) {
	ctx := context.Background()
	st, mirror := newZoneStore(t)
	old := store.Now().Add(-time.Hour)
	var puts []api.Resource
	for _, n := range []string{"gone-1", "gone-2", "moved"} {
		puts = append(puts, &api.DataplaneInsight{Meta: api.Meta{Type: "DataplaneInsight", Mesh: "default", Name: n},
			ProxyStatus: api.ProxyStatus{Connected: true, Instance: "cp-a", ConnectedSince: old}})
	}
	if _, err := st.Apply(ctx, puts, nil); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 5*time.Second, "mirror", func() bool {
		v, _ := mirror.Current()
		_, ok, _ := store.Get[*api.DataplaneInsight](v, "default", "moved")
		return ok
	})
	// Freeze the sweeper's view (as a mirror a little behind).
	frozen, _ := mirror.Current()
	b := NewPresence(st, mirror, "cp-b", zaptest.NewLogger(t))
	b.Observe(xds.StreamEvent{Op: xds.OpConnected, Node: "default.moved", Kind: xds.KindSidecar, At: time.Now()})
	b.flush(ctx)
	p := NewPresence(st, fixedView{frozen}, "cp-a", zaptest.NewLogger(t))
	p.started = time.Now().Add(-reconnectGrace - time.Second) // up for its reconnect grace
	p.sweepPrevious(ctx)
	for _, n := range []string{"gone-1", "gone-2"} {
		if in := insightOfStore(t, st, n); in.Connected {
			t.Errorf("%s still connected to the previous process of cp-a", n)
		}
	}
}

type fixedView struct{ v *store.View }

func (f fixedView) Current() (*store.View, <-chan struct{}) { return f.v, make(chan struct{}) }

// The leader removes a long-gone proxy's insight and Dataplane while the
// proxy reconnects: its registration writes its insight with its
// Dataplane, so the removal, decided on the old insight, fails.
func TestRemoveGoneRacingReconnectKeepsDataplane(t *testing.T) {
	ctx := context.Background()
	st, mirror := newZoneStore(t)
	d := dp("default", "web-1", "web", 0)
	if _, err := st.Apply(ctx, []api.Resource{d}, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Millisecond) // the Dataplane was registered before its proxy went (hours ago in real life)
	gone := &api.DataplaneInsight{Meta: api.Meta{Type: "DataplaneInsight", Mesh: "default", Name: "web-1"},
		ProxyStatus: api.ProxyStatus{Instance: "cp-a", ConnectedSince: store.Now(), DisconnectedAt: store.Now()}}
	if _, err := st.Apply(ctx, []api.Resource{gone}, nil); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 5*time.Second, "mirror", func() bool {
		v, _ := mirror.Current()
		_, ok1, _ := store.Get[*api.DataplaneInsight](v, "default", "web-1")
		_, ok2, _ := store.Get[*api.Dataplane](v, "default", "web-1")
		return ok1 && ok2
	})
	view, _ := mirror.Current() // the leader's tick
	// The proxy comes back: registration, then the stream is admitted.
	doc, err := api.EncodeJSON(dp("default", "web-1", "web", 0))
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: "default.web-1", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		api.MetadataDataplane: structpb.NewStringValue(string(doc))}}}
	if err := (registrar{st: st, zone: "zone-1", instance: "cp-b"}).Register(ctx, node, nil); err != nil {
		t.Fatal(err)
	}
	p := NewPresence(st, mirror, "cp-b", zaptest.NewLogger(t))
	p.Observe(xds.StreamEvent{Op: xds.OpConnected, Node: "default.web-1", Kind: xds.KindSidecar, At: time.Now()})
	// The leader goes on with its tick before the presence flushes.
	in, _, _ := store.Get[*api.DataplaneInsight](view, "default", "web-1")
	removeGone(ctx, st, view, in, time.Hour, zaptest.NewLogger(t))
	p.flush(ctx)
	if in := insightOfStore(t, st, "web-1"); !in.Connected {
		t.Fatal("not connected")
	}
	if _, err := st.Get(ctx, api.Key{Type: "Dataplane", Mesh: "default", Name: "web-1"}); err != nil {
		t.Fatalf("web-1 is connected, but its Dataplane: %v", err)
	}
}

// The store (or the leader's mirror) stalls for longer than the TTL: no
// heartbeat changes, not even the leader's own. At the first tick after it
// recovers, before the replicas' next beats reach the reaper's view,
// nobody is judged by that stale view.
func TestReaperJudgesNobodyAfterStall(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory(0)
	clock := time.Now()
	r := &reaper{st: st, now: func() time.Time { return clock }, log: zaptest.NewLogger(t), self: "cp-leader", since: clock.Add(-time.Hour), seen: map[string]heartbeat{}}
	in := func(name, instance string) *api.DataplaneInsight {
		return &api.DataplaneInsight{Meta: api.Meta{Type: "DataplaneInsight", Mesh: "default", Name: name},
			ProxyStatus: api.ProxyStatus{Connected: true, Instance: instance}}
	}
	if _, err := st.Apply(ctx, []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}},
		in("on-leader", "cp-leader"), in("on-b", "cp-b"),
		&api.Lease{Meta: api.Meta{Type: "Lease", Name: heartbeatName("cp-leader")}, Holder: "cp-leader", Duration: 15},
		&api.Lease{Meta: api.Meta{Type: "Lease", Name: heartbeatName("cp-b")}, Holder: "cp-b", Duration: 15}}, nil); err != nil {
		t.Fatal(err)
	}
	view := func() *store.View {
		var rs []api.Resource
		for _, typ := range []string{"DataplaneInsight", "Lease"} {
			res, _ := st.List(ctx, store.ListOptions{Type: typ})
			rs = append(rs, res.Items...)
		}
		return store.NewView(rs, mirroredTypes()...)
	}
	if err := r.reap(ctx, view()); err != nil {
		t.Fatal(err)
	}
	clock = clock.Add(20 * time.Second) // the outage
	if err := r.reap(ctx, view()); err != nil {
		t.Fatal(err)
	}
	res, _ := st.List(ctx, store.ListOptions{Type: "DataplaneInsight"})
	for _, i := range res.Items {
		if !i.(*api.DataplaneInsight).Connected {
			t.Errorf("%s marked offline after a stall that no replica caused", i.GetMeta().Name)
		}
	}
}

type failDPDelete struct{ store.Store }

func (f failDPDelete) Apply(ctx context.Context, puts []api.Resource, deletes []api.Key) (int, error) {
	for _, k := range deletes {
		if k.Type == "Dataplane" {
			return 0, context.Canceled // leadership lost, a store hiccup, a crash
		}
	}
	return f.Store.Apply(ctx, puts, deletes)
}

// removeGone cannot delete the Dataplane: it deletes nothing, so that no
// Dataplane is left without an insight (the catalogue counts that online,
// and nothing would remove it).
func TestRemoveGoneIsAllOrNothing(t *testing.T) {
	ctx := context.Background()
	st, mirror := newZoneStore(t)
	if _, err := st.Apply(ctx, []api.Resource{dp("default", "web-1", "web", 0)}, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Millisecond)
	gone := &api.DataplaneInsight{Meta: api.Meta{Type: "DataplaneInsight", Mesh: "default", Name: "web-1"},
		ProxyStatus: api.ProxyStatus{Instance: "cp-a", ConnectedSince: store.Now(), DisconnectedAt: store.Now()}}
	if _, err := st.Apply(ctx, []api.Resource{gone}, nil); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 5*time.Second, "mirror", func() bool {
		v, _ := mirror.Current()
		_, ok1, _ := store.Get[*api.DataplaneInsight](v, "default", "web-1")
		_, ok2, _ := store.Get[*api.Dataplane](v, "default", "web-1")
		return ok1 && ok2
	})
	view, _ := mirror.Current()
	in, _, _ := store.Get[*api.DataplaneInsight](view, "default", "web-1")
	removeGone(ctx, failDPDelete{st}, view, in, time.Hour, zaptest.NewLogger(t))
	res, _ := st.List(ctx, store.ListOptions{Type: "Dataplane"})
	ins, _ := st.List(ctx, store.ListOptions{Type: "DataplaneInsight"})
	if len(res.Items) != 1 || len(ins.Items) != 1 {
		t.Fatalf("a failed removal left %d Dataplanes and %d insights, want both", len(res.Items), len(ins.Items))
	}
	// And when it can, both go.
	removeGone(ctx, st, view, in, time.Hour, zaptest.NewLogger(t))
	res, _ = st.List(ctx, store.ListOptions{Type: "Dataplane"})
	ins, _ = st.List(ctx, store.ListOptions{Type: "DataplaneInsight"})
	if len(res.Items) != 0 || len(ins.Items) != 0 {
		t.Fatalf("removal left %d Dataplanes and %d insights", len(res.Items), len(ins.Items))
	}
}

// TestReaperForgetsGoneHeartbeats: a replica's heartbeat unchanged for ten
// TTLs is deleted; the reaper's own is kept.
func TestReaperForgetsGoneHeartbeats(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory(0)
	clock := time.Now()
	r := &reaper{st: st, now: func() time.Time { return clock }, log: zaptest.NewLogger(t), self: "cp-leader", since: clock, seen: map[string]heartbeat{}}
	if _, err := st.Apply(ctx, []api.Resource{
		&api.Lease{Meta: api.Meta{Type: "Lease", Name: heartbeatName("cp-leader")}, Holder: "cp-leader", Duration: 15},
		&api.Lease{Meta: api.Meta{Type: "Lease", Name: heartbeatName("cp-gone")}, Holder: "cp-gone", Duration: 15}}, nil); err != nil {
		t.Fatal(err)
	}
	leases := func() []api.Resource {
		res, _ := st.List(ctx, store.ListOptions{Type: "Lease"})
		return res.Items
	}
	for range 40 {
		own, _ := st.Get(ctx, api.Key{Type: "Lease", Name: heartbeatName("cp-leader")})
		own.(*api.Lease).RenewTime = clock // the leader renews its own
		own.GetMeta().Version = 0
		if _, err := st.Apply(ctx, []api.Resource{own}, nil); err != nil {
			t.Fatal(err)
		}
		if err := r.reap(ctx, store.NewView(leases(), mirroredTypes()...)); err != nil {
			t.Fatal(err)
		}
		clock = clock.Add(heartbeatEvery)
	}
	got := leases()
	if len(got) != 1 || got[0].(*api.Lease).Holder != "cp-leader" {
		t.Fatalf("leases left: %v", got)
	}
}
