package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/testutil"
)

func outlierProxy(t *testing.T, od OutlierDetection, addrs ...string) (*Proxy, *testutil.Clock, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	p, err := New(zaptest.NewLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	clock := testutil.NewClock(time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC))
	p.Now = clock.Now
	c := &Cluster{Name: "c", Overprovisioning: 140, Outlier: &od}
	for _, a := range addrs {
		c.Endpoints = append(c.Endpoints, Endpoint{Addr: a, Weight: 1})
	}
	if err := p.Apply(&Config{Listeners: map[string]*Listener{}, Clusters: map[string]*Cluster{"c": c}}); err != nil {
		t.Fatal(err)
	}
	return p, clock, reg
}

// oc is the cluster outlierProxy makes, as outcome takes it.
var oc = &Cluster{Name: "c"}

var testOutlier = OutlierDetection{Consecutive5xx: 3, Enforcing5xx: 100, ConsecutiveGateway: 5, EnforcingGateway: 0,
	Interval: time.Second, BaseEjectionTime: 10 * time.Second, MaxEjectionTime: 25 * time.Second, MaxEjectionPercent: 50}

// TestOutlierEjection: consecutive 5xx eject an endpoint (a success in
// between starts the count over), it returns at the first interval tick
// after its ejection time, each ejection in a row lasts one base time
// longer up to the maximum, and time back in service shortens the next.
func TestOutlierEjection(t *testing.T) {
	p, clock, reg := outlierProxy(t, testOutlier, "a:1", "b:1")
	fail := func(n int) {
		for range n {
			p.outcome(oc, Endpoint{Addr: "a:1"}, 500, nil)
		}
	}
	fail(2)
	p.outcome(oc, Endpoint{Addr: "a:1"}, 200, nil)
	fail(2)
	if !p.healthy("c", "a:1") {
		t.Fatal("ejected after 2 failures in a row, want 3")
	}
	clock.Advance(300 * time.Millisecond) // off the interval's ticks
	fail(1)
	if p.healthy("c", "a:1") {
		t.Fatal("not ejected after 3 failures in a row")
	}
	if got := counterValue(t, reg, "ursa_dp_outlier_ejections_total", "c"); got != 1 {
		t.Fatalf("%v ejections counted, want 1", got)
	}
	if !p.healthy("c", "b:1") {
		t.Fatal("the other endpoint was ejected too")
	}
	// Ejected at 0.3 s for 10 s: back at the tick of 11 s, not at 10.3 s.
	clock.Advance(10 * time.Second)
	if p.healthy("c", "a:1") {
		t.Fatal("back before the interval's tick")
	}
	clock.Advance(700 * time.Millisecond)
	if !p.healthy("c", "a:1") {
		t.Fatal("not back at the first tick after the ejection time")
	}
	// Ejected again at once: 20 s, then 25 s (the maximum), and 25 s again.
	for _, want := range []time.Duration{20 * time.Second, 25 * time.Second, 25 * time.Second} {
		fail(3)
		start := clock.Now()
		if p.healthy("c", "a:1") {
			t.Fatal("not ejected again")
		}
		for p.ejectedStill("c", "a:1") {
			clock.Advance(time.Second)
		}
		if got := clock.Now().Sub(start); got != want {
			t.Fatalf("ejected for %s, want %s", got, want)
		}
	}
	// Envoy raises the multiplier while base × multiplier is under max +
	// base: it is 4 now. Four ticks in service lower it to 0 (one at each
	// tick a full interval after the return): the next ejection is one
	// base time again.
	clock.Advance(4 * time.Second)
	fail(3)
	start := clock.Now()
	for p.ejectedStill("c", "a:1") {
		clock.Advance(time.Second)
	}
	if got := clock.Now().Sub(start); got != 10*time.Second {
		t.Fatalf("after time in service, ejected for %s, want 10s", got)
	}
}

