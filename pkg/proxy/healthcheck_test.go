package proxy

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/testutil"
)

// hcProxy is a proxy whose health checks wait on a fake clock: a test
// moves them on with step.
func hcProxy(t *testing.T) (*Proxy, *testutil.Clock, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	p, err := New(zaptest.NewLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	clock := testutil.NewClock(time.Now())
	p.Now = clock.Now
	p.resil.after = clock.After
	return p, clock, reg
}

func (p *Proxy) checkerOf(cluster, addr string) *checker {
	if cc := p.resil.health.current()[cluster]; cc != nil {
		return cc.checkers[addr]
	}
	return nil
}

// checksDone waits until the endpoint's checker has done n checks.
func checksDone(t *testing.T, p *Proxy, cluster, addr string, n int64) {
	t.Helper()
	testutil.Until(t, 10*time.Second, fmt.Sprintf("check %d of %s", n, addr), func() bool {
		ck := p.checkerOf(cluster, addr)
		return ck != nil && ck.checks.Load() >= n
	})
}

// step waits until every checker of the cluster waits for its next
// check, moves the clock on by d, and waits until each has checked again.
func step(t *testing.T, p *Proxy, clock *testutil.Clock, cluster string, d time.Duration) {
	t.Helper()
	var cks []*checker
	for _, ck := range p.resil.health.current()[cluster].checkers {
		cks = append(cks, ck)
	}
	testutil.Until(t, 10*time.Second, "every checker waiting", func() bool {
		for _, ck := range cks {
			if !ck.idle.Load() {
				return false
			}
		}
		return true
	})
	counts := make([]int64, len(cks))
	for i, ck := range cks {
		counts[i] = ck.checks.Load()
	}
	clock.Advance(d)
	for i, ck := range cks {
		testutil.Until(t, 10*time.Second, "the next check of "+ck.addr, func() bool { return ck.checks.Load() > counts[i] })
	}
}

// switchable is an mTLS server that can be made to fail: while down it
// closes each connection before the handshake. It records the SNI and
// client certificates it saw.
type switchable struct {
	ln      net.Listener
	down    atomic.Bool
	mu      sync.Mutex
	sni     []string
	clients []string
	open    map[net.Conn]bool
}

// setDown makes the server fail (closing the connections it has) or work.
func (s *switchable) setDown(down bool) {
	s.down.Store(down)
	if !down {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.open {
		c.Close()
	}
}

func newSwitchable(t *testing.T, cert *tls.Certificate, serve func(net.Conn)) *switchable {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &switchable{ln: ln, open: map[net.Conn]bool{}}
	cfg := &tls.Config{Certificates: []tls.Certificate{*cert}, ClientAuth: tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.sni = append(s.sni, cs.ServerName)
			for _, c := range cs.PeerCertificates[:1] {
				s.clients = append(s.clients, uriSANs(c)...)
			}
			return nil
		}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if s.down.Load() {
				c.Close()
				continue
			}
			s.mu.Lock()
			s.open[c] = true
			s.mu.Unlock()
			go func() {
				defer func() {
					c.Close()
					s.mu.Lock()
					delete(s.open, c)
					s.mu.Unlock()
				}()
				tc := tls.Server(c, cfg)
				if tc.Handshake() != nil {
					return
				}
				serve(tc)
			}()
		}
	}()
	return s
}

func (s *switchable) addr() string { return s.ln.Addr().String() }

