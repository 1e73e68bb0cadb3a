package bench

// xDS benchmarks (issue 5): per-proxy snapshot generation, and a full push
// to N simulated proxies on real ADS gRPC streams after a mesh-wide policy
// change, with the control plane's memory per proxy.
//
//	go test ./test/bench -run '^$' -bench SidecarGenerate -benchtime 200x -benchmem
//	GOMEMLIMIT=15GiB go test ./test/bench -run '^$' -bench FullPush -benchtime 1x -timeout 45m
//
// (-bench 'FullPush/' for state-of-the-world proxies only, 'FullPushDelta'
// for delta; URSA_BENCH_XDS_CPUPROFILE=/tmp/cpu profiles the pushes alone.)
//
// (figures in test/BENCHMARKS.md). FullPush skips itself unless run with
// -benchtime 1x to 5x: each iteration is a full push to up to 10k proxies.
//
// The simulated proxies run in a child process (this test binary re-executed
// with URSA_BENCH_XDS_CLIENTS set; see xds_clients_test.go), so that the
// control plane's heap, stacks and RSS are its own. Both processes share the
// machine's cores.

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/gctune"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/xds"
	zonecp "github.com/ursamesh/ursa/zone"
)

const (
	xdsZone       = "zone-a"
	xdsMesh       = "default"
	xdsServices   = 50
	xdsPerService = 20
	// changedService is the service whose TrafficRoute the mesh-wide
	// change rewrites. No simulated proxy is one of its instances, so
	// every simulated proxy has outbounds to it.
	changedService = "svc-00"
)

// xdsMeshFixture is a realistic mesh in zone-a: services × perService
// dataplanes tagged by version (90 % v1, 10 % v2), a VIP per service, a
// 90/10 TrafficRoute by version on every fifth service, an allow-all
// TrafficPermission plus ten specific ones, a locality-aware Failover, mTLS
// on, and zone-b's and zone-c's ingresses each offering the first half of
// the services.
type xdsMeshFixture struct {
	state *benchMesh
	ca    *api.MeshCA
	// secrets are each simulated proxy's SDS secrets (by Dataplane name):
	// its own identity, as the zone issues one per instance, and the
	// mesh's trust.
	secrets map[string]xds.Resources
}

func svcName(s int) string { return fmt.Sprintf("svc-%02d", s) }

func ipv4(a, b, c, d int) string { return fmt.Sprintf("%d.%d.%d.%d", a, b, c, d) }

// l7Bench makes the xDS benchmarks' mesh L7 (URSA_BENCH_XDS_L7 set): every
// service speaks http, has a TrafficRoute with an http rule (x-canary: 1
// to v2) and its split, a Retry and a Timeout; the simulated proxies
// subscribe to their route configurations too (wildcard), and a push
// changes outbound:svc-00 instead of two listeners.
func l7Bench() bool { return os.Getenv("URSA_BENCH_XDS_L7") != "" }

func versionRoute(service string, v1 int) *api.TrafficRoute {
	r := &api.TrafficRoute{
		Meta: api.Meta{Type: "TrafficRoute", Mesh: xdsMesh, Name: "route-" + service},
		Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: service}, Split: []api.Split{
			{Weight: v1, Tags: map[string]string{"version": "v1"}},
			{Weight: 100 - v1, Tags: map[string]string{"version": "v2"}},
		}},
	}
	if l7Bench() {
		r.Spec.HTTP = []api.HTTPRoute{{
			Match: api.HTTPMatch{Path: &api.StringMatch{Prefix: "/api"}, Headers: map[string]api.StringMatch{"x-canary": {Exact: "1"}}},
			Split: []api.Split{{Weight: 100, Tags: map[string]string{"version": "v2"}}},
		}}
	}
	return r
}

