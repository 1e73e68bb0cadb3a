package bench

// xDS over TLS (issue 12): the full push of BenchmarkFullPush on TLS 1.3
// (BenchmarkFullPushTLS, beside the plaintext one in the same run), and N
// proxies getting their configuration again after every connection drops
// at once (BenchmarkResync, BenchmarkResyncTLS):
//
//	GOMEMLIMIT=15GiB go test ./test/bench -run '^$' -bench '(FullPush|FullPushDelta|Resync)(TLS)?$/proxies=10000$' -benchtime 1x -timeout 30m
//
// The server's certificate is what a zone serves by default: a leaf for
// 127.0.0.1 from pkg/servingcert, signed by a CA kept in a store; the
// simulated proxies verify it against that CA, with TLS 1.3 only, and the
// default key exchange of Go's TLS (X25519MLKEM768, then X25519).

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/gctune"
	"github.com/ursamesh/ursa/pkg/servingcert"
	"github.com/ursamesh/ursa/pkg/store"
	zonecp "github.com/ursamesh/ursa/zone"
)

// The child's settings for TLS and for reconnecting (see runClients).
const (
	// caVar names the PEM file of the CA the proxies verify the server
	// with; unset, they dial in plaintext.
	caVar = "URSA_BENCH_XDS_CA"
	// resyncVar, set, makes a proxy whose stream ends open a new one (on a
	// connection that redials), as Envoy does, instead of failing.
	resyncVar = "URSA_BENCH_XDS_RESYNC"
)

// serverTLS returns the gRPC server option of a zone's default xDS TLS,
// limited to TLS 1.3, and the child's setting that trusts its CA.
func serverTLS(b *testing.B) (grpc.ServerOption, string) {
	b.Helper()
	cert, err := servingcert.Load(context.Background(), store.NewMemory(0),
		servingcert.Options{Secret: "xds-server-tls", CommonName: "bench CA", Listen: "127.0.0.1:0"})
	if err != nil {
		b.Fatal(err)
	}
	file := filepath.Join(b.TempDir(), "xds-ca.pem")
	if err := os.WriteFile(file, cert.CAPEM(), 0o600); err != nil {
		b.Fatal(err)
	}
	cfg := cert.TLSConfig()
	cfg.MinVersion = tls.VersionTLS13
	return grpc.Creds(credentials.NewTLS(cfg)), caVar + "=" + file
}

