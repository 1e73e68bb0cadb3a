package bench

// The simulated proxies of BenchmarkFullPush, in a child process (this test
// binary re-executed with URSA_BENCH_XDS_CLIENTS set; see init below).
//
// The parent talks to the child in lines. The child prints "ready <k>" once
// it expects generation k, "times <k> <p50> <p90> <p99>" (unix ns: when
// half, 90 % and 99 % of the proxies had reached it) and "gen <k> <first
// unix ns> <last unix ns> <samples>" once every proxy has reached it, and "error <message>" if a
// proxy fails. The parent writes "want <k> <listeners> <clusters>
// [<endpoints>]": a proxy reaches generation k once it has received that
// many distinct versions of its listeners, of its clusters and (with
// URSA_BENCH_XDS_EDS set, when the proxies also subscribe to every load
// assignment) of its endpoints, counting from 1, the first configuration.
// Generation 1 is (1, 1[, 1]) and needs no line. A push that changes only
// listeners expects one more listener version and no new cluster version:
// with per-type versions, the clusters are not resent.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tcp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ursamesh/ursa/pkg/xds"
)

// protocol is how the simulated proxies speak xDS.
type protocol string

const (
	// sotw: state of the world, every response carries every resource
	// of its type.
	sotw protocol = "sotw"
	// delta: incremental, a response carries what changed.
	delta protocol = "delta"
)

// clients is the child process holding the simulated proxies.
type clients struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

// genReport is the child's word that every proxy has reached generation
// k.
type genReport struct {
	k           int
	first, last time.Time
	samples     string
}

func startClients(b *testing.B, addr string, wire protocol, n, perConn int, sample string, env ...string) *clients {
	return startClientsOf(b, addr, wire, n, perConn, sample, "dp-%d", false, env...)
}

// startClientsOf is startClients with the proxies named by nameFormat
// (given the proxy's index) and, with eds, subscribed to their load
// assignments too. env is more of the child's settings: clientTLSEnv,
// clientResyncEnv.
func startClientsOf(b *testing.B, addr string, wire protocol, n, perConn int, sample, nameFormat string, eds bool, env ...string) *clients {
	b.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "URSA_BENCH_XDS_CLIENTS=1", "URSA_BENCH_XDS_ADDR="+addr,
		fmt.Sprintf("URSA_BENCH_XDS_N=%d", n), fmt.Sprintf("URSA_BENCH_XDS_PER_CONN=%d", perConn),
		"URSA_BENCH_XDS_SAMPLE="+sample, "URSA_BENCH_XDS_PROTOCOL="+string(wire), "URSA_BENCH_XDS_NAME="+nameFormat)
	if eds {
		cmd.Env = append(cmd.Env, "URSA_BENCH_XDS_EDS=1")
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	c := &clients{cmd: cmd, stdin: stdin, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	b.Cleanup(func() {
		stdin.Close() // the child exits at EOF
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	return c
}

// expect tells the child what generation k is, and returns once it is
// ready to count it.
func (c *clients) expect(b *testing.B, k, listeners, clusters int) {
	b.Helper()
	c.expectEDS(b, k, listeners, clusters, 0)
}

// expectRoutes is expect with a count of route configuration versions
// too (l7Bench).
func (c *clients) expectRoutes(b *testing.B, k, listeners, clusters, routes int) {
	b.Helper()
	if _, err := fmt.Fprintf(c.stdin, "want %d %d %d %d %d\n", k, listeners, clusters, 0, routes); err != nil {
		b.Fatal(err)
	}
	c.await(b, "ready", k, time.Minute)
}

// expectEDS is expect with a count of load assignment versions too.
func (c *clients) expectEDS(b *testing.B, k, listeners, clusters, endpoints int) {
	b.Helper()
	if _, err := fmt.Fprintf(c.stdin, "want %d %d %d %d\n", k, listeners, clusters, endpoints); err != nil {
		b.Fatal(err)
	}
	c.await(b, "ready", k, time.Minute)
}

func (c *clients) waitGen(b *testing.B, k int, timeout time.Duration) genReport {
	b.Helper()
	f := c.await(b, "gen", k, timeout)
	first, _ := strconv.ParseInt(f[2], 10, 64)
	last, _ := strconv.ParseInt(f[3], 10, 64)
	r := genReport{k: k, first: time.Unix(0, first), last: time.Unix(0, last)}
	if len(f) == 5 {
		r.samples = f[4]
	}
	return r
}

// waitTimes returns when half, 90 % and 99 % of the proxies reached
// generation k; call it before waitGen(k).
func (c *clients) waitTimes(b *testing.B, k int, timeout time.Duration) (p50, p90, p99 time.Time) {
	b.Helper()
	f := c.await(b, "times", k, timeout)
	rest := strings.Fields(f[len(f)-1])
	if len(f) != 5 || len(rest) != 1 {
		b.Fatalf("simulated proxies: malformed times %v", f)
	}
	at := func(s string) time.Time {
		ns, _ := strconv.ParseInt(s, 10, 64)
		return time.Unix(0, ns)
	}
	return at(f[2]), at(f[3]), at(rest[0])
}

// await returns the fields of the child's line "<word> <k> …".
func (c *clients) await(b *testing.B, word string, k int, timeout time.Duration) []string {
	b.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				b.Fatalf("simulated proxies exited before %s %d", word, k)
			}
			f := strings.SplitN(line, " ", 5)
			if f[0] == "error" {
				b.Fatalf("simulated proxies: %s", line)
			}
			if f[0] != word || len(f) < 2 || f[1] != strconv.Itoa(k) {
				continue
			}
			if word == "gen" && len(f) < 4 {
				b.Fatalf("simulated proxies: malformed %q", line)
			}
			return f
		case <-deadline:
			b.Fatalf("no %s %d from the simulated proxies within %s", word, k, timeout)
		}
	}
}