// l7Policies are a Retry and a Timeout from every caller to service.
func l7Policies(service string) []api.Resource {
	any := []api.Selector{{Match: map[string]string{api.TagService: "*"}}}
	to := []api.Selector{{Match: map[string]string{api.TagService: service}}}
	return []api.Resource{
		&api.Retry{Meta: api.Meta{Type: "Retry", Mesh: xdsMesh, Name: "retry-" + service}, Spec: api.RetrySpec{Sources: any, Destinations: to,
			HTTP: &api.HTTPRetry{NumRetries: 3, PerTryTimeout: api.Dur(200 * time.Millisecond), RetryOn: []string{"5xx", "reset", "connect-failure"}}}},
		&api.Timeout{Meta: api.Meta{Type: "Timeout", Mesh: xdsMesh, Name: "timeout-" + service}, Spec: api.TimeoutSpec{Sources: any, Destinations: to,
			ConnectTimeout: api.Dur(2 * time.Second), HTTP: &api.HTTPTimeouts{RequestTimeout: api.Dur(time.Second)}}},
	}
}

func newXDSMesh(tb testing.TB, services, perService int) *xdsMeshFixture {
	tb.Helper()
	now := time.Now()
	ca, err := mtls.NewCA(xdsMesh, now)
	if err != nil {
		tb.Fatal(err)
	}
	st := &benchMesh{
		Zone: xdsZone,
		Mesh: &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: xdsMesh}, MTLS: &api.MeshMTLS{Enabled: true}},
		VIPs: map[string]netip.Addr{},
	}
	f := &xdsMeshFixture{state: st, ca: ca, secrets: map[string]xds.Resources{}}
	for s := range services {
		svc := svcName(s)
		// A sidecar that is not transparent gets its VIPs' listeners only
		// on loopback addresses (a demo's range), which it can bind; a
		// transparent one takes a real zone's through ursa:outbound.
		vip := [4]byte{127, 241, byte(s >> 8), byte(s)}
		if os.Getenv("URSA_BENCH_XDS_TRANSPARENT") != "" {
			vip = [4]byte{241, 0, byte(s >> 8), byte(s)}
		}
		st.VIPs[svc] = netip.AddrFrom4(vip)
		for j := range perService {
			idx := s*perService + j
			version := "v1"
			if j >= perService*9/10 {
				version = "v2"
			}
			tags := map[string]string{api.TagService: svc, api.TagZone: xdsZone, "version": version, "team": fmt.Sprintf("team-%d", s%5)}
			if l7Bench() {
				tags[api.TagProtocol] = api.ProtocolHTTP
			}
			st.Dataplanes = append(st.Dataplanes, &api.Dataplane{
				Meta: api.Meta{Type: "Dataplane", Mesh: xdsMesh, Name: fmt.Sprintf("%s-%03d", svc, j)},
				Networking: api.DataplaneNetworking{
					Address: ipv4(10, 1+idx>>16, (idx>>8)&255, idx&255),
					Inbound: []api.Inbound{{Port: 8080, ServicePort: 8081, Tags: tags}},
				},
			})
		}
		if s%5 == 0 || l7Bench() {
			st.Routes = append(st.Routes, versionRoute(svc, 90))
		}
		if l7Bench() {
			st.Policies = append(st.Policies, l7Policies(svc)...)
		}
	}
	st.Permissions = append(st.Permissions, &api.TrafficPermission{
		Meta: api.Meta{Type: "TrafficPermission", Mesh: xdsMesh, Name: "allow-all"},
		Spec: api.TrafficPermissionSpec{
			Sources:      []api.Selector{{Match: map[string]string{api.TagService: "*"}}},
			Destinations: []api.Selector{{Match: map[string]string{api.TagService: "*"}}},
		}})
	for i := range 10 {
		st.Permissions = append(st.Permissions, &api.TrafficPermission{
			Meta: api.Meta{Type: "TrafficPermission", Mesh: xdsMesh, Name: fmt.Sprintf("allow-%d", i)},
			Spec: api.TrafficPermissionSpec{
				Sources:      []api.Selector{{Match: map[string]string{api.TagService: svcName((i + 1) % services)}}},
				Destinations: []api.Selector{{Match: map[string]string{api.TagService: svcName((i * 7) % services)}}},
			}})
	}
	st.Failovers = append(st.Failovers, &api.Failover{
		Meta: api.Meta{Type: "Failover", Mesh: xdsMesh, Name: "locality"},
		Spec: api.FailoverSpec{Destination: map[string]string{api.TagService: "*"}, LocalityAware: true, Order: []string{"zone-b", "zone-c"}},
	})
	for z, zone := range []string{"zone-b", "zone-c"} {
		ing := &api.ZoneIngress{
			Meta: api.Meta{Type: "ZoneIngress", Name: zone + "-ingress"},
			Zone: zone,
			Networking: api.ZoneIngressNetworking{Address: ipv4(10, 250, z, 1), Port: 10001,
				AdvertisedAddress: ipv4(203, 0, 113, z+1), AdvertisedPort: 10001},
		}
		for s := range services / 2 {
			for _, v := range []struct {
				version   string
				instances int
			}{{"v1", 18}, {"v2", 2}} {
				tags := map[string]string{api.TagService: svcName(s), api.TagZone: zone, "version": v.version}
				if l7Bench() {
					tags[api.TagProtocol] = api.ProtocolHTTP
				}
				ing.AvailableServices = append(ing.AvailableServices, api.AvailableService{Mesh: xdsMesh, Instances: v.instances, Tags: tags})
			}
		}
		st.Ingresses = append(st.Ingresses, ing)
	}
	return f
}

