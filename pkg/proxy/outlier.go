package proxy

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// OutlierDetection is Envoy's passive health checking of a cluster's
// endpoints, by consecutive failures: an endpoint whose responses fail
// Consecutive5xx times in a row (5xx, or a connection that fails) is
// ejected for BaseEjectionTime times the number of its ejections in a row,
// at most max(BaseEjectionTime, MaxEjectionTime), and returns at the first
// Interval tick after that; each tick it spends back in service lowers
// that number again.
type OutlierDetection struct {
	Consecutive5xx, Enforcing5xx         uint32
	ConsecutiveGateway, EnforcingGateway uint32
	Interval, BaseEjectionTime           time.Duration
	MaxEjectionTime, MaxEjectionJitter   time.Duration
	MaxEjectionPercent                   uint32
	AlwaysEjectOne                       bool
	// UnejectOnHealthCheck returns an ejected endpoint to service when
	// an active health check of it passes.
	UnejectOnHealthCheck bool
	// Success rate and failure percentage, judged at each interval tick
	// over the interval's requests: among the endpoints with at least
	// RequestVolume of them, when there are at least MinimumHosts such,
	// one whose success rate is below the mean by more than
	// StdevFactor/1000 standard deviations, or whose failures are at
	// least FailureThreshold percent, is ejected (Enforcing percent of
	// the time).
	SuccessRate, FailurePercentage RateDetection
}

// RateDetection is one of Envoy's detections over an interval's requests
// (success rate, failure percentage).
type RateDetection struct {
	Enforcing, MinimumHosts, RequestVolume uint32
	// StdevFactor (success rate) or Threshold (failure percentage).
	StdevFactor, Threshold uint32
}

// translateOutlier reads a cluster's outlier detection, with Envoy's
// defaults for what is unset: consecutive failures, success rate (on by
// default, with 5 endpoints of 100 requests an interval) and failure
// percentage (off by default). Local-origin errors are not told apart.
func translateOutlier(od *cluster.OutlierDetection) (*OutlierDetection, error) {
	if od == nil {
		return nil, nil
	}
	if err := unsupportedFields(od, "outlier_detection", "consecutive_5xx", "interval", "base_ejection_time",
		"max_ejection_percent", "enforcing_consecutive_5xx", "consecutive_gateway_failure",
		"enforcing_consecutive_gateway_failure", "max_ejection_time", "max_ejection_time_jitter",
		"successful_active_health_check_uneject_host", "always_eject_one_host",
		"success_rate_minimum_hosts", "success_rate_request_volume", "success_rate_stdev_factor", "enforcing_success_rate",
		"failure_percentage_threshold", "enforcing_failure_percentage", "failure_percentage_minimum_hosts",
		"failure_percentage_request_volume"); err != nil {
		return nil, err
	}
	u32 := func(v *wrapperspb.UInt32Value, def uint32) uint32 {
		if v == nil {
			return def
		}
		return v.GetValue()
	}
	dur := func(name string, v *durationpb.Duration, def time.Duration) (time.Duration, error) {
		if v == nil {
			return def, nil
		}
		if err := v.CheckValid(); err != nil || v.AsDuration() < 0 || v.AsDuration() > maxDuration {
			return 0, fmt.Errorf("outlier_detection.%s: %v is not a duration from 0 to a year", name, v)
		}
		return v.AsDuration(), nil
	}
	out := &OutlierDetection{
		Consecutive5xx: u32(od.GetConsecutive_5Xx(), 5), Enforcing5xx: u32(od.GetEnforcingConsecutive_5Xx(), 100),
		ConsecutiveGateway: u32(od.GetConsecutiveGatewayFailure(), 5), EnforcingGateway: u32(od.GetEnforcingConsecutiveGatewayFailure(), 0),
		MaxEjectionPercent: min(100, u32(od.GetMaxEjectionPercent(), 10)),
		AlwaysEjectOne:     od.GetAlwaysEjectOneHost().GetValue(), UnejectOnHealthCheck: true,
	}
	if v := od.GetSuccessfulActiveHealthCheckUnejectHost(); v != nil {
		out.UnejectOnHealthCheck = v.GetValue()
	}
	out.SuccessRate = RateDetection{Enforcing: u32(od.GetEnforcingSuccessRate(), 100), MinimumHosts: u32(od.GetSuccessRateMinimumHosts(), 5),
		RequestVolume: u32(od.GetSuccessRateRequestVolume(), 100), StdevFactor: u32(od.GetSuccessRateStdevFactor(), 1900)}
	out.FailurePercentage = RateDetection{Enforcing: u32(od.GetEnforcingFailurePercentage(), 0),
		MinimumHosts: u32(od.GetFailurePercentageMinimumHosts(), 5), RequestVolume: u32(od.GetFailurePercentageRequestVolume(), 50),
		Threshold: u32(od.GetFailurePercentageThreshold(), 85)}
	for _, f := range []struct {
		name string
		v    uint32
	}{{"enforcing_success_rate", out.SuccessRate.Enforcing}, {"enforcing_failure_percentage", out.FailurePercentage.Enforcing},
		{"failure_percentage_threshold", out.FailurePercentage.Threshold}} {
		if f.v > 100 {
			return nil, fmt.Errorf("outlier_detection.%s: %d is not a percentage", f.name, f.v)
		}
	}
	var err error
	if out.Interval, err = dur("interval", od.GetInterval(), 10*time.Second); err != nil {
		return nil, err
	}
	if out.Interval == 0 {
		return nil, errors.New("outlier_detection.interval: must be more than 0")
	}
	if out.BaseEjectionTime, err = dur("base_ejection_time", od.GetBaseEjectionTime(), 30*time.Second); err != nil {
		return nil, err
	}
	if out.MaxEjectionTime, err = dur("max_ejection_time", od.GetMaxEjectionTime(), 300*time.Second); err != nil {
		return nil, err
	}
	if out.MaxEjectionJitter, err = dur("max_ejection_time_jitter", od.GetMaxEjectionTimeJitter(), 0); err != nil {
		return nil, err
	}
	return out, nil
}

