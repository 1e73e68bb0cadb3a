package proxy

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	ursatest "github.com/ursamesh/ursa/pkg/testutil"
)

func otelTracing(t testing.TB, cluster, service string, sampling float64) *hcm.HttpConnectionManager_Tracing {
	return &hcm.HttpConnectionManager_Tracing{RandomSampling: &typev3.Percent{Value: sampling}, Provider: &tracev3.Tracing_Http{
		Name: "envoy.tracers.opentelemetry", ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: typed(t, &tracev3.OpenTelemetryConfig{
			GrpcService: grpcServiceFor(cluster), ServiceName: service})}}}
}

func zipkinTracing(t testing.TB, cluster string, z *tracev3.ZipkinConfig) *hcm.HttpConnectionManager_Tracing {
	if z == nil {
		z = &tracev3.ZipkinConfig{CollectorCluster: cluster, CollectorEndpoint: "/api/v2/spans",
			CollectorEndpointVersion: tracev3.ZipkinConfig_HTTP_JSON, TraceId_128Bit: true}
	}
	return &hcm.HttpConnectionManager_Tracing{Provider: &tracev3.Tracing_Http{Name: "envoy.tracers.zipkin",
		ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: typed(t, z)}}}
}

func TestTranslateTracing(t *testing.T) {
	tr, err := translateTracing(otelTracing(t, "tracing:127.0.0.1:4317", "web", 25), false, "")
	if err != nil {
		t.Fatal(err)
	}
	if tr.key != (exporterKey{kind: "otlp", cluster: "tracing:127.0.0.1:4317", service: "web"}) || tr.sampling != 25 || tr.server || tr.maxPath != 256 {
		t.Fatalf("opentelemetry: %+v", tr)
	}
	tr, err = translateTracing(zipkinTracing(t, "tracing:127.0.0.1:9411", nil), true, "billing")
	if err != nil {
		t.Fatal(err)
	}
	if tr.key != (exporterKey{kind: "zipkin", cluster: "tracing:127.0.0.1:9411", service: "billing", path: "/api/v2/spans"}) || tr.sampling != 100 || !tr.server {
		t.Fatalf("zipkin: %+v", tr)
	}
	if got := strings.Join(tr.propagator().Fields(), " "); !tr.b3 || tr.w3c || got != "x-b3-traceid x-b3-spanid x-b3-sampled x-b3-flags" {
		t.Fatalf("zipkin (USE_B3) writes %q, want B3's headers", got)
	}
	tr, err = translateTracing(zipkinTracing(t, "", &tracev3.ZipkinConfig{CollectorCluster: "c", CollectorEndpoint: "/api/v2/spans",
		CollectorEndpointVersion: tracev3.ZipkinConfig_HTTP_JSON, TraceId_128Bit: true,
		TraceContextOption: tracev3.ZipkinConfig_USE_B3_WITH_W3C_PROPAGATION}), false, "")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(slices.Sorted(slices.Values(tr.propagator().Fields())), " "); !tr.b3 || !tr.w3c || got != "traceparent tracestate x-b3-flags x-b3-sampled x-b3-spanid x-b3-traceid" {
		t.Fatalf("zipkin (USE_B3_WITH_W3C_PROPAGATION) writes %q, want W3C's and B3's headers", got)
	}

	verbose := otelTracing(t, "c", "s", 100)
	verbose.Verbose = true
	upstreamSpan := otelTracing(t, "c", "s", 100)
	upstreamSpan.SpawnUpstreamSpan = wrapperspb.Bool(true)
	overall := otelTracing(t, "c", "s", 100)
	overall.OverallSampling = &typev3.Percent{Value: 50}
	bits64 := zipkinTracing(t, "", &tracev3.ZipkinConfig{CollectorCluster: "c", CollectorEndpoint: "/api/v2/spans", CollectorEndpointVersion: tracev3.ZipkinConfig_HTTP_JSON})
	protoZipkin := zipkinTracing(t, "", &tracev3.ZipkinConfig{CollectorCluster: "c", CollectorEndpoint: "/api/v2/spans", CollectorEndpointVersion: tracev3.ZipkinConfig_HTTP_PROTO, TraceId_128Bit: true})
	sampler := &hcm.HttpConnectionManager_Tracing{Provider: &tracev3.Tracing_Http{Name: "o", ConfigType: &tracev3.Tracing_Http_TypedConfig{
		TypedConfig: typed(t, &tracev3.OpenTelemetryConfig{GrpcService: grpcServiceFor("c"), Sampler: &core.TypedExtensionConfig{Name: "sampler"}})}}}
	other := &hcm.HttpConnectionManager_Tracing{Provider: &tracev3.Tracing_Http{Name: "d", ConfigType: &tracev3.Tracing_Http_TypedConfig{
		TypedConfig: typed(t, &tracev3.DatadogConfig{CollectorCluster: "c", ServiceName: "s"})}}}
	unknownOption := zipkinTracing(t, "", &tracev3.ZipkinConfig{CollectorCluster: "c", CollectorEndpoint: "/api/v2/spans",
		CollectorEndpointVersion: tracev3.ZipkinConfig_HTTP_JSON, TraceId_128Bit: true, TraceContextOption: 7})
	for name, tc := range map[string]struct {
		in   *hcm.HttpConnectionManager_Tracing
		want string
	}{
		"zipkin option":   {unknownOption, "trace_context_option 7 is not supported"},
		"verbose":         {verbose, "Tracing.verbose: not supported"},
		"upstream span":   {upstreamSpan, "spawn_upstream_span: not supported"},
		"overall":         {overall, "overall_sampling other than 100"},
		"zipkin 64-bit":   {bits64, "trace_id_128bit must be true"},
		"zipkin proto":    {protoZipkin, "HTTP_PROTO is not supported"},
		"otel sampler":    {sampler, "OpenTelemetryConfig.Sampler"},
		"other provider":  {other, "provider envoy.config.trace.v3.DatadogConfig is not supported"},
		"no provider":     {&hcm.HttpConnectionManager_Tracing{}, "no provider"},
		"no otel cluster": {otelTracing(t, "", "s", 100), "GrpcService_EnvoyGrpc.ClusterName"},
	} {
		_, err := translateTracing(tc.in, false, "")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, tc.want)
		}
	}
}