// benchMesh is one mesh's resources in zone-a, from which the fixture
// builds the zone's catalogue and state, once.
type benchMesh struct {
	Zone        string
	Mesh        *api.Mesh
	Dataplanes  []*api.Dataplane
	Routes      []*api.TrafficRoute
	Permissions []*api.TrafficPermission
	Failovers   []*api.Failover
	Ingresses   []*api.ZoneIngress
	// Policies are the L7 policies (l7Bench).
	Policies []api.Resource
	VIPs     map[string]netip.Addr

	once  sync.Once
	built *xds.State
}

// resources lists the mesh's resources, its VIPs as one VirtualIPs.
func (m *benchMesh) resources() []api.Resource {
	vips := &api.VirtualIPs{Meta: api.Meta{Type: "VirtualIPs", Mesh: m.Mesh.Name, Name: "vips"}, Entries: map[string]api.VirtualIP{}}
	for svc, ip := range m.VIPs {
		vips.Entries[svc] = api.VirtualIP{IP: ip.String()}
	}
	rs := []api.Resource{m.Mesh, vips}
	for _, r := range m.Dataplanes {
		rs = append(rs, r)
	}
	for _, r := range m.Routes {
		rs = append(rs, r)
	}
	for _, r := range m.Permissions {
		rs = append(rs, r)
	}
	for _, r := range m.Failovers {
		rs = append(rs, r)
	}
	for _, r := range m.Ingresses {
		rs = append(rs, r)
	}
	return append(rs, m.Policies...)
}

// State is the zone's state of the mesh, built on first use.
func (m *benchMesh) State() *xds.State {
	m.once.Do(func() { m.built = xds.NewState(catalog.FromResources(m.Zone, m.resources()), nil) })
	return m.built
}

// withRoute returns a copy of state whose TrafficRoute for service splits
// v1/100-v1 by version.
func withRoute(st *benchMesh, service string, v1 int) *benchMesh {
	// A fresh benchMesh, not a copy: its State memoises what it builds.
	out := benchMesh{Zone: st.Zone, Mesh: st.Mesh, Dataplanes: st.Dataplanes, Permissions: st.Permissions,
		Failovers: st.Failovers, Ingresses: st.Ingresses, Policies: st.Policies, VIPs: st.VIPs}
	out.Routes = slices.Clone(st.Routes)
	r := versionRoute(service, v1)
	i := slices.IndexFunc(out.Routes, func(x *api.TrafficRoute) bool { return x.Name == r.Name })
	if i < 0 {
		out.Routes = append(out.Routes, r)
	} else {
		out.Routes[i] = r
	}
	return &out
}

