package proxy

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/prometheus/client_golang/prometheus"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/xds"
)

// withObs adds access loggers and tracing to the HCM of l's first chain.
func withObs(t testing.TB, l *listener.Listener, logs []*accesslogv3.AccessLog, tr *hcm.HttpConnectionManager_Tracing) *listener.Listener {
	t.Helper()
	return withHCM(t, l, func(h *hcm.HttpConnectionManager) { h.AccessLog, h.Tracing = logs, tr })
}

// collectorCluster is the STATIC cluster of a log or trace collector.
func collectorCluster(name, addr string) *cluster.Cluster {
	return &cluster.Cluster{Name: name, ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC}, LoadAssignment: assignment(name, addr)}
}

// spanStore is an OTLP/gRPC collector on loopback that keeps whole spans.
type spanStore struct {
	collectortrace.UnimplementedTraceServiceServer
	addr  string
	mu    sync.Mutex
	spans map[string]*tracepb.Span // by hex span ID
	svc   map[string]string        // span ID → service.name
}

func (s *spanStore) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		svc := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				svc = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				id := hexID(sp.GetSpanId())
				s.spans[id], s.svc[id] = sp, svc
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func hexID(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

func (s *spanStore) byKind(kind tracepb.Span_SpanKind) []*tracepb.Span {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*tracepb.Span
	for _, sp := range s.spans {
		if sp.GetKind() == kind {
			out = append(out, sp)
		}
	}
	return out
}

func startSpanStore(t *testing.T) *spanStore { return startSpanStoreTB(t) }

func startSpanStoreTB(t testing.TB) *spanStore {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &spanStore{addr: ln.Addr().String(), spans: map[string]*tracepb.Span{}, svc: map[string]string{}}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, s)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return s
}