// outlierHost is what outlier detection knows of one endpoint.
type outlierHost struct {
	consecutive5xx, consecutiveGateway uint32
	ejected                            bool
	ejectedAt                          time.Time
	// ejectedFor is how long this ejection lasts, jitter included.
	ejectedFor time.Duration
	// backoff is Envoy's ejection-time multiplier: raised by each
	// ejection, lowered by each interval tick spent in service.
	backoff uint32
	// unejectedAt is when it last returned, zero before; counted is the
	// last tick whose lowering of backoff is done.
	unejectedAt, counted time.Time
	// ok and failed count the requests of the interval under way.
	ok, failed uint32
}

// outlierCluster is a cluster's outlier detection state. Nothing runs on
// a timer: Envoy's interval ticks (at start + k×Interval) are worked out
// when an endpoint is next looked at, which gives the same answers, by
// the Proxy's clock.
type outlierCluster struct {
	mu    sync.Mutex
	cfg   OutlierDetection
	start time.Time
	hosts map[string]*outlierHost
	// bucket is the tick the hosts' ok and failed counts began at.
	bucket time.Time
	name   string
	// ejected is told of each ejection roll makes (outliers.onRateEjection).
	ejected func(cluster, addr, why string)
}

// roll judges the success rates and failure percentages of the interval
// the hosts' counts are of, at the tick that ended it, once now is past
// it, and starts counting the interval under way.
func (oc *outlierCluster) roll(now time.Time) {
	last := oc.lastTick(now)
	if !last.After(oc.bucket) {
		return
	}
	tick := oc.bucket.Add(oc.cfg.Interval)
	oc.bucket = last
	var rates []hostRate
	for addr, h := range oc.hosts {
		// Each host as Envoy has it at the tick, before it judges: the
		// returns due by then made, the backoff lowered for the ticks
		// before only (not for this one, if it is ejected at it).
		oc.refresh(h, tick.Add(-1))
		if h.ejected && !oc.tickAtOrAfter(h.ejectedAt.Add(h.ejectedFor)).After(tick) {
			oc.returned(h, tick)
		}
		if n := h.ok + h.failed; n > 0 && !h.ejected { // the ejected are out of it, as in Envoy
			rates = append(rates, hostRate{addr, h, n, 100 * float64(h.ok) / float64(n)})
		}
		h.ok, h.failed = 0, 0
	}
	eject := func(outliers []hostRate, enforcing uint32, why string) {
		for _, r := range outliers {
			if !r.h.ejected && oc.ejectAsIs(r.h, enforcing, tick) && oc.ejected != nil {
				oc.ejected(oc.name, r.addr, why)
			}
		}
	}
	if sr := oc.cfg.SuccessRate; sr.Enforcing > 0 {
		eject(successRateOutliers(rates, sr), sr.Enforcing, "success rate")
	}
	if fp := oc.cfg.FailurePercentage; fp.Enforcing > 0 {
		eject(failurePercentageOutliers(rates, fp), fp.Enforcing, "failure percentage")
	}
}