// clientCreds are the child's credentials for addr: TLS 1.3 verified with
// the CA that caVar names, else plaintext.
func clientCreds(addr string) (credentials.TransportCredentials, error) {
	file := os.Getenv(caVar)
	if file == "" {
		return insecure.NewCredentials(), nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no certificate", file)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: host, MinVersion: tls.VersionTLS13}), nil
}

// proxyFunc is one simulated proxy's stream (sotwProxy, deltaProxy).
type proxyFunc func(ctx context.Context, client discovery.AggregatedDiscoveryServiceClient, id string, i int, sample string, eds bool, t *genTracker) error

// resyncing runs a proxy's stream again whenever it ends, on its
// connection once that is back: each new stream counts what it receives
// afresh, so a proxy reaches the next generation once its new stream has
// brought it every type again.
func resyncing(run proxyFunc) proxyFunc {
	return func(ctx context.Context, client discovery.AggregatedDiscoveryServiceClient, id string, i int, sample string, eds bool, t *genTracker) error {
		client = waitForReady{client}
		for {
			err := run(ctx, client, id, i, sample, eds, t)
			if ctx.Err() != nil {
				return err
			}
		}
	}
}

// waitForReady opens streams that wait for the connection to be ready,
// rather than fail while it reconnects.
type waitForReady struct {
	discovery.AggregatedDiscoveryServiceClient
}

func (w waitForReady) StreamAggregatedResources(ctx context.Context, opts ...grpc.CallOption) (discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, error) {
	return w.AggregatedDiscoveryServiceClient.StreamAggregatedResources(ctx, append(opts, grpc.WaitForReady(true))...)
}

func (w waitForReady) DeltaAggregatedResources(ctx context.Context, opts ...grpc.CallOption) (discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, error) {
	return w.AggregatedDiscoveryServiceClient.DeltaAggregatedResources(ctx, append(opts, grpc.WaitForReady(true))...)
}

// trackingListener keeps the connections it accepts, so that a benchmark
// can end them all at once.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

// dropAll closes every connection accepted so far, as a network failure or
// a load balancer between proxies and CP would end them.
func (l *trackingListener) dropAll() {
	l.mu.Lock()
	conns := l.conns
	l.conns = nil
	l.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// loadMesh is the fixture's mesh with its CA and n Dataplanes load-0 …
// load-<n-1> of loadService, which reach the fixture's services and which
// no proxy reaches.
func loadMesh(f *xdsMeshFixture, n int) []api.Resource {
	rs := f.state.resources()
	f.ca.Type, f.ca.Mesh, f.ca.Name = "MeshCA", xdsMesh, "ca"
	rs = append(rs, f.ca)
	for i := range n {
		rs = append(rs, &api.Dataplane{
			Meta: api.Meta{Type: "Dataplane", Mesh: xdsMesh, Name: fmt.Sprintf("load-%d", i)},
			Networking: api.DataplaneNetworking{Address: ipv4(10, 128+i>>16, (i>>8)&255, i&255),
				Inbound: []api.Inbound{{Port: 8080, ServicePort: 8081, Tags: map[string]string{api.TagService: loadService, api.TagZone: xdsZone}}}},
		})
	}
	return rs
}

// BenchmarkResync connects N proxies to the zone's own pipeline (as
// BenchmarkEndpointChange: store, catalogue, Generation with its identity
// issuance, presence, xDS server), each on its own connection as Envoy
// sidecars are; then, each iteration, the server ends every connection at
// once, and the benchmark waits until every proxy has redialled, opened a
// new stream, been regenerated and received its listeners, clusters and
// load assignments again ("resync-s", until the last; "first-s", "p50-s",
// "p90-s", "p99-s" until the first, half, 90 % and 99 % of them). One
// iteration per run: -benchtime 1x.
func BenchmarkResync(b *testing.B) {
	benchmarkFullPushSizes(b, func(b *testing.B, n int) { resync(b, n, false) })
}

// BenchmarkResyncTLS is BenchmarkResync on TLS 1.3: every proxy makes a
// full handshake again (no session resumption), verifying the server.
func BenchmarkResyncTLS(b *testing.B) {
	benchmarkFullPushSizes(b, func(b *testing.B, n int) { resync(b, n, true) })
}

func resync(b *testing.B, n int, secure bool) {
	prevGC := debug.SetGCPercent(100)
	debug.SetGCPercent(prevGC)
	gctune.Fixed(zonecp.DefaultConfig().GCPercent, zap.NewNop())
	b.Cleanup(func() { debug.SetGCPercent(prevGC) })
	f := newXDSMesh(b, xdsServices, xdsPerService)
	var opts []grpc.ServerOption
	env := []string{resyncVar + "=1"}
	if secure {
		creds, e := serverTLS(b)
		opts, env = append(opts, creds), append(env, e)
	}
	p := startZonePipeline(b, loadMesh(f, n), opts...)
	const perConn = 1
	start := time.Now()
	c := startClientsOf(b, p.addr, sotw, n, perConn, sampleListener(f.state), "load-%d", true, env...)
	initial := c.waitGen(b, 1, 10*time.Minute)
	connect := initial.last.Sub(start)
	for nodes, _ := p.srv.Nodes(); len(nodes) != n; nodes, _ = p.srv.Nodes() {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(2 * ackFlush) // the presence writes every proxy's ACKs
	p.drain()

	defer profileCPU(b, fmt.Sprintf("resync.%t.%d", secure, n))()
	var last, first, p50, p90, p99, cpCPU, clientsCPU time.Duration
	k := 0
	for b.Loop() {
		k++
		c.expectEDS(b, k+1, k+1, k+1, k+1)
		cp0, cl0 := cpuTime("self"), cpuTime(strconv.Itoa(c.cmd.Process.Pid))
		t0 := time.Now()
		p.ln.dropAll()
		q50, q90, q99 := c.waitTimes(b, k+1, 10*time.Minute)
		r := c.waitGen(b, k+1, time.Minute)
		cpCPU += cpuTime("self") - cp0
		clientsCPU += cpuTime(strconv.Itoa(c.cmd.Process.Pid)) - cl0
		if want := wantSample(changedService, 90); r.samples != want {
			b.Fatalf("after resync %d proxies hold %q, want %q", k, r.samples, want)
		}
		last += r.last.Sub(t0)
		first += r.first.Sub(t0)
		p50, p90, p99 = p50+q50.Sub(t0), p90+q90.Sub(t0), p99+q99.Sub(t0)
		for nodes, _ := p.srv.Nodes(); len(nodes) != n; nodes, _ = p.srv.Nodes() {
			time.Sleep(10 * time.Millisecond)
		}
	}
	per := func(d time.Duration) float64 { return d.Seconds() / float64(k) }
	b.ReportMetric(connect.Seconds(), "connect-s") // after b.Loop, which clears the metrics reported before it
	b.ReportMetric(per(last), "resync-s")
	b.ReportMetric(per(first), "first-s")
	b.ReportMetric(per(p50), "p50-s")
	b.ReportMetric(per(p90), "p90-s")
	b.ReportMetric(per(p99), "p99-s")
	b.ReportMetric(per(cpCPU), "cp-cpu-s")
	b.ReportMetric(per(clientsCPU), "clients-cpu-s")
}
