package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/testutil"
)

// TestBreakerThresholds: each kind trips at its own limit, a release makes
// room again, each refusal is counted, and a cluster without thresholds
// trips at Envoy's default limits.
func TestBreakerThresholds(t *testing.T) {
	reg := prometheus.NewRegistry()
	p, err := New(zaptest.NewLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	cfg := &Config{Listeners: map[string]*Listener{}, Clusters: map[string]*Cluster{
		"limited": {Name: "limited", Breaker: &Thresholds{MaxConnections: 1, MaxPendingRequests: 2, MaxRequests: 3, MaxRetries: 0}},
		"free":    {Name: "free"},
	}}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	b := p.breakerFor(cfg.Clusters["limited"])
	for kind, limit := range map[limitKind]int{limitConnection: 1, limitPending: 2, limitRequest: 3, limitRetry: 0} {
		var release func()
		for i := range limit {
			r, ok := b.acquire(kind)
			if !ok {
				t.Fatalf("%s: refused the %d. of %d", kind, i+1, limit)
			}
			release = r
		}
		if _, ok := b.acquire(kind); ok {
			t.Fatalf("%s: took one past the limit of %d", kind, limit)
		}
		if limit > 0 {
			release()
			release() // once only
			if _, ok := b.acquire(kind); !ok {
				t.Fatalf("%s: no room after a release", kind)
			}
			if _, ok := b.acquire(kind); ok {
				t.Fatalf("%s: a second release freed a second slot", kind)
			}
		}
		if got, want := breakerOpen(t, reg, "limited", kind), map[bool]float64{true: 2, false: 1}[limit > 0]; got != want {
			t.Fatalf("%s: %v overflows counted, want %v", kind, got, want)
		}
	}
	// A cluster without thresholds has Envoy's defaults.
	free := p.breakerFor(cfg.Clusters["free"])
	for kind, limit := range map[limitKind]int{limitConnection: 1024, limitPending: 1024, limitRequest: 1024, limitRetry: 3} {
		for i := range limit {
			if _, ok := free.acquire(kind); !ok {
				t.Fatalf("a cluster without thresholds: %s refused the %d. of Envoy's default %d", kind, i+1, limit)
			}
		}
		if _, ok := free.acquire(kind); ok {
			t.Fatalf("a cluster without thresholds: %s took one past Envoy's default %d", kind, limit)
		}
	}
	// New thresholds apply to what opens next; what is open stays counted.
	cfg.Clusters["limited"] = &Cluster{Name: "limited", Breaker: &Thresholds{MaxConnections: 2, MaxPendingRequests: 1, MaxRequests: 1, MaxRetries: 1}}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if p.breakerFor(cfg.Clusters["limited"]) != b {
		t.Fatal("a new breaker for the same cluster")
	}
	if _, ok := b.acquire(limitConnection); !ok {
		t.Fatal("raised max_connections: want one more connection")
	}
	if _, ok := b.acquire(limitConnection); ok {
		t.Fatal("raised max_connections by one: took two more")
	}
}

// TestRetryBudget: with a budget, retries may be the given share of the
// requests outstanding and pending, and never fewer than the minimum.
func TestRetryBudget(t *testing.T) {
	p := newProxy(t)
	cfg := &Config{Listeners: map[string]*Listener{}, Clusters: map[string]*Cluster{"c": {Name: "c", Breaker: &Thresholds{
		MaxConnections: Unlimited, MaxPendingRequests: Unlimited, MaxRequests: Unlimited, MaxRetries: 0,
		RetryBudget: &RetryBudget{BudgetPercent: 25, MinRetryConcurrency: 2}}}}}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	b := p.resil.breakers.get("c")
	retries := func() int {
		n := 0
		for b.take(limitRetry) {
			n++
		}
		for range n {
			b.release(limitRetry)
		}
		return n
	}
	if got := retries(); got != 2 {
		t.Fatalf("no requests: %d retries allowed, want the minimum of 2", got)
	}
	for range 30 {
		b.take(limitRequest)
	}
	for range 10 {
		b.take(limitPending)
	}
	if got := retries(); got != 10 {
		t.Fatalf("40 requests active and pending: %d retries allowed, want 25%% = 10", got)
	}
}

func breakerOpen(t *testing.T, reg *prometheus.Registry, cluster string, kind limitKind) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "ursa_dp_circuit_breaker_open_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["cluster"] == cluster && labels["kind"] == kind.String() {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestMaxConnectionsTCP: a tcp_proxy cluster with max_connections 2 over
// real sockets: two connections flow, the third is closed without
// reaching the upstream and counted, and once one ends a new one flows.
func TestMaxConnectionsTCP(t *testing.T) {
	reg := prometheus.NewRegistry()
	p, err := New(zaptest.NewLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	app := echoServer(t, "app")
	cfg := config(anyPort, Route{Cluster: "app", Weight: 1})
	cfg.Clusters["app"] = &Cluster{Name: "app", ConnectTimeout: time.Second, Overprovisioning: 140, Endpoints: []Endpoint{{Addr: app, Weight: 1}},
		Breaker: &Thresholds{MaxConnections: 2, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3}}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	listen := boundAddr(t, p, "l")
	open := func(msg string) (net.Conn, error) {
		c, err := net.Dial("tcp", listen)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintln(c, msg)
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			c.Close()
			return nil, err
		}
		if strings.TrimSpace(line) != "app "+msg {
			c.Close()
			return nil, fmt.Errorf("got %q", line)
		}
		return c, nil
	}
	first, err := open("one")
	if err != nil {
		t.Fatal(err)
	}
	second, err := open("two")
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if c, err := open("three"); err == nil || !(err == io.EOF || strings.Contains(err.Error(), "reset")) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("the third connection: %v, want it closed by the proxy", err)
	}
	if got := breakerOpen(t, reg, "app", limitConnection); got != 1 {
		t.Fatalf("%v overflows counted, want 1", got)
	}
	if got := counterValue(t, reg, "ursa_dp_refused_total", "overflow"); got != 1 {
		t.Fatalf("%v refusals for overflow, want 1", got)
	}
	first.Close()
	// The proxy releases the slot when its side of the pipe ends.
	testutil.Eventually(t, 5*time.Second, "room for a new connection after one ended", func() error {
		c, err := open("four")
		if err == nil {
			c.Close()
		}
		return err
	})
}