// hostRate is an endpoint's requests in an interval, and the percentage
// of them that succeeded.
type hostRate struct {
	addr     string
	h        *outlierHost
	requests uint32
	percent  float64
}

// judged is the rates with at least d's request volume, nil when there
// are fewer than its minimum of such endpoints.
func judged(rates []hostRate, d RateDetection) []hostRate {
	var out []hostRate
	for _, r := range rates {
		if r.requests >= d.RequestVolume {
			out = append(out, r)
		}
	}
	if len(out) == 0 || uint32(len(out)) < d.MinimumHosts {
		return nil
	}
	return out
}

// successRateOutliers are the endpoints whose success rate is more than
// the factor of (population) standard deviations below the mean.
func successRateOutliers(rates []hostRate, sr RateDetection) []hostRate {
	rates = judged(rates, sr)
	var sum, variance float64
	for _, r := range rates {
		sum += r.percent
	}
	mean := sum / float64(len(rates))
	for _, r := range rates {
		variance += (r.percent - mean) * (r.percent - mean)
	}
	limit := mean - float64(sr.StdevFactor)/1000*math.Sqrt(variance/float64(len(rates)))
	var out []hostRate
	for _, r := range rates {
		if r.percent < limit {
			out = append(out, r)
		}
	}
	return out
}

// failurePercentageOutliers are the endpoints that failed the threshold's
// percentage of their requests or more.
func failurePercentageOutliers(rates []hostRate, fp RateDetection) []hostRate {
	var out []hostRate
	for _, r := range judged(rates, fp) {
		if 100-r.percent >= float64(fp.Threshold) {
			out = append(out, r)
		}
	}
	return out
}

// tickAtOrAfter is the first interval tick at or after t.
func (oc *outlierCluster) tickAtOrAfter(t time.Time) time.Time {
	if !t.After(oc.start) {
		return oc.start
	}
	i := oc.cfg.Interval
	n := (t.Sub(oc.start) + i - 1) / i
	return oc.start.Add(n * i)
}

// lastTick is the last interval tick at or before t.
func (oc *outlierCluster) lastTick(t time.Time) time.Time {
	if t.Before(oc.start) {
		return oc.start
	}
	i := oc.cfg.Interval
	return oc.start.Add(t.Sub(oc.start) / i * i)
}

// refresh brings h up to now: it returns it to service at the tick its
// ejection ended on, and lowers its backoff once per tick spent in
// service since (Envoy starts lowering one interval after the return).
func (oc *outlierCluster) refresh(h *outlierHost, now time.Time) {
	if h.ejected {
		back := oc.tickAtOrAfter(h.ejectedAt.Add(h.ejectedFor))
		if back.After(now) {
			return
		}
		oc.returned(h, back)
	}
	if h.backoff == 0 || h.unejectedAt.IsZero() {
		return
	}
	last := oc.lastTick(now)
	if !last.After(h.counted) {
		return
	}
	ticks := uint32(last.Sub(h.counted) / oc.cfg.Interval)
	h.backoff -= min(h.backoff, ticks)
	h.counted = last
}

// returned puts h back in service at t. Its backoff is lowered at each
// tick at least one interval after t.
func (oc *outlierCluster) returned(h *outlierHost, t time.Time) {
	h.ejected, h.unejectedAt = false, t
	h.consecutive5xx, h.consecutiveGateway = 0, 0 // streaks start over, as in Envoy
	h.counted = oc.tickAtOrAfter(t.Add(oc.cfg.Interval)).Add(-oc.cfg.Interval)
}