// decided is tr's HCM decision for a request whose header is h, with an
// X-Request-Id the HCM would have given it when it has none.
func decided(tr *tracer, h http.Header) bool {
	if _, ok := h["X-Request-Id"]; !ok {
		h["X-Request-Id"] = []string{uuid.NewString()}
	}
	return tr.decide(h)
}

// recordingTracer is a tracer whose spans a SpanRecorder keeps.
func recordingTracer(t *testing.T, server bool, sampling float64) (*tracer, *tracetest.SpanRecorder) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())), sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	tr := &tracer{sampling: sampling, server: server, maxPath: defaultMaxPathTag, w3c: true}
	tr.bindSpans(tp.Tracer("test"))
	return tr, rec
}

func attr(s sdktrace.ReadOnlySpan, key string) attribute.Value {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// TestSpansAcrossTwoHops: a request without trace context gets a client
// span on the caller's sidecar (a new trace), which it carries on in
// traceparent; the callee's sidecar makes a server span, its child, and
// hands its own on to the application.
func TestSpansAcrossTwoHops(t *testing.T) {
	out, outRec := recordingTracer(t, false, 100)
	in, inRec := recordingTracer(t, true, 0) // a callee follows its caller's decision

	h := http.Header{}
	_, client := out.startSpan(context.Background(), h, sampleRecord().Start, decided(out, h))
	upstream := h.Get("traceparent")
	if !strings.HasPrefix(upstream, "00-"+client.SpanContext().TraceID().String()+"-"+client.SpanContext().SpanID().String()+"-01") {
		t.Fatalf("traceparent upstream %q, want the client span's, sampled", upstream)
	}
	r := sampleRecord()
	r.Status = 200
	out.endSpan(client, r)

	_, server := in.startSpan(context.Background(), h, sampleRecord().Start, decided(in, h))
	if h.Get("traceparent") == upstream {
		t.Fatal("the callee's sidecar passed the caller's traceparent on unchanged")
	}
	in.endSpan(server, r)

	cs, ss := outRec.Ended(), inRec.Ended()
	if len(cs) != 1 || len(ss) != 1 {
		t.Fatalf("%d client and %d server spans, want one of each", len(cs), len(ss))
	}
	c, s := cs[0], ss[0]
	if c.SpanKind() != trace.SpanKindClient || s.SpanKind() != trace.SpanKindServer {
		t.Fatalf("kinds %v and %v", c.SpanKind(), s.SpanKind())
	}
	if c.Parent().IsValid() {
		t.Fatalf("the client span has a parent %v: the request came without one", c.Parent())
	}
	if s.Parent().SpanID() != c.SpanContext().SpanID() || s.SpanContext().TraceID() != c.SpanContext().TraceID() {
		t.Fatalf("server span's parent %v, want the client span %v", s.Parent(), c.SpanContext())
	}
	if c.Name() != "billing billing-canary/0" {
		t.Fatalf("span name %q", c.Name())
	}
	for key, want := range map[string]string{"http.request.method": "GET", "url.path": "/api/v1", "server.address": "billing.mesh",
		"ursa.service": "billing", "ursa.zone": "zone-1"} {
		if got := attr(c, key).AsString(); got != want {
			t.Errorf("attribute %s = %q, want %q", key, got, want)
		}
	}
	if got := attr(c, "http.response.status_code").AsInt64(); got != 200 {
		t.Errorf("http.response.status_code = %d", got)
	}
	if !c.EndTime().Equal(r.Start.Add(r.Duration)) {
		t.Errorf("span ends at %v, want the request's end %v", c.EndTime(), r.Start.Add(r.Duration))
	}
}

func TestSpanChildOfIncomingTraceparent(t *testing.T) {
	out, rec := recordingTracer(t, false, 0) // 0 %: only the caller's decision records
	h := http.Header{"Traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}
	_, span := out.startSpan(context.Background(), h, sampleRecord().Start, decided(out, h))
	out.endSpan(span, sampleRecord())
	got := rec.Ended()
	if len(got) != 1 || got[0].Parent().SpanID().String() != "b7ad6b7169203331" || got[0].SpanContext().TraceID().String() != "0af7651916cd43dd8448eb211c80319c" {
		t.Fatalf("spans %v, want one, child of the incoming traceparent", got)
	}
	if want := "00-0af7651916cd43dd8448eb211c80319c-" + got[0].SpanContext().SpanID().String() + "-01"; h.Get("traceparent") != want {
		t.Fatalf("traceparent upstream %q, want %q", h.Get("traceparent"), want)
	}
}

// b3Tracer is recordingTracer for a Zipkin provider: B3, and with w3c
// W3C beside it.
func b3Tracer(t *testing.T, server bool, sampling float64, w3c bool) (*tracer, *tracetest.SpanRecorder) {
	tr, rec := recordingTracer(t, server, sampling)
	tr.b3, tr.w3c = true, w3c
	return tr, rec
}

// TestB3Propagation: with a Zipkin provider a sidecar reads a caller's B3
// context (the headers, or the single b3 header) and writes its span's as
// Envoy's Zipkin tracer does: B3 headers with the caller's span as the
// parent and a caller's 64-bit trace ID kept at 64 bits; the caller's own
// B3 headers do not go on. With USE_B3_WITH_W3C_PROPAGATION it reads W3C
// where there is no B3, and writes both; a tracestate goes on only with
// its own trace.
func TestB3Propagation(t *testing.T) {
	const trace128, trace64, caller = "0af7651916cd43dd8448eb211c80319c", "8448eb211c80319c", "b7ad6b7169203331"
	other := "00-11111111111111111111111111111111-" + caller + "-01"
	for name, tc := range map[string]struct {
		w3c       bool
		in        http.Header
		wantTrace string // the span's trace; "" for a new one, not recorded (0 % sampling)
		wantB3ID  string // X-B3-TraceId upstream; "" for the span's
		wantW3C   bool   // traceparent upstream is the span's
		wantState string // tracestate upstream
	}{
		"headers": {in: http.Header{"X-B3-Traceid": {trace128}, "X-B3-Spanid": {caller}, "X-B3-Sampled": {"1"},
			"X-B3-Parentspanid": {"0000000000000001"}}, wantTrace: trace128},
		"64-bit trace ID": {in: http.Header{"X-B3-Traceid": {trace64}, "X-B3-Spanid": {caller}, "X-B3-Sampled": {"1"}},
			wantTrace: "0000000000000000" + trace64, wantB3ID: trace64},
		"single header": {in: http.Header{"B3": {trace128 + "-" + caller + "-1"}}, wantTrace: trace128},
		"single 64-bit": {in: http.Header{"B3": {trace64 + "-" + caller + "-1"}}, wantTrace: "0000000000000000" + trace64, wantB3ID: trace64},
		"bad single, good headers": {in: http.Header{"B3": {"x-y-1"}, "X-B3-Traceid": {trace128}, "X-B3-Spanid": {caller}, "X-B3-Sampled": {"1"}},
			wantTrace: trace128},
		"W3C ignored": {in: http.Header{"Traceparent": {"00-" + trace128 + "-" + caller + "-01"}}},
		"W3C read": {w3c: true, in: http.Header{"Traceparent": {"00-" + trace128 + "-" + caller + "-01"}, "Tracestate": {"k=v"}},
			wantTrace: trace128, wantW3C: true, wantState: "k=v"},
		"B3 before W3C": {w3c: true, in: http.Header{"Traceparent": {other}, "Tracestate": {"k=v"},
			"B3": {trace128 + "-" + caller + "-1"}}, wantTrace: trace128, wantW3C: true},
		"bad B3 beside W3C": {w3c: true, in: http.Header{"Traceparent": {"00-0000000000000000" + trace64 + "-" + caller + "-01"},
			"X-B3-Traceid": {trace64}, "X-B3-Spanid": {"zz"}, "X-B3-Sampled": {"1"}}, wantTrace: "0000000000000000" + trace64, wantW3C: true},
		"B3 and W3C of one trace": {w3c: true, in: http.Header{"Traceparent": {"00-" + trace128 + "-" + caller + "-01"}, "Tracestate": {"k=v"},
			"X-B3-Traceid": {trace128}, "X-B3-Spanid": {caller}, "X-B3-Sampled": {"1"}}, wantTrace: trace128, wantW3C: true, wantState: "k=v"},
	} {
		t.Run(name, func(t *testing.T) {
			tr, rec := b3Tracer(t, false, 0, tc.w3c) // 0 %: only a caller's decision records
			h := tc.in.Clone()
			_, span := tr.startSpan(context.Background(), h, sampleRecord().Start, decided(tr, h))
			tr.endSpan(span, sampleRecord())
			sc := span.SpanContext()
			parent := caller
			if tc.wantTrace == "" {
				if len(rec.Ended()) != 0 || sc.TraceID().String() == trace128 {
					t.Fatalf("a request without a context it reads was recorded, or joined trace %s", sc.TraceID())
				}
				parent = ""
			} else {
				got := rec.Ended()
				if len(got) != 1 || got[0].SpanContext().TraceID().String() != tc.wantTrace || got[0].Parent().SpanID().String() != caller {
					t.Fatalf("spans %v, want one in trace %s, child of %s", got, tc.wantTrace, caller)
				}
			}
			wantID := tc.wantB3ID
			if wantID == "" {
				wantID = sc.TraceID().String()
			}
			if h.Get("X-B3-Traceid") != wantID || h.Get("X-B3-Spanid") != sc.SpanID().String() || h.Get("X-B3-Parentspanid") != parent {
				t.Fatalf("B3 upstream %q/%q parent %q, want %s/%s parent %q", h.Get("X-B3-Traceid"), h.Get("X-B3-Spanid"),
					h.Get("X-B3-Parentspanid"), wantID, sc.SpanID(), parent)
			}
			if want := map[bool]string{true: "1", false: "0"}[sc.IsSampled()]; h.Get("X-B3-Sampled") != want {
				t.Fatalf("X-B3-Sampled %q, want %q", h.Get("X-B3-Sampled"), want)
			}
			if h["B3"] != nil {
				t.Fatalf("the caller's b3 header went on: %q", h["B3"])
			}
			tp := h.Get("Traceparent")
			if tc.wantW3C != (tp == "00-"+sc.TraceID().String()+"-"+sc.SpanID().String()+"-01") {
				t.Fatalf("traceparent upstream %q (W3C written: %t)", tp, tc.wantW3C)
			}
			if tc.w3c && h.Get("Tracestate") != tc.wantState {
				t.Fatalf("tracestate upstream %q, want %q", h.Get("Tracestate"), tc.wantState)
			}
		})
	}
}

// TestB3Sampling: a B3 caller that leaves the sampling decision to the
// next hop gets this hop's: recorded at 100 %, not at 0 %, and the
// decision goes on in X-B3-Sampled. A b3 header of a sampling state alone
// decides for the new trace it starts.
func TestB3Sampling(t *testing.T) {
	const id, span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	for _, tc := range []struct {
		in        http.Header
		sampling  float64
		want      bool
		sameTrace bool
	}{
		{http.Header{"X-B3-Traceid": {id}, "X-B3-Spanid": {span}}, 0, false, true},
		{http.Header{"X-B3-Traceid": {id}, "X-B3-Spanid": {span}}, 100, true, true},
		{http.Header{"X-B3-Traceid": {id}, "X-B3-Spanid": {span}, "X-B3-Flags": {"0"}}, 100, true, true},
		{http.Header{"X-B3-Traceid": {id}, "X-B3-Spanid": {span}, "X-B3-Flags": {"1"}}, 0, true, true},
		{http.Header{"X-B3-Traceid": {id}, "X-B3-Spanid": {span}, "X-B3-Sampled": {"0"}}, 100, false, true},
		{http.Header{"B3": {id + "-" + span}}, 0, false, true},
		{http.Header{"B3": {id + "-" + span}}, 100, true, true},
		{http.Header{"B3": {"0"}}, 100, false, false},
		{http.Header{"B3": {"1"}}, 0, true, false},
		{http.Header{"B3": {"d"}}, 0, true, false},
	} {
		tr, rec := b3Tracer(t, true, tc.sampling, false)
		h := tc.in.Clone()
		_, s := tr.startSpan(context.Background(), h, sampleRecord().Start, decided(tr, h))
		tr.endSpan(s, sampleRecord())
		recorded := len(rec.Ended()) == 1
		if recorded != tc.want || (s.SpanContext().TraceID().String() == id) != tc.sameTrace {
			t.Fatalf("%v at %v %%: recorded %t in trace %s", tc.in, tc.sampling, recorded, s.SpanContext().TraceID())
		}
		if got := h.Get("X-B3-Sampled"); got != map[bool]string{true: "1", false: "0"}[tc.want] {
			t.Fatalf("%v at %v %%: X-B3-Sampled %q", tc.in, tc.sampling, got)
		}
	}
}

// TestUnboundTracerPropagates: a tracer whose collector is not known yet
// records nothing, but a new trace's IDs and sampling decision still go
// on, for the hops after it to record.
func TestUnboundTracerPropagates(t *testing.T) {
	for _, sampling := range []float64{0, 100} {
		tr := &tracer{sampling: sampling, maxPath: defaultMaxPathTag, w3c: true}
		h := http.Header{}
		_, span := tr.startSpan(context.Background(), h, time.Now(), decided(tr, h))
		span.End()
		want := map[float64]string{0: "-00", 100: "-01"}[sampling]
		if tp := h.Get("traceparent"); !strings.HasPrefix(tp, "00-") || !strings.HasSuffix(tp, want) {
			t.Fatalf("at %v %%: traceparent %q, want a new trace ending %s", sampling, tp, want)
		}
	}
}

func TestSamplingOfNewTraces(t *testing.T) {
	out, rec := recordingTracer(t, false, 0)
	h := http.Header{}
	_, span := out.startSpan(context.Background(), h, sampleRecord().Start, decided(out, h))
	out.endSpan(span, sampleRecord())
	if len(rec.Ended()) != 0 {
		t.Fatal("0 % sampling recorded a span")
	}
	tp := h.Get("traceparent")
	if !strings.HasPrefix(tp, "00-") || !strings.HasSuffix(tp, "-00") {
		t.Fatalf("traceparent %q, want a new trace, not sampled", tp)
	}
	// The next hop follows the decision.
	in, inRec := recordingTracer(t, true, 100)
	_, span = in.startSpan(context.Background(), h, sampleRecord().Start, decided(in, h))
	in.endSpan(span, sampleRecord())
	if len(inRec.Ended()) != 0 {
		t.Fatal("the next hop recorded a trace its caller did not sample")
	}

	half, halfRec := recordingTracer(t, false, 50)
	for range 1000 {
		h := http.Header{}
		_, span := half.startSpan(context.Background(), h, sampleRecord().Start, decided(half, h))
		half.endSpan(span, sampleRecord())
	}
	if n := len(halfRec.Ended()); n < 400 || n > 600 {
		t.Fatalf("50 %% sampling recorded %d of 1000", n)
	}
}

// otlpCollector is a real OTLP/gRPC trace collector on loopback.
type otlpCollector struct {
	collectortrace.UnimplementedTraceServiceServer
	addr  string
	mu    sync.Mutex
	spans map[string]string // span name → service.name
}

func (c *otlpCollector) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		svc := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				svc = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				c.spans[s.GetName()] = svc
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func (c *otlpCollector) has(name, service string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.spans[name] == service
}

func startOTLPCollector(t *testing.T) *otlpCollector {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &otlpCollector{addr: ln.Addr().String(), spans: map[string]string{}}
	s := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(s, c)
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return c
}

func staticCluster(name, addr string) *Cluster {
	return &Cluster{Name: name, ConnectTimeout: time.Second, Endpoints: []Endpoint{{Addr: addr, Weight: 1}}}
}

// TestExportersFollowTheConfiguration: spans go to the collector a
// tracer's cluster names, over OTLP/gRPC or Zipkin JSON; tracers of one
// collector share an exporter; one no tracer uses any more is shut down.
func TestExportersFollowTheConfiguration(t *testing.T) {
	otlp := startOTLPCollector(t)
	var zmu sync.Mutex
	var zipkinSpans []map[string]any
	zipkin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var spans []map[string]any
		b, _ := io.ReadAll(r.Body)
		if r.URL.Path != "/api/v2/spans" || json.Unmarshal(b, &spans) != nil {
			w.WriteHeader(400)
			return
		}
		zmu.Lock()
		zipkinSpans = append(zipkinSpans, spans...)
		zmu.Unlock()
		w.WriteHeader(202)
	}))
	t.Cleanup(zipkin.Close)

	exp := newSpanExporters(zaptest.NewLogger(t), func(c *Cluster) *net.Dialer { return &net.Dialer{Timeout: c.ConnectTimeout} })
	exp.Batch, exp.Service = 10*time.Millisecond, "web"
	t.Cleanup(func() { exp.close(context.Background()) })
	cfg := &Config{Clusters: map[string]*Cluster{
		"tracing:otlp":   staticCluster("tracing:otlp", otlp.addr),
		"tracing:zipkin": staticCluster("tracing:zipkin", strings.TrimPrefix(zipkin.URL, "http://")),
	}}
	mk := func(tr *hcm.HttpConnectionManager_Tracing, server bool, local string) *tracer {
		x, err := translateTracing(tr, server, local)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	a := mk(otelTracing(t, "tracing:otlp", "web", 100), false, "")
	b := mk(otelTracing(t, "tracing:otlp", "web", 100), true, "")
	z := mk(zipkinTracing(t, "tracing:zipkin", nil), false, "")
	unknown := mk(otelTracing(t, "tracing:nowhere", "web", 100), false, "")
	exp.bind(cfg, []*tracer{a, b, z, unknown})
	if n := exp.active(); n != 2 {
		t.Fatalf("%d exporters for two collectors", n)
	}
	if a.spans.Load().Tracer != b.spans.Load().Tracer {
		t.Fatal("two tracers of one collector do not share its exporter")
	}
	send := func(tr *tracer, route string) {
		h := http.Header{}
		_, span := tr.startSpan(context.Background(), h, sampleRecord().Start, decided(tr, h))
		r := sampleRecord()
		r.Route = route
		tr.endSpan(span, r)
	}
	send(a, "a")
	send(z, "z")
	send(unknown, "lost") // recorded by nobody, no panic
	ursatest.Until(t, 10*time.Second, "the OTLP span at the collector", func() bool { return otlp.has("billing a", "web") })
	ursatest.Until(t, 10*time.Second, "the Zipkin span at the collector", func() bool {
		zmu.Lock()
		defer zmu.Unlock()
		for _, s := range zipkinSpans {
			if s["name"] == "billing z" && s["localEndpoint"].(map[string]any)["serviceName"] == "web" {
				return true
			}
		}
		return false
	})

	// The next configuration keeps only the Zipkin tracer: the OTLP
	// exporter is shut down, after sending what it held.
	send(b, "last")
	exp.bind(cfg, []*tracer{z})
	if n := exp.active(); n != 1 {
		t.Fatalf("%d exporters after the OTLP collector went out of the configuration", n)
	}
	ursatest.Until(t, 10*time.Second, "the OTLP exporter's last span sent on shutdown", func() bool { return otlp.has("billing last", "web") })
}

