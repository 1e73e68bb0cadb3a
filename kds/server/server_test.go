package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/kds/client"
	"github.com/ursamesh/ursa/kds/server"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/servingcert"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/tokens"
)

// fakeTokens is a test Verifier: the token "zone:NAME" is NAME's.
type fakeTokens struct{}

func (fakeTokens) VerifyZoneToken(_ context.Context, token string) (string, error) {
	zone, ok := strings.CutPrefix(token, "zone:")
	if !ok {
		return "", fmt.Errorf("%w: not zone:NAME", tokens.ErrTokenSignature)
	}
	return zone, nil
}

type global struct {
	store store.Store
	addr  string
	pool  *x509.CertPool
}

func startGlobal(t *testing.T, st store.Store, ackTimeout time.Duration) *global {
	t.Helper()
	return startGlobalWith(t, st, server.Deps{AckTimeout: ackTimeout, Verifier: fakeTokens{}})
}

// startGlobalWith starts a global KDS server over st on loopback; deps
// supplies the Verifier and any limits.
func startGlobalWith(t *testing.T, st store.Store, deps server.Deps) *global {
	t.Helper()
	return startGlobalReading(t, st, st, deps)
}

// startGlobalReading is startGlobalWith whose KDS cache reads cacheStore
// (st, slowed down, say).
func startGlobalReading(t *testing.T, st, cacheStore store.Store, deps server.Deps) *global {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)).Named("global")
	cache := kds.NewCache(cacheStore, kds.GlobalToZoneTypes(), nil, log)
	bg := background(t, cancel)
	bg.Go(func() { cache.Start(ctx) })
	deps.Store, deps.Cache, deps.Log, deps.InsightInterval = st, cache, log, 50*time.Millisecond
	if deps.Instance == "" {
		deps.Instance = "g1"
	}
	srv, err := server.New(deps)
	if err != nil {
		t.Fatal(err)
	}
	bg.Go(func() { srv.Start(ctx) })
	cert, err := servingcert.Load(ctx, st, servingcert.Options{Secret: "kds-server-tls", Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(append(srv.ServerOptions(), grpc.Creds(credentials.NewTLS(cert.TLSConfig())))...)
	srv.Register(gs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	// Cleanups run last-registered first: stop serving (streams end when
	// ctx does) before the background goroutines are awaited.
	t.Cleanup(func() { cancel(); gs.GracefulStop() })
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cert.CAPEM())
	return &global{store: st, addr: ln.Addr().String(), pool: pool}
}

type zone struct {
	name   string
	store  store.Store
	client *client.Client
	cancel context.CancelFunc
}

func startZone(t *testing.T, g *global, name, token string) *zone {
	t.Helper()
	return startZoneOn(t, g, name, token, store.NewMemory(0))
}

func startZoneOn(t *testing.T, g *global, name, token string, st store.Store) *zone {
	t.Helper()
	return startZoneWith(t, g, name, token, st, nil)
}

// startZoneWith starts a zone's KDS client over st; applied, if set, sees
// every response the zone applies.
func startZoneWith(t *testing.T, g *global, name, token string, st store.Store, applied func(string, *discoveryResponse)) *zone {
	t.Helper()
	return startZoneLimited(t, g, name, token, st, applied, 0)
}

// startZoneLimited is startZoneWith with the zone's largest KDS message
// (0: the default).
func startZoneLimited(t *testing.T, g *global, name, token string, st store.Store, applied func(string, *discoveryResponse), maxMessage int) *zone {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	bg := background(t, cancel)
	log := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)).Named(name)
	cache := kds.NewCache(st, kds.ZoneToGlobalTypes(), func(r api.Resource) bool {
		return r.GetMeta().Labels[api.LabelOrigin] != api.OriginGlobal
	}, log)
	bg.Go(func() { cache.Start(ctx) })
	c, err := client.New(client.Deps{Zone: name, Address: g.addr, Token: token, TLS: &tls.Config{RootCAs: g.pool, ServerName: "localhost"},
		Store: st, Cache: cache, Log: log, Version: "test", Applied: applied, MaxMessageSize: maxMessage})
	if err != nil {
		t.Fatal(err)
	}
	bg.Go(func() { c.Start(ctx) })
	return &zone{name: name, store: st, client: c, cancel: cancel}
}

// background runs goroutines that log to t; the test's cleanup cancels them
// and waits for them, so none logs after the test ends.
func background(t *testing.T, cancel context.CancelFunc) *sync.WaitGroup {
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	return &wg
}

func has(s store.Store, k api.Key) bool {
	_, err := s.Get(context.Background(), k)
	return err == nil
}

func route(weight int) *api.TrafficRoute {
	return &api.TrafficRoute{
		Meta: api.Meta{Type: "TrafficRoute", Mesh: "default", Name: "billing"},
		Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: "billing"},
			Split: []api.Split{{Weight: weight, Tags: map[string]string{api.TagZone: "zone-a"}}}},
	}
}

func ingress(zone, name string) *api.ZoneIngress {
	return &api.ZoneIngress{Meta: api.Meta{Type: "ZoneIngress", Name: name}, Zone: zone,
		Networking: api.ZoneIngressNetworking{Address: "127.0.0.1", Port: 10001}}
}

