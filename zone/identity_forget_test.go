package zone

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/xds"
)

type fixedCatalog struct {
	mu      sync.Mutex
	cat     *catalog.Catalog
	changed chan struct{}
}

func (f *fixedCatalog) Current() (*catalog.Catalog, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cat, f.changed
}

func (f *fixedCatalog) set(c *catalog.Catalog) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cat = c
	close(f.changed)
	f.changed = make(chan struct{})
}

type fixedNodes struct{ nodes []xds.Node }

func (f fixedNodes) Nodes() ([]xds.Node, <-chan struct{}) { return f.nodes, nil }
func (fixedNodes) Revoke(string, func(xds.Claims) error) (int, int) {
	return 0, 0
}

// TestStaleIdentityDoesNotSpinGeneration: a connected proxy that no longer
// gets an identity (its mesh turned mTLS off) loses the one it had, whose
// renewal time would otherwise wake generation every second, for a full
// pass over every proxy, for as long as it stays connected.
func TestStaleIdentityDoesNotSpinGeneration(t *testing.T) {
	now := time.Now()
	root, err := mtls.NewCA("default", now)
	if err != nil {
		t.Fatal(err)
	}
	mesh := func(on bool) *api.Mesh {
		v := int64(1)
		if !on {
			v = 2 // a change is a new version
		}
		return &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default", Version: v}, MTLS: &api.MeshMTLS{Enabled: on}}
	}
	cat := &fixedCatalog{cat: catalog.FromResources("zone-1", []api.Resource{mesh(true), root, dp("default", "web-1", "web", 1)}), changed: make(chan struct{})}
	var rounds atomic.Int64
	g := NewGeneration(GenerationDeps{Catalog: cat, Nodes: fixedNodes{[]xds.Node{{ID: "default.web-1", Kind: xds.KindSidecar, Since: now}}},
		Out: &published{ids: map[string]int{}}, CertTTL: 2 * time.Second, Log: zaptest.NewLogger(t),
		OnSync: func(int, int, time.Duration) { rounds.Add(1) }})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go g.Start(ctx)
	time.Sleep(200 * time.Millisecond)
	// The mesh turns mTLS off; the proxy stays connected.
	cat.set(catalog.FromResources("zone-1", []api.Resource{mesh(false), root, dp("default", "web-1", "web", 1)}))
	time.Sleep(200 * time.Millisecond)
	before := rounds.Load()
	time.Sleep(3 * time.Second)
	if n := rounds.Load() - before; n > 1 {
		t.Fatalf("with nothing changing, generation ran %d full rounds in 3 s: the dropped identity's renewal time keeps waking it", n)
	}
}