// ejectionTime is how long an ejection with backoff lasts, before jitter.
func (oc *outlierCluster) ejectionTime(backoff uint32) time.Duration {
	return min(oc.cfg.BaseEjectionTime*time.Duration(backoff), max(oc.cfg.BaseEjectionTime, oc.cfg.MaxEjectionTime))
}

// outliers holds the outlier detection state of every cluster that has it.
// Readers find a cluster's state without a lock, in a snapshot that sync
// replaces as a whole; each cluster's state has its own lock.
type outliers struct {
	mu sync.Mutex // serializes sync
	m  atomic.Pointer[map[string]*outlierCluster]
	// onRateEjection, when set, is told of each ejection an interval's success
	// rates or failure percentages made (why: which).
	onRateEjection func(cluster, addr, why string)
}

// cluster returns a cluster's state, nil when it has no outlier detection.
func (o *outliers) cluster(name string) *outlierCluster {
	if m := o.m.Load(); m != nil {
		return (*m)[name]
	}
	return nil
}

// sync starts the state of clusters that got outlier detection or a
// different one (Envoy makes a new cluster then), keeps the rest, and
// drops what is gone, endpoints included.
func (o *outliers) sync(clusters map[string]*Cluster, now time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	next := map[string]*outlierCluster{}
	for name, c := range clusters {
		if c.Outlier == nil {
			continue
		}
		oc := o.cluster(name)
		if oc == nil || oc.cfg != *c.Outlier {
			oc = &outlierCluster{cfg: *c.Outlier, start: now, bucket: now, hosts: map[string]*outlierHost{},
				name: name, ejected: o.onRateEjection}
		}
		oc.mu.Lock()
		oc.roll(now) // a tick passed is judged with the endpoints it had
		seen := map[string]bool{}
		for _, ep := range c.Endpoints {
			seen[ep.Addr] = true
			if oc.hosts[ep.Addr] == nil {
				oc.hosts[ep.Addr] = &outlierHost{}
			}
		}
		for addr := range oc.hosts {
			if !seen[addr] {
				delete(oc.hosts, addr)
			}
		}
		oc.mu.Unlock()
		next[name] = oc
	}
	o.m.Store(&next)
}

// ejected reports whether outlier detection has an endpoint out of
// service now.
func (o *outliers) ejected(cluster, addr string, now func() time.Time) bool {
	oc := o.cluster(cluster)
	if oc == nil {
		return false
	}
	oc.mu.Lock()
	defer oc.mu.Unlock()
	t := now()
	oc.roll(t)
	h := oc.hosts[addr]
	if h == nil {
		return false
	}
	oc.refresh(h, t)
	return h.ejected
}

// uneject returns an ejected endpoint to service at once: an active
// health check of it passed.
func (o *outliers) uneject(cluster, addr string, now time.Time) {
	oc := o.cluster(cluster)
	if oc == nil || !oc.cfg.UnejectOnHealthCheck {
		return
	}
	oc.mu.Lock()
	defer oc.mu.Unlock()
	oc.roll(now) // a tick passed is judged with the host as it was then
	if h := oc.hosts[addr]; h != nil && h.ejected {
		oc.returned(h, now)
	}
}