func grpcServiceFor(cluster string) *core.GrpcService {
	return &core.GrpcService{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: cluster}}}
}

// FuzzTranslateObs: any HCM access_log and tracing, as bytes off the
// wire, translate or are refused with an error; never a panic.
func FuzzTranslateObs(f *testing.F) {
	seed := &hcm.HttpConnectionManager{
		AccessLog: []*accesslogv3.AccessLog{fileLogger(f, "/tmp/x", "%REQ(:PATH)% %RESPONSE_CODE%\n"), fluentLogger(f, "access-log:c", "%DURATION%")},
		Tracing:   otelTracing(f, "tracing:c", "web", 10)}
	for _, m := range []*hcm.HttpConnectionManager{seed, {Tracing: zipkinTracing(f, "tracing:z", nil)}, {}} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, false)
	}
	f.Fuzz(func(t *testing.T, b []byte, server bool) {
		h := &hcm.HttpConnectionManager{}
		if proto.Unmarshal(b, h) != nil {
			return
		}
		obs, err := translateObs(h.GetAccessLog(), h.GetTracing(), server, "billing")
		if err != nil {
			return
		}
		r := sampleRecord()
		for _, l := range obs.Logs {
			if l.format != nil {
				l.format.format(r)
			} else {
				l.record.build(r)
			}
		}
	})
}