// TestTCPHealthCheck: a TCP check over the cluster's mTLS (SNI, the
// proxy's certificate) marks a live endpoint healthy after its first pass
// and a refusing one unhealthy; an endpoint that starts failing is
// unhealthy after unhealthy_threshold failures in a row, and healthy again
// after healthy_threshold passes.
func TestTCPHealthCheck(t *testing.T) {
	signer, roots := testSigner(t, "default")
	exact, _ := compileMatcher(exactMatcher("spiffe://default/billing"))
	srv := newSwitchable(t, workload(t, signer, "default", "billing"), func(net.Conn) {})
	dead := testutil.RefusingAddr(t)
	p, clock, reg := hcProxy(t)
	hc := &HealthCheck{Timeout: 5 * time.Second, Interval: time.Second, UnhealthyThreshold: 2, HealthyThreshold: 2,
		NoTrafficInterval: time.Second, NoTrafficHealthyInterval: time.Second, UnhealthyInterval: time.Second,
		UnhealthyEdgeInterval: time.Second, HealthyEdgeInterval: time.Second, ReuseConnection: true}
	c := &Cluster{Name: "billing", TLS: true, SNI: "billing-x.default.ursa", ServerSANs: []stringMatch{exact},
		ConnectTimeout: time.Second, Overprovisioning: 140, HealthCheck: hc,
		Endpoints: []Endpoint{{Addr: srv.addr(), Weight: 1}, {Addr: dead, Weight: 1}}}
	cfg := &Config{Identity: workload(t, signer, "default", "web"), Roots: roots, Listeners: map[string]*Listener{},
		Clusters: map[string]*Cluster{c.Name: c}}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	checksDone(t, p, c.Name, srv.addr(), 1)
	checksDone(t, p, c.Name, dead, 1)
	if !p.healthy(c.Name, srv.addr()) || p.healthy(c.Name, dead) {
		t.Fatal("after the first checks: want the live endpoint healthy, the refusing one not")
	}
	// With TLS 1.3 the server sees the client's certificate after the
	// client is done.
	testutil.Eventually(t, 10*time.Second, "the check's handshake", func() error {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		if len(srv.sni) == 0 || srv.sni[0] != c.SNI || len(srv.clients) == 0 || srv.clients[0] != "spiffe://default/web" {
			return fmt.Errorf("SNI %q, client %q; want the cluster's SNI and the proxy's identity", srv.sni, srv.clients)
		}
		return nil
	})

	want := func(n int64, healthy bool) {
		t.Helper()
		step(t, p, clock, c.Name, time.Second)
		if got := p.healthy(c.Name, srv.addr()); got != healthy {
			t.Fatalf("after check %d: healthy %v, want %v", n, got, healthy)
		}
	}
	srv.setDown(true)
	want(2, true) // one failure of two
	want(3, false)
	if got := counterValue(t, reg, "ursa_dp_health_check_failures_total", c.Name); got < 2 {
		t.Fatalf("%v failed checks counted, want at least 2", got)
	}
	srv.setDown(false)
	want(4, false) // one pass of two
	want(5, true)
}

// TestHTTPHealthCheck: an HTTP check over mTLS asks the path with the
// cluster's name as host; a status in expected_statuses passes, one in
// retriable_statuses fails towards the threshold, any other fails at once.
func TestHTTPHealthCheck(t *testing.T) {
	signer, roots := testSigner(t, "default")
	var status atomic.Int32
	status.Store(204)
	var seen atomic.Value
	srv := newSwitchable(t, workload(t, signer, "default", "billing"), func(c net.Conn) {
		ln := &oneConn{c: c, done: make(chan struct{})}
		http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			seen.Store(fmt.Sprintf("%s %s host=%s ua=%s x=%s", r.Method, r.URL.RequestURI(), r.Host, r.UserAgent(), r.Header.Get("x-check")))
			w.WriteHeader(int(status.Load()))
		}))
	})
	p, clock, _ := hcProxy(t)
	hc := &HealthCheck{Timeout: 5 * time.Second, Interval: time.Second, UnhealthyThreshold: 3, HealthyThreshold: 1,
		NoTrafficInterval: time.Second, NoTrafficHealthyInterval: time.Second, UnhealthyInterval: time.Second,
		UnhealthyEdgeInterval: time.Second, HealthyEdgeInterval: time.Second, ReuseConnection: true,
		HTTP: &HTTPCheck{Path: "/healthz?deep=1", Method: http.MethodGet, Expected: []StatusRange{{200, 300}},
			Retriable: []StatusRange{{503, 504}}, AddHeaders: []HeaderToAdd{{Key: "x-check", Value: "1"}}}}
	c := &Cluster{Name: "billing{version=v1}", TLS: true, SNI: "billing-x.default.ursa", ConnectTimeout: time.Second,
		Overprovisioning: 140, HealthCheck: hc, Endpoints: []Endpoint{{Addr: srv.addr(), Weight: 1}}}
	cfg := &Config{Identity: workload(t, signer, "default", "web"), Roots: roots, Listeners: map[string]*Listener{},
		Clusters: map[string]*Cluster{c.Name: c}}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	checksDone(t, p, c.Name, srv.addr(), 1)
	if !p.healthy(c.Name, srv.addr()) {
		t.Fatal("204 is in [200, 300): want healthy")
	}
	if got, want := seen.Load(), "GET /healthz?deep=1 host=billing%7Bversion=v1%7D ua=Envoy/HC x=1"; got != want {
		t.Fatalf("the check's request: %q, want %q", got, want)
	}
	n := 1
	want := func(healthy bool) {
		t.Helper()
		n++
		step(t, p, clock, c.Name, time.Second)
		if got := p.healthy(c.Name, srv.addr()); got != healthy {
			t.Fatalf("check %d answered %d: healthy %v, want %v", n, status.Load(), got, healthy)
		}
	}
	status.Store(503) // retriable: three in a row
	want(true)
	want(true)
	want(false)
	status.Store(200)
	want(true) // healthy_threshold 1
	status.Store(500)
	want(false) // not retriable: at once
	status.Store(200)
	want(true)
	srv.setDown(true) // the endpoint stops: network failures count too
	want(true)
	want(true)
	want(false)
}

