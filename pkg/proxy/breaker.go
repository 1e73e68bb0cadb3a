package proxy

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"sync"
	"sync/atomic"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// limitKind is what a circuit breaker slot is for.
type limitKind int

// The kinds of circuit breaker slots.
const (
	// limitRequest is held for the whole of an HTTP request to the
	// cluster (max_requests).
	limitRequest limitKind = iota
	// limitRetry is held for the whole of a retry, an attempt after the
	// first (max_retries, or the retry budget).
	limitRetry
	// limitConnection is held by each upstream connection, TCP
	// (tcp_proxy) or HTTP, while it is open (max_connections).
	limitConnection
	// limitPending is held by an HTTP request while it waits for an
	// upstream connection because the cluster is at max_connections
	// (max_pending_requests).
	limitPending
	numLimits
)

func (k limitKind) String() string {
	return [...]string{"requests", "retries", "connections", "pending"}[k]
}

// breaker is a cluster's circuit breaker, as the HTTP engine and tcp_proxy
// use it.
type breaker interface {
	// acquire takes a slot of kind; false when the cluster's threshold
	// for it is reached (overflow: 503 UO), which is counted in
	// ursa_dp_circuit_breaker_open_total. release frees the slot; it is
	// called exactly once when acquire says true.
	acquire(kind limitKind) (release func(), ok bool)
	// hold is acquire for a caller that keeps track itself: free gives
	// the slot back, exactly once after hold said true.
	hold(kind limitKind) bool
	free(kind limitKind)
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

// defaultThresholds are what a cluster without circuit breakers gets:
// Envoy's defaults (1024 connections, pending and requests, 3 retries at
// once), which its tcp_proxy keeps to as well.
var defaultThresholds = Thresholds{MaxConnections: 1024, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3}

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

// circuitBreaker counts what a cluster has open against its thresholds.
// One serves a cluster for as long as the cluster exists: a change of its
// thresholds applies to what opens next, and what is open keeps being
// counted. It is safe for concurrent use.
type circuitBreaker struct {
	limits atomic.Pointer[Thresholds]
	open   [numLimits]atomic.Int64
	// freed is closed, and replaced, when a connection slot is released:
	// pending requests wait on it.
	freedMu sync.Mutex
	freed   chan struct{}
	// overflows counts refusals; its series are made at the first one, so
	// that a proxy with many clusters exports no zeros for them.
	cluster   string
	overflows *prometheus.CounterVec
}

// take takes one of kind if the threshold allows it.
func (b *circuitBreaker) take(kind limitKind) bool {
	limit := b.limit(kind)
	for {
		n := b.open[kind].Load()
		if n >= limit {
			return false
		}
		if b.open[kind].CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// overflow counts a refusal of kind.
func (b *circuitBreaker) overflow(kind limitKind) {
	b.overflows.WithLabelValues(b.cluster, kind.String()).Inc()
}

// acquire is take, counting a refusal as an overflow.
func (b *circuitBreaker) acquire(kind limitKind) (func(), bool) {
	if !b.take(kind) {
		b.overflow(kind)
		return nil, false
	}
	var once sync.Once
	return func() { once.Do(func() { b.release(kind) }) }, true
}

func (b *circuitBreaker) hold(kind limitKind) bool {
	if !b.take(kind) {
		b.overflow(kind)
		return false
	}
	return true
}

func (b *circuitBreaker) free(kind limitKind) { b.release(kind) }

// release gives back one of kind that take took.
func (b *circuitBreaker) release(kind limitKind) {
	b.open[kind].Add(-1)
	if kind != limitConnection {
		return
	}
	b.freedMu.Lock()
	if b.freed != nil {
		close(b.freed)
		b.freed = nil
	}
	b.freedMu.Unlock()
}

// whenFreed returns a channel closed at the next release of a connection.
func (b *circuitBreaker) whenFreed() <-chan struct{} {
	b.freedMu.Lock()
	defer b.freedMu.Unlock()
	if b.freed == nil {
		b.freed = make(chan struct{})
	}
	return b.freed
}

// limit is how many of kind may be open now. A retry budget depends on the
// requests outstanding and pending at the time of asking, as in Envoy.
func (b *circuitBreaker) limit(kind limitKind) int64 {
	t := b.limits.Load()
	switch kind {
	case limitConnection:
		return t.MaxConnections
	case limitPending:
		return t.MaxPendingRequests
	case limitRequest:
		return t.MaxRequests
	}
	if rb := t.RetryBudget; rb != nil {
		active := b.open[limitRequest].Load() + b.open[limitPending].Load()
		return max(rb.MinRetryConcurrency, int64(rb.BudgetPercent*float64(active)/100))
	}
	return t.MaxRetries
}

// breakers holds the breaker of every cluster. Readers (every request
// and connection) take no lock: they read a snapshot that sync, or the
// first use of a cluster it has not seen, replaces as a whole.
type breakers struct {
	mu   sync.Mutex // serializes replacing m
	m    atomic.Pointer[map[string]*circuitBreaker]
	open *prometheus.CounterVec
}

// get returns cluster's breaker, made with Envoy's default limits when
// the cluster has none yet (sync sets its own).
func (bs *breakers) get(cluster string) *circuitBreaker {
	if m := bs.m.Load(); m != nil {
		if b := (*m)[cluster]; b != nil {
			return b
		}
	}
	bs.mu.Lock()
	defer bs.mu.Unlock()
	next := map[string]*circuitBreaker{}
	if m := bs.m.Load(); m != nil {
		if b := (*m)[cluster]; b != nil {
			return b
		}
		for name, b := range *m {
			next[name] = b
		}
	}
	b := bs.newBreaker(cluster)
	next[cluster] = b
	bs.m.Store(&next)
	return b
}

func (bs *breakers) newBreaker(cluster string) *circuitBreaker {
	b := &circuitBreaker{cluster: cluster, overflows: bs.open}
	b.limits.Store(&defaultThresholds)
	return b
}

// sync sets each cluster's thresholds and forgets the breakers of
// clusters that are gone: whoever still holds one releases into it, and
// nothing else counts there.
func (bs *breakers) sync(clusters map[string]*Cluster) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	var prev map[string]*circuitBreaker
	if m := bs.m.Load(); m != nil {
		prev = *m
	}
	next := make(map[string]*circuitBreaker, len(clusters))
	for name, c := range clusters {
		b := prev[name]
		if b == nil {
			b = bs.newBreaker(name)
		}
		t := &defaultThresholds
		if c.Breaker != nil {
			t = c.Breaker
		}
		b.limits.Store(t)
		next[name] = b
	}
	bs.m.Store(&next)
}

// breakerFor is cluster c's circuit breaker.
func (p *Proxy) breakerFor(c *Cluster) breaker { return p.resil.breakers.get(c.Name) }

// errServed is a dial that waited as a pending request whose request got
// a connection another way (one that another request freed).
var errServed = errors.New("the pending request got another connection")

// attemptDone is the context key of a channel closed when an HTTP attempt
// has its connection (or has failed): a dial it started and that waits as
// pending then stops waiting.
type attemptDone struct{}

// withAttemptDone returns ctx carrying done, for connectionSlot.
func withAttemptDone(ctx context.Context, done <-chan struct{}) context.Context {
	return context.WithValue(ctx, attemptDone{}, done)
}

// idleToClose is the context key of a function that closes one idle
// connection of the dial's pool to another endpoint, freeing its slot
// (false when there is none).
type idleToClose struct{}

// withIdleToClose returns ctx carrying closeOne, for connectionSlot.
func withIdleToClose(ctx context.Context, closeOne func() bool) context.Context {
	return context.WithValue(ctx, idleToClose{}, closeOne)
}

// connectionSlot takes a connection slot of cluster c for an HTTP dial.
// At max_connections, an idle connection to another endpoint is closed
// for it when there is one; else the request waits as a pending request, as in
// Envoy, for a slot, or for its attempt to get a connection another
// request freed (the pool hands it over); past max_pending_requests it
// overflows (503 UO). ctx is the dial's: the attempt's values, without its
// cancellation, which done (withAttemptDone) stands in for.
func (p *Proxy) connectionSlot(ctx context.Context, c *Cluster) (release func(), err error) {
	b := p.resil.breakers.get(c.Name)
	slot := func() func() {
		var once sync.Once
		return func() { once.Do(func() { b.release(limitConnection) }) }
	}
	if b.take(limitConnection) {
		return slot(), nil
	}
	// At max_connections, connections idle in the pool to other
	// endpoints give their slots up first: else an endpoint that got a
	// burst would keep them all, and one with no connection would never
	// get one (Envoy lets an endpoint with none open one).
	if closeOne, _ := ctx.Value(idleToClose{}).(func() bool); closeOne != nil {
		for closeOne() {
			if b.take(limitConnection) {
				return slot(), nil
			}
		}
	}
	releasePending, ok := b.acquire(limitPending)
	if !ok {
		return nil, errOverflow
	}
	defer releasePending()
	done, _ := ctx.Value(attemptDone{}).(<-chan struct{})
	for {
		freed := b.whenFreed()
		if b.take(limitConnection) {
			return slot(), nil
		}
		select {
		case <-freed:
		case <-done:
			return nil, errServed
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// errOverflow is a circuit breaker's refusal, as the HTTP engine replies it.
var errOverflow = &localReplyError{http.StatusServiceUnavailable, "UO", "upstream connect error or disconnect/reset before headers. reset reason: overflow"}