// BenchmarkSpanPropagation is what reading a request's trace context and
// writing its span's costs a sidecar, by the trace contexts its tracer
// uses, with the span recorded by an SDK tracer that keeps nothing.
func BenchmarkSpanPropagation(b *testing.B) {
	const trace128, caller = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())))
	b.Cleanup(func() { tp.Shutdown(context.Background()) })
	for _, tc := range []struct {
		name    string
		b3, w3c bool
		in      http.Header
	}{
		{"w3c", false, true, http.Header{"Traceparent": {"00-" + trace128 + "-" + caller + "-01"}}},
		{"b3", true, false, http.Header{"X-B3-Traceid": {trace128}, "X-B3-Spanid": {caller}, "X-B3-Sampled": {"1"}}},
		{"b3+w3c, B3 in", true, true, http.Header{"X-B3-Traceid": {trace128}, "X-B3-Spanid": {caller}, "X-B3-Sampled": {"1"}}},
		{"b3+w3c, W3C in", true, true, http.Header{"Traceparent": {"00-" + trace128 + "-" + caller + "-01"}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			tr := &tracer{sampling: 100, maxPath: defaultMaxPathTag, b3: tc.b3, w3c: tc.w3c}
			tr.bindSpans(tp.Tracer("bench"))
			start := time.Now()
			b.ReportAllocs()
			for b.Loop() {
				h := tc.in.Clone()
				_, span := tr.startSpan(context.Background(), h, start, true)
				span.End()
			}
		})
	}
}

