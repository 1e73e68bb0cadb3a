package proxy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// tracer is a translated HttpConnectionManager.Tracing: which requests
// start a trace, what their spans look like, and — bound by Apply, before
// the configuration that holds it is served — where the spans go.
type tracer struct {
	key exporterKey
	// sampling is the percentage of requests the HCM decides to trace
	// (decide); a request with a traceparent follows its sampled flag
	// instead.
	sampling float64
	// server makes server spans (an inbound HCM); else client spans.
	server bool
	// maxPath bounds the url.path attribute (Envoy's max_path_tag_length).
	maxPath int
	// b3 and w3c are the trace contexts a request's is read from and its
	// span's written in (propagator), as Envoy's tracer of the provider
	// does: W3C Trace Context for OpenTelemetry; B3 for Zipkin, and with
	// its USE_B3_WITH_W3C_PROPAGATION, W3C beside it (B3 read first).
	b3, w3c bool
	// spans is set by bind: the exporter's tracer, or one that exports
	// nothing while the collector's cluster is unknown. An empty
	// key.service is the proxy's own service (spanExporters.service).
	spans atomic.Pointer[boundTracer]
}

// boundTracer is the OpenTelemetry tracer a tracer is bound to.
type boundTracer struct{ trace.Tracer }

// bindSpans makes spans the tracer's, unless it is already.
func (t *tracer) bindSpans(spans trace.Tracer) {
	if b := t.spans.Load(); b == nil || b.Tracer != spans {
		t.spans.Store(&boundTracer{spans})
	}
}

// exporterKey names one running exporter: tracers with equal keys share
// it.
type exporterKey struct {
	kind    string // "otlp" or "zipkin"
	cluster string
	// service is the resource's service.name.
	service string
	// path is the Zipkin collector endpoint's path.
	path string
}

// traceContext is W3C Trace Context: traceparent and tracestate.
var traceContext = propagation.TraceContext{}

