package proxy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/testutil"
)

// slowBackend answers each request once the test lets it (release), and
// says how many it holds.
type slowBackend struct {
	addr    string
	mu      sync.Mutex
	holding int
	gate    chan struct{}
}

func newSlowBackend(t *testing.T) *slowBackend {
	t.Helper()
	b := &slowBackend{gate: make(chan struct{})}
	b.addr = backend(t, "slow", func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.holding++
		gate := b.gate
		b.mu.Unlock()
		<-gate
		io.WriteString(w, "done")
	})
	t.Cleanup(b.release)
	return b
}

func (b *slowBackend) held() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.holding
}

func (b *slowBackend) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-b.gate:
	default:
		close(b.gate)
	}
}

// httpProxyTo runs an outbound HTTP listener routing everything to the
// cluster c, and returns the proxy, its registry and the listener's URL.
func httpProxyTo(t *testing.T, c *cluster.Cluster) (*Proxy, *prometheus.Registry, string) {
	t.Helper()
	reg := prometheus.NewRegistry()
	p, err := New(zaptest.NewLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	apply(t, p, nil, nil, []*listener.Listener{outboundHTTPListener("out", "outbound:app")}, []*cluster.Cluster{c}, nil,
		routeConfig("outbound:app", routeTo("r", nil, toCluster(c.Name))))
	return p, reg, "http://" + boundAddr(t, p, "out") + "/"
}

// outliersOnFakeClock puts p on a fake clock, and its outlier detection,
// started on the real one, starts again on it.
func outliersOnFakeClock(p *Proxy) *testutil.Clock {
	clock := testutil.NewClock(time.Now())
	p.Now = clock.Now
	p.resil.outliers.sync(map[string]*Cluster{}, clock.Now())
	p.resil.outliers.sync(p.cfg.Load().Clusters, clock.Now())
	return clock
}

// TestHTTPCircuitBreaker: at max_connections a request waits as pending
// and gets the connection the one before frees; one more than
// max_pending_requests, or than max_requests, is a 503 overflow at once,
// counted by kind.
func TestHTTPCircuitBreaker(t *testing.T) {
	slow := newSlowBackend(t)
	c := staticHTTPCluster("app", false, slow.addr)
	c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
		MaxConnections: wrapperspb.UInt32(1), MaxPendingRequests: wrapperspb.UInt32(1), MaxRequests: wrapperspb.UInt32(3)}}}
	p, reg, url := httpProxyTo(t, c)
	type result struct {
		status int
		body   string
	}
	results := make(chan result, 3)
	call := func() {
		resp, body := get(t, h1Client(), url)
		results <- result{resp.StatusCode, body}
	}
	go call()
	testutil.Until(t, 10*time.Second, "the first request at the backend", func() bool { return slow.held() == 1 })
	go call()
	b := p.resil.breakers.get("app")
	testutil.Until(t, 10*time.Second, "the second request pending", func() bool { return b.open[limitPending].Load() == 1 })
	resp, body := get(t, h1Client(), url)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "overflow") {
		t.Fatalf("a third request with one connection and one pending: %d %q, want 503 overflow", resp.StatusCode, body)
	}
	if got := breakerOpen(t, reg, "app", limitPending); got != 1 {
		t.Fatalf("%v pending overflows counted, want 1", got)
	}
	slow.release()
	for range 2 {
		if r := <-results; r.status != http.StatusOK || r.body != "done" {
			t.Fatalf("a request that held or waited for the connection: %d %q", r.status, r.body)
		}
	}
	if got := b.open[limitConnection].Load(); got != 1 {
		t.Fatalf("%d connections open after both, want the one, kept idle", got)
	}

	slow = newSlowBackend(t)
	c = staticHTTPCluster("app", false, slow.addr)
	c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{MaxRequests: wrapperspb.UInt32(1)}}}
	_, reg, url = httpProxyTo(t, c)
	go call()
	testutil.Until(t, 10*time.Second, "the first request at the backend", func() bool { return slow.held() == 1 })
	if resp, body := get(t, h1Client(), url); resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "overflow") {
		t.Fatalf("a second request with max_requests 1: %d %q, want 503 overflow", resp.StatusCode, body)
	}
	if got := breakerOpen(t, reg, "app", limitRequest); got != 1 {
		t.Fatalf("%v request overflows counted, want 1", got)
	}
	slow.release()
	if r := <-results; r.status != http.StatusOK {
		t.Fatalf("the first request: %d", r.status)
	}
}

// TestHTTPOutlierEjection: an endpoint answering 500 is ejected after
// consecutive_5xx of them, and requests go to the other one until its
// ejection ends.
func TestHTTPOutlierEjection(t *testing.T) {
	bad := backend(t, "bad", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusInternalServerError) })
	good := backend(t, "good", nil)
	c := staticHTTPCluster("app", false, bad, good)
	c.OutlierDetection = &cluster.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(3), Interval: durationpb.New(time.Second),
		BaseEjectionTime: durationpb.New(30 * time.Second), MaxEjectionPercent: wrapperspb.UInt32(50)}
	p, reg, url := httpProxyTo(t, c)
	clock := outliersOnFakeClock(p)
	client := h1Client()
	for i := 0; counterValue(t, reg, "ursa_dp_outlier_ejections_total", "app") == 0; i++ {
		if i == 200 {
			t.Fatal("the endpoint answering 500 was never ejected")
		}
		get(t, client, url)
	}
	for range 20 {
		if resp, _ := get(t, client, url); resp.Header.Get("x-backend") != "good" {
			t.Fatalf("a request went to %q while it was ejected", resp.Header.Get("x-backend"))
		}
	}
	clock.Advance(31 * time.Second)
	seen := false
	for range 100 {
		if resp, _ := get(t, client, url); resp.Header.Get("x-backend") == "bad" {
			seen = true
			break
		}
	}
	if !seen {
		t.Fatal("the ejected endpoint did not return after its ejection time")
	}
}

