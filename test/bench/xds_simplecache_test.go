package bench

// The full push of BenchmarkFullPush, served by go-control-plane's own
// SimpleCache instead of ours (issue 11), so that our push time can be read
// as a ratio to a well-known peer's on whatever machine it runs:
//
//	GOMEMLIMIT=15GiB go test ./test/bench -run '^$' -bench 'FullPush(Delta)?(SimpleCache)?$/proxies=10000$' -benchtime 1x -timeout 45m
//
// Same fixture, same simulated proxies (the child process of
// xds_clients_test.go) on real gRPC streams, same garbage collection
// target, timed the same way: from the start of regeneration for all
// proxies until the last proxy has received, and ACKed, what the change
// touched. Only the serving side differs: go-control-plane's server
// (serverv3.NewServer) on cache.NewSnapshotCache(false, cache.IDHash{},
// nil), non-ADS mode (see ../../shared/NOTES.md: in ADS mode it waits for
// requests naming every resource), each proxy's snapshot made with
// cache.NewSnapshot from the very Resources our generator returns, its
// version a push counter.
//
// What that means for the comparison: a snapshot made by cache.NewSnapshot
// has one version for every type, so in state of the world a push resends
// each proxy's clusters as well as its listeners (ours versions each type
// and resends only the listeners); in delta, both send only the changed
// listeners. BenchmarkFullPushSimpleCacheTypeVersions gives SimpleCache
// its best case in state of the world: each type's version changes only
// when the push changes that type (the benchmark knows which, a real
// control plane would have to find out). SimpleCache does not validate
// what it is given; ours does (its SetResources validates every new
// resource).

import (
	"context"
	"flag"
	"fmt"
	"net"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/gctune"
	"github.com/ursamesh/ursa/pkg/xds"
	zonecp "github.com/ursamesh/ursa/zone"
)

// BenchmarkFullPushSimpleCache is BenchmarkFullPush (state of the world)
// served by go-control-plane's SimpleCache.
func BenchmarkFullPushSimpleCache(b *testing.B) { benchmarkPeerPush(b, sotw, false) }

// BenchmarkFullPushSimpleCacheTypeVersions is BenchmarkFullPushSimpleCache
// with a version per type, new only for the types a push changes.
func BenchmarkFullPushSimpleCacheTypeVersions(b *testing.B) { benchmarkPeerPush(b, sotw, true) }

// BenchmarkFullPushDeltaSimpleCache is BenchmarkFullPushDelta served by
// go-control-plane's SimpleCache.
func BenchmarkFullPushDeltaSimpleCache(b *testing.B) { benchmarkPeerPush(b, delta, false) }

func benchmarkPeerPush(b *testing.B, wire protocol, typeVersions bool) {
	benchmarkFullPushSizes(b, func(b *testing.B, n int) { simpleCachePush(b, wire, n, typeVersions) })
}

// benchmarkFullPushSizes runs push at each size BenchmarkFullPush does,
// skipping unless run with -benchtime 1x to 5x.
func benchmarkFullPushSizes(b *testing.B, push func(b *testing.B, n int)) {
	if f := flag.Lookup("test.benchtime"); f != nil {
		n, err := strconv.Atoi(strings.TrimSuffix(f.Value.String(), "x"))
		if !strings.HasSuffix(f.Value.String(), "x") || err != nil || n > 5 {
			b.Skip("each iteration is a full push to up to 10k proxies: run with -benchtime 1x")
		}
	}
	for _, n := range []int{1000, 5000, 10000} {
		b.Run(fmt.Sprintf("proxies=%d", n), func(b *testing.B) { push(b, n) })
	}
}

// pushGenerator returns what generates a proxy's resources once
// changedService's TrafficRoute splits v1/100-v1 by version. It is this
// file's one use of the generator, which it reaches through the fixture.
func pushGenerator(f *xdsMeshFixture, v1 int) func(dp *api.Dataplane) (xds.Resources, error) {
	st := f.state
	if v1 != 90 { // the fixture's own
		st = withRoute(f.state, changedService, v1)
	}
	st.State() // the catalogue, built before the push as in benchmarkFullPush
	return func(dp *api.Dataplane) (xds.Resources, error) { return f.generate(st, dp) }
}

