package bench

// BenchmarkEndpointChange (issue 11): one endpoint change with N proxies
// connected, through the zone's own pipeline.
//
//	GOMEMLIMIT=15GiB go test ./test/bench -run '^$' -bench 'EndpointChange/' -benchtime 5x -timeout 30m
//
// (URSA_BENCH_XDS_CPUPROFILE=/tmp/cpu profiles the changes alone;
// URSA_BENCH_NO_PRESENCE=1 leaves the presence out, to tell what the
// proxies' insights cost.)

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/gctune"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/xds"
	zonecp "github.com/ursamesh/ursa/zone"
)

// ackFlush is how often the presence writes ACKed versions (its
// ackFlushEvery).
const ackFlush = 5 * time.Second

// loadService is the service of the benchmark's connected proxies: each
// reaches the mesh's other services, and no proxy reaches it.
const loadService = "load"

// syncRound is one round of the zone's generation.
type syncRound struct {
	generated, connected int
	took                 time.Duration
	at                   time.Time
}

// zonePipeline is a zone CP's generation path in this process: a memory
// store, the mirror, the catalogue, Generation, the presence writing each
// proxy's DataplaneInsight, and the xDS server, with no KDS or DNS beside
// them.
type zonePipeline struct {
	st     store.Store
	srv    *xds.Server
	addr   string
	ln     *trackingListener
	rounds chan syncRound
}

// startZonePipeline starts the pipeline over rs; opts go to its gRPC server
// (its TLS, say).
func startZonePipeline(b *testing.B, rs []api.Resource, opts ...grpc.ServerOption) *zonePipeline {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	p := &zonePipeline{st: store.NewMemory(0), rounds: make(chan syncRound, 1<<16)}
	if _, err := p.st.Apply(ctx, rs, nil); err != nil {
		b.Fatal(err)
	}
	srv, err := xds.NewServer(zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	p.srv = srv
	gs := grpc.NewServer(append(append(opts, xds.GRPCServerOptions()...), grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}))...)
	srv.Register(ctx, gs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	p.ln = &trackingListener{Listener: ln}
	p.addr = ln.Addr().String()
	mirror := store.NewMirror(p.st, append(catalog.Types(), "Lease"), zap.NewNop())
	cat := catalog.NewFollower(xdsZone, mirror, zap.NewNop())
	presence := zonecp.NewPresence(p.st, mirror, "bench", zap.NewNop())
	withPresence := os.Getenv("URSA_BENCH_NO_PRESENCE") == "" // to tell what the insights cost
	if withPresence {
		srv.SetPresence(presence)
	}
	gen := zonecp.NewGeneration(zonecp.GenerationDeps{Catalog: cat, Nodes: srv, Out: srv, CertTTL: 24 * time.Hour, Log: zap.NewNop(),
		OnSync: func(generated, connected int, took time.Duration) {
			select {
			case p.rounds <- syncRound{generated, connected, took, time.Now()}:
			default:
			}
		}})
	var wg sync.WaitGroup
	wg.Go(func() { gs.Serve(p.ln) })
	wg.Go(func() { mirror.Start(ctx) })
	wg.Go(func() { cat.Start(ctx) })
	wg.Go(func() { gen.Start(ctx) })
	if withPresence {
		wg.Go(func() { presence.Start(ctx) })
	}
	b.Cleanup(func() { cancel(); gs.Stop(); wg.Wait() })
	return p
}

// drain sums the rounds reported since the last drain.
func (p *zonePipeline) drain() (generated int, rounds int) {
	for {
		select {
		case r := <-p.rounds:
			generated += r.generated
			rounds++
		default:
			return generated, rounds
		}
	}
}

// nextRound waits for the next round of generation.
func (p *zonePipeline) nextRound(b *testing.B, timeout time.Duration) syncRound {
	b.Helper()
	select {
	case r := <-p.rounds:
		return r
	case <-time.After(timeout):
		b.Fatalf("no round of generation within %s", timeout)
		return syncRound{}
	}
}

