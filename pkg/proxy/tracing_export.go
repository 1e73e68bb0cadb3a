package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/zipkin"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// DefaultSpanBatch is how long finished spans wait to be exported with
// others at most.
const DefaultSpanBatch = time.Second

// spanExporters runs one OpenTelemetry SDK tracer provider, with a batch
// span processor and an OTLP/gRPC or Zipkin exporter, per distinct
// collector (its kind, cluster, address, and the service the spans are
// from) that the configuration's tracers use, and shuts each down (sending
// what it holds) when none does any more. Spans are sampled by the
// tracers (a parent's flag, or their own rate for a new trace); the
// providers record every span their parent lets them.
type spanExporters struct {
	log *zap.Logger
	// dialer dials a cluster's endpoints (the transparent proxy's mark).
	dialer func(c *Cluster) *net.Dialer
	// Service is the service.name of spans whose provider does not name
	// it (Zipkin's, an outbound tracer's); when empty, the service of the
	// proxy's certificate.
	Service string
	// Batch is how long spans wait to be exported at most.
	Batch time.Duration

	mu      sync.Mutex
	running map[exportTarget]*sdktrace.TracerProvider
	// none records spans for tracers whose collector's cluster is not
	// known yet: the IDs still go on to the next hop, nothing is sent.
	none *sdktrace.TracerProvider
}

// exportTarget is an exporterKey at the address its cluster has now.
type exportTarget struct {
	exporterKey
	addr string
}

func newSpanExporters(log *zap.Logger, dialer func(c *Cluster) *net.Dialer) *spanExporters {
	return &spanExporters{log: log, dialer: dialer, Batch: DefaultSpanBatch, running: map[exportTarget]*sdktrace.TracerProvider{},
		none: sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())))}
}

// bind points each tracer at the provider of its collector, starting the
// providers that are new and shutting down, in the background, those that
// no tracer uses any more.
func (e *spanExporters) bind(cfg *Config, tracers []*tracer) {
	e.mu.Lock()
	defer e.mu.Unlock()
	used := map[exportTarget]bool{}
	for _, t := range tracers {
		k := t.key
		if k.service == "" {
			k.service = e.service(cfg)
		}
		spans := e.none.Tracer("ursa-dp")
		if target, c, err := e.target(cfg, k); err != nil {
			e.log.Warn("spans are not exported until the tracing collector's cluster is known", zap.String("cluster", t.key.cluster), zap.Error(err))
		} else {
			tp, ok := e.running[target]
			if !ok {
				if tp, err = e.start(target, c); err != nil {
					e.log.Error("span exporter cannot start; spans are not exported", zap.String("cluster", t.key.cluster), zap.Error(err))
				} else {
					e.running[target] = tp
				}
			}
			if tp != nil {
				used[target] = true
				spans = tp.Tracer("ursa-dp")
			}
		}
		t.bindSpans(spans)
	}
	for target, tp := range e.running {
		if !used[target] {
			delete(e.running, target)
			go e.shutdown(target, tp)
		}
	}
}

// service is the service.name of spans whose tracer does not name it:
// Service, else the service of the proxy's certificate, else "ursa-dp".
func (e *spanExporters) service(cfg *Config) string {
	if e.Service != "" {
		return e.Service
	}
	if s := serviceOf(cfg.Identity); s != "" {
		return s
	}
	return "ursa-dp"
}

// target resolves a collector's cluster to the address its spans go to.
func (e *spanExporters) target(cfg *Config, k exporterKey) (exportTarget, *Cluster, error) {
	c := cfg.Clusters[k.cluster]
	switch {
	case c == nil:
		return exportTarget{}, nil, fmt.Errorf("cluster %q is not configured", k.cluster)
	case len(c.Endpoints) == 0:
		return exportTarget{}, nil, fmt.Errorf("cluster %q has no endpoint", k.cluster)
	case c.TLS:
		return exportTarget{}, nil, fmt.Errorf("cluster %q: a tracing collector over TLS is not supported by the built-in proxy", k.cluster)
	}
	return exportTarget{exporterKey: k, addr: c.Endpoints[0].Addr}, c, nil
}

func (e *spanExporters) start(t exportTarget, c *Cluster) (*sdktrace.TracerProvider, error) {
	var exp sdktrace.SpanExporter
	var err error
	d := e.dialer(c)
	switch t.kind {
	case "otlp":
		// grpc.NewClient does not connect until the first export: a
		// collector that is down costs nothing here.
		exp, err = otlptracegrpc.New(context.Background(), otlptracegrpc.WithEndpoint(t.addr), otlptracegrpc.WithInsecure(),
			otlptracegrpc.WithDialOption(grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return d.DialContext(ctx, "tcp", addr)
			})))
	case "zipkin":
		exp, err = zipkin.New("http://"+t.addr+t.path, zipkin.WithClient(&http.Client{Timeout: 10 * time.Second,
			Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 2, IdleConnTimeout: time.Minute}}))
	default:
		err = fmt.Errorf("unknown exporter %q", t.kind)
	}
	if err != nil {
		return nil, fmt.Errorf("%s exporter to %s: %w", t.kind, t.addr, err)
	}
	res := resource.NewWithAttributes(semconv.SchemaURL, semconv.ServiceName(t.service))
	e.log.Info("exporting spans", zap.String("kind", t.kind), zap.String("cluster", t.cluster), zap.String("address", t.addr), zap.String("service", t.service))
	return sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())),
		// The processor drops spans when its queue is full: a slow
		// collector never holds up a request.
		sdktrace.WithSpanProcessor(sdktrace.NewBatchSpanProcessor(exp, sdktrace.WithBatchTimeout(e.Batch))),
	), nil
}

func (e *spanExporters) shutdown(t exportTarget, tp *sdktrace.TracerProvider) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tp.Shutdown(ctx); err != nil {
		e.log.Warn("span exporter shut down with spans unsent", zap.String("cluster", t.cluster), zap.Error(err))
	}
}

// close shuts every provider down, sending what they hold, within ctx.
func (e *spanExporters) close(ctx context.Context) {
	e.mu.Lock()
	running := e.running
	e.running = map[exportTarget]*sdktrace.TracerProvider{}
	e.mu.Unlock()
	for _, tp := range running {
		tp.Shutdown(ctx)
	}
}

// active reports how many exporters run: for tests.
func (e *spanExporters) active() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.running)
}