// onWorkers calls do(i) for i in [0, n) on GOMAXPROCS goroutines, as the
// zone's generation loop spreads proxies over its workers, and returns the
// sum of what each part of do took over the workers.
func onWorkers(b *testing.B, n int, do func(i int) (gen, set time.Duration, err error)) (genTook, setTook time.Duration) {
	var mu sync.Mutex
	var next atomic.Int64
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			var gen, set time.Duration
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				g, s, err := do(int(i))
				if err != nil {
					b.Error(err)
					return
				}
				gen, set = gen+g, set+s
			}
			mu.Lock()
			genTook, setTook = genTook+gen, setTook+set
			mu.Unlock()
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	return genTook, setTook
}

func simpleCachePush(b *testing.B, wire protocol, n int, typeVersions bool) {
	const perConn = 100
	prevGC := debug.SetGCPercent(100)
	debug.SetGCPercent(prevGC)
	gctune.Fixed(zonecp.DefaultConfig().GCPercent, zap.NewNop())
	b.Cleanup(func() { debug.SetGCPercent(prevGC) })
	f := newXDSMesh(b, xdsServices, xdsPerService)
	dps := f.proxies(b, n)
	ids := make([]string, n)
	for i, dp := range dps {
		ids[i] = xds.NodeID(xdsMesh, dp.Name)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)

	// publish regenerates every proxy and sets its snapshot at version,
	// or at each type's version in typeVersion when it has one.
	sc := cache.NewSnapshotCache(false, cache.IDHash{}, nil)
	typeVersion := map[string]string{}
	publish := func(generate func(*api.Dataplane) (xds.Resources, error), version string) (genTook, setTook time.Duration) {
		return onWorkers(b, n, func(i int) (gen, set time.Duration, err error) {
			t0 := time.Now()
			res, err := generate(dps[i])
			if err != nil {
				return 0, 0, err
			}
			t1 := time.Now()
			snap, err := cache.NewSnapshot(version, res)
			for typ, v := range typeVersion {
				if list, ok := res[typ]; ok && err == nil {
					snap.Resources[cache.GetResponseType(typ)] = cache.NewResources(v, list)
				}
			}
			if err == nil {
				err = sc.SetSnapshot(ctx, ids[i], snap)
			}
			return t1.Sub(t0), time.Since(t1), err
		})
	}

	// The types a proxy's configuration has (what typeVersions versions).
	probeTypes := map[string]bool{}
	if res, err := pushGenerator(f, 90)(dps[0]); err != nil {
		b.Fatal(err)
	} else {
		for typ := range res {
			probeTypes[typ] = true
		}
	}

	// 1. The server, every proxy's initial snapshot, no client connected.
	var nacks atomic.Int64
	cb := serverv3.CallbackFuncs{
		StreamRequestFunc: func(_ int64, r *discovery.DiscoveryRequest) error {
			if r.GetErrorDetail() != nil {
				nacks.Add(1)
			}
			return nil
		},
		StreamDeltaRequestFunc: func(_ int64, r *discovery.DeltaDiscoveryRequest) error {
			if r.GetErrorDetail() != nil {
				nacks.Add(1)
			}
			return nil
		},
	}
	gs := grpc.NewServer(grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WaitForHandlers(true)) // so that the next benchmark starts from a clean heap
	discovery.RegisterAggregatedDiscoveryServiceServer(gs, serverv3.NewServer(ctx, sc, cb))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go gs.Serve(ln)
	b.Cleanup(gs.Stop)
	version := 1
	if typeVersions {
		for typ := range probeTypes {
			typeVersion[typ] = "1"
		}
	}
	publish(pushGenerator(f, 90), strconv.Itoa(version))

	// 2. N proxies connect, each receives its configuration and ACKs it.
	metrics := map[string]float64{}
	start := time.Now()
	c := startClients(b, ln.Addr().String(), wire, n, perConn, sampleListener(f.state))
	initial := c.waitGen(b, 1, 10*time.Minute)
	metrics["connect-s"] = initial.last.Sub(start).Seconds()
	if want := wantSample(changedService, 90); initial.samples != want {
		b.Fatalf("proxies hold %q, want %q", initial.samples, want)
	}
	probe, err := pushGenerator(f, 90)(dps[0])
	if err != nil {
		b.Fatal(err)
	}
	size, _ := resourceBytes(probe)
	metrics["config-B"] = float64(size)

	// 3. The pushes, as in fullPush.
	resetPeakRSS()
	defer profileCPU(b, fmt.Sprintf("simplecache.%s.%d", wire, n))()
	var push, first, loop, gen, set, cpCPU, clientsCPU time.Duration
	k, prev, listeners, clusters := 0, 90, 1, 1
	for b.Loop() {
		k++
		v1 := 80 - k%70
		before, err := pushGenerator(f, prev)(dps[0])
		if err != nil {
			b.Fatal(err)
		}
		after, err := pushGenerator(f, v1)(dps[0])
		if err != nil {
			b.Fatal(err)
		}
		l, cl := changedTypes(before, after)
		if !l && !cl {
			b.Fatalf("push %d changes nothing", k)
		}
		if typeVersions {
			for typ := range probeTypes {
				if !sameOfType(before, after, typ) {
					typeVersion[typ] = strconv.Itoa(k + 1)
				}
			}
		} else if wire == sotw {
			// One version for the whole snapshot: every type a proxy
			// watches is resent.
			l, cl = true, true
		}
		listeners, clusters = listeners+btoi(l), clusters+btoi(cl)
		prev = v1
		c.expect(b, k+1, listeners, clusters)
		generate := pushGenerator(f, v1)
		version++
		cpCPU0, clientsCPU0 := cpuTime("self"), cpuTime(strconv.Itoa(c.cmd.Process.Pid))
		start := time.Now()
		genTook, setTook := publish(generate, strconv.Itoa(version))
		loopTook := time.Since(start)
		r := c.waitGen(b, k+1, 10*time.Minute)
		cpCPU += cpuTime("self") - cpCPU0
		clientsCPU += cpuTime(strconv.Itoa(c.cmd.Process.Pid)) - clientsCPU0
		if want := wantSample(changedService, v1); r.samples != want {
			b.Fatalf("after push %d proxies hold %q, want %q", k, r.samples, want)
		}
		push += r.last.Sub(start)
		first += r.first.Sub(start)
		loop += loopTook
		gen += genTook
		set += setTook
	}
	if nacks.Load() > 0 {
		b.Fatalf("%d NACKs", nacks.Load())
	}
	_, peak := procRSS()
	for unit, v := range metrics {
		b.ReportMetric(v, unit)
	}
	per := func(d time.Duration) float64 { return d.Seconds() / float64(k) }
	b.ReportMetric(per(push), "push-s")
	b.ReportMetric(per(first), "first-s")
	b.ReportMetric(per(loop), "loop-s")
	b.ReportMetric(per(gen), "gen-s")
	b.ReportMetric(per(set), "set-s")
	b.ReportMetric(per(cpCPU), "cp-cpu-s")
	b.ReportMetric(per(clientsCPU), "clients-cpu-s")
	b.ReportMetric(float64(peak)/(1<<20), "peak-rss-MB")
}

// sameOfType reports whether a and b hold the same resources of typ.
func sameOfType(a, b xds.Resources, typ string) bool {
	if len(a[typ]) != len(b[typ]) {
		return false
	}
	byName := map[string]proto.Message{}
	for _, r := range a[typ] {
		byName[cache.GetResourceName(r)] = r
	}
	for _, r := range b[typ] {
		if old, ok := byName[cache.GetResourceName(r)]; !ok || !proto.Equal(old, r) {
			return false
		}
	}
	return true
}
