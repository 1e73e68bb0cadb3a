package zone

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/xds"
)

// startMirror runs a mirror of st's zone types until the test ends.
func startMirror(t *testing.T, st store.Store) *store.Mirror {
	t.Helper()
	m := store.NewMirror(st, mirroredTypes(), zaptest.NewLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { m.Start(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	<-m.Ready()
	return m
}

func insightOfStore(t *testing.T, st store.Store, name string) *api.DataplaneInsight {
	t.Helper()
	r, err := st.Get(context.Background(), api.Key{Type: "DataplaneInsight", Mesh: "default", Name: name})
	if err != nil {
		t.Fatalf("insight %s: %v", name, err)
	}
	return r.(*api.DataplaneInsight)
}

// waitMesh waits until the mirror holds the mesh.
func waitMesh(t *testing.T, m *store.Mirror) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		v, changed := m.Current()
		if _, ok, _ := store.Get[*api.Mesh](v, "", "default"); ok {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatal("the mirror never held the mesh")
		}
	}
}

// TestPresenceWritesInsights: what the xDS server observes becomes the
// proxy's DataplaneInsight; a disconnection is written only while the
// insight is still this replica's.
func TestPresenceWritesInsights(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory(0)
	if _, err := st.Apply(ctx, []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}}, nil); err != nil {
		t.Fatal(err)
	}
	mirror := startMirror(t, st)
	waitMesh(t, mirror)
	p := NewPresence(st, mirror, "cp-a", zaptest.NewLogger(t))
	at := time.Now()
	p.Observe(xds.StreamEvent{Op: xds.OpConnected, Node: "default.web-1", Kind: xds.KindSidecar, At: at})
	p.Observe(xds.StreamEvent{Op: xds.OpAcked, Node: "default.web-1", TypeURL: "lds", Version: "v1"})
	p.Observe(xds.StreamEvent{Op: xds.OpNacked, Node: "default.web-1", TypeURL: "cds", Reason: "bad cluster"})
	p.Observe(xds.StreamEvent{Op: xds.OpConnected, Node: "default.billing-1", Kind: xds.KindSidecar, At: at})
	p.flush(ctx)
	in := insightOfStore(t, st, "web-1")
	if !in.Connected || in.Instance != "cp-a" || in.Acked["lds"] != "v1" || in.Nacks != 1 || in.LastNack != "bad cluster" || in.LastNackType != "cds" {
		t.Fatalf("insight after connect, ACK and NACK: %+v", in)
	}
	// billing-1 moves to replica b before a notices its stream closed.
	moved := insightOfStore(t, st, "billing-1")
	moved.Instance = "cp-b"
	if _, err := st.Update(ctx, moved); err != nil {
		t.Fatal(err)
	}
	p.Observe(xds.StreamEvent{Op: xds.OpDisconnected, Node: "default.web-1", At: at.Add(time.Second)})
	p.Observe(xds.StreamEvent{Op: xds.OpDisconnected, Node: "default.billing-1", At: at.Add(time.Second)})
	p.flush(ctx)
	if in := insightOfStore(t, st, "web-1"); in.Connected || in.DisconnectedAt.IsZero() {
		t.Fatalf("insight after the stream closed: %+v", in)
	}
	if in := insightOfStore(t, st, "billing-1"); !in.Connected || in.Instance != "cp-b" {
		t.Fatalf("replica a overwrote replica b's insight: %+v", in)
	}
	p.mu.Lock()
	left := len(p.nodes)
	p.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d proxies still held after they went", left)
	}
}

// TestDeadReplicasProxies: a proxy whose replica's heartbeat expired is
// found; one on a live replica, or written moments ago, is not.
func TestDeadReplicasProxies(t *testing.T) {
	now := time.Now()
	lease := func(instance string, renewed time.Time) *api.Lease {
		return &api.Lease{Meta: api.Meta{Type: "Lease", Name: heartbeatName(instance)}, Holder: instance, RenewTime: renewed, Duration: 15}
	}
	in := func(name, instance string, modified time.Time) *api.DataplaneInsight {
		return &api.DataplaneInsight{Meta: api.Meta{Type: "DataplaneInsight", Mesh: "default", Name: name, ModificationTime: modified},
			ProxyStatus: api.ProxyStatus{Connected: true, Instance: instance}}
	}
	view := store.NewView([]api.Resource{
		lease("cp-live", now.Add(-time.Second)), lease("cp-dead", now.Add(-time.Minute)),
		in("on-live", "cp-live", now.Add(-time.Hour)), in("on-dead", "cp-dead", now.Add(-time.Hour)),
		in("on-unknown-new", "cp-new", now), in("on-unknown-old", "cp-gone", now.Add(-time.Hour)),
	}, mirroredTypes()...)
	var got []string
	for _, r := range deadReplicasProxies(view, now) {
		got = append(got, r.GetMeta().Name)
	}
	if len(got) != 2 || got[0] != "on-dead" || got[1] != "on-unknown-old" {
		t.Fatalf("dead replicas' proxies = %v", got)
	}
}

// TestPresenceForgetsProxiesOfUnknownMeshes: a proxy naming a mesh this
// zone does not have is written once the mesh arrives, and forgotten if it
// goes first, so that such proxies cannot pile up.
func TestPresenceForgetsProxiesOfUnknownMeshes(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory(0)
	mirror := startMirror(t, st)
	p := NewPresence(st, mirror, "cp-a", zaptest.NewLogger(t))
	p.Observe(xds.StreamEvent{Op: xds.OpConnected, Node: "nowhere.web-1", Kind: xds.KindSidecar, At: time.Now()})
	p.flush(ctx)
	p.Observe(xds.StreamEvent{Op: xds.OpDisconnected, Node: "nowhere.web-1", At: time.Now()})
	p.flush(ctx)
	p.mu.Lock()
	left := len(p.nodes)
	p.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d proxies of a mesh that never came still held", left)
	}
}