// offline writes a Dataplane's insight: its proxy connected or not.
func (p *zonePipeline) setOnline(b *testing.B, name string, online bool) {
	b.Helper()
	in := &api.DataplaneInsight{Meta: api.Meta{Type: "DataplaneInsight", Mesh: xdsMesh, Name: name},
		ProxyStatus: api.ProxyStatus{Connected: online, Instance: "bench"}}
	if !online {
		in.Instance = ""
		in.DisconnectedAt = store.Now()
	}
	if _, err := p.st.Apply(context.Background(), []api.Resource{in}, nil); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkEndpointChange connects N proxies (instances of loadService,
// which reach the fixture's 50 services through their VIPs) to the zone's
// own pipeline, then, each iteration, takes one instance of svc-00 offline
// or back (its DataplaneInsight written to the store, as the presence
// component does) and waits until every proxy has ACKed its new load
// assignments. It reports how many proxies were regenerated per change
// ("regenerated"), of how many connected, the heap and stacks of the whole
// pipeline per proxy with every proxy connected and its insight written
// ("zone-B/proxy": the store, mirror and catalogue copies of its Dataplane
// and insight, its snapshot and stream), and the time from the store write
// until the first and the last proxy received the change ("first-s",
// "ack-s"). After the iterations, an instance of loadService itself goes
// offline: no proxy reaches it, so none is regenerated
// ("unreferenced-regenerated"), and the round takes "unreferenced-sync-s".
func BenchmarkEndpointChange(b *testing.B) {
	for _, wire := range []protocol{sotw, delta} {
		for _, n := range []int{1000, 10000} {
			b.Run(fmt.Sprintf("%s/proxies=%d", wire, n), func(b *testing.B) { endpointChange(b, wire, n) })
		}
	}
}

func endpointChange(b *testing.B, wire protocol, n int) {
	prevGC := debug.SetGCPercent(100)
	debug.SetGCPercent(prevGC)
	gctune.Fixed(zonecp.DefaultConfig().GCPercent, zap.NewNop())
	b.Cleanup(func() { debug.SetGCPercent(prevGC) })
	heap0, stack0, _ := memNow()
	f := newXDSMesh(b, xdsServices, xdsPerService)
	p := startZonePipeline(b, loadMesh(f, n))
	start := time.Now()
	c := startClientsOf(b, p.addr, wire, n, 100, sampleListener(f.state), "load-%d", true)
	initial := c.waitGen(b, 1, 10*time.Minute)
	b.Logf("%d proxies connected and configured in %s", n, initial.last.Sub(start).Round(time.Millisecond))
	if want := wantSample(changedService, 90); initial.samples != want {
		b.Fatalf("proxies hold %q, want %q", initial.samples, want)
	}
	// Let the rounds that connecting set off end.
	for nodes, _ := p.srv.Nodes(); len(nodes) != n; nodes, _ = p.srv.Nodes() {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(2 * ackFlush) // and the presence write every proxy's ACKs
	p.drain()
	heap1, stack1, _ := memNow()
	perProxy := float64(heap1+stack1-heap0-stack0) / float64(n)
	if path := os.Getenv("URSA_BENCH_XDS_HEAPPROFILE"); path != "" {
		// What the zone holds with every proxy connected: go tool pprof
		// -sample_index inuse_space.
		writeHeapProfile(b, fmt.Sprintf("%s.zone.%s.%d", path, wire, n))
	}

	defer profileCPU(b, fmt.Sprintf("endpoint.%s.%d", wire, n))()
	victim := fmt.Sprintf("%s-%03d", changedService, 0)
	var ack, first, cpCPU, clientsCPU time.Duration
	var regenerated, rounds atomic.Int64
	k := 0
	for b.Loop() {
		k++
		c.expectEDS(b, k+1, 1, 1, k+1)
		cp0, cl0 := cpuTime("self"), cpuTime(strconv.Itoa(c.cmd.Process.Pid))
		t0 := time.Now()
		p.setOnline(b, victim, k%2 == 0)
		r := c.waitGen(b, k+1, 5*time.Minute)
		cpCPU += cpuTime("self") - cp0
		clientsCPU += cpuTime(strconv.Itoa(c.cmd.Process.Pid)) - cl0
		ack += r.last.Sub(t0)
		first += r.first.Sub(t0)
		// The round that pushed it has reported by now, or is about to.
		round := p.nextRound(b, time.Minute)
		g, more := p.drain()
		regenerated.Add(int64(round.generated + g))
		rounds.Add(int64(1 + more))
	}
	per := func(d time.Duration) float64 { return d.Seconds() / float64(k) }
	b.ReportMetric(float64(regenerated.Load())/float64(k), "regenerated")
	b.ReportMetric(float64(n), "connected")
	b.ReportMetric(perProxy, "zone-B/proxy")
	b.ReportMetric(float64(rounds.Load())/float64(k), "rounds")
	b.ReportMetric(per(first), "first-s")
	b.ReportMetric(per(ack), "ack-s")
	b.ReportMetric(per(cpCPU), "cp-cpu-s")
	b.ReportMetric(per(clientsCPU), "clients-cpu-s")

	// An instance of the proxies' own service goes: nobody reaches it.
	p.drain()
	t0 := time.Now()
	p.setOnline(b, "load-1", false)
	round := p.nextRound(b, time.Minute)
	b.ReportMetric(float64(round.generated), "unreferenced-regenerated")
	b.ReportMetric(round.at.Sub(t0).Seconds(), "unreferenced-sync-s")
}