// The simulated proxies: when this test binary is started with
// URSA_BENCH_XDS_CLIENTS set, it runs them instead of the tests (before
// TestMain, so no PostgreSQL either).
func init() {
	if os.Getenv("URSA_BENCH_XDS_CLIENTS") == "" {
		return
	}
	if err := runClients(); err != nil {
		fmt.Printf("error %v\n", strings.ReplaceAll(err.Error(), "\n", " "))
		os.Exit(1)
	}
	os.Exit(0)
}

// genTracker follows every proxy's count of listener and cluster versions
// against the current target; once every proxy has reached it, it prints
// "gen <k> <first unix ns> <last unix ns> <samples>", the samples being the
// distinct weights the sampled proxies held when they reached it.
type genTracker struct {
	mu      sync.Mutex
	proxies []trackedProxy
	k       int
	want    [4]int // listener, cluster, load assignment and route versions
	met     int
	first   int64
	last    int64
	samples map[string]bool
}

type trackedProxy struct {
	got       [4]int // listener, cluster, load assignment and route versions received
	at        int64  // when the last one arrived
	sampled   bool
	sample    string
	reached   int   // the last generation it reached
	reachedAt int64 // when it did
}

func newGenTracker(n, perConn int, eds bool) *genTracker {
	t := &genTracker{proxies: make([]trackedProxy, n), k: 1, want: [4]int{1, 1, 0, 0}, samples: map[string]bool{}}
	if eds {
		t.want[2] = 1
	}
	if l7Bench() {
		t.want[3] = 1
	}
	for i := range t.proxies {
		t.proxies[i].sampled = i%perConn == 0
	}
	return t
}

// typeIndex is a type's index in want and got.
func typeIndex(typeURL string) int {
	switch typeURL {
	case resource.ListenerType:
		return 0
	case resource.ClusterType:
		return 1
	case resource.RouteType:
		return 3
	}
	return 2
}

// received records that proxy i got a new version of a type at at; sample
// is its weights when the response said (empty: unchanged).
func (t *genTracker) received(i int, typeURL string, at int64, sample string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := &t.proxies[i]
	p.got[typeIndex(typeURL)]++
	p.at = at
	if sample != "" {
		p.sample = sample
	}
	t.check(p)
}

// check counts p if it has just reached the target; the caller holds mu.
func (t *genTracker) check(p *trackedProxy) {
	if p.reached >= t.k || p.got[0] < t.want[0] || p.got[1] < t.want[1] || p.got[2] < t.want[2] || p.got[3] < t.want[3] {
		return
	}
	p.reached, p.reachedAt = t.k, p.at
	t.met++
	if t.first == 0 || p.at < t.first {
		t.first = p.at
	}
	t.last = max(t.last, p.at)
	if p.sampled {
		t.samples[p.sample] = true
	}
	if t.met == len(t.proxies) {
		at := make([]int64, len(t.proxies))
		for i := range t.proxies {
			at[i] = t.proxies[i].reachedAt
		}
		slices.Sort(at)
		q := func(f float64) int64 { return at[int(f*float64(len(at)-1))] }
		fmt.Printf("times %d %d %d %d\n", t.k, q(0.5), q(0.9), q(0.99))
		fmt.Printf("gen %d %d %d %s\n", t.k, t.first, t.last, strings.Join(slices.Sorted(maps.Keys(t.samples)), ";"))
	}
}