func TestSyncBothWays(t *testing.T) {
	ctx := context.Background()
	g := startGlobal(t, store.NewMemory(0), 5*time.Second)
	a := startZone(t, g, "zone-a", "zone:zone-a")
	b := startZone(t, g, "zone-b", "zone:zone-b")

	if _, err := g.store.Apply(ctx, []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}, route(90)}, nil); err != nil {
		t.Fatal(err)
	}
	rk := api.Key{Type: "TrafficRoute", Mesh: "default", Name: "billing"}
	for _, z := range []*zone{a, b} {
		testutil.Until(t, 30*time.Second, "the route in "+z.name, func() bool {
			r, err := z.store.Get(ctx, rk)
			return err == nil && r.GetMeta().Labels[api.LabelOrigin] == api.OriginGlobal
		})
	}
	// A change reaches both zones.
	if _, err := g.store.Apply(ctx, []api.Resource{route(50)}, nil); err != nil {
		t.Fatal(err)
	}
	for _, z := range []*zone{a, b} {
		testutil.Until(t, 30*time.Second, "the changed route in "+z.name, func() bool {
			r, err := z.store.Get(ctx, rk)
			return err == nil && r.(*api.TrafficRoute).Spec.Split[0].Weight == 50
		})
	}
	// Zone A's ingress reaches the global, then zone B, never back to A.
	if _, err := a.store.Create(ctx, ingress("zone-a", "ingress")); err != nil {
		t.Fatal(err)
	}
	atGlobal := api.Key{Type: "ZoneIngress", Name: "zone-a.ingress"}
	testutil.Until(t, 30*time.Second, "zone A's ingress at the global", func() bool { return has(g.store, atGlobal) })
	testutil.Until(t, 30*time.Second, "zone A's ingress in zone B", func() bool { return has(b.store, atGlobal) })
	if has(a.store, atGlobal) {
		t.Fatal("zone A was sent its own ingress back")
	}
	// Deleted at the global, gone everywhere; deleted in A, gone from B.
	if err := g.store.Delete(ctx, rk, 0); err != nil {
		t.Fatal(err)
	}
	if err := a.store.Delete(ctx, api.Key{Type: "ZoneIngress", Name: "ingress"}, 0); err != nil {
		t.Fatal(err)
	}
	for _, z := range []*zone{a, b} {
		testutil.Until(t, 30*time.Second, "the route gone from "+z.name, func() bool { return !has(z.store, rk) })
	}
	testutil.Until(t, 30*time.Second, "the ingress gone from the global and B", func() bool { return !has(g.store, atGlobal) && !has(b.store, atGlobal) })

	// The insight shows both zones connected with acknowledged responses.
	testutil.Until(t, 30*time.Second, "zone A's insight", func() bool {
		r, err := g.store.Get(ctx, api.Key{Type: "ZoneInsight", Name: "zone-a"})
		if err != nil {
			return false
		}
		zi := r.(*api.ZoneInsight)
		return zi.Connected && zi.CPVersion == "test" && zi.Sync["global-to-zone/TrafficRoute"].ResponsesAcked >= 3
	})
}

// TestResumeSendsOnlyWhatChanged: a zone that reconnects holding most of the
// global's resources is sent only the difference.
func TestResumeSendsOnlyWhatChanged(t *testing.T) {
	ctx := context.Background()
	g := startGlobal(t, store.NewMemory(0), 5*time.Second)
	puts := []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}}
	for i := range 50 {
		r := route(1 + i)
		r.Name = "r" + strings.Repeat("x", i%3) + string(rune('a'+i%26)) + string(rune('a'+i/26))
		puts = append(puts, r)
	}
	if _, err := g.store.Apply(ctx, puts, nil); err != nil {
		t.Fatal(err)
	}
	a := startZone(t, g, "zone-a", "zone:zone-a")
	count := func(s store.Store) int {
		res, _ := s.List(ctx, store.ListOptions{Type: "TrafficRoute"})
		return len(res.Items)
	}
	testutil.Until(t, 30*time.Second, "50 routes in zone A", func() bool { return count(a.store) == 50 })
	a.cancel()

	// While A is away: one route changes, one is deleted, one is added.
	changed := puts[1].(*api.TrafficRoute)
	changed = api.DeepCopy(changed).(*api.TrafficRoute)
	changed.Spec.Split[0].Weight = 99
	added := route(7)
	added.Name = "added"
	if _, err := g.store.Apply(ctx, []api.Resource{changed, added}, []api.Key{api.KeyOf(puts[2])}); err != nil {
		t.Fatal(err)
	}
	before, _ := a.store.List(ctx, store.ListOptions{Type: "TrafficRoute"})

	// Reconnect with the same store.
	c2ctx, cancel := context.WithCancel(ctx)
	bg := background(t, cancel)
	var received atomic.Int64
	cache := kds.NewCache(a.store, kds.ZoneToGlobalTypes(), nil, zaptest.NewLogger(t))
	bg.Go(func() { cache.Start(c2ctx) })
	c, _ := client.New(client.Deps{Zone: "zone-a", Address: g.addr, Token: "zone:zone-a",
		TLS: &tls.Config{RootCAs: g.pool, ServerName: "localhost"}, Store: a.store, Cache: cache, Log: zaptest.NewLogger(t), Version: "test",
		Applied: func(url string, resp *discoveryResponse) {
			if url == kds.TypeURL("TrafficRoute") {
				received.Add(int64(len(resp.GetResources()) + len(resp.GetRemovedResources())))
			}
		}})
	bg.Go(func() { c.Start(c2ctx) })
	testutil.Until(t, 30*time.Second, "the changes in zone A", func() bool {
		r, err := a.store.Get(ctx, api.KeyOf(changed))
		return err == nil && r.(*api.TrafficRoute).Spec.Split[0].Weight == 99 && has(a.store, api.KeyOf(added)) && !has(a.store, api.KeyOf(puts[2]))
	})
	// Applied runs after the store has the changes: wait for it too.
	testutil.Until(t, 30*time.Second, "the changes' responses to be counted", func() bool { return received.Load() >= 3 })
	if n := received.Load(); n != 3 {
		t.Fatalf("the reconnecting zone was sent %d route changes, want exactly 3 (of %d routes)", n, len(before.Items))
	}
}
