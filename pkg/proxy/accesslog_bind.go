package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// observability runs what the current configuration's access loggers and
// tracers need: one sink per distinct file, stdout or Fluent collector, one
// span exporter per distinct tracing collector. bind starts what a new
// configuration needs before it is served, and stops, in the background,
// what no longer serves any listener.
type observability struct {
	log   *zap.Logger
	sinks map[sinkKey]logSink
	spans *spanExporters
	// dial connects to a cluster's endpoints (the Fluent collector).
	dial    func(ctx context.Context, cluster string) (net.Conn, error)
	dropped *prometheus.CounterVec
	mu      sync.Mutex
}

func newObservability(log *zap.Logger, reg prometheus.Registerer, dial func(context.Context, string) (net.Conn, error), exp *spanExporters) (*observability, error) {
	o := &observability{log: log, sinks: map[sinkKey]logSink{}, spans: exp, dial: dial,
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ursa_dp_access_log_dropped_total",
			Help: "Access log lines dropped because their sink could not keep up or its collector was unreachable, by sink kind."}, []string{"sink"})}
	if err := reg.Register(o.dropped); err != nil {
		return nil, fmt.Errorf("register access log metrics: %w", err)
	}
	return o, nil
}

// bind points every access logger and tracer of a configuration at its
// running sink or exporter, starting those that are new; cfg gives the
// clusters the collectors are. Sinks and exporters that none of them uses
// any more are closed in the background (a file sink flushes, an exporter
// sends what it holds). The caller serves the configuration only after
// bind.
func (o *observability) bind(cfg *Config, logs []*accessLog, tracers []*tracer) {
	o.mu.Lock()
	defer o.mu.Unlock()
	used := map[sinkKey]bool{}
	for _, l := range logs {
		s, ok := o.sinks[l.key]
		if !ok {
			s = o.startSink(l.key)
			o.sinks[l.key] = s
		}
		if b := l.sink.Load(); b == nil || b.logSink != s {
			l.sink.Store(&boundSink{s})
		}
		used[l.key] = true
	}
	var stale []logSink
	for k, s := range o.sinks {
		if !used[k] {
			stale = append(stale, s)
			delete(o.sinks, k)
		}
	}
	if len(stale) > 0 {
		go func() {
			for _, s := range stale {
				s.close()
			}
		}()
	}
	o.spans.bind(cfg, tracers)
}

func (o *observability) startSink(k sinkKey) logSink {
	dropped := o.dropped.WithLabelValues(k.kind)
	switch k.kind {
	case "fluentd":
		s := newFluentSink(o.log.With(zap.String("cluster", k.cluster)), k, o.dial, dropped)
		s.start()
		return s
	default:
		s := newTextSink(o.log.With(zap.String("path", k.path)), k, dropped)
		s.start()
		return s
	}
}

// close stops every sink and exporter, flushing what they hold.
func (o *observability) close(ctx context.Context) {
	o.mu.Lock()
	sinks := o.sinks
	o.sinks = map[sinkKey]logSink{}
	o.mu.Unlock()
	for _, s := range sinks {
		s.close()
	}
	o.spans.close(ctx)
}

// dialCluster connects to the first endpoint of a cluster of cfg's that
// answers, originating mTLS when the cluster asks for it; for clients
// that the proxy itself runs (the Fluent collector's).
func (p *Proxy) dialCluster(ctx context.Context, name string) (net.Conn, error) {
	cfg := p.cfg.Load()
	c := cfg.Clusters[name]
	if c == nil {
		return nil, fmt.Errorf("cluster %q is not configured", name)
	}
	var errs []error
	for _, ep := range c.Endpoints {
		conn, err := p.dialer(c).DialContext(ctx, "tcp", ep.Addr)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !c.TLS {
			return conn, nil
		}
		tc, err := p.originate(cfg, conn, c)
		if err != nil {
			conn.Close()
			errs = append(errs, err)
			continue
		}
		return tc, nil
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("cluster %q has no endpoint", name)
	}
	return nil, fmt.Errorf("cluster %q: %w", name, errors.Join(errs...))
}

// initObservability makes the proxy's sinks and exporters (none run until
// a configuration asks for them).
func (p *Proxy) initObservability(reg prometheus.Registerer) error {
	obs, err := newObservability(p.log.Named("accesslog"), reg, p.dialCluster, newSpanExporters(p.log.Named("tracing"), p.dialer))
	if err != nil {
		return err
	}
	p.obs = obs
	return nil
}

// closeObservability flushes and stops every sink and exporter, giving
// the exporters 5 s to send what they hold.
func (p *Proxy) closeObservability() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p.obs.close(ctx)
}