// FuzzB3Headers feeds a Zipkin tracer whatever a caller may send as trace
// context: it never fails, and what goes on is the span's own B3 context
// (a trace ID of 16 or 32 hex digits, the span's ID, a decision) and
// none of the caller's headers it replaces.
func FuzzB3Headers(f *testing.F) {
	f.Add("0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1", "", "", "", "", "")
	f.Add("", "8448eb211c80319c", "b7ad6b7169203331", "", "0", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	f.Add("d", "0af7651916cd43dd8448eb211c80319c", "zz", "true", "1", "")
	f.Add("x-y-z-w", "", "", "1", "", "garbage")
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())))
	f.Cleanup(func() { tp.Shutdown(context.Background()) })
	spans := tp.Tracer("fuzz")
	f.Fuzz(func(t *testing.T, single, traceID, spanID, sampled, flags, traceparent string) {
		in := http.Header{}
		for k, v := range map[string]string{"B3": single, "X-B3-Traceid": traceID, "X-B3-Spanid": spanID,
			"X-B3-Sampled": sampled, "X-B3-Flags": flags, "Traceparent": traceparent} {
			if v != "" {
				in[k] = []string{v}
			}
		}
		for i, w3c := range []bool{false, true} {
			tr := &tracer{sampling: 50, maxPath: defaultMaxPathTag, b3: true, w3c: w3c}
			if i == 1 { // one bound to an SDK tracer, one not yet bound
				tr.bindSpans(spans)
			}
			h := in.Clone()
			_, span := tr.startSpan(context.Background(), h, time.Now(), decided(tr, h))
			sc := span.SpanContext()
			id := h.Get("X-B3-Traceid")
			if (len(id) != 16 && len(id) != 32) || !strings.HasSuffix(sc.TraceID().String(), id) {
				t.Fatalf("%v: X-B3-TraceId %q for the span's trace %s", in, id, sc.TraceID())
			}
			if h.Get("X-B3-Spanid") != sc.SpanID().String() || h.Get("X-B3-Sampled") != map[bool]string{true: "1", false: "0"}[sc.IsSampled()] {
				t.Fatalf("%v: B3 upstream %v for the span %v", in, h, sc)
			}
			if h["B3"] != nil || h["X-B3-Flags"] != nil {
				t.Fatalf("%v: the caller's headers went on: %v", in, h)
			}
		}
	})
}