// TestHTTPOutlierSuccessRate: through the engine, an endpoint of five
// that fails one request in two (never five in a row) is ejected at the
// interval's tick by its success rate, and requests then go to the
// others only.
func TestHTTPOutlierSuccessRate(t *testing.T) {
	var n atomic.Int64
	flaky := backend(t, "flaky", func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%2 == 0 {
			w.WriteHeader(http.StatusInternalServerError)
		}
	})
	addrs := []string{flaky}
	for i := range 4 {
		addrs = append(addrs, backend(t, fmt.Sprintf("good-%d", i), nil))
	}
	c := staticHTTPCluster("app", false, addrs...)
	c.OutlierDetection = &cluster.OutlierDetection{Interval: durationpb.New(time.Second), MaxEjectionPercent: wrapperspb.UInt32(50),
		SuccessRateRequestVolume: wrapperspb.UInt32(10)}
	p, reg, url := httpProxyTo(t, c)
	clock := outliersOnFakeClock(p)
	client := h1Client()
	seen := map[string]int{}
	for range 300 {
		resp, _ := get(t, client, url)
		seen[resp.Header.Get("x-backend")]++
	}
	if len(seen) != 5 || seen["flaky"] < 10 || counterValue(t, reg, "ursa_dp_outlier_ejections_total", "app") != 0 {
		t.Fatalf("before the tick: requests %v, %v ejections", seen, counterValue(t, reg, "ursa_dp_outlier_ejections_total", "app"))
	}
	clock.Advance(time.Second)
	for range 50 {
		if resp, _ := get(t, client, url); resp.Header.Get("x-backend") == "flaky" {
			t.Fatal("a request went to the flaky endpoint after the tick")
		}
	}
	if got := counterValue(t, reg, "ursa_dp_outlier_ejections_total", "app"); got != 1 {
		t.Fatalf("%v ejections counted, want 1", got)
	}
}

// TestHTTPRetryOverflowKeepsAnswer: a retry the circuit breaker has no
// retry slot for is not made, and the caller gets the upstream's own
// answer (flagged UO), not a 503 of the proxy's, as in Envoy.
func TestHTTPRetryOverflowKeepsAnswer(t *testing.T) {
	var calls atomic.Int64
	busy := backend(t, "busy", func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(http.StatusConflict)
		io.WriteString(w, "busy")
	})
	c := staticHTTPCluster("busy", false, busy)
	c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{MaxRetries: wrapperspb.UInt32(0)}}}
	p, reg, _ := httpProxyTo(t, c)
	retry := toCluster("busy")
	retry.RetryPolicy = &route.RetryPolicy{RetryOn: "retriable-4xx", NumRetries: wrapperspb.UInt32(3),
		RetryBackOff: &route.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond)}}
	apply(t, p, nil, nil, []*listener.Listener{outboundHTTPListener("out", "outbound:app")}, []*cluster.Cluster{c}, nil,
		routeConfig("outbound:app", routeTo("r", nil, retry)))
	resp, body := get(t, h1Client(), "http://"+boundAddr(t, p, "out")+"/")
	if resp.StatusCode != http.StatusConflict || body != "busy" || calls.Load() != 1 {
		t.Fatalf("with no retry slot: %d %q after %d attempts; want the upstream's 409 \"busy\" after 1", resp.StatusCode, body, calls.Load())
	}
	if got := breakerOpen(t, reg, "busy", limitRetry); got != 1 {
		t.Fatalf("%v retry overflows counted, want 1", got)
	}
}

// TestHTTPIdleConnectionsGiveSlotsUp: at max_connections, a connection
// idle in the pool to one endpoint is closed for a request to another,
// which would otherwise wait for a slot no one gives back.
func TestHTTPIdleConnectionsGiveSlotsUp(t *testing.T) {
	a, b := backend(t, "a", nil), backend(t, "b", nil)
	c := staticHTTPCluster("app", false, a, b)
	c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{MaxConnections: wrapperspb.UInt32(1)}}}
	p, _, _ := httpProxyTo(t, c)
	pl := p.upstreamFor(p.cfg.Load().Clusters["app"]).(*h1Pool)
	pc, err := pl.get(context.Background(), a, false)
	if err != nil {
		t.Fatal(err)
	}
	pl.put(pc) // idle, holding the one slot
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pc, err = pl.get(ctx, b, false)
	if err != nil {
		t.Fatalf("a connection to b with the slot idle at a: %v", err)
	}
	defer pc.Close()
	pl.mu.Lock()
	idle := len(pl.conns[a])
	pl.mu.Unlock()
	if idle != 0 {
		t.Fatalf("%d idle connections to a left", idle)
	}
	if got := p.resil.breakers.get("app").open[limitConnection].Load(); got != 1 {
		t.Fatalf("%d connection slots held, want 1", got)
	}
}