// target makes generation k the next to count.
func (t *genTracker) target(k, listeners, clusters, endpoints, routes int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.k, t.want = k, [4]int{listeners, clusters, endpoints, routes}
	t.met, t.first, t.last, t.samples = 0, 0, 0, map[string]bool{}
	for i := range t.proxies {
		t.check(&t.proxies[i])
	}
	fmt.Printf("ready %d\n", k)
}

func runClients() error {
	addr := os.Getenv("URSA_BENCH_XDS_ADDR")
	n, err := strconv.Atoi(os.Getenv("URSA_BENCH_XDS_N"))
	if err != nil {
		return err
	}
	perConn, err := strconv.Atoi(os.Getenv("URSA_BENCH_XDS_PER_CONN"))
	if err != nil {
		return err
	}
	sample := os.Getenv("URSA_BENCH_XDS_SAMPLE")
	wire := protocol(os.Getenv("URSA_BENCH_XDS_PROTOCOL"))
	nameFormat := os.Getenv("URSA_BENCH_XDS_NAME")
	eds := os.Getenv("URSA_BENCH_XDS_EDS") != ""
	creds, err := clientCreds(addr)
	if err != nil {
		return err
	}
	resync := os.Getenv(resyncVar) != ""
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	t := newGenTracker(n, perConn, eds)
	var conns []*grpc.ClientConn
	for range (n + perConn - 1) / perConn {
		// Envoy's own HTTP/2 windows are larger than grpc-go's 64 KiB
		// defaults; 100 proxies share one connection here.
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds),
			grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(64<<20),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
		if err != nil {
			return err
		}
		conns = append(conns, cc)
	}
	errs := make(chan error, 1)
	for i := range n {
		client := discovery.NewAggregatedDiscoveryServiceClient(conns[i/perConn])
		id := xds.NodeID(xdsMesh, fmt.Sprintf(nameFormat, i))
		run := sotwProxy
		if wire == delta {
			run = deltaProxy
		}
		if resync {
			run = resyncing(run)
		}
		go func() {
			if err := run(ctx, client, id, i, sample, eds, t); err != nil && ctx.Err() == nil {
				select {
				case errs <- fmt.Errorf("dp-%d: %w", i, err):
				default:
				}
			}
		}()
	}
	stdinClosed := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			var k, l, c, e, r int
			if _, err := fmt.Sscanf(sc.Text(), "want %d %d %d %d %d", &k, &l, &c, &e, &r); err != nil {
				if _, err := fmt.Sscanf(sc.Text(), "want %d %d %d %d", &k, &l, &c, &e); err != nil {
					stdinClosed <- fmt.Errorf("from the benchmark: %q: %w", sc.Text(), err)
					return
				}
			}
			t.target(k, l, c, e, r)
		}
		stdinClosed <- nil
	}()
	select {
	case err := <-errs:
		return err
	case err := <-stdinClosed:
		return err
	}
}

// sotwProxy is one simulated sidecar: an ADS stream subscribing to every
// listener and cluster (state of the world, wildcard), and with eds to
// every load assignment, ACKing every response.
func sotwProxy(ctx context.Context, client discovery.AggregatedDiscoveryServiceClient, id string, i int, sample string, eds bool, t *genTracker) error {
	stream, err := client.StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: id}, TypeUrl: resource.ClusterType}); err != nil {
		return err
	}
	if err := stream.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType}); err != nil {
		return err
	}
	if eds {
		if err := stream.Send(&discovery.DiscoveryRequest{TypeUrl: resource.EndpointType}); err != nil {
			return err
		}
	}
	if l7Bench() {
		if err := stream.Send(&discovery.DiscoveryRequest{TypeUrl: resource.RouteType}); err != nil {
			return err
		}
	}
	version := map[string]string{}
	sampled := t.proxies[i].sampled
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		typ := resp.GetTypeUrl()
		if err := stream.Send(&discovery.DiscoveryRequest{TypeUrl: typ, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
			return err
		}
		at := time.Now().UnixNano()
		if resp.GetVersionInfo() == version[typ] {
			continue
		}
		version[typ] = resp.GetVersionInfo()
		var weights string
		if sampled && typ == sampleType() {
			found := false
			if weights, found, err = splitOf(resp.GetResources(), sample); err != nil {
				return err
			}
			if !found {
				return fmt.Errorf("no %s %q among %d", typ, sample, len(resp.GetResources()))
			}
		}
		t.received(i, typ, at, weights)
	}
}