// b3Headers are B3's, written as Envoy's Zipkin tracer does (one header
// each); b3Fields every header of B3, which a hop that writes B3 removes
// from the request first: a caller's single b3 header, read before the
// others, would otherwise go on naming the caller's span.
var (
	b3Headers = b3.New(b3.WithInjectEncoding(b3.B3MultipleHeader))
	b3Fields  = []string{"B3", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Parentspanid", "X-B3-Sampled", "X-B3-Flags"}
)

// b3AndTraceContext reads B3 first and W3C where there is no B3 (the
// composite's last reader that finds a context wins), and writes both.
var b3AndTraceContext = propagation.NewCompositeTextMapPropagator(traceContext, b3Headers)

const defaultMaxPathTag = 256

// translateTracing compiles an HCM's tracing: random_sampling, an
// OpenTelemetry (OTLP over gRPC) or Zipkin (JSON v2 over HTTP) provider
// whose collector is a cluster. server is true for an inbound HCM (server
// spans) and false for an outbound one (client spans). What it does not
// honour is an error naming it.
func translateTracing(t *hcm.HttpConnectionManager_Tracing, server bool, localService string) (*tracer, error) {
	if err := onlyFields(t, "random_sampling", "client_sampling", "overall_sampling", "max_path_tag_length", "provider"); err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	if p := t.GetClientSampling(); p != nil && p.GetValue() != 100 {
		return nil, errors.New("tracing: client_sampling other than 100 is not supported by the built-in proxy")
	}
	if p := t.GetOverallSampling(); p != nil && p.GetValue() != 100 {
		return nil, errors.New("tracing: overall_sampling other than 100 is not supported by the built-in proxy")
	}
	out := &tracer{sampling: 100, server: server, maxPath: defaultMaxPathTag, w3c: true}
	if s := t.GetRandomSampling(); s != nil {
		out.sampling = s.GetValue()
	}
	if n := t.GetMaxPathTagLength(); n != nil {
		out.maxPath = int(n.GetValue())
	}
	p := t.GetProvider()
	if p == nil || p.GetTypedConfig() == nil {
		return nil, errors.New("tracing: no provider")
	}
	tc := p.GetTypedConfig()
	switch {
	case tc.MessageIs(&tracev3.OpenTelemetryConfig{}):
		oc := &tracev3.OpenTelemetryConfig{}
		if err := unpackTyped(tc, oc); err != nil {
			return nil, fmt.Errorf("tracing: opentelemetry: %w", err)
		}
		if err := onlyFields(oc, "grpc_service", "service_name"); err != nil {
			return nil, fmt.Errorf("tracing: opentelemetry: %w", err)
		}
		gs := oc.GetGrpcService()
		if err := onlyFields(gs, "envoy_grpc", "timeout"); err != nil {
			return nil, fmt.Errorf("tracing: opentelemetry: grpc_service: %w", err)
		}
		eg := gs.GetEnvoyGrpc()
		if eg == nil || eg.GetClusterName() == "" {
			return nil, errors.New("tracing: opentelemetry: grpc_service.envoy_grpc.cluster_name is required")
		}
		if err := onlyFields(eg, "cluster_name"); err != nil {
			return nil, fmt.Errorf("tracing: opentelemetry: envoy_grpc: %w", err)
		}
		svc := oc.GetServiceName()
		if svc == "" {
			svc = localService
		}
		out.key = exporterKey{kind: "otlp", cluster: eg.GetClusterName(), service: svc}
	case tc.MessageIs(&tracev3.ZipkinConfig{}):
		zc := &tracev3.ZipkinConfig{}
		if err := unpackTyped(tc, zc); err != nil {
			return nil, fmt.Errorf("tracing: zipkin: %w", err)
		}
		if err := onlyFields(zc, "collector_cluster", "collector_endpoint", "trace_id_128bit", "collector_endpoint_version", "trace_context_option"); err != nil {
			return nil, fmt.Errorf("tracing: zipkin: %w", err)
		}
		if zc.GetCollectorCluster() == "" || !strings.HasPrefix(zc.GetCollectorEndpoint(), "/") {
			return nil, errors.New("tracing: zipkin: collector_cluster and a collector_endpoint path are required")
		}
		if zc.GetCollectorEndpointVersion() != tracev3.ZipkinConfig_HTTP_JSON {
			return nil, fmt.Errorf("tracing: zipkin: collector_endpoint_version %s is not supported by the built-in proxy (HTTP_JSON is)", zc.GetCollectorEndpointVersion())
		}
		// The proxy's new trace IDs are 128 bits (a caller's 64-bit B3 ID
		// goes on as it came: startSpan).
		if !zc.GetTraceId_128Bit() {
			return nil, errors.New("tracing: zipkin: trace_id_128bit must be true: the built-in proxy's trace IDs are 128-bit")
		}
		out.b3, out.w3c = true, false
		switch o := zc.GetTraceContextOption(); o {
		case tracev3.ZipkinConfig_USE_B3:
		case tracev3.ZipkinConfig_USE_B3_WITH_W3C_PROPAGATION:
			out.w3c = true
		default:
			return nil, fmt.Errorf("tracing: zipkin: trace_context_option %s is not supported by the built-in proxy", o)
		}
		out.key = exporterKey{kind: "zipkin", cluster: zc.GetCollectorCluster(), service: localService, path: zc.GetCollectorEndpoint()}
	default:
		return nil, fmt.Errorf("tracing: provider %s is not supported by the built-in proxy (opentelemetry and zipkin are)",
			strings.TrimPrefix(tc.GetTypeUrl(), "type.googleapis.com/"))
	}
	return out, nil
}

// startSpan begins the span of a request whose headers are h: a child of
// the trace context h carries (readCaller), or the root of a new trace,
// recorded at the tracer's sampling rate. It sets h's trace context to the
// new span's, so the request carries it on (upstream, or to the local
// application). start is when the request began (the record's Start). ctx
// carries the span; endSpan ends it.
func (t *tracer) startSpan(ctx context.Context, h http.Header, start time.Time, traced bool) (context.Context, trace.Span) {
	carrier, prop := propagation.HeaderCarrier(h), t.propagator()
	caller, in := t.readCaller(ctx, h)
	switch {
	case !caller.IsValid():
		if record := in.decides(traced); !record || t.spans.Load() == nil {
			// A new trace this hop does not record (not sampled, or not
			// bound to a collector yet): its IDs still go on with the
			// decision, which the hops after this one follow.
			var flags trace.TraceFlags
			ctx = trace.ContextWithRemoteSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
				TraceID: randomTraceID(), SpanID: randomSpanID(), TraceFlags: flags.WithSampled(record), Remote: true}))
		}
	case in.deferred:
		// A B3 caller that left the decision to the next hop: this one's
		// HCM decides, as with Envoy's Zipkin tracer.
		ctx = trace.ContextWithRemoteSpanContext(ctx, caller.WithTraceFlags(caller.TraceFlags().WithSampled(traced)))
	default:
		ctx = trace.ContextWithRemoteSpanContext(ctx, caller)
	}
	kind := trace.SpanKindClient
	if t.server {
		kind = trace.SpanKindServer
	}
	spans := t.spans.Load()
	if spans == nil {
		spans = &boundTracer{noop.NewTracerProvider().Tracer("")} // not bound: propagate only
	}
	ctx, span := spans.Start(ctx, "request", trace.WithSpanKind(kind), trace.WithTimestamp(start))
	prop.Inject(ctx, carrier)
	if t.b3 {
		// As Envoy's Zipkin span: the caller's span is the parent, and a
		// caller's 64-bit trace ID goes on at 64 bits (the span's is the
		// same ID, zero-padded).
		if caller.IsValid() {
			h["X-B3-Parentspanid"] = []string{caller.SpanID().String()}
		}
		if id := h.Get("X-B3-Traceid"); in.trace64 && len(id) == 32 {
			h["X-B3-Traceid"] = []string{id[16:]}
		}
	}
	return ctx, span
}