// TestHTTPAccessLogsAndSpansThroughSidecars: a request through a sidecar
// pair writes a line in the set format to the caller's file and a record
// to a Fluent collector, and makes a client span (caller's sidecar) and a
// server span, its child (callee's), both exported over OTLP; the
// application gets the server span's traceparent.
func TestHTTPAccessLogsAndSpansThroughSidecars(t *testing.T) {
	sc := newSidecars(t)
	spans := startSpanStore(t)
	fluent := testutil.StartFluentCollector(t, "127.0.0.1:0")
	logPath := filepath.Join(t.TempDir(), "access.log")
	for _, p := range []*Proxy{sc.client, sc.server} {
		p.obs.spans.Batch = 20 * time.Millisecond
	}
	app := backend(t, "v1", nil)
	inbound := withObs(t, inboundHTTPListener("inbound:billing", "billing", "localhost:app", "spiffe://default/web"), nil,
		otelTracing(t, "tracing:collector", "billing", 100))
	apply(t, sc.server, sc.billing, sc.roots, []*listener.Listener{inbound},
		[]*cluster.Cluster{staticHTTPCluster("localhost:app", false, app), collectorCluster("tracing:collector", spans.addr)}, nil)

	format := "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %ROUTE_NAME% %UPSTREAM_CLUSTER% %UPSTREAM_HOST% %PROTOCOL% %REQ(X-CANARY)% %BYTES_SENT% %DOWNSTREAM_LOCAL_ADDRESS%\n"
	outbound := withObs(t, outboundHTTPListener("outbound:billing", "outbound:billing"),
		[]*accesslogv3.AccessLog{fileLogger(t, logPath, format), fluentLogger(t, "access-log:collector", "%REQ(:PATH)% %RESPONSE_CODE%")},
		otelTracing(t, "tracing:collector", "web", 100))
	in := boundAddr(t, sc.server, "inbound:billing")
	apply(t, sc.client, sc.web, sc.roots, []*listener.Listener{outbound},
		[]*cluster.Cluster{mtlsHTTPCluster("billing-v1", "billing", false), collectorCluster("tracing:collector", spans.addr),
			collectorCluster("access-log:collector", fluent.Addr)},
		[]*endpoint.ClusterLoadAssignment{assignment("billing-v1", in)},
		routeConfig("outbound:billing", routeTo("billing-route/default", nil, toCluster("billing-v1"))))

	resp, body := get(t, h1Client(), "http://"+boundAddr(t, sc.client, "outbound:billing")+"/orders?id=7", "x-canary", "1")
	if resp.StatusCode != 200 || body != "v1 GET /orders" {
		t.Fatalf("through the sidecars: %d %q", resp.StatusCode, body)
	}
	appTraceparent := resp.Header.Get("x-echo-traceparent")

	want := "GET /orders?id=7 200 - billing-route/default billing-v1 " + in + " HTTP/1.1 1 14 " + boundAddr(t, sc.client, "outbound:billing") + "\n"
	testutil.Until(t, 10*time.Second, "the access log line", func() bool {
		b, _ := os.ReadFile(logPath)
		return string(b) == want
	})
	testutil.Until(t, 10*time.Second, "the record at the Fluent collector", func() bool {
		recs := fluent.Records()
		return len(recs) == 1 && recs[0].Tag == "ursa" && recs[0].Record["message"] == "/orders?id=7 200"
	})

	var client, server *tracepb.Span
	testutil.Until(t, 10*time.Second, "a client and a server span at the collector", func() bool {
		cs, ss := spans.byKind(tracepb.Span_SPAN_KIND_CLIENT), spans.byKind(tracepb.Span_SPAN_KIND_SERVER)
		if len(cs) == 1 && len(ss) == 1 {
			client, server = cs[0], ss[0]
			return true
		}
		return false
	})
	if hexID(server.GetParentSpanId()) != hexID(client.GetSpanId()) || hexID(server.GetTraceId()) != hexID(client.GetTraceId()) {
		t.Fatalf("the server span (parent %s, trace %s) is not the client span's (%s, trace %s) child",
			hexID(server.GetParentSpanId()), hexID(server.GetTraceId()), hexID(client.GetSpanId()), hexID(client.GetTraceId()))
	}
	if len(client.GetParentSpanId()) != 0 {
		t.Fatal("the client span has a parent; the request came without one")
	}
	if client.GetName() != "billing billing-route/default" || server.GetName() != "billing inbound" {
		t.Fatalf("span names %q and %q", client.GetName(), server.GetName())
	}
	spans.mu.Lock()
	clientSvc, serverSvc := spans.svc[hexID(client.GetSpanId())], spans.svc[hexID(server.GetSpanId())]
	spans.mu.Unlock()
	if clientSvc != "web" || serverSvc != "billing" {
		t.Fatalf("services %q and %q, want web and billing", clientSvc, serverSvc)
	}
	wantTP := "00-" + hexID(server.GetTraceId()) + "-" + hexID(server.GetSpanId()) + "-01"
	if appTraceparent != wantTP {
		t.Fatalf("the application got traceparent %q, want the server span's %q", appTraceparent, wantTP)
	}
	attrs := map[string]string{}
	for _, kv := range client.GetAttributes() {
		attrs[kv.GetKey()] = kv.GetValue().GetStringValue()
		if kv.GetKey() == "http.response.status_code" && kv.GetValue().GetIntValue() != 200 {
			t.Errorf("client span's status code %v", kv.GetValue())
		}
	}
	for k, v := range map[string]string{"http.request.method": "GET", "url.path": "/orders", "ursa.service": "billing", "ursa.zone": "zone-1"} {
		if attrs[k] != v {
			t.Errorf("client span's %s = %q, want %q", k, attrs[k], v)
		}
	}

	// The next configuration drops tracing and logging: the exporter and
	// the sinks stop.
	apply(t, sc.client, sc.web, sc.roots, []*listener.Listener{outboundHTTPListener("outbound:billing", "outbound:billing")},
		[]*cluster.Cluster{mtlsHTTPCluster("billing-v1", "billing", false)},
		[]*endpoint.ClusterLoadAssignment{assignment("billing-v1", in)},
		routeConfig("outbound:billing", routeTo("billing-route/default", nil, toCluster("billing-v1"))))
	if n := sc.client.obs.spans.active(); n != 0 {
		t.Fatalf("%d span exporters still run with no tracing configured", n)
	}
	sc.client.obs.mu.Lock()
	sinks := len(sc.client.obs.sinks)
	sc.client.obs.mu.Unlock()
	if sinks != 0 {
		t.Fatalf("%d log sinks still run with no access log configured", sinks)
	}
}

func TestTranslateHCMObsNACKs(t *testing.T) {
	l := withObs(t, outboundHTTPListener("outbound:billing", "outbound:billing"),
		[]*accesslogv3.AccessLog{fileLogger(t, "/tmp/x", "%UNKNOWN_OPERATOR%\n")}, nil)
	_, err := translate([]*listener.Listener{l}, nil, nil, nil, nil)
	if err == nil || !strings.Contains(err.Error(), `listener "outbound:billing"`) || !strings.Contains(err.Error(), "%UNKNOWN_OPERATOR% is not supported") {
		t.Fatalf("translate: %v, want a NACK naming the listener and the operator", err)
	}
	l = withObs(t, outboundHTTPListener("outbound:billing", "outbound:billing"), nil,
		zipkinTracing(t, "", nil))
	if _, err := translate([]*listener.Listener{l}, nil, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "collector_cluster") {
		t.Fatalf("translate: %v, want a NACK of the zipkin tracing", err)
	}
}