// result takes the outcome of one request or connection to an endpoint
// (code: an HTTP status, or what a local failure maps to) and reports
// whether it ejected the endpoint. As in Envoy, a streak of gateway
// failures (502, 503, 504) and one of any 5xx are counted side by side,
// each starting over when it reaches its threshold, ejection enforced or
// not.
func (o *outliers) result(cluster, addr string, code int, now time.Time) bool {
	oc := o.cluster(cluster)
	if oc == nil {
		return false
	}
	oc.mu.Lock()
	defer oc.mu.Unlock()
	oc.roll(now)
	h := oc.hosts[addr]
	if h == nil {
		return false
	}
	oc.refresh(h, now)
	if h.ejected {
		// A request that started before the ejection cannot eject the
		// endpoint again.
		return false
	}
	if code >= 500 && code <= 599 {
		h.failed++
	} else {
		h.ok++
	}
	if code < 500 || code > 599 {
		h.consecutive5xx, h.consecutiveGateway = 0, 0
		return false
	}
	ejected := false
	if code == 502 || code == 503 || code == 504 {
		h.consecutiveGateway++
		if h.consecutiveGateway == oc.cfg.ConsecutiveGateway {
			h.consecutiveGateway = 0
			ejected = oc.eject(h, oc.cfg.EnforcingGateway, now)
		}
	} else {
		h.consecutiveGateway = 0
	}
	h.consecutive5xx++
	if h.consecutive5xx == oc.cfg.Consecutive5xx {
		h.consecutive5xx = 0
		if !ejected {
			ejected = oc.eject(h, oc.cfg.Enforcing5xx, now)
		}
	}
	return ejected
}

// eject ejects h if enforcing (a percentage) and max_ejection_percent
// allow it. The share counts h itself, so that a small cluster ejects none
// unless always_eject_one_host (Envoy's rule since that field came).
func (oc *outlierCluster) eject(h *outlierHost, enforcing uint32, now time.Time) bool {
	for _, other := range oc.hosts {
		oc.refresh(other, now)
	}
	return oc.ejectAsIs(h, enforcing, now)
}

// ejectAsIs is eject with the hosts' states as they are (brought up to
// now by the caller).
func (oc *outlierCluster) ejectAsIs(h *outlierHost, enforcing uint32, now time.Time) bool {
	if enforcing == 0 || rand.Uint32N(100) >= enforcing {
		return false
	}
	n := 0
	for _, other := range oc.hosts {
		if other.ejected {
			n++
		}
	}
	if uint64(n+1)*100 > uint64(oc.cfg.MaxEjectionPercent)*uint64(len(oc.hosts)) && !(oc.cfg.AlwaysEjectOne && n == 0) {
		return false
	}
	if time.Duration(h.backoff)*oc.cfg.BaseEjectionTime < oc.cfg.MaxEjectionTime+oc.cfg.BaseEjectionTime {
		h.backoff++
	}
	h.ejected, h.ejectedAt = true, now
	h.ejectedFor = oc.ejectionTime(h.backoff)
	if j := oc.cfg.MaxEjectionJitter; j > 0 {
		h.ejectedFor += rand.N(j + 1)
	}
	return true
}

// outcomeCode maps the outcome of a request or connection to the HTTP
// status outlier detection counts, as Envoy does without
// split_external_local_origin_errors: a status is itself; a connection
// that succeeded (TCP) is 200; a timeout is 504; any other local failure
// (refused, reset, handshake) is 503. ok is false for what says nothing
// of the endpoint: a circuit breaker's overflow, no identity yet, the
// caller gone, or its body failing.
func outcomeCode(status int, err error) (code int, ok bool) {
	switch {
	case status > 0:
		return status, true
	case err == nil:
		return 200, true
	}
	var local *localReplyError // here: escaping, it would cost every call
	switch {
	case errors.As(err, &local), errors.Is(err, errNoIdentity), errors.Is(err, errServed), errors.Is(err, context.Canceled),
		errors.As(err, new(*callerError)):
		return 0, false
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded):
		return 504, true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return 504, true
	}
	return 503, true
}

// outcome reports one attempt of a request, or one connection, to
// endpoint ep of cluster c, for outlier detection: status is the HTTP
// status the upstream answered, or 0 when there was none; err is why
// there was none (a *connectError when no connection could be made, a
// reset, a timeout), nil for a TCP connection that succeeded. The HTTP
// engine calls it once per attempt; tcp_proxy once per connection.
func (p *Proxy) outcome(c *Cluster, ep Endpoint, status int, err error) {
	code, ok := outcomeCode(status, err)
	if !ok {
		return
	}
	if p.resil.outliers.result(c.Name, ep.Addr, code, p.now()) {
		p.resil.ejections.WithLabelValues(c.Name).Inc()
		p.log.Info("endpoint ejected by outlier detection", zap.String("cluster", c.Name), zap.String("endpoint", ep.Addr),
			zap.Int("status", status), zap.Error(err))
	}
}