// readCaller reads the caller's span context from h, and with B3 what
// its headers said beside it; it removes the caller's B3 headers, which
// the span's replace. Only the span context goes on, not what else the
// reader put beside it (B3's deferred and debug marks): this hop decides.
func (t *tracer) readCaller(ctx context.Context, h http.Header) (trace.SpanContext, b3Caller) {
	carrier := propagation.HeaderCarrier(h)
	caller := trace.SpanContextFromContext(t.propagator().Extract(ctx, carrier))
	if !t.b3 {
		return caller, b3Caller{}
	}
	in := readB3(h, caller)
	for _, k := range b3Fields {
		delete(h, k)
	}
	if !in.used || !t.w3c {
		return caller, in
	}
	// A caller's tracestate goes on with its traceparent's trace only.
	if w := trace.SpanContextFromContext(traceContext.Extract(ctx, carrier)); w.TraceID() == caller.TraceID() {
		return caller.WithTraceState(w.TraceState()), in
	}
	delete(h, "Tracestate")
	return caller, in
}

// propagator reads and writes the tracer's trace contexts (b3, w3c).
func (t *tracer) propagator() propagation.TextMapPropagator {
	switch {
	case t.b3 && t.w3c:
		return b3AndTraceContext
	case t.b3:
		return b3Headers
	}
	return traceContext
}

// decide is the HCM's decision to trace the request whose header is h,
// made and kept in its X-Request-Id as Envoy's default request ID
// extension (UUID, pack_trace_reason and use_request_id_for_trace_sampling
// on) does, so that every hop that sees the ID decides alike. An ID whose
// 15th character marks a decision ('9' sampled, 'a' forced, 'b' by the
// client) is traced; else one beside an X-Client-Trace-Id is, marked 'b';
// else one whose first 32 bits, mod 10,000, fall under the sampling rate
// is, marked '9'. An ID whose first 8 characters are not hex, or none, is
// not traced; only a UUID's length (36) is marked.
func (t *tracer) decide(h http.Header) bool {
	vs := h["X-Request-Id"]
	if len(vs) == 0 || len(vs[0]) < 8 {
		return false
	}
	id := vs[0]
	n, err := strconv.ParseUint(id[:8], 16, 32)
	if err != nil {
		return false
	}
	const reason = 14 // the UUID's version digit, which Envoy reuses
	if len(id) == 36 {
		switch id[reason] {
		case '9', 'a', 'b':
			return true
		}
	}
	mark := byte('9')
	switch {
	case len(h["X-Client-Trace-Id"]) > 0:
		mark = 'b'
	case n%10_000 >= uint64(10_000*(t.sampling/100)): // truncated, as Envoy's convertPercent
		return false
	}
	if len(id) == 36 {
		b := []byte(id)
		b[reason] = mark
		h["X-Request-Id"] = []string{string(b)}
	}
	return true
}