// TestTCPAccessLog: a tcp_proxy's connection writes its line when it ends,
// with the HTTP fields "-".
func TestTCPAccessLog(t *testing.T) {
	p := newProxy(t)
	echo := echoServer(t, "db")
	logPath := filepath.Join(t.TempDir(), "tcp.log")
	tp := &tcp.TcpProxy{StatPrefix: "db", ClusterSpecifier: &tcp.TcpProxy_Cluster{Cluster: "db"},
		AccessLog: []*accesslogv3.AccessLog{fileLogger(t, logPath, "%UPSTREAM_CLUSTER% %UPSTREAM_HOST% %BYTES_RECEIVED% %BYTES_SENT% %RESPONSE_CODE% %REQ(:PATH)% %PROTOCOL% %RESPONSE_FLAGS%\n")}}
	l := &listener.Listener{Name: "outbound:db", Address: socket("127.0.0.1", 0), FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{
		{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listener.Filter_TypedConfig{TypedConfig: xds.MustAny(tp)}}}}}}
	apply(t, p, nil, nil, []*listener.Listener{l}, []*cluster.Cluster{collectorCluster("db", echo)}, nil)
	if got := roundTrip(t, boundAddr(t, p, "outbound:db")); got != "db hi" {
		t.Fatalf("through the proxy: %q", got)
	}
	want := regexp.MustCompile(`^db ` + regexp.QuoteMeta(echo) + ` 3 6 - - - -\n$`)
	testutil.Until(t, 10*time.Second, "the connection's line", func() bool {
		b, _ := os.ReadFile(logPath)
		return want.Match(b)
	})

	// A connection that finds no endpoint logs UF.
	refusing := testutil.RefusingAddr(t)
	apply(t, p, nil, nil, []*listener.Listener{l}, []*cluster.Cluster{collectorCluster("db", refusing)}, nil)
	roundTrip(t, boundAddr(t, p, "outbound:db"))
	testutil.Until(t, 10*time.Second, "the failed connection's line", func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.HasSuffix(string(b), "db - 0 0 - - - UF\n")
	})
}

// TestCollectorByName: a collector's cluster is STRICT_DNS when the
// policy names it by host: the Fluent sink dials the name.
func TestCollectorByName(t *testing.T) {
	p := newProxy(t)
	fluent := testutil.StartFluentCollector(t, "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(fluent.Addr)
	c := collectorCluster("access-log:localhost:"+port, "127.0.0.1:"+port)
	c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_STRICT_DNS}
	c.LoadAssignment.Endpoints[0].LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress().Address = "localhost"
	l := withObs(t, outboundHTTPListener("outbound:billing", "outbound:billing"),
		[]*accesslogv3.AccessLog{fluentLogger(t, "access-log:localhost:"+port, "%RESPONSE_CODE%")}, nil)
	app := backend(t, "v1", nil)
	apply(t, p, nil, nil, []*listener.Listener{l}, []*cluster.Cluster{c, staticHTTPCluster("billing", false, app)}, nil,
		routeConfig("outbound:billing", routeTo("default", nil, toCluster("billing"))))
	resp, _ := get(t, h1Client(), "http://"+boundAddr(t, p, "outbound:billing")+"/")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	testutil.Until(t, 10*time.Second, "the record at the collector named localhost", func() bool {
		recs := fluent.Records()
		return len(recs) == 1 && recs[0].Record["message"] == "200"
	})
}

// BenchmarkHTTPObservability is one HTTP/1.1 request (keep-alive) through
// an outbound HCM to a local backend: bare, with a file access log, and
// with the log and a traced span exported over OTLP to a local collector.
func BenchmarkHTTPObservability(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	collector := startSpanStoreTB(b)
	logPath := filepath.Join(b.TempDir(), "access.log")
	rc := routeConfig("outbound:svc", routeTo("default", nil, toCluster("svc")))
	for _, tc := range []struct {
		name string
		logs []*accesslogv3.AccessLog
		tr   *hcm.HttpConnectionManager_Tracing
	}{
		{"bare", nil, nil},
		{"log", []*accesslogv3.AccessLog{fileLogger(b, logPath, "")}, nil},
		{"log+trace", []*accesslogv3.AccessLog{fileLogger(b, logPath, "")}, otelTracing(b, "tracing:c", "web", 100)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			p, err := New(zap.NewNop(), prometheus.NewRegistry())
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			l := withObs(b, outboundHTTPListener("outbound:svc", "outbound:svc"), tc.logs, tc.tr)
			cfg, err := translate([]*listener.Listener{l}, []*cluster.Cluster{staticHTTPCluster("svc", false, ln.Addr().String()),
				collectorCluster("tracing:c", collector.addr)}, nil, nil, nil, rc)
			if err != nil {
				b.Fatal(err)
			}
			if err := p.Apply(cfg); err != nil {
				b.Fatal(err)
			}
			p.mu.Lock()
			url := "http://" + p.listeners["outbound:svc"].ln.Addr().String() + "/bench"
			p.mu.Unlock()
			c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			// CPU time per request (the whole process's: client, proxy,
			// backend, collector, exporter) says more than wall time on a
			// shared machine.
			cpu0 := processCPU()
			for b.Loop() {
				resp, err := c.Get(url)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// processCPU is the process's user and system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