// ejectedStill reports whether outlier detection has the endpoint out.
func (p *Proxy) ejectedStill(cluster, addr string) bool {
	return p.resil.outliers.ejected(cluster, addr, p.now)
}

// TestOutlierEjectionLimits: max_ejection_percent counts the endpoint to
// be ejected, enforcing 0 counts without ejecting, and gateway failures
// eject only when enforced.
func TestOutlierEjectionLimits(t *testing.T) {
	od := testOutlier
	od.MaxEjectionPercent = 50
	p, _, _ := outlierProxy(t, od, "a:1", "b:1", "c:1", "d:1")
	for _, ep := range []string{"a:1", "b:1", "c:1"} {
		for range 3 {
			p.outcome(oc, Endpoint{Addr: ep}, 503, nil)
		}
	}
	ejected := 0
	for _, ep := range []string{"a:1", "b:1", "c:1"} {
		if p.ejectedStill("c", ep) {
			ejected++
		}
	}
	if ejected != 2 {
		t.Fatalf("%d of 4 ejected with max_ejection_percent 50, want 2", ejected)
	}

	od = testOutlier
	od.MaxEjectionPercent = 10
	p, _, _ = outlierProxy(t, od, "a:1", "b:1")
	for range 3 {
		p.outcome(oc, Endpoint{Addr: "a:1"}, 500, nil)
	}
	if p.ejectedStill("c", "a:1") {
		t.Fatal("ejected one of two with max_ejection_percent 10")
	}
	od.AlwaysEjectOne = true
	p, _, _ = outlierProxy(t, od, "a:1", "b:1")
	for range 3 {
		p.outcome(oc, Endpoint{Addr: "a:1"}, 500, nil)
	}
	if !p.ejectedStill("c", "a:1") {
		t.Fatal("always_eject_one_host did not eject the first")
	}

	od = testOutlier
	od.Consecutive5xx, od.ConsecutiveGateway = 0, 2
	p, _, _ = outlierProxy(t, od, "a:1", "b:1")
	for range 4 {
		p.outcome(oc, Endpoint{Addr: "a:1"}, 502, nil)
	}
	if p.ejectedStill("c", "a:1") {
		t.Fatal("gateway failures ejected with enforcing_consecutive_gateway_failure 0")
	}
	od.EnforcingGateway = 100
	p, _, _ = outlierProxy(t, od, "a:1", "b:1")
	p.outcome(oc, Endpoint{Addr: "a:1"}, 502, nil)
	p.outcome(oc, Endpoint{Addr: "a:1"}, 500, nil) // not a gateway failure: starts that count over
	p.outcome(oc, Endpoint{Addr: "a:1"}, 504, nil)
	if p.ejectedStill("c", "a:1") {
		t.Fatal("ejected after gateway failures that were not in a row")
	}
	p.outcome(oc, Endpoint{Addr: "a:1"}, 0, context.DeadlineExceeded) // a timeout is a 504
	if !p.ejectedStill("c", "a:1") {
		t.Fatal("not ejected after two gateway failures in a row")
	}
}

