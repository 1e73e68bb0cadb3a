package proxy

import (
	"fmt"
	"math"
	"net"
	"sync"
	"sync/atomic"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// breakerKind is a resource a cluster's circuit breaker limits.
type breakerKind int

const (
	// kindConnections are upstream connections, TCP (tcp_proxy) and HTTP.
	kindConnections breakerKind = iota
	// kindPending are HTTP requests waiting for an upstream connection.
	kindPending
	// kindRequests are HTTP requests outstanding to the cluster.
	kindRequests
	// kindRetries are HTTP retries outstanding to the cluster.
	kindRetries
	numKinds
)

func (k breakerKind) String() string {
	return [...]string{"connections", "pending", "requests", "retries"}[k]
}

// Unlimited is a threshold that never trips.
const Unlimited = math.MaxInt64

// Thresholds are a cluster's circuit breaker limits: Envoy's thresholds
// of the DEFAULT routing priority. A limit counts what is open at once;
// the one past it overflows (Envoy's UO).
type Thresholds struct {
	MaxConnections, MaxPendingRequests, MaxRequests, MaxRetries int64
	// RetryBudget, when set, replaces MaxRetries: retries may be at
	// most BudgetPercent of the requests outstanding and pending, and
	// always at least MinRetryConcurrency.
	RetryBudget *RetryBudget
}

// RetryBudget is Envoy's retry budget.
type RetryBudget struct {
	BudgetPercent       float64
	MinRetryConcurrency int64
}

// noThresholds is what a cluster without circuit breakers gets: no limit.
// Envoy would apply its defaults (1024 connections, pending and requests,
// 3 retries) even then; the built-in proxy leaves a cluster the control
// plane set no limits for unlimited, as it always has for TCP.
var noThresholds = Thresholds{MaxConnections: Unlimited, MaxPendingRequests: Unlimited, MaxRequests: Unlimited, MaxRetries: Unlimited}

// translateBreakers reads a cluster's circuit breakers: one thresholds
// entry, of the DEFAULT priority. Fields left unset take Envoy's defaults.
func translateBreakers(cb *cluster.CircuitBreakers) (*Thresholds, error) {
	if cb == nil {
		return nil, nil
	}
	if err := unsupportedFields(cb, "circuit_breakers", "thresholds"); err != nil {
		return nil, err
	}
	var out *Thresholds
	for _, t := range cb.GetThresholds() {
		if t.GetPriority() != core.RoutingPriority_DEFAULT {
			return nil, fmt.Errorf("circuit_breakers: thresholds of priority %s are not supported by the built-in proxy (only DEFAULT)", t.GetPriority())
		}
		if out != nil {
			return nil, fmt.Errorf("circuit_breakers: two thresholds of priority DEFAULT")
		}
		// track_remaining only adds Envoy's remaining-capacity stats.
		if err := unsupportedFields(t, "circuit_breakers.thresholds", "priority", "max_connections", "max_pending_requests",
			"max_requests", "max_retries", "retry_budget", "track_remaining"); err != nil {
			return nil, err
		}
		limit := func(v *wrapperspb.UInt32Value, def int64) int64 {
			if v == nil {
				return def
			}
			return int64(v.GetValue())
		}
		out = &Thresholds{MaxConnections: limit(t.GetMaxConnections(), 1024), MaxPendingRequests: limit(t.GetMaxPendingRequests(), 1024),
			MaxRequests: limit(t.GetMaxRequests(), 1024), MaxRetries: limit(t.GetMaxRetries(), 3)}
		if rb := t.GetRetryBudget(); rb != nil {
			if err := unsupportedFields(rb, "circuit_breakers.thresholds.retry_budget", "budget_percent", "min_retry_concurrency"); err != nil {
				return nil, err
			}
			out.RetryBudget = &RetryBudget{BudgetPercent: 20, MinRetryConcurrency: 3}
			if p := rb.GetBudgetPercent(); p != nil {
				if v := p.GetValue(); v < 0 || v > 100 || math.IsNaN(v) {
					return nil, fmt.Errorf("circuit_breakers.thresholds.retry_budget.budget_percent: %v is not a percentage", v)
				}
				out.RetryBudget.BudgetPercent = p.GetValue()
			}
			if m := rb.GetMinRetryConcurrency(); m != nil {
				out.RetryBudget.MinRetryConcurrency = int64(m.GetValue())
			}
		}
	}
	return out, nil
}

// breaker counts what a cluster has open against its thresholds. One
// breaker serves a cluster for as long as the cluster exists: a change of
// its thresholds applies to what opens next, and what is open keeps being
// counted. It is safe for concurrent use.
type breaker struct {
	limits atomic.Pointer[Thresholds]
	open   [numKinds]atomic.Int64
	// overflows counts refusals; its series are made at the first one, so
	// that a proxy with many clusters exports no zeros for them.
	cluster   string
	overflows *prometheus.CounterVec
}

// acquire takes one of kind if the cluster's threshold allows it, and
// reports whether it did; each refusal is counted in
// ursa_dp_circuit_breaker_open_total. Every successful acquire needs one
// release.
func (b *breaker) acquire(kind breakerKind) bool {
	limit := b.limit(kind)
	for {
		n := b.open[kind].Load()
		if n >= limit {
			b.overflows.WithLabelValues(b.cluster, kind.String()).Inc()
			return false
		}
		if b.open[kind].CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release gives back one of kind that acquire took.
func (b *breaker) release(kind breakerKind) { b.open[kind].Add(-1) }

// limit is how many of kind may be open now. A retry budget depends on the
// requests outstanding and pending at the time of asking, as in Envoy.
func (b *breaker) limit(kind breakerKind) int64 {
	t := b.limits.Load()
	switch kind {
	case kindConnections:
		return t.MaxConnections
	case kindPending:
		return t.MaxPendingRequests
	case kindRequests:
		return t.MaxRequests
	}
	if rb := t.RetryBudget; rb != nil {
		active := b.open[kindRequests].Load() + b.open[kindPending].Load()
		return max(rb.MinRetryConcurrency, int64(rb.BudgetPercent*float64(active)/100))
	}
	return t.MaxRetries
}

// breakers holds the breaker of every cluster.
type breakers struct {
	mu   sync.Mutex
	m    map[string]*breaker
	open *prometheus.CounterVec
}

// get returns cluster's breaker, made with no limits when the cluster has
// none yet (sync sets them).
func (bs *breakers) get(cluster string) *breaker {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	b, ok := bs.m[cluster]
	if !ok {
		b = &breaker{cluster: cluster, overflows: bs.open}
		b.limits.Store(&noThresholds)
		bs.m[cluster] = b
	}
	return b
}

// sync sets each cluster's thresholds and forgets the breakers of
// clusters that are gone: whoever still holds one releases into it, and
// nothing else counts there.
func (bs *breakers) sync(clusters map[string]*Cluster) {
	for name, c := range clusters {
		t := &noThresholds
		if c.Breaker != nil {
			t = c.Breaker
		}
		bs.get(name).limits.Store(t)
	}
	bs.mu.Lock()
	defer bs.mu.Unlock()
	for name := range bs.m {
		if _, ok := clusters[name]; !ok {
			delete(bs.m, name)
		}
	}
}

// breakerFor returns the circuit breaker of a cluster: the HTTP engine
// acquires kindRequests for each request, kindPending while it waits for a
// connection, kindRetries for each retry, and kindConnections (through
// countedConn) for each upstream connection it opens; tcp_proxy acquires
// kindConnections. An overflow is a 503 with response flag UO.
func (p *Proxy) breakerFor(cluster string) *breaker { return p.resil.breakers.get(cluster) }

// countedConn holds kindConnections of b until it is closed.
type countedConn struct {
	net.Conn
	b    *breaker
	once sync.Once
}

// Close closes the connection and releases its count, once.
func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.b.release(kindConnections) })
	return err
}

// countConn acquires kindConnections of b for an upstream connection about
// to be opened, and returns a function that wraps the opened connection so
// that closing it releases the count; ok is false on overflow. A caller
// whose dial fails calls wrap(nil), which releases at once.
func (b *breaker) countConn() (wrap func(net.Conn) net.Conn, ok bool) {
	if !b.acquire(kindConnections) {
		return nil, false
	}
	return func(c net.Conn) net.Conn {
		if c == nil {
			b.release(kindConnections)
			return nil
		}
		return &countedConn{Conn: c, b: b}
	}, true
}