// b3Caller is what a caller's B3 headers said, beside the span context
// the propagator read from them; the zero value for a caller without B3.
type b3Caller struct {
	// used: the caller's context is B3's (it wins over W3C's).
	used bool
	// deferred: it left the sampling decision to this hop.
	deferred bool
	// trace64: its trace ID was 64 bits.
	trace64 bool
	// only is a single b3 header of a sampling state alone: "0" (not
	// sampled), "1" or "d" (sampled); a decision for a new trace.
	only string
}

// readB3 reads what h's B3 headers said of caller, the context the
// propagator read: from the single b3 header when it names caller's IDs,
// else from the X-B3- headers when they do (none: caller is W3C's, or
// there is none). X-B3-Flags: 1 (debug) counts as sampled, as B3 says
// (Envoy ignores it).
func readB3(h http.Header, caller trace.SpanContext) b3Caller {
	var in b3Caller
	if v := h.Get("B3"); v != "" {
		id, rest, found := strings.Cut(v, "-")
		span, _, decided := strings.Cut(rest, "-")
		switch {
		case !found:
			in.only = v
		case namesContext(caller, id, span):
			return b3Caller{used: true, deferred: !decided, trace64: len(id) == 16}
		}
	}
	if id := h.Get("X-B3-Traceid"); namesContext(caller, id, h.Get("X-B3-Spanid")) {
		in = b3Caller{used: true, deferred: h.Get("X-B3-Sampled") == "" && h.Get("X-B3-Flags") != "1", trace64: len(id) == 16}
	}
	return in
}

// namesContext is whether B3's trace and span ID (hex, the trace ID 64
// or 128 bits) are sc's.
func namesContext(sc trace.SpanContext, traceID, spanID string) bool {
	if !sc.IsValid() {
		return false
	}
	want := sc.TraceID().String()
	if len(traceID) == 16 && want[:16] == "0000000000000000" {
		want = want[16:]
	}
	return strings.EqualFold(traceID, want) && strings.EqualFold(spanID, sc.SpanID().String())
}

// decides is whether a new trace is recorded: as a caller's sampling
// state alone said, else as the HCM decided (traced).
func (in b3Caller) decides(traced bool) bool {
	switch in.only {
	case "0":
		return false
	case "1", "d":
		return true
	}
	return traced
}

// endSpan names the span after the request's service and route, adds what
// the request did, and ends it.
func (t *tracer) endSpan(span trace.Span, r *accessRecord) {
	if !span.IsRecording() {
		span.End()
		return
	}
	route := r.Route
	if route == "" {
		route = "-"
	}
	span.SetName(r.Service + " " + route)
	path := r.Path
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	if t.maxPath > 0 && len(path) > t.maxPath {
		path = path[:t.maxPath]
	}
	attrs := []attribute.KeyValue{
		semconv.HTTPRequestMethodKey.String(r.Method),
		semconv.URLPath(path),
		semconv.ServerAddress(hostOnly(r.Authority)),
		attribute.String("ursa.service", r.Service),
		attribute.String("ursa.zone", r.Zone),
		attribute.String("ursa.route", r.Route),
		attribute.String("ursa.upstream_cluster", r.UpstreamCluster),
	}
	if r.Status != 0 {
		attrs = append(attrs, semconv.HTTPResponseStatusCode(r.Status))
	}
	if r.UpstreamHost != "" {
		attrs = append(attrs, attribute.String("ursa.upstream_host", r.UpstreamHost))
	}
	if r.Flags != "" {
		attrs = append(attrs, attribute.String("ursa.response_flags", r.Flags))
	}
	span.SetAttributes(attrs...)
	// Server spans are errors on 5xx only; client spans on 4xx too, as the
	// OpenTelemetry HTTP conventions say.
	if r.Status >= 500 || (!t.server && r.Status >= 400) || r.Status == 0 {
		span.SetStatus(codes.Error, r.Flags)
	}
	if r.Start.IsZero() {
		span.End()
		return
	}
	span.End(trace.WithTimestamp(r.Start.Add(r.Duration)))
}

func randomTraceID() trace.TraceID {
	var id trace.TraceID
	for id == (trace.TraceID{}) {
		for i := range id {
			id[i] = byte(rand.Uint32())
		}
	}
	return id
}

func randomSpanID() trace.SpanID {
	var id trace.SpanID
	for id == (trace.SpanID{}) {
		for i := range id {
			id[i] = byte(rand.Uint32())
		}
	}
	return id
}