// generate does for one proxy what the zone's generation loop does before
// SetResources (which validates): sidecar resources and the SDS secrets of
// its own identity.
func (f *xdsMeshFixture) generate(st *benchMesh, dp *api.Dataplane) (xds.Resources, error) {
	p := xds.Proxy{Kind: xds.KindSidecar, Dataplane: dp}
	if os.Getenv("URSA_BENCH_XDS_TRANSPARENT") != "" {
		// A transparent sidecar's: ursa:outbound too, with a chain per
		// VIP and port and per other service's instance addresses.
		p.TransparentProxy = "15001"
	}
	res, err := xds.Sidecar(st.State(), p)
	if err != nil {
		return nil, err
	}
	res.Merge(f.secrets[dp.Name])
	return res, nil
}

// proxies returns n simulated proxies, dp-0 … dp-<n-1>: each a copy of one
// of the mesh's dataplanes outside changedService (round robin), with its
// own name, address and identity (issued here, on every core), so that
// every proxy's resources are its own.
func (f *xdsMeshFixture) proxies(tb testing.TB, n int) []*api.Dataplane {
	var tpl []*api.Dataplane
	for _, dp := range f.state.Dataplanes {
		if dp.Networking.Inbound[0].Tags[api.TagService] != changedService {
			tpl = append(tpl, dp)
		}
	}
	out := make([]*api.Dataplane, n)
	for i := range out {
		t := tpl[i%len(tpl)]
		out[i] = &api.Dataplane{
			Meta:       api.Meta{Type: "Dataplane", Mesh: xdsMesh, Name: fmt.Sprintf("dp-%d", i)},
			Networking: api.DataplaneNetworking{Address: ipv4(10, 128+i>>16, (i>>8)&255, i&255), Inbound: t.Networking.Inbound},
		}
	}
	signer, err := mtls.SignerFromMeshCA(f.ca)
	if err != nil {
		tb.Fatal(err)
	}
	secrets := make([]xds.Resources, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				id, err := signer.Issue(mtls.SubjectOf(out[i]), nil, 24*time.Hour, time.Now())
				if err != nil {
					tb.Error(err)
					return
				}
				secrets[i] = xds.Secrets(id, f.ca.CertPEM)
			}
		})
	}
	wg.Wait()
	if tb.Failed() {
		tb.FailNow()
	}
	for i, dp := range out {
		f.secrets[dp.Name] = secrets[i]
	}
	return out
}

func resourceBytes(r xds.Resources) (total int, count map[string]int) {
	count = map[string]int{}
	for typ, list := range r {
		for _, res := range list {
			total += proto.Size(res)
		}
		count[typ[strings.LastIndex(typ, ".")+1:]] = len(list)
	}
	return total, count
}