// deltaProxy is one simulated sidecar on the incremental protocol: an ADS
// stream subscribing to every listener and cluster (wildcard), ACKing every
// response. Each response that adds, changes or removes resources is a new
// version of its type.
func deltaProxy(ctx context.Context, client discovery.AggregatedDiscoveryServiceClient, id string, i int, sample string, eds bool, t *genTracker) error {
	stream, err := client.DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: id}, TypeUrl: resource.ClusterType}); err != nil {
		return err
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.ListenerType}); err != nil {
		return err
	}
	if eds {
		if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType}); err != nil {
			return err
		}
	}
	if l7Bench() {
		if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.RouteType}); err != nil {
			return err
		}
	}
	sampled := t.proxies[i].sampled
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		typ := resp.GetTypeUrl()
		if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: typ, ResponseNonce: resp.GetNonce()}); err != nil {
			return err
		}
		at := time.Now().UnixNano()
		if len(resp.GetResources()) == 0 && len(resp.GetRemovedResources()) == 0 {
			continue
		}
		var weights string
		if sampled && typ == sampleType() {
			anys := make([]*anypb.Any, 0, len(resp.GetResources()))
			for _, r := range resp.GetResources() {
				if r.GetName() == sample {
					anys = append(anys, r.GetResource())
				}
			}
			if weights, _, err = splitOf(anys, sample); err != nil {
				return err
			}
		}
		t.received(i, typ, at, weights)
	}
}

// sampleType is the type of the resource the sample is read from.
func sampleType() string {
	if l7Bench() {
		return resource.RouteType
	}
	return resource.ListenerType
}

// splitOf returns the weighted clusters of the tcp_proxy of the named
// listener among listeners (l7Bench: of the default route of the named
// route configuration): "cluster=weight,…", and whether it is there.
func splitOf(listeners []*anypb.Any, name string) (string, bool, error) {
	if l7Bench() {
		return routeSplitOf(listeners, name)
	}
	for _, a := range listeners {
		l := &listener.Listener{}
		if err := a.UnmarshalTo(l); err != nil {
			return "", false, err
		}
		// The listener of that name, or a transparent sidecar's filter
		// chain of that name in its original-destination listener.
		var chain *listener.FilterChain
		for _, fc := range l.GetFilterChains() {
			if l.GetName() == name || fc.GetName() == name {
				chain = fc
				break
			}
		}
		if chain == nil {
			continue
		}
		tp := &tcp.TcpProxy{}
		if err := chain.GetFilters()[0].GetTypedConfig().UnmarshalTo(tp); err != nil {
			return "", false, err
		}
		var parts []string
		for _, wc := range tp.GetWeightedClusters().GetClusters() {
			parts = append(parts, fmt.Sprintf("%s=%d", wc.GetName(), wc.GetWeight()))
		}
		return strings.Join(parts, ","), true, nil
	}
	return "", false, nil
}

func routeSplitOf(routes []*anypb.Any, name string) (string, bool, error) {
	for _, a := range routes {
		rc := &routev3.RouteConfiguration{}
		if err := a.UnmarshalTo(rc); err != nil {
			return "", false, err
		}
		if rc.GetName() != name || len(rc.GetVirtualHosts()) == 0 {
			continue
		}
		rs := rc.GetVirtualHosts()[0].GetRoutes()
		if len(rs) == 0 {
			return "", true, nil
		}
		var parts []string
		for _, wc := range rs[len(rs)-1].GetRoute().GetWeightedClusters().GetClusters() {
			parts = append(parts, fmt.Sprintf("%s=%d", wc.GetName(), wc.GetWeight().GetValue()))
		}
		return strings.Join(parts, ","), true, nil
	}
	return "", false, nil
}