// TestTraceDecisionInRequestID: the HCM decides from the X-Request-Id and
// keeps its decision there, as Envoy's UUID request ID extension does.
func TestTraceDecisionInRequestID(t *testing.T) {
	const rest = "-0000-4000-8000-000000000000"
	for _, tc := range []struct {
		id       string
		client   bool
		sampling float64
		traced   bool
		after    string
	}{
		{"00000001" + rest, false, 50, true, "00000001-0000-9000-8000-000000000000"},                     // 1 < 5,000 of 10,000
		{"00001389" + rest, false, 50, false, "00001389" + rest},                                         // 5,001
		{"00001387" + rest, false, 50, true, "00001387-0000-9000-8000-000000000000"},                     // 4,999
		{"ffffffff" + rest, false, 100, true, "ffffffff-0000-9000-8000-000000000000"},                    // 100 %: every one
		{"00000001" + rest, false, 0, false, "00000001" + rest},                                          // 0 %: none
		{"00000001-0000-9000-8000-000000000000", false, 0, true, "00000001-0000-9000-8000-000000000000"}, // decided before
		{"00000001-0000-a000-8000-000000000000", false, 0, true, "00000001-0000-a000-8000-000000000000"},
		{"00000001-0000-b000-8000-000000000000", false, 0, true, "00000001-0000-b000-8000-000000000000"},
		{"00000001" + rest, true, 0, true, "00000001-0000-b000-8000-000000000000"}, // X-Client-Trace-Id
		{"deadbeef", false, 100, true, "deadbeef"},                                 // not a UUID: traced, unmarked
		{"caller-chosen", false, 100, false, "caller-chosen"},                      // not hex: never traced
		{"", false, 100, false, ""},
	} {
		h := http.Header{"X-Request-Id": {tc.id}}
		if tc.client {
			h.Set("X-Client-Trace-Id", "c")
		}
		tr := &tracer{sampling: tc.sampling}
		if got := tr.decide(h); got != tc.traced || h.Get("X-Request-Id") != tc.after {
			t.Errorf("%q at %v %% (client %t): traced %t, ID %q; want %t, %q", tc.id, tc.sampling, tc.client, got, h.Get("X-Request-Id"), tc.traced, tc.after)
		}
	}
	if (&tracer{sampling: 100}).decide(http.Header{}) {
		t.Error("a request without an X-Request-Id was traced")
	}
}
