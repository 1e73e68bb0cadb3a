package server_test

import (
	"context"
	"crypto/tls"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/kds/client"
	"github.com/ursamesh/ursa/kds/server"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// slowStore is a store whose List is slow: a PostgreSQL store loading a
// large database after a restart.
type slowStore struct {
	store.Store
	delay time.Duration
}

func (s slowStore) List(ctx context.Context, o store.ListOptions) (store.ListResult, error) {
	time.Sleep(s.delay)
	return s.Store.List(ctx, o)
}

// deletions records every deletion in st from now on.
func deletions(t *testing.T, st store.Store) func() []string {
	ctx, cancel := context.WithCancel(context.Background())
	res, err := st.List(ctx, store.ListOptions{Type: "Mesh"})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var out []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.Watch(ctx, res.Revision, func(e store.Event) error {
			if e.Op == store.OpDelete {
				mu.Lock()
				out = append(out, api.KeyOf(e.Resource).String())
				mu.Unlock()
			}
			return nil
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), out...) }
}

func localDataplane() *api.Dataplane {
	return &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: "web-1"},
		Networking: api.DataplaneNetworking{Address: "127.0.0.1", Inbound: []api.Inbound{{Port: 8080, Tags: map[string]string{api.TagService: "web", api.TagZone: "zone-a"}}}}}
}

// TestResumeBeforeGlobalLoadedDeletesNothing: a zone that reconnects to a
// global whose KDS cache has not loaded the store yet (a restarted global,
// PostgreSQL still answering the first List) was told to delete everything
// it held from the global: its Mesh went, and with it every Dataplane the
// zone registered in that mesh. The sender now waits for its source.
func TestResumeBeforeGlobalLoadedDeletesNothing(t *testing.T) {
	ctx := context.Background()
	gst := store.NewMemory(0)
	mesh := &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}
	if _, err := gst.Apply(ctx, []api.Resource{mesh, route(90)}, nil); err != nil {
		t.Fatal(err)
	}
	// The zone holds what an earlier session gave it, and its own Dataplane.
	zst := store.NewMemory(0)
	g1 := map[string]string{api.LabelOrigin: api.OriginGlobal}
	zm, zr := api.DeepCopy(mesh), api.DeepCopy(route(90))
	zm.GetMeta().Labels, zr.GetMeta().Labels = g1, g1
	if _, err := zst.Apply(ctx, []api.Resource{zm, zr, localDataplane()}, nil); err != nil {
		t.Fatal(err)
	}
	deleted := deletions(t, zst)

	g := startGlobalReading(t, gst, slowStore{Store: gst, delay: 300 * time.Millisecond}, server.Deps{AckTimeout: 5 * time.Second, Verifier: fakeTokens{}})
	startZoneOn(t, g, "zone-a", "zone:zone-a", zst)
	// Let the cache load and the zone settle.
	time.Sleep(4 * time.Second)
	if d := deleted(); len(d) > 0 {
		t.Errorf("the zone deleted %v on reconnecting to a global that still has them", d)
	}
	if !has(zst, api.KeyOf(localDataplane())) {
		t.Errorf("the zone's own Dataplane default/web-1 is gone")
	}
}

// TestResumeBeforeZoneLoadedDeletesNothing: a zone CP that (re)starts and
// dials the global before its own KDS cache has loaded its store told the
// global to delete everything the zone had sent: its ZoneIngress went from
// the global (and from every other zone). The sender now waits.
func TestResumeBeforeZoneLoadedDeletesNothing(t *testing.T) {
	ctx := context.Background()
	gst := store.NewMemory(0)
	g := startGlobal(t, gst, 5*time.Second)
	// The global holds zone-a's ingress from an earlier session; the zone
	// still has it.
	atGlobal := ingress("zone-a", "zone-a.ingress")
	atGlobal.Labels = map[string]string{api.LabelOrigin: api.OriginZone, api.LabelZone: "zone-a"}
	if _, err := gst.Apply(ctx, []api.Resource{atGlobal}, nil); err != nil {
		t.Fatal(err)
	}
	zst := store.NewMemory(0)
	if _, err := zst.Create(ctx, ingress("zone-a", "ingress")); err != nil {
		t.Fatal(err)
	}
	deleted := deletions(t, gst)

	cctx, cancel := context.WithCancel(ctx)
	bg := background(t, cancel)
	log := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)).Named("zone-a")
	cache := kds.NewCache(slowStore{Store: zst, delay: 300 * time.Millisecond}, kds.ZoneToGlobalTypes(), func(r api.Resource) bool {
		return r.GetMeta().Labels[api.LabelOrigin] != api.OriginGlobal
	}, log)
	bg.Go(func() { cache.Start(cctx) })
	c, err := client.New(client.Deps{Zone: "zone-a", Address: g.addr, Token: "zone:zone-a", TLS: &tls.Config{RootCAs: g.pool, ServerName: "localhost"},
		Store: zst, Cache: cache, Log: log, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	bg.Go(func() { c.Start(cctx) })
	time.Sleep(4 * time.Second)
	if d := deleted(); len(d) > 0 {
		t.Errorf("the global deleted %v, which the reconnecting zone still has", d)
	}
}

// TestExpiredTokenWritesNothing: a zone's writes are "authenticated by its
// zone token, checked on every message" (DESIGN.md). A stream opened with a
// token that then expired went on writing into the global store; now the
// stream ends when the token expires, and the zone is refused with it.
func TestExpiredTokenWritesNothing(t *testing.T) {
	ctx := context.Background()
	g := startSecured(t, server.Deps{})
	tok := signWith(t, g.store, jwt.MapClaims{"sub": "zone-a", "zone": "zone-a", "exp": time.Now().Add(2 * time.Second).Unix(), "jti": "x"})
	z := startZone(t, g.global, "zone-a", tok)
	if _, err := z.store.Create(ctx, ingress("zone-a", "before")); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 10*time.Second, "the first ingress at the global", func() bool {
		return has(g.store, api.Key{Type: "ZoneIngress", Name: "zone-a.before"})
	})
	if _, err := g.issuer.VerifyZoneToken(ctx, tok); err != nil {
		t.Fatalf("the token should still be valid: %v", err)
	}
	time.Sleep(3 * time.Second)
	if _, err := g.issuer.VerifyZoneToken(ctx, tok); err == nil {
		t.Fatal("the token should have expired")
	}
	if _, err := z.store.Create(ctx, ingress("zone-a", "after")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if has(g.store, api.Key{Type: "ZoneIngress", Name: "zone-a.after"}) {
		t.Fatal("a zone whose token expired wrote zone-a.after into the global store")
	}
}