// oneConn is a listener that serves one connection.
type oneConn struct {
	c    net.Conn
	once sync.Once
	done chan struct{}
}

func (l *oneConn) Accept() (net.Conn, error) {
	var c net.Conn
	l.once.Do(func() { c = l.c })
	if c != nil {
		return &closeNotify{Conn: c, done: l.done}, nil
	}
	<-l.done
	return nil, io.EOF
}
func (l *oneConn) Close() error   { return nil }
func (l *oneConn) Addr() net.Addr { return l.c.LocalAddr() }

type closeNotify struct {
	net.Conn
	done chan struct{}
	once sync.Once
}

func (c *closeNotify) Close() error {
	c.once.Do(func() { close(c.done) })
	return c.Conn.Close()
}

// httpBackend serves its name on / and a status it can change on
// /health.
type httpBackend struct {
	addr   string
	status atomic.Int32
}

func newHTTPBackend(t *testing.T, name string) *httpBackend {
	t.Helper()
	b := &httpBackend{}
	b.status.Store(200)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			w.WriteHeader(int(b.status.Load()))
			return
		}
		io.WriteString(w, name)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	b.addr = ln.Addr().String()
	return b
}

// TestSpillOnHealth: connections through a tcp_proxy listener go to
// priority 0 while its endpoints pass their checks, all to priority 1 when
// they all fail, and back in proportion (healthy share × overprovisioning)
// when one returns.
func TestSpillOnHealth(t *testing.T) {
	a, b, z := newHTTPBackend(t, "a"), newHTTPBackend(t, "b"), newHTTPBackend(t, "z")
	p, clock, _ := hcProxy(t)
	hc := &HealthCheck{Timeout: 5 * time.Second, Interval: time.Second, UnhealthyThreshold: 1, HealthyThreshold: 1,
		NoTrafficInterval: time.Second, NoTrafficHealthyInterval: time.Second, UnhealthyInterval: time.Second,
		UnhealthyEdgeInterval: time.Second, HealthyEdgeInterval: time.Second,
		HTTP: &HTTPCheck{Path: "/health", Method: http.MethodGet, Expected: []StatusRange{{200, 201}}}}
	cfg := config(anyPort, Route{Cluster: "app", Weight: 1})
	cfg.Clusters["app"] = &Cluster{Name: "app", ConnectTimeout: time.Second, Overprovisioning: 140, HealthCheck: hc,
		Endpoints: []Endpoint{{Addr: a.addr, Weight: 1}, {Addr: b.addr, Weight: 1}, {Addr: z.addr, Weight: 1, Priority: 1}}}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	listen := boundAddr(t, p, "l")
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	calls := func(n int) map[string]int {
		t.Helper()
		got := map[string]int{}
		for range n {
			resp, err := client.Get("http://" + listen + "/")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			got[string(body)]++
		}
		return got
	}
	round := func() {
		t.Helper()
		step(t, p, clock, "app", time.Second)
	}
	for _, ep := range []string{a.addr, b.addr, z.addr} {
		checksDone(t, p, "app", ep, 1)
	}
	if got := calls(40); got["z"] != 0 || got["a"] == 0 || got["b"] == 0 {
		t.Fatalf("all healthy: %v, want priority 0 only", got)
	}
	a.status.Store(500)
	b.status.Store(500)
	round()
	if got := calls(40); got["z"] != 40 {
		t.Fatalf("priority 0 failing its checks: %v, want all on priority 1", got)
	}
	a.status.Store(200)
	round()
	// Half of priority 0 healthy: 50% × 1.4 = 70% stays there, on a.
	if got := calls(100); got["b"] != 0 || got["a"] < 40 || got["z"] < 10 {
		t.Fatalf("one of priority 0 back: %v, want about 70 on a and 30 on z", got)
	}
}

