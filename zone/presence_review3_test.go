package zone

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/xds"
)

func presentedNode(t *testing.T) *core.Node {
	doc, err := api.EncodeJSON(dp("default", "web-1", "web", 0))
	if err != nil {
		t.Fatal(err)
	}
	return &core.Node{Id: "default.web-1", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		api.MetadataDataplane: structpb.NewStringValue(string(doc))}}}
}

// The xDS server calls Register for every new stream. A proxy with a second
// stream to the same replica keeps its stored connection as it is, so its
// disconnection, when all its streams close, is written. (Tests in this
// file come from the third review.)
func TestSecondStreamRegistrationKeepsDisconnect(t *testing.T) {
	ctx := context.Background()
	st, mirror := newZoneStore(t)
	reg := registrar{st: st, zone: "zone-1", instance: "cp-a"}
	p := NewPresence(st, mirror, "cp-a", zaptest.NewLogger(t))
	// stream 1: Register, then seen -> OpConnected
	if err := reg.Register(ctx, presentedNode(t), nil); err != nil {
		t.Fatal(err)
	}
	p.Observe(xds.StreamEvent{Op: xds.OpConnected, Node: "default.web-1", Kind: xds.KindSidecar, At: time.Now()})
	p.flush(ctx)
	time.Sleep(2 * time.Millisecond)
	// stream 2 of the same node on the same replica: Register again; the node is known, no OpConnected
	if err := reg.Register(ctx, presentedNode(t), nil); err != nil {
		t.Fatal(err)
	}
	// both streams close (the last close is the OpDisconnected)
	p.Observe(xds.StreamEvent{Op: xds.OpDisconnected, Node: "default.web-1", At: time.Now()})
	p.flush(ctx)
	p.repair()
	p.flush(ctx)
	if in := insightOfStore(t, st, "web-1"); in.Connected {
		t.Fatalf("web-1 is gone, its insight says connected to %s since %s (cp-a alive: never reaped)", in.Instance, in.ConnectedSince)
	}
}

// The mirror lags this replica's own connect write: the disconnection is
// decided from the store, not from the lagging view, and written.
func TestStaleMirrorCannotDropDisconnect(t *testing.T) {
	ctx := context.Background()
	st, mirror := newZoneStore(t)
	old := store.Now().Add(-time.Hour)
	if _, err := st.Apply(ctx, []api.Resource{&api.DataplaneInsight{Meta: api.Meta{Type: "DataplaneInsight", Mesh: "default", Name: "web-1"},
		ProxyStatus: api.ProxyStatus{Instance: "cp-a", ConnectedSince: old, DisconnectedAt: old.Add(time.Minute)}}}, nil); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 5*time.Second, "mirror", func() bool {
		v, _ := mirror.Current()
		_, ok, _ := store.Get[*api.DataplaneInsight](v, "default", "web-1")
		return ok
	})
	frozen, _ := mirror.Current() // the mirror a little behind
	p := NewPresence(st, fixedView{frozen}, "cp-a", zaptest.NewLogger(t))
	p.Observe(xds.StreamEvent{Op: xds.OpConnected, Node: "default.web-1", Kind: xds.KindSidecar, At: time.Now()})
	p.flush(ctx)
	if in := insightOfStore(t, st, "web-1"); !in.Connected {
		t.Fatal("connect not written")
	}
	p.Observe(xds.StreamEvent{Op: xds.OpDisconnected, Node: "default.web-1", At: time.Now()})
	p.flush(ctx) // still from the frozen view
	if in := insightOfStore(t, st, "web-1"); in.Connected {
		t.Fatalf("web-1 is gone, its insight says connected to %s", in.Instance)
	}
}

type failApply struct {
	store.Store
	fails atomic.Int32
	err   error
}

func (f *failApply) Apply(ctx context.Context, puts []api.Resource, deletes []api.Key) (int, error) {
	for _, r := range puts {
		if r.GetMeta().Type == "DataplaneInsight" {
			if f.fails.Add(-1) >= 0 {
				return 0, f.err
			}
			break
		}
	}
	return f.Store.Apply(ctx, puts, deletes)
}

// A store error that is neither a conflict nor classified unavailable: the
// refused disconnection is tried again, not dropped.
func TestTransientErrorKeepsDisconnect(t *testing.T) {
	ctx := context.Background()
	mem, mirror := newZoneStore(t)
	st := &failApply{Store: mem, err: errors.New("ERROR: cannot execute INSERT in a read-only transaction (SQLSTATE 25006)")}
	p := NewPresence(st, mirror, "cp-a", zaptest.NewLogger(t))
	p.Observe(xds.StreamEvent{Op: xds.OpConnected, Node: "default.web-1", Kind: xds.KindSidecar, At: time.Now()})
	p.flush(ctx)
	testutil.Until(t, 5*time.Second, "mirror", func() bool {
		v, _ := mirror.Current()
		in, ok, _ := store.Get[*api.DataplaneInsight](v, "default", "web-1")
		return ok && in.Connected
	})
	st.fails.Store(1) // one refused transaction
	p.Observe(xds.StreamEvent{Op: xds.OpDisconnected, Node: "default.web-1", At: time.Now()})
	p.flush(ctx)
	p.repair()
	p.flush(ctx)
	if in := insightOfStore(t, mem, "web-1"); in.Connected {
		t.Fatalf("web-1 is gone; one failed write left it connected to %s for good", in.Instance)
	}
}

// The start-up sweep meets one store outage: it tries again at the next
// tick (the reaper cannot: this process's heartbeat, same name, is alive).
func TestSweepTriesAgain(t *testing.T) {
	mem, mirror := newZoneStore(t)
	old := store.Now().Add(-time.Hour)
	if _, err := mem.Apply(context.Background(), []api.Resource{&api.DataplaneInsight{Meta: api.Meta{Type: "DataplaneInsight", Mesh: "default", Name: "gone-1"},
		ProxyStatus: api.ProxyStatus{Connected: true, Instance: "cp-a", ConnectedSince: old}}}, nil); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 5*time.Second, "mirror", func() bool {
		v, _ := mirror.Current()
		_, ok, _ := store.Get[*api.DataplaneInsight](v, "default", "gone-1")
		return ok
	})
	st := &failApply{Store: mem, err: store.ErrUnavailable}
	st.fails.Store(1)
	p := NewPresence(st, mirror, "cp-a", zaptest.NewLogger(t))
	p.flushEvery = 50 * time.Millisecond
	p.started = time.Now().Add(-reconnectGrace) // up for its reconnect grace
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	p.Start(ctx)
	if in := insightOfStore(t, mem, "gone-1"); in.Connected {
		t.Fatalf("gone-1 left connected by the previous process of cp-a")
	}
}
