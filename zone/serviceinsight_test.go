package zone

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/xds"
)

// fakeLoads is a loadSource whose answer the test sets, and which counts
// how often it was read (once a tick).
type fakeLoads struct {
	mu    sync.Mutex
	now   []xds.ServiceLoad
	reads int
}

func (f *fakeLoads) Services(time.Time) []xds.ServiceLoad {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	return f.now
}

func (f *fakeLoads) readCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads
}

func (f *fakeLoads) set(perSecond float64, ok uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = []xds.ServiceLoad{
		{Mesh: "default", Service: "billing", Zones: map[string]xds.ZoneLoad{"zone-2": {Successful: ok, Issued: ok, PerSecond: perSecond}}},
		{Mesh: "gone", Service: "billing"},
		{Mesh: "default", Service: "Not_A_Name"},
	}
}

// TestServiceInsightsAreWrittenOnChange: the writer stores one insight per
// service of an existing mesh, rewrites it only when its content changes,
// and skips what it cannot store.
func TestServiceInsightsAreWrittenOnChange(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	st := store.NewMemory(0)
	if _, err := st.Apply(ctx, []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}}, nil); err != nil {
		t.Fatal(err)
	}
	log := zaptest.NewLogger(t)
	mirror := store.NewMirror(st, []string{"Mesh"}, log)
	loads := &fakeLoads{}
	loads.set(48.54, 100)
	var wg sync.WaitGroup
	wg.Go(func() { mirror.Start(ctx) })
	<-mirror.Ready()
	wg.Go(func() { writeServiceInsights(ctx, st, mirror, loads, "zone-1", 10*time.Millisecond, log) })
	defer func() { cancel(); wg.Wait() }()

	key := api.Key{Type: "ServiceInsight", Mesh: "default", Name: "billing"}
	get := func() *api.ServiceInsight {
		r, err := st.Get(ctx, key)
		if err != nil {
			return nil
		}
		return r.(*api.ServiceInsight)
	}
	testutil.Until(t, 10*time.Second, "the insight", func() bool { return get() != nil })
	si := get()
	if si.Zone != "zone-1" || si.Service != "billing" || si.Traffic["zone-2"] != (api.ZoneTraffic{Connections: 100, PerSecond: 48.5}) {
		t.Fatalf("insight %+v", si)
	}
	// Ten ticks with nothing new: the writer reads the loads once a tick
	// and writes before the next read, so eleven more reads mean ten whole
	// ticks are done.
	after := loads.readCount() + 11
	testutil.Until(t, 10*time.Second, "ten more ticks of the writer", func() bool { return loads.readCount() >= after })
	if v := get().Version; v != si.Version {
		t.Fatalf("rewritten without a change: version %d → %d", si.Version, v)
	}
	loads.set(0, 120)
	testutil.Until(t, 10*time.Second, "the new count", func() bool { return get().Traffic["zone-2"].Connections == 120 })
	res, err := st.List(ctx, store.ListOptions{Type: "ServiceInsight"})
	if err != nil || len(res.Items) != 1 {
		t.Fatalf("stored %d insights (%v), want billing's only", len(res.Items), err)
	}
}