// trafficWaitingCheck is a TCP check every second once its cluster
// carries traffic, and every hour before.
func trafficWaitingCheck() *HealthCheck {
	return &HealthCheck{Timeout: 5 * time.Second, Interval: time.Second, UnhealthyThreshold: 1, HealthyThreshold: 1,
		NoTrafficInterval: time.Hour, NoTrafficHealthyInterval: time.Hour, UnhealthyInterval: time.Second,
		UnhealthyEdgeInterval: time.Second, HealthyEdgeInterval: time.Second}
}

// applyChecked gives p one cluster, "app", of the endpoint addr checked
// by hc.
func applyChecked(t *testing.T, p *Proxy, addr string, hc *HealthCheck) *Cluster {
	t.Helper()
	c := &Cluster{Name: "app", ConnectTimeout: time.Second, Overprovisioning: 140, HealthCheck: hc, Endpoints: []Endpoint{{Addr: addr, Weight: 1}}}
	if err := p.Apply(&Config{Listeners: map[string]*Listener{}, Clusters: map[string]*Cluster{"app": c}}); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestHealthCheckWaitsForTraffic: before its cluster carries traffic a
// checker waits Envoy's no-traffic interval; the first connection wakes
// it to check at once and at the normal interval after.
func TestHealthCheckWaitsForTraffic(t *testing.T) {
	app := newHTTPBackend(t, "app")
	p, clock, _ := hcProxy(t)
	c := applyChecked(t, p, app.addr, trafficWaitingCheck())
	checksDone(t, p, "app", app.addr, 1)
	ck := p.checkerOf("app", app.addr)
	testutil.Until(t, 10*time.Second, "the checker waiting", ck.idle.Load)
	clock.Advance(time.Minute)
	if got := ck.checks.Load(); got != 1 || !ck.idle.Load() {
		t.Fatalf("%d checks a minute after the first without traffic, want 1", got)
	}
	if _, ok := p.pick(c, nil, 1); !ok {
		t.Fatal("no endpoint")
	}
	checksDone(t, p, "app", app.addr, 2)
	step(t, p, clock, "app", time.Second) // the normal interval from now on
}

// TestFirstTrafficWakesANewSnapshotsCheckers: the cluster's first
// traffic, recorded through the snapshot that a configuration change is
// replacing at that moment, still wakes the checkers the change starts:
// they wait for the no-traffic interval (an hour here) only until then.
// (Each checker had its own wake-up, which only the snapshot's own
// checkers got: a new one missed it and checked once an hour.)
func TestFirstTrafficWakesANewSnapshotsCheckers(t *testing.T) {
	app := newHTTPBackend(t, "app")
	p, _, _ := hcProxy(t)
	applyChecked(t, p, app.addr, trafficWaitingCheck())
	checksDone(t, p, "app", app.addr, 1)
	old := p.resil.health.current()["app"] // as a pick read it, just before the change
	changed := trafficWaitingCheck()
	changed.UnhealthyThreshold = 2
	applyChecked(t, p, app.addr, changed)
	ck := p.checkerOf("app", app.addr)
	if ck == old.checkers[app.addr] {
		t.Fatal("the changed check kept its checker")
	}
	testutil.Until(t, 10*time.Second, "the new checker waiting after its first check", func() bool {
		return ck.checks.Load() >= 1 && ck.idle.Load()
	})
	old.traffic.record() // the pick's traffic, through the old snapshot
	testutil.Until(t, 10*time.Second, "the new checker's check after the first traffic", func() bool {
		return ck.checks.Load() >= 2
	})
}

// checkerGoroutines counts the running health checkers of every proxy.
func checkerGoroutines() int {
	buf := make([]byte, 1<<22)
	n := runtime.Stack(buf, true)
	return strings.Count(string(buf[:n]), "(*checker).run(")
}

// TestCheckersFollowTheConfig: a checker runs per endpoint of each
// health-checked cluster, and ends when its endpoint or cluster goes, its
// check is replaced, or the proxy closes: no goroutine is left behind.
func TestCheckersFollowTheConfig(t *testing.T) {
	before := checkerGoroutines()
	p, err := New(zaptest.NewLogger(t), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	hc := &HealthCheck{Timeout: time.Second, Interval: time.Hour, UnhealthyThreshold: 1, HealthyThreshold: 1,
		NoTrafficInterval: time.Hour, NoTrafficHealthyInterval: time.Hour, UnhealthyInterval: time.Hour,
		UnhealthyEdgeInterval: time.Hour, HealthyEdgeInterval: time.Hour}
	cfg := func(hc *HealthCheck, addrs ...string) *Config {
		c := &Cluster{Name: "c", ConnectTimeout: time.Second, Overprovisioning: 140, HealthCheck: hc}
		for _, a := range addrs {
			c.Endpoints = append(c.Endpoints, Endpoint{Addr: a, Weight: 1})
		}
		return &Config{Listeners: map[string]*Listener{}, Clusters: map[string]*Cluster{"c": c}}
	}
	running := func(want int, when string) {
		t.Helper()
		testutil.Eventually(t, 10*time.Second, when, func() error {
			if got := checkerGoroutines() - before; got != want {
				return fmt.Errorf("%d checkers running, want %d", got, want)
			}
			return nil
		})
	}
	a, b, c := testutil.RefusingAddr(t), testutil.RefusingAddr(t), testutil.RefusingAddr(t)
	apply := func(cfg *Config) {
		t.Helper()
		if err := p.Apply(cfg); err != nil {
			t.Fatal(err)
		}
	}
	apply(cfg(hc, a, b, c))
	running(3, "a checker per endpoint")
	apply(cfg(hc, a, b))
	running(2, "an endpoint gone")
	old := p.checkerOf("c", a)
	changed := *hc
	changed.UnhealthyThreshold = 2
	apply(cfg(&changed, a, b))
	running(2, "the check changed")
	if p.checkerOf("c", a) == old {
		t.Fatal("a changed check kept its checker")
	}
	apply(cfg(nil, a, b))
	running(0, "the check removed")
	apply(cfg(hc, a, b))
	running(2, "the check back")
	apply(&Config{Listeners: map[string]*Listener{}, Clusters: map[string]*Cluster{}})
	running(0, "the cluster gone")
	apply(cfg(hc, a, b))
	running(2, "the cluster back")
	p.Close()
	if got := checkerGoroutines() - before; got != 0 {
		t.Fatalf("%d checkers running after Close returned", got)
	}
}

// TestHTTP2HealthCheck: an HTTP/2 check speaks h2 by ALPN over the
// cluster's mTLS, and h2c without TLS; an HTTP/1.1 check of a cluster
// whose connections offer h2 offers http/1.1 instead.
func TestHTTP2HealthCheck(t *testing.T) {
	signer, roots := testSigner(t, "default")
	var proto atomic.Value
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { proto.Store(r.Proto) })
	h2 := httptest.NewUnstartedServer(handler)
	h2.TLS = &tls.Config{Certificates: []tls.Certificate{*workload(t, signer, "default", "billing")}, ClientAuth: tls.RequireAnyClientCert}
	h2.EnableHTTP2 = true
	h2.StartTLS()
	defer h2.Close()
	h2c := backend(t, "h2c", handler)
	for _, tc := range []struct {
		name  string
		tls   bool
		addr  string
		http2 bool
		want  string
	}{
		{"h2 over mTLS", true, h2.Listener.Addr().String(), true, "HTTP/2.0"},
		{"HTTP/1.1 over mTLS to an h2 cluster", true, h2.Listener.Addr().String(), false, "HTTP/1.1"},
		{"h2c", false, h2c, true, "HTTP/2.0"},
	} {
		p, _, _ := hcProxy(t)
		proto.Store("")
		hc := &HealthCheck{Timeout: 5 * time.Second, Interval: time.Second, UnhealthyThreshold: 1, HealthyThreshold: 1,
			NoTrafficInterval: time.Second, NoTrafficHealthyInterval: time.Second, UnhealthyInterval: time.Second,
			UnhealthyEdgeInterval: time.Second, HealthyEdgeInterval: time.Second, ReuseConnection: true,
			HTTP: &HTTPCheck{Path: "/health", Method: http.MethodGet, Expected: []StatusRange{{200, 201}}, HTTP2: tc.http2}}
		c := &Cluster{Name: "billing", TLS: tc.tls, ConnectTimeout: time.Second, Overprovisioning: 140, HealthCheck: hc,
			HTTP: HTTP2, Endpoints: []Endpoint{{Addr: tc.addr, Weight: 1}}}
		if tc.tls {
			c.SNI, c.ALPN = "billing.default.ursa", []string{"h2"}
		}
		cfg := &Config{Identity: workload(t, signer, "default", "web"), Roots: roots, Listeners: map[string]*Listener{},
			Clusters: map[string]*Cluster{c.Name: c}}
		if err := p.Apply(cfg); err != nil {
			t.Fatal(err)
		}
		checksDone(t, p, c.Name, tc.addr, 1)
		if !p.healthy(c.Name, tc.addr) || proto.Load() != tc.want {
			t.Errorf("%s: healthy %v, the check came as %q; want healthy over %s", tc.name, p.healthy(c.Name, tc.addr), proto.Load(), tc.want)
		}
		p.Close()
	}
}