// BenchmarkSidecarGenerate measures one sidecar's configuration as the
// zone makes it per proxy: Sidecar and its SDS secrets (generate); then
// what SetResources does before it can tell nothing changed: validation and
// the version hashes (validate+hash). The MeshState is built once, so
// these are per-proxy costs amortised over a mesh's proxies.
func BenchmarkSidecarGenerate(b *testing.B) {
	for _, per := range []int{xdsPerService, 100, 200} {
		f := newXDSMesh(b, xdsServices, per)
		dp := f.proxies(b, 1)[0]
		srv, err := xds.NewServer(zap.NewNop(), prometheus.NewRegistry())
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("dataplanes=%d", xdsServices*per), func(b *testing.B) {
			b.Run("generate", func(b *testing.B) {
				b.ReportAllocs()
				var res xds.Resources
				for b.Loop() {
					var err error
					if res, err = f.generate(f.state, dp); err != nil {
						b.Fatal(err)
					}
				}
				size, count := resourceBytes(res)
				b.ReportMetric(float64(size), "config-B")
				b.ReportMetric(float64(count["Listener"]), "listeners")
				b.ReportMetric(float64(count["Cluster"]), "clusters")
				b.ReportMetric(float64(count["ClusterLoadAssignment"]), "load-assignments")
			})
			b.Run("validate+hash", func(b *testing.B) {
				res, err := f.generate(f.state, dp)
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				if err := srv.SetResources(ctx, "default.dp-0", res); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				for b.Loop() {
					// Regenerated, as the zone does on every change:
					// the shared resources are the MeshState's, the
					// proxy's own (inbound listener, its cluster,
					// secrets) are new messages.
					b.StopTimer()
					res, err := f.generate(f.state, dp)
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					// Unchanged: validates, hashes, compares, returns.
					if err := srv.SetResources(ctx, "default.dp-0", res); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// memNow collects garbage, returns freed pages to the OS, and reads the
// heap and stacks in use and the RSS.
func memNow() (heap, stacks, rss uint64) {
	runtime.GC() // sync.Pools keep what they hold until the second collection
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	cur, _ := procRSS()
	return ms.HeapInuse, ms.StackInuse, cur
}

// cpuTime reads the user and system CPU time a process (a pid, or "self")
// has used, whole seconds of it from the clock ticks in /proc/PID/stat
// (USER_HZ, 100 on Linux).
func cpuTime(pid string) time.Duration {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0
	}
	// The fields after the command, which is in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * (time.Second / 100)
}

// procRSS reads the resident set and its peak (VmHWM) in bytes.
func procRSS() (cur, peak uint64) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			cur = kb << 10
		case "VmHWM":
			peak = kb << 10
		}
	}
	return cur, peak
}

func writeHeapProfile(b *testing.B, path string) {
	out, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	if err := pprof.WriteHeapProfile(out); err != nil {
		b.Fatal(err)
	}
}

// profileCPU profiles what follows, until the returned func is called, into
// URSA_BENCH_XDS_CPUPROFILE.<suffix> when that is set (go test's
// -cpuprofile covers the set-up too, and must not be given as well).
func profileCPU(b *testing.B, suffix string) func() {
	path := os.Getenv("URSA_BENCH_XDS_CPUPROFILE")
	if path == "" {
		return func() {}
	}
	out, err := os.Create(path + "." + suffix)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(out); err != nil {
		b.Fatal(err)
	}
	return func() { pprof.StopCPUProfile(); out.Close() }
}

// resetPeakRSS restarts VmHWM from the current RSS.
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// sampleListener names what the sampled proxies read changedService's
// split from: its outbound listener on the VIP at 80, or (l7Bench) its
// route configuration.
func sampleListener(st *benchMesh) string {
	if l7Bench() {
		return xds.OutboundRouteName(changedService)
	}
	return fmt.Sprintf("outbound:%s:80", st.VIPs[changedService])
}

func wantSample(service string, v1 int) string {
	return fmt.Sprintf("%s{version=v1}=%d,%s{version=v2}=%d", service, v1, service, 100-v1)
}

// BenchmarkFullPush measures a full push: every proxy connected (state of
// the world), a mesh-wide policy change (the TrafficRoute of a service
// every proxy reaches), then regeneration and SetResources for all N
// proxies, until the last proxy has received every type the change
// touched (its listeners). One iteration is one push; run with -benchtime
// 1x.
func BenchmarkFullPush(b *testing.B) { benchmarkFullPush(b, sotw, false) }

// BenchmarkFullPushDelta is BenchmarkFullPush with proxies on the
// incremental (delta) protocol, as Envoy uses with --xds-delta… or
// ads_config api_type DELTA_GRPC.
func BenchmarkFullPushDelta(b *testing.B) { benchmarkFullPush(b, delta, false) }

// BenchmarkFullPushTLS is BenchmarkFullPush with the xDS server on TLS 1.3,
// as a zone serves it by default (its certificate from pkg/servingcert),
// and the proxies verifying it (xds_tls_test.go).
func BenchmarkFullPushTLS(b *testing.B) { benchmarkFullPush(b, sotw, true) }

// BenchmarkFullPushDeltaTLS is BenchmarkFullPushDelta on TLS 1.3.
func BenchmarkFullPushDeltaTLS(b *testing.B) { benchmarkFullPush(b, delta, true) }

func benchmarkFullPush(b *testing.B, wire protocol, secure bool) {
	if f := flag.Lookup("test.benchtime"); f != nil {
		n, err := strconv.Atoi(strings.TrimSuffix(f.Value.String(), "x"))
		if !strings.HasSuffix(f.Value.String(), "x") || err != nil || n > 5 {
			b.Skip("each iteration is a full push to up to 10k proxies: run with -benchtime 1x")
		}
	}
	for _, n := range []int{1000, 5000, 10000} {
		b.Run(fmt.Sprintf("proxies=%d", n), func(b *testing.B) { fullPush(b, wire, n, secure) })
	}
}

// changedTypes reports whether a proxy's listeners, and its clusters,
// differ between two configurations.
func changedTypes(a, b xds.Resources) (listeners, clusters bool) {
	l, c, _ := changedTypesL7(a, b)
	return l, c
}

// changedTypesL7 is changedTypes with the route configurations.
func changedTypesL7(a, b xds.Resources) (listeners, clusters, routes bool) {
	differ := func(typ resource.Type) bool {
		if len(a[typ]) != len(b[typ]) {
			return true
		}
		byName := map[string]proto.Message{}
		for _, r := range a[typ] {
			byName[cache.GetResourceName(r)] = r
		}
		for _, r := range b[typ] {
			if old, ok := byName[cache.GetResourceName(r)]; !ok || !proto.Equal(old, r) {
				return true
			}
		}
		return false
	}
	return differ(resource.ListenerType), differ(resource.ClusterType), differ(resource.RouteType)
}

// upToDate waits until every node has ACKed the current version of its
// listeners and its clusters, as the server sees it.
func upToDate(b *testing.B, srv *xds.Server, ids []string, timeout time.Duration) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for _, id := range ids {
		for {
			n, ok := srv.Insight(id)
			if ok && n.Current[resource.ListenerType] != "" && n.Acked[resource.ListenerType] == n.Current[resource.ListenerType] &&
				n.Current[resource.ClusterType] != "" && n.Acked[resource.ClusterType] == n.Current[resource.ClusterType] &&
				(!l7Bench() || n.Current[resource.RouteType] != "" && n.Acked[resource.RouteType] == n.Current[resource.RouteType]) {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s has acked %v, want %v", id, n.Acked, n.Current)
			}
			time.Sleep(time.Millisecond)
		}
	}
}

func fullPush(b *testing.B, wire protocol, n int, secure bool) {
	const perConn = 100
	// The control plane's garbage collection target is the zone CP's
	// (GOGC, when set, wins as it does there); the simulated proxies' is
	// Go's default.
	prevGC := debug.SetGCPercent(100)
	debug.SetGCPercent(prevGC)
	gctune.Fixed(zonecp.DefaultConfig().GCPercent, zap.NewNop())
	b.Cleanup(func() { debug.SetGCPercent(prevGC) })
	gcNow := debug.SetGCPercent(100)
	debug.SetGCPercent(gcNow)
	b.Logf("GC target %d%% (GOGC=%q)", gcNow, os.Getenv("GOGC"))
	f := newXDSMesh(b, xdsServices, xdsPerService)
	dps := f.proxies(b, n)
	ids := make([]string, n)
	for i, dp := range dps {
		ids[i] = xds.NodeID(xdsMesh, dp.Name)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)

	// publish regenerates every proxy, like the zone's generation loop
	// (one MeshState; Sidecar, secrets, Validate and SetResources per
	// proxy, on GOMAXPROCS workers), timing its parts: genTook and setTook
	// are summed over the workers.
	publish := func(srv *xds.Server, st *benchMesh) (genTook, setTook time.Duration) {
		var mu sync.Mutex
		var next atomic.Int64
		var wg sync.WaitGroup
		for range runtime.GOMAXPROCS(0) {
			wg.Go(func() {
				var gen, set time.Duration
				for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
					t0 := time.Now()
					res, err := f.generate(st, dps[i])
					if err != nil {
						b.Error(err)
						return
					}
					t1 := time.Now()
					if err := srv.SetResources(ctx, ids[i], res); err != nil {
						b.Error(err)
						return
					}
					gen += t1.Sub(t0)
					set += time.Since(t1)
				}
				mu.Lock()
				genTook += gen
				setTook += set
				mu.Unlock()
			})
		}
		wg.Wait()
		if b.Failed() {
			b.FailNow()
		}
		return genTook, setTook
	}

	// 1. The server and its snapshot cache, with every proxy's initial
	// configuration and no client connected. Generated on all cores:
	// this is setup, not what is timed.
	heap0, stack0, rss0 := memNow()
	srv, err := xds.NewServer(zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	opts := append(xds.GRPCServerOptions(), grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WaitForHandlers(true)) // so that the next benchmark starts from a clean heap
	var clientEnv []string
	if secure {
		creds, env := serverTLS(b)
		opts, clientEnv = append(opts, creds), append(clientEnv, env)
	}
	gs := grpc.NewServer(opts...)
	srv.Register(ctx, gs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go gs.Serve(ln)
	b.Cleanup(gs.Stop)
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				res, err := f.generate(f.state, dps[i])
				if err == nil {
					err = srv.SetResources(ctx, ids[i], res)
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	heap1, stack1, _ := memNow()
	metrics := map[string]float64{}
	metrics["cache-B/proxy"] = float64(heap1+stack1-heap0-stack0) / float64(n)

	// 2. N proxies connect, each receives its configuration and ACKs it.
	start := time.Now()
	c := startClients(b, ln.Addr().String(), wire, n, perConn, sampleListener(f.state), clientEnv...)
	initial := c.waitGen(b, 1, 10*time.Minute)
	metrics["connect-s"] = initial.last.Sub(start).Seconds()
	if wire == sotw {
		upToDate(b, srv, ids, time.Minute)
	}
	if want := wantSample(changedService, 90); initial.samples != want {
		b.Fatalf("proxies hold %q, want %q", initial.samples, want)
	}
	if nodes, _ := srv.Nodes(); len(nodes) != n {
		b.Fatalf("%d of %d proxies connected", len(nodes), n)
	}
	heap2, stack2, rss2 := memNow()
	metrics["streams-B/proxy"] = float64(heap2+stack2-heap1-stack1) / float64(n)
	metrics["cp-B/proxy"] = float64(heap2+stack2-heap0-stack0) / float64(n)
	metrics["rss-B/proxy"] = float64(rss2-rss0) / float64(n)
	b.Logf("heap %d→%d→%d MB, stacks %d→%d→%d MB, rss %d→%d MB", heap0>>20, heap1>>20, heap2>>20, stack0>>20, stack1>>20, stack2>>20, rss0>>20, rss2>>20)
	if path := os.Getenv("URSA_BENCH_XDS_HEAPPROFILE"); path != "" {
		// What the control plane holds with every proxy connected and
		// configured: go tool pprof -sample_index inuse_space.
		writeHeapProfile(b, fmt.Sprintf("%s.%d", path, n))
	}
	res, err := f.generate(f.state, dps[0])
	if err != nil {
		b.Fatal(err)
	}
	size, _ := resourceBytes(res)
	metrics["config-B"] = float64(size)

	// 3. The pushes: each iteration changes the TrafficRoute of
	// changedService, which every proxy has two outbound listeners to.
	// What a push changes is found on copies of the states, so that the
	// push itself starts from a MeshState that has built nothing yet.
	resetPeakRSS()
	defer profileCPU(b, fmt.Sprintf("%s.%d", wire, n))()
	var push, first, loop, gen, set, cpCPU, clientsCPU time.Duration
	k, prev, listeners, clusters, routes := 0, 90, 1, 1, 1
	for b.Loop() {
		k++
		v1 := 80 - k%70
		before, err := xds.Sidecar(withRoute(f.state, changedService, prev).State(), xds.Proxy{Kind: xds.KindSidecar, Dataplane: dps[0]})
		if err != nil {
			b.Fatal(err)
		}
		after, err := xds.Sidecar(withRoute(f.state, changedService, v1).State(), xds.Proxy{Kind: xds.KindSidecar, Dataplane: dps[0]})
		if err != nil {
			b.Fatal(err)
		}
		if l, c, r := changedTypesL7(before, after); l || c || r {
			listeners, clusters, routes = listeners+btoi(l), clusters+btoi(c), routes+btoi(r)
		} else {
			b.Fatalf("push %d changes nothing", k)
		}
		prev = v1
		if l7Bench() {
			c.expectRoutes(b, k+1, listeners, clusters, routes)
		} else {
			c.expect(b, k+1, listeners, clusters)
		}
		st := withRoute(f.state, changedService, v1)
		st.State() // the catalogue, built once per store change (BenchmarkCatalogBuild)
		cpCPU0, clientsCPU0 := cpuTime("self"), cpuTime(strconv.Itoa(c.cmd.Process.Pid))
		start := time.Now()
		genTook, setTook := publish(srv, st)
		loopTook := time.Since(start)
		r := c.waitGen(b, k+1, 10*time.Minute)
		cpCPU += cpuTime("self") - cpCPU0
		clientsCPU += cpuTime(strconv.Itoa(c.cmd.Process.Pid)) - clientsCPU0
		if want := wantSample(changedService, v1); r.samples != want {
			b.Fatalf("after push %d proxies hold %q, want %q", k, r.samples, want)
		}
		if wire == sotw {
			upToDate(b, srv, ids, time.Minute)
		}
		push += r.last.Sub(start)
		first += r.first.Sub(start)
		loop += loopTook
		gen += genTook
		set += setTook
	}
	_, peak := procRSS()
	if path := os.Getenv("URSA_BENCH_XDS_HEAPPROFILE"); path != "" {
		// What the pushes allocated: go tool pprof -sample_index
		// alloc_space -diff_base PATH.N PATH.N.after.
		writeHeapProfile(b, fmt.Sprintf("%s.%d.after", path, n))
	}
	heap3, stack3, rss3 := memNow()
	b.Logf("after %d pushes: heap %d MB, stacks %d MB, rss %d MB, peak rss %d MB", k, heap3>>20, stack3>>20, rss3>>20, peak>>20)
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

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// BenchmarkCatalogBuild measures building the zone's catalogue (services,
// instances, VIPs, the hash of its inputs) from the mirror's view, which the
// zone does once per store change.
//
//	go test ./test/bench -run '^$' -bench CatalogBuild -benchmem
func BenchmarkCatalogBuild(b *testing.B) {
	for _, per := range []int{xdsPerService, 200} {
		f := newXDSMesh(b, xdsServices, per)
		rs := f.state.resources()
		for i := range rs { // as the store returns them: versioned
			rs[i].GetMeta().Version = 1
		}
		view := store.NewView(rs, catalog.Types()...)
		b.Run(fmt.Sprintf("dataplanes=%d", xdsServices*per), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := catalog.Build(xdsZone, view); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
