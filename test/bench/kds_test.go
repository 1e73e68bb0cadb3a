// Package bench holds load tests and benchmarks of whole subsystems over real
// sockets and a real PostgreSQL. Run them with
//
//	go test ./test/bench -run '^$' -bench . -benchtime 300x
//
// and record the figures in test/BENCHMARKS.md.
package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/kds/client"
	"github.com/ursamesh/ursa/kds/server"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/pgtest"
	"github.com/ursamesh/ursa/pkg/servingcert"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/postgres"
	"github.com/ursamesh/ursa/pkg/tokens"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	var err error
	if cluster, err = pgtest.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	cluster.Close()
	os.Exit(code)
}

// global is an in-process global KDS server on PostgreSQL, over TLS on
// loopback.
type global struct {
	store  store.Store
	issuer *tokens.Issuer
	addr   string
	pool   *x509.CertPool
}

func startGlobal(b *testing.B) *global {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	dsn, err := cluster.NewDatabase(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := postgres.MigrateUp(ctx, dsn); err != nil {
		b.Fatal(err)
	}
	st, err := postgres.Open(ctx, dsn, postgres.Options{})
	if err != nil {
		b.Fatal(err)
	}
	log := zap.NewNop()
	issuer := tokens.NewIssuer(st)
	cache := kds.NewCache(st, kds.GlobalToZoneTypes(), nil, log)
	srv, err := server.New(server.Deps{Store: st, Cache: cache, Verifier: issuer, Log: log, Instance: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { cache.Start(ctx) })
	wg.Go(func() { srv.Start(ctx) })
	cert, err := servingcert.Load(ctx, st, servingcert.Options{Secret: "kds-server-tls", Listen: "127.0.0.1:0"})
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer(append(srv.ServerOptions(), grpc.Creds(credentials.NewTLS(cert.TLSConfig())))...)
	srv.Register(gs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go gs.Serve(ln)
	b.Cleanup(func() { cancel(); gs.Stop(); wg.Wait(); st.Close() })
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cert.CAPEM())
	return &global{store: st, issuer: issuer, addr: ln.Addr().String(), pool: pool}
}

// zone is a lightweight zone: a KDS client over a memory store, counting
// the TrafficRoute responses it has applied.
type zone struct {
	st      store.Store
	cancel  context.CancelFunc
	done    sync.WaitGroup
	mu      sync.Mutex
	applied int
	last    time.Time
	signal  chan struct{}
}

func (g *global) startZone(b *testing.B, name string, st store.Store, signal chan struct{}) *zone {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	token, err := g.issuer.IssueZoneToken(ctx, name, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	z := &zone{st: st, cancel: cancel, signal: signal}
	log := zap.NewNop()
	cache := kds.NewCache(st, kds.ZoneToGlobalTypes(), func(r api.Resource) bool {
		return r.GetMeta().Labels[api.LabelOrigin] != api.OriginGlobal
	}, log)
	c, err := client.New(client.Deps{Zone: name, Address: g.addr, Token: token, TLS: &tls.Config{RootCAs: g.pool, ServerName: "localhost"},
		Store: st, Cache: cache, Log: log, Version: "bench",
		Applied: func(url string, _ *discovery.DeltaDiscoveryResponse) {
			if url != kds.TypeURL("TrafficRoute") {
				return
			}
			z.mu.Lock()
			z.applied++
			z.last = time.Now()
			z.mu.Unlock()
			select {
			case signal <- struct{}{}:
			default:
			}
		}})
	if err != nil {
		b.Fatal(err)
	}
	z.done.Go(func() { cache.Start(ctx) })
	z.done.Go(func() { c.Start(ctx) })
	b.Cleanup(z.stop)
	return z
}

func (z *zone) stop() { z.cancel(); z.done.Wait() }

func (z *zone) count() (int, time.Time) {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.applied, z.last
}

func route(weight int) *api.TrafficRoute {
	return &api.TrafficRoute{
		Meta: api.Meta{Type: "TrafficRoute", Mesh: "default", Name: "billing"},
		Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: "billing"},
			Split: []api.Split{{Weight: weight, Tags: map[string]string{api.TagZone: "zone-1"}}, {Weight: 100 - weight, Tags: map[string]string{api.TagZone: "zone-2"}}}},
	}
}

// waitAll waits until every zone has applied want route responses and
// returns when the last of them did.
func waitAll(b *testing.B, zones []*zone, signal chan struct{}, want int) time.Time {
	deadline := time.After(30 * time.Second)
	for {
		var last time.Time
		all := true
		for _, z := range zones {
			n, at := z.count()
			if n < want {
				all = false
				break
			}
			if at.After(last) {
				last = at
			}
		}
		if all {
			return last
		}
		select {
		case <-signal:
		case <-time.After(time.Millisecond):
		case <-deadline:
			b.Fatalf("zones did not all apply response %d within 30s", want)
		}
	}
}

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// BenchmarkPropagation measures, per policy write at the global, the time
// from the write's commit (its Apply returning) to the moment the last zone
// has applied the change and acknowledges it.
func BenchmarkPropagation(b *testing.B) {
	for _, n := range []int{1, 2, 10, 100} {
		b.Run(fmt.Sprintf("zones=%d", n), func(b *testing.B) {
			g := startGlobal(b)
			ctx := context.Background()
			if _, err := g.store.Apply(ctx, []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}, route(0)}, nil); err != nil {
				b.Fatal(err)
			}
			signal := make(chan struct{}, 1)
			zones := make([]*zone, n)
			for i := range zones {
				zones[i] = g.startZone(b, fmt.Sprintf("zone-%d", i), store.NewMemory(0), signal)
			}
			waitAll(b, zones, signal, 1)
			var lat []time.Duration
			i := 0
			for b.Loop() {
				i++
				if _, err := g.store.Apply(ctx, []api.Resource{route(1 + i%99)}, nil); err != nil {
					b.Fatal(err)
				}
				committed := time.Now()
				last := waitAll(b, zones, signal, i+1)
				lat = append(lat, last.Sub(committed))
			}
			b.ReportMetric(float64(percentile(lat, 0.5).Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(percentile(lat, 0.99).Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(slices.Max(lat).Microseconds())/1000, "max-ms")
		})
	}
}

// BenchmarkReconnect measures 100 zones that hold a stale copy reconnecting
// at once: from the moment they all start to the moment the last one has
// the global's state (10 changed routes of 100).
func BenchmarkReconnect(b *testing.B) {
	const n, routes = 100, 100
	g := startGlobal(b)
	ctx := context.Background()
	puts := []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}}
	for i := range routes {
		r := route(1 + i%99)
		r.Name = fmt.Sprintf("route-%03d", i)
		puts = append(puts, r)
	}
	if _, err := g.store.Apply(ctx, puts, nil); err != nil {
		b.Fatal(err)
	}
	signal := make(chan struct{}, 1)
	stores := make([]store.Store, n)
	zones := make([]*zone, n)
	for i := range zones {
		stores[i] = store.NewMemory(0)
		zones[i] = g.startZone(b, fmt.Sprintf("zone-%d", i), stores[i], signal)
	}
	waitAll(b, zones, signal, 1)
	var took []time.Duration
	round := 0
	for b.Loop() {
		round++
		for _, z := range zones {
			z.stop()
		}
		var changed []api.Resource
		for i := range 10 {
			r := route(1 + (round*7+i)%99)
			r.Name = fmt.Sprintf("route-%03d", i*10)
			changed = append(changed, r)
		}
		if _, err := g.store.Apply(ctx, changed, nil); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		for i := range zones {
			zones[i] = g.startZone(b, fmt.Sprintf("zone-%d", i), stores[i], signal)
		}
		last := waitAll(b, zones, signal, 1)
		took = append(took, last.Sub(start))
		for i, s := range stores {
			res, _ := s.List(ctx, store.ListOptions{Type: "TrafficRoute"})
			if len(res.Items) != routes {
				b.Fatalf("zone %d holds %d routes after reconnecting", i, len(res.Items))
			}
		}
	}
	b.ReportMetric(float64(percentile(took, 0.5).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(slices.Max(took).Microseconds())/1000, "max-ms")
}