// TestOutcomeCodes: local failures map to the statuses Envoy counts, and
// what says nothing of the endpoint is not counted.
func TestOutcomeCodes(t *testing.T) {
	for _, c := range []struct {
		status int
		err    error
		want   int
	}{
		{404, nil, 404}, {0, nil, 200}, {0, &connectError{syscall.ECONNREFUSED}, 503}, {0, context.DeadlineExceeded, 504},
		{0, &net.OpError{Op: "dial", Err: timeoutErr{}}, 504}, {0, errors.New("reset"), 503},
		{0, errOverflow, 0}, {0, &connectError{errNoIdentity}, 0}, {0, context.Canceled, 0}, {0, errServed, 0},
	} {
		got, counted := outcomeCode(c.status, c.err)
		if !counted {
			got = 0
		}
		if got != c.want {
			t.Errorf("outcome(%d, %v) = %d, want %d", c.status, c.err, got, c.want)
		}
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// TestOutlierTCPConnectFailures: a tcp_proxy cluster with outlier
// detection ejects an endpoint whose connections fail (each a 503) over
// real sockets, and the connections go to the other one.
func TestOutlierTCPConnectFailures(t *testing.T) {
	dead := testutil.RefusingAddr(t)
	live := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer live.Close()
	od := testOutlier
	od.Consecutive5xx = 2
	p, clock, _ := outlierProxy(t, od, dead, live.Listener.Addr().String())
	p.FirstEjection, p.EjectionTime = time.Nanosecond, time.Nanosecond // the connect-failure ejection out of the way
	cfg := p.cfg.Load()
	c := cfg.Clusters["c"]
	for i := 0; !p.ejectedStill("c", dead); i++ {
		if i == 200 {
			t.Fatal("the refusing endpoint was never ejected by outlier detection")
		}
		up, err := p.connect(cfg, &Cluster{Name: c.Name, ConnectTimeout: time.Second, Overprovisioning: 140, Endpoints: c.Endpoints}, 3)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		up.Close()
		clock.Advance(time.Millisecond) // past the connect-failure ejection, not the outlier one
	}
	for i := range 20 {
		ep, ok := p.pick(c, nil, 1)
		if !ok || ep.Addr == dead {
			t.Fatalf("pick %d: %v %v, want the live endpoint", i, ep, ok)
		}
	}
}

// TestOutlierRates: at each interval tick, among the endpoints with
// enough requests in the interval (when there are enough such), one whose
// success rate is below the mean by more than the factor of standard
// deviations is ejected, and so is one failing at least the failure
// percentage's threshold; fewer endpoints with enough requests, or fewer
// requests, eject none.
func TestOutlierRates(t *testing.T) {
	hosts := []string{"a:1", "b:1", "c:1", "d:1", "e:1"}
	sr := RateDetection{Enforcing: 100, MinimumHosts: 5, RequestVolume: 100, StdevFactor: 1900}
	fp := RateDetection{Enforcing: 100, MinimumHosts: 5, RequestVolume: 50, Threshold: 85}
	for _, tc := range []struct {
		name     string
		sr, fp   RateDetection
		requests int             // per endpoint in the interval
		failing  map[string]int  // failures of those, per endpoint
		want     map[string]bool // ejected after the tick
	}{
		// Rates 100, 100, 100, 100, 50: mean 90, deviation 20, limit 52.
		{"success rate below the mean", sr, RateDetection{}, 100, map[string]int{"e:1": 50}, map[string]bool{"e:1": true}},
		// Rates 100, 100, 100, 60, 60: mean 84, deviation 19.6, limit 46.8.
		// (With five endpoints one alone below the rest is always past 1.9
		// deviations, as in Envoy: they are population deviations.)
		{"success rate within the deviations", sr, RateDetection{}, 100, map[string]int{"d:1": 40, "e:1": 40}, nil},
		{"success rate with too few requests", sr, RateDetection{}, 99, map[string]int{"e:1": 50}, nil},
		{"success rate not enforced", RateDetection{MinimumHosts: 5, RequestVolume: 100, StdevFactor: 1900}, RateDetection{}, 100,
			map[string]int{"e:1": 50}, nil},
		{"failure percentage at the threshold", RateDetection{}, fp, 60, map[string]int{"d:1": 51, "e:1": 50}, map[string]bool{"d:1": true}},
		{"failure percentage with too few requests", RateDetection{}, fp, 49, map[string]int{"e:1": 49}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			od := testOutlier
			od.Consecutive5xx, od.ConsecutiveGateway = 1000, 1000 // out of the way
			od.SuccessRate, od.FailurePercentage = tc.sr, tc.fp
			p, clock, reg := outlierProxy(t, od, hosts...)
			for _, h := range hosts {
				for i := range tc.requests {
					status := 200
					if i < tc.failing[h] {
						status = 503
					}
					p.outcome(oc, Endpoint{Addr: h}, status, nil)
				}
			}
			for _, h := range hosts {
				if !p.healthy("c", h) {
					t.Fatalf("%s ejected before the interval ended", h)
				}
			}
			clock.Advance(time.Second) // the tick
			for _, h := range hosts {
				if got := !p.healthy("c", h); got != tc.want[h] {
					t.Errorf("%s ejected: %t, want %t", h, got, tc.want[h])
				}
			}
			if got := counterValue(t, reg, "ursa_dp_outlier_ejections_total", "c"); got != float64(len(tc.want)) {
				t.Errorf("%v ejections counted, want %d", got, len(tc.want))
			}
			// The next interval starts its own counts: nothing more is
			// ejected at its tick without requests.
			clock.Advance(time.Second)
			for _, h := range hosts {
				if tc.want[h] && p.healthy("c", h) {
					t.Errorf("%s back before its ejection time", h)
				}
			}
		})
	}
}

// TestOutlierRatesLeaveEjectedOut: an endpoint ejected when the tick is
// judged (here by consecutive 5xx, mid-interval) is left out of the mean,
// the deviation and the count of endpoints, as in Envoy.
func TestOutlierRatesLeaveEjectedOut(t *testing.T) {
	od := testOutlier
	od.Consecutive5xx = 5
	od.BaseEjectionTime = 30 * time.Second
	od.SuccessRate = RateDetection{Enforcing: 100, MinimumHosts: 5, RequestVolume: 100, StdevFactor: 1900}
	hosts := []string{"a:1", "b:1", "c:1", "d:1", "e:1", "f:1"}
	p, clock, _ := outlierProxy(t, od, hosts...)
	for _, h := range hosts[:4] {
		for range 100 {
			p.outcome(oc, Endpoint{Addr: h}, 200, nil)
		}
	}
	for i := range 100 { // e: 80 %
		s := 200
		if i%5 == 0 {
			s = 500
		}
		p.outcome(oc, Endpoint{Addr: "e:1"}, s, nil)
	}
	for i := range 195 { // f: alternating, then five in a row: ejected mid-interval
		s := 200
		if i%2 == 1 {
			s = 500
		}
		p.outcome(oc, Endpoint{Addr: "f:1"}, s, nil)
	}
	for range 5 {
		p.outcome(oc, Endpoint{Addr: "f:1"}, 500, nil)
	}
	if p.healthy("c", "f:1") {
		t.Fatal("f not ejected by consecutive 5xx")
	}
	clock.Advance(time.Second)
	// Envoy: {100,100,100,100,80}: mean 96, stdev 8, threshold 80.8 -> e ejected.
	if !p.ejectedStill("c", "e:1") {
		t.Error("e (80 %) not ejected: f (ejected) was counted in the mean and deviation")
	}
}

// TestOutlierRateEjectionBackoff: the tick a success-rate ejection is made
// at does not lower the endpoint's backoff first, as in Envoy.
func TestOutlierRateEjectionBackoff(t *testing.T) {
	od := testOutlier // interval 1s, base 10s, max 25s, consecutive 3
	od.SuccessRate = RateDetection{Enforcing: 100, MinimumHosts: 5, RequestVolume: 10, StdevFactor: 1900}
	hosts := []string{"a:1", "b:1", "c:1", "d:1", "e:1"}
	p, clock, _ := outlierProxy(t, od, hosts...)
	clock.Advance(300 * time.Millisecond)
	for range 3 {
		p.outcome(oc, Endpoint{Addr: "e:1"}, 500, nil)
	}
	clock.Advance(11 * time.Second) // 11.3: back at 11
	if !p.healthy("c", "e:1") {
		t.Fatal("not back")
	}
	for range 3 {
		p.outcome(oc, Endpoint{Addr: "e:1"}, 500, nil)
	} // backoff 2, 20 s: back at 32
	clock.Advance(21 * time.Second) // 32.3
	if !p.healthy("c", "e:1") {
		t.Fatal("not back at 32")
	}
	for _, h := range hosts {
		for i := range 10 {
			s := 200
			if h == "e:1" && i%2 == 0 {
				s = 500
			}
			p.outcome(oc, Endpoint{Addr: h}, s, nil)
		}
	}
	clock.Advance(time.Second) // 33.3: tick 33 judged
	if p.healthy("c", "e:1") {
		t.Fatal("not ejected by success rate")
	}
	start := clock.Now()
	for p.ejectedStill("c", "e:1") {
		clock.Advance(time.Second)
	}
	// Envoy: backoff 2 -> 3 at tick 33, min(30s,25s) = 25 s: back at tick 58.
	if back := clock.Now().Sub(start) + 33*time.Second; back != 58*time.Second {
		t.Errorf("back at %v (from start), Envoy: 58s", back)
	}
}

// fourAndE is outlierProxy with od and success-rate detection over 10
// requests an interval, for endpoints a to e: a to d have answered 10
// requests well, e the statuses given.
func fourAndE(t *testing.T, od OutlierDetection, statuses ...int) (*Proxy, *testutil.Clock, *prometheus.Registry) {
	t.Helper()
	od.SuccessRate = RateDetection{Enforcing: 100, MinimumHosts: 5, RequestVolume: 10, StdevFactor: 1900}
	hosts := []string{"a:1", "b:1", "c:1", "d:1", "e:1"}
	p, clock, reg := outlierProxy(t, od, hosts...)
	for _, h := range hosts[:4] {
		for range 10 {
			p.outcome(oc, Endpoint{Addr: h}, 200, nil)
		}
	}
	for _, s := range statuses {
		p.outcome(oc, Endpoint{Addr: "e:1"}, s, nil)
	}
	return p, clock, reg
}

// TestOutlierUnejectJudgesTickFirst: a health check that returns an
// endpoint after a tick not judged yet has the tick judged first, with the
// endpoint as it was then (ejected: left out).
func TestOutlierUnejectJudgesTickFirst(t *testing.T) {
	od := testOutlier
	od.UnejectOnHealthCheck = true
	p, clock, reg := fourAndE(t, od, 200, 500, 200, 500, 200, 500, 200, 500, 500, 500)
	if p.healthy("c", "e:1") {
		t.Fatal("e not ejected by consecutive 5xx")
	}
	clock.Advance(1500 * time.Millisecond)
	p.resil.outliers.uneject("c", "e:1", clock.Now()) // health check passed at 1.5 s
	if !p.healthy("c", "e:1") {
		t.Errorf("e ejected again after the health check returned it (ejections %v); Envoy excluded it at tick 1 (it was ejected then)",
			counterValue(t, reg, "ursa_dp_outlier_ejections_total", "c"))
	}
}

// TestOutlierReturnResetsStreaks: an endpoint's failure streaks start
// over when it returns (Envoy's unejectHost), so a streak from before a
// success-rate ejection does not carry over.
func TestOutlierReturnResetsStreaks(t *testing.T) {
	// consecutive 3, base 10s, interval 1s
	p, clock, _ := fourAndE(t, testOutlier, 500, 200, 500, 200, 500, 200, 500, 200, 500, 500)
	clock.Advance(1300 * time.Millisecond)
	if !p.ejectedStill("c", "e:1") {
		t.Fatal("not ejected by success rate")
	}
	clock.Advance(10 * time.Second) // 11.3: back at 11
	if p.ejectedStill("c", "e:1") {
		t.Fatal("not back")
	}
	p.outcome(oc, Endpoint{Addr: "e:1"}, 500, nil)
	if p.ejectedStill("c", "e:1") {
		t.Error("one 5xx after the return ejected it: the streak of 2 from before the ejection was kept (Envoy resets on uneject)")
	}
}
