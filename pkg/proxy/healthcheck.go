package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/durationpb"
)

// HealthCheck is a cluster's active health check (Envoy's; one per
// cluster), run against each endpoint through the cluster's transport
// socket, as a real connection is made: mTLS with the cluster's SNI,
// checking the server's identity.
type HealthCheck struct {
	Timeout, Interval                    time.Duration
	InitialJitter, IntervalJitter        time.Duration
	IntervalJitterPercent                uint32
	UnhealthyThreshold, HealthyThreshold uint32
	// The intervals Envoy uses instead of Interval: before the cluster
	// has carried traffic (NoTraffic*), while the endpoint is unhealthy,
	// and right after it changed (*Edge).
	NoTrafficInterval, NoTrafficHealthyInterval time.Duration
	UnhealthyInterval, UnhealthyEdgeInterval    time.Duration
	HealthyEdgeInterval                         time.Duration
	// AltPort, when not 0, is the port checked instead of the endpoint's.
	AltPort         uint32
	ReuseConnection bool
	// HTTP is an HTTP check; nil is a TCP check (connect, and the TLS
	// handshake when the cluster has one).
	HTTP *HTTPCheck
}

// HTTPCheck is an HTTP health check: a request whose response status must
// be in Expected. A status in Retriable counts towards the unhealthy
// threshold; any other one makes the endpoint unhealthy at once.
type HTTPCheck struct {
	Host, Path, Method string
	// HTTP2 checks over HTTP/2 (codec_client_type HTTP2): h2 by ALPN over
	// TLS, h2c without; else HTTP/1.1.
	HTTP2               bool
	Expected, Retriable []StatusRange
	AddHeaders          []HeaderToAdd
	RemoveHeaders       []string
}

// StatusRange is the statuses from Start up to, not including, End.
type StatusRange struct{ Start, End int }

// HeaderToAdd is a request header of an HTTP check. Overwrite replaces a
// value the header has; IfAbsent adds it only when it has none.
type HeaderToAdd struct {
	Key, Value          string
	Overwrite, IfAbsent bool
}

func inRanges(rs []StatusRange, status int) bool {
	for _, r := range rs {
		if status >= r.Start && status < r.End {
			return true
		}
	}
	return false
}

// translateHealthChecks reads a cluster's health checks: at most one, as
// in Envoy, TCP (without payloads) or HTTP.
func translateHealthChecks(hcs []*core.HealthCheck) (*HealthCheck, error) {
	if len(hcs) == 0 {
		return nil, nil
	}
	if len(hcs) > 1 {
		return nil, fmt.Errorf("health_checks: %d health checks; the built-in proxy, like Envoy, runs one", len(hcs))
	}
	hc := hcs[0]
	// name only labels the check; the logging flags change what is
	// logged, not what is checked.
	if err := unsupportedFields(hc, "health_checks", "name", "timeout", "interval", "initial_jitter", "interval_jitter",
		"interval_jitter_percent", "unhealthy_threshold", "healthy_threshold", "alt_port", "reuse_connection",
		"no_traffic_interval", "no_traffic_healthy_interval", "unhealthy_interval", "unhealthy_edge_interval",
		"healthy_edge_interval", "always_log_health_check_failures", "always_log_health_check_success",
		"http_health_check", "tcp_health_check"); err != nil {
		return nil, err
	}
	dur := func(name string, v *durationpb.Duration, def time.Duration) (time.Duration, error) {
		if v == nil {
			return def, nil
		}
		if err := v.CheckValid(); err != nil || v.AsDuration() < 0 || v.AsDuration() > maxDuration {
			return 0, fmt.Errorf("health_checks.%s: %v is not a duration from 0 to a year", name, v)
		}
		return v.AsDuration(), nil
	}
	out := &HealthCheck{IntervalJitterPercent: hc.GetIntervalJitterPercent(), AltPort: hc.GetAltPort().GetValue(),
		UnhealthyThreshold: hc.GetUnhealthyThreshold().GetValue(), HealthyThreshold: hc.GetHealthyThreshold().GetValue(),
		ReuseConnection: true}
	if hc.ReuseConnection != nil {
		out.ReuseConnection = hc.GetReuseConnection().GetValue()
	}
	if hc.Timeout == nil || hc.Interval == nil || hc.UnhealthyThreshold == nil || hc.HealthyThreshold == nil {
		return nil, errors.New("health_checks: timeout, interval, unhealthy_threshold and healthy_threshold are required")
	}
	if out.AltPort > 65535 {
		return nil, fmt.Errorf("health_checks.alt_port: %d is not a port", out.AltPort)
	}
	var err error
	for _, d := range []struct {
		name string
		v    *durationpb.Duration
		dst  *time.Duration
		def  time.Duration
	}{
		{"timeout", hc.GetTimeout(), &out.Timeout, 0},
		{"interval", hc.GetInterval(), &out.Interval, 0},
		{"initial_jitter", hc.GetInitialJitter(), &out.InitialJitter, 0},
		{"interval_jitter", hc.GetIntervalJitter(), &out.IntervalJitter, 0},
		{"no_traffic_interval", hc.GetNoTrafficInterval(), &out.NoTrafficInterval, 60 * time.Second},
	} {
		if *d.dst, err = dur(d.name, d.v, d.def); err != nil {
			return nil, err
		}
	}
	if out.Timeout <= 0 || out.Interval <= 0 || out.NoTrafficInterval <= 0 {
		return nil, errors.New("health_checks: timeout, interval and no_traffic_interval must be more than 0")
	}
	if out.NoTrafficHealthyInterval, err = dur("no_traffic_healthy_interval", hc.GetNoTrafficHealthyInterval(), out.NoTrafficInterval); err != nil {
		return nil, err
	}
	if out.UnhealthyInterval, err = dur("unhealthy_interval", hc.GetUnhealthyInterval(), out.Interval); err != nil {
		return nil, err
	}
	if out.UnhealthyEdgeInterval, err = dur("unhealthy_edge_interval", hc.GetUnhealthyEdgeInterval(), out.UnhealthyInterval); err != nil {
		return nil, err
	}
	if out.HealthyEdgeInterval, err = dur("healthy_edge_interval", hc.GetHealthyEdgeInterval(), out.Interval); err != nil {
		return nil, err
	}
	if min(out.NoTrafficHealthyInterval, out.UnhealthyInterval, out.UnhealthyEdgeInterval, out.HealthyEdgeInterval) <= 0 {
		return nil, errors.New("health_checks: every interval must be more than 0")
	}
	switch {
	case hc.GetTcpHealthCheck() != nil:
		if err := unsupportedFields(hc.GetTcpHealthCheck(), "health_checks.tcp_health_check"); err != nil {
			return nil, err
		}
	case hc.GetHttpHealthCheck() != nil:
		if out.HTTP, err = translateHTTPCheck(hc.GetHttpHealthCheck()); err != nil {
			return nil, err
		}
	default:
		return nil, errors.New("health_checks: only tcp_health_check and http_health_check are supported by the built-in proxy")
	}
	return out, nil
}

func translateHTTPCheck(h *core.HealthCheck_HttpHealthCheck) (*HTTPCheck, error) {
	if err := unsupportedFields(h, "health_checks.http_health_check", "host", "path", "request_headers_to_add",
		"request_headers_to_remove", "expected_statuses", "retriable_statuses", "method", "codec_client_type"); err != nil {
		return nil, err
	}
	out := &HTTPCheck{Host: h.GetHost(), Path: h.GetPath(), Method: http.MethodGet, RemoveHeaders: h.GetRequestHeadersToRemove()}
	switch h.GetCodecClientType() {
	case typev3.CodecClientType_HTTP1:
	case typev3.CodecClientType_HTTP2:
		out.HTTP2 = true
	default:
		return nil, fmt.Errorf("health_checks.http_health_check.codec_client_type: %s is not supported by the built-in proxy", h.GetCodecClientType())
	}
	if u, err := url.ParseRequestURI(out.Path); err != nil || !strings.HasPrefix(out.Path, "/") || u.Host != "" {
		return nil, fmt.Errorf("health_checks.http_health_check.path: %q is not a request path", out.Path)
	}
	switch m := h.GetMethod(); m {
	case core.RequestMethod_METHOD_UNSPECIFIED:
	case core.RequestMethod_CONNECT:
		return nil, errors.New("health_checks.http_health_check.method: CONNECT is not allowed")
	default:
		out.Method = m.String()
	}
	ranges := func(name string, in []*typev3.Int64Range) ([]StatusRange, error) {
		var rs []StatusRange
		for _, r := range in {
			if r.GetStart() < 100 || r.GetEnd() > 600 || r.GetStart() >= r.GetEnd() {
				return nil, fmt.Errorf("health_checks.http_health_check.%s: [%d, %d) is not a range of statuses in [100, 600)", name, r.GetStart(), r.GetEnd())
			}
			rs = append(rs, StatusRange{Start: int(r.GetStart()), End: int(r.GetEnd())})
		}
		return rs, nil
	}
	var err error
	if out.Expected, err = ranges("expected_statuses", h.GetExpectedStatuses()); err != nil {
		return nil, err
	}
	if len(out.Expected) == 0 {
		out.Expected = []StatusRange{{200, 201}}
	}
	if out.Retriable, err = ranges("retriable_statuses", h.GetRetriableStatuses()); err != nil {
		return nil, err
	}
	for _, hv := range h.GetRequestHeadersToAdd() {
		if err := unsupportedFields(hv, "health_checks.http_health_check.request_headers_to_add", "header", "append_action", "append"); err != nil {
			return nil, err
		}
		if err := unsupportedFields(hv.GetHeader(), "health_checks.http_health_check.request_headers_to_add.header", "key", "value"); err != nil {
			return nil, err
		}
		add := HeaderToAdd{Key: hv.GetHeader().GetKey(), Value: hv.GetHeader().GetValue()}
		if add.Key == "" || strings.HasPrefix(add.Key, ":") || strings.Contains(add.Value, "%") {
			return nil, fmt.Errorf("health_checks.http_health_check.request_headers_to_add: header %q: only plain headers with literal values are supported by the built-in proxy", add.Key)
		}
		switch hv.GetAppendAction() {
		case core.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			add.Overwrite = hv.Append != nil && !hv.GetAppend().GetValue()
		case core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
			add.Overwrite = true
		case core.HeaderValueOption_ADD_IF_ABSENT:
			add.IfAbsent = true
		default:
			return nil, fmt.Errorf("health_checks.http_health_check.request_headers_to_add: append_action %s is not supported by the built-in proxy", hv.GetAppendAction())
		}
		out.AddHeaders = append(out.AddHeaders, add)
	}
	return out, nil
}

// checkResult is how one check of an endpoint ended.
type checkResult int

const (
	checkPassed checkResult = iota
	// checkNetwork failed to connect or timed out: it counts towards the
	// unhealthy threshold.
	checkNetwork
	// checkRetriable answered a retriable status: it counts too.
	checkRetriable
	// checkFailed answered another status: unhealthy at once.
	checkFailed
	// checkSkipped could not be made through no fault of the endpoint
	// (no identity yet): it does not count.
	checkSkipped
)

// transition is what a check did to an endpoint's health.
type transition int

const (
	unchanged transition = iota
	changePending
	changed
)

// checker checks one endpoint of one cluster, in its own goroutine, until
// its context ends: when the endpoint or the cluster goes, or the check
// changes.
type checker struct {
	p       *Proxy
	cluster string
	addr    string
	spec    *HealthCheck
	// target is the cluster as last applied: its TLS settings are read at
	// each check.
	target  atomic.Pointer[Cluster]
	healthy atomic.Bool
	// first is true until the first check ends: one pass then makes the
	// endpoint healthy, as Envoy does at startup.
	first                   bool
	numHealthy, numUnhealth uint32
	// client makes HTTP checks; clientTLS is whether it was made for a
	// cluster with TLS.
	client    *http.Client
	clientTLS bool
	cancel    context.CancelFunc
	done      chan struct{}
	// traffic is whether the endpoint's cluster has carried traffic; its
	// first ends a wait for the no-traffic interval.
	traffic *clusterTraffic
	// checks counts checks done, and idle is true while the checker
	// waits for its next: tests read them.
	checks atomic.Int64
	idle   atomic.Bool
}

// healthChecks runs the checkers of every cluster that has a health check.
// Readers (every pick of an endpoint) take no lock: they read a snapshot
// that sync replaces as a whole.
type healthChecks struct {
	mu       sync.Mutex // serializes sync and stop
	clusters atomic.Pointer[map[string]*checkedCluster]
	wg       sync.WaitGroup
}

// checkedCluster is a cluster's checkers; a snapshot's never change.
type checkedCluster struct {
	checkers map[string]*checker
	// traffic is shared by the cluster's snapshots and their checkers.
	traffic *clusterTraffic
}

// clusterTraffic is whether a cluster has carried traffic: came is closed
// at its first. That wakes every checker of the cluster waiting for the
// no-traffic interval, those of a snapshot being made at that moment
// too (a checker started later finds it closed).
type clusterTraffic struct {
	once sync.Once
	came chan struct{}
}

func newClusterTraffic() *clusterTraffic { return &clusterTraffic{came: make(chan struct{})} }

// record records traffic: the first call closes came.
func (ct *clusterTraffic) record() { ct.once.Do(func() { close(ct.came) }) }

// carried reports whether the cluster has carried traffic.
func (ct *clusterTraffic) carried() bool {
	select {
	case <-ct.came:
		return true
	default:
		return false
	}
}

// current is the snapshot of checked clusters.
func (hs *healthChecks) current() map[string]*checkedCluster {
	if m := hs.clusters.Load(); m != nil {
		return *m
	}
	return nil
}

// sync starts a checker for each endpoint of each health-checked cluster
// that has none, restarts one whose check changed (keeping what it knew of
// the endpoint's health), and stops those whose endpoint or cluster is
// gone. It does not wait for stopped checkers (stop does).
func (hs *healthChecks) sync(p *Proxy, clusters map[string]*Cluster) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	prev := hs.current()
	next := map[string]*checkedCluster{}
	for name, c := range clusters {
		if c.HealthCheck == nil || c.OriginalDst {
			continue
		}
		old := prev[name]
		cc := &checkedCluster{checkers: map[string]*checker{}, traffic: newClusterTraffic()}
		if old != nil {
			cc.traffic = old.traffic
		}
		for _, ep := range c.Endpoints {
			if cc.checkers[ep.Addr] != nil {
				continue
			}
			var was *checker
			if old != nil {
				was = old.checkers[ep.Addr]
			}
			if was != nil && reflect.DeepEqual(was.spec, c.HealthCheck) {
				was.target.Store(c)
				cc.checkers[ep.Addr] = was
				continue
			}
			ck := &checker{p: p, cluster: name, addr: ep.Addr, spec: c.HealthCheck, first: true,
				done: make(chan struct{}), traffic: cc.traffic}
			ck.target.Store(c)
			if was != nil {
				ck.healthy.Store(was.healthy.Load())
				ck.first = was.checks.Load() == 0
				// Rare (the check itself changed), and otherwise silent:
				// the endpoint keeps its health.
				p.log.Info("endpoint's health check changed: checking it anew", zap.String("cluster", name), zap.String("endpoint", ep.Addr),
					zap.Bool("healthy", ck.healthy.Load()), zap.Bool("traffic", cc.traffic.carried()))
			}
			ctx, cancel := context.WithCancel(context.Background())
			ck.cancel = cancel
			cc.checkers[ep.Addr] = ck
			hs.wg.Add(1)
			go func() {
				defer hs.wg.Done()
				ck.run(ctx)
			}()
		}
		next[name] = cc
	}
	hs.clusters.Store(&next)
	for name, old := range prev {
		for addr, ck := range old.checkers {
			if cc := next[name]; cc == nil || cc.checkers[addr] != ck {
				ck.cancel()
			}
		}
	}
}

// stop stops every checker and waits for them to end.
func (hs *healthChecks) stop() {
	hs.mu.Lock()
	prev := hs.current()
	hs.clusters.Store(nil)
	hs.mu.Unlock()
	for _, cc := range prev {
		for _, ck := range cc.checkers {
			ck.cancel()
		}
	}
	hs.wg.Wait()
}

// healthy reports whether an endpoint may take new connections and
// requests as far as health checks go: always, when its cluster has none;
// once its checks pass, when it has.
func (hs *healthChecks) healthy(cluster, addr string) bool {
	cc := hs.current()[cluster]
	if cc == nil {
		return true
	}
	ck := cc.checkers[addr]
	return ck != nil && ck.healthy.Load()
}

// traffic records that a cluster carries traffic, and wakes its checkers
// the first time: they have been waiting for the longer no-traffic
// interval.
func (hs *healthChecks) traffic(cluster string) {
	if cc := hs.current()[cluster]; cc != nil {
		cc.traffic.record()
	}
}

// run checks until ctx ends: at once (after the initial jitter), then
// after the interval Envoy would use.
func (ck *checker) run(ctx context.Context) {
	defer close(ck.done)
	defer func() {
		if ck.client != nil {
			ck.client.CloseIdleConnections()
		}
	}()
	used := ck.traffic.carried()
	wait := time.Duration(0)
	if j := ck.spec.InitialJitter; j > 0 {
		wait = rand.N(j)
	}
	for {
		if wait > 0 {
			var wake <-chan struct{}
			if !used {
				wake = ck.traffic.came
			}
			timer := ck.p.resil.after(wait)
			ck.idle.Store(true)
			select {
			case <-ctx.Done():
				return
			case <-timer:
			case <-wake:
			}
			ck.idle.Store(false)
		}
		if ctx.Err() != nil {
			return
		}
		if !used {
			used = ck.traffic.carried()
		}
		res := ck.check(ctx)
		if ctx.Err() != nil {
			return
		}
		ck.checks.Add(1)
		if res == checkSkipped {
			wait = min(ck.spec.Interval, 250*time.Millisecond)
			continue
		}
		wait = ck.next(ck.record(res), used)
	}
}

// record applies a check's result to the endpoint's health, as Envoy
// does: a pass resets the failures, and makes an unhealthy endpoint
// healthy after HealthyThreshold passes in a row (one, for its first
// check); a failure resets the passes, and makes a healthy endpoint
// unhealthy after UnhealthyThreshold failures in a row, or at once for a
// status that is neither expected nor retriable.
func (ck *checker) record(res checkResult) transition {
	first := ck.first
	ck.first = false
	healthy := ck.healthy.Load()
	if res == checkPassed {
		ck.numUnhealth = 0
		if healthy {
			return unchanged
		}
		ck.numHealthy++
		if first || ck.numHealthy == ck.spec.HealthyThreshold {
			ck.numHealthy = 0
			ck.healthy.Store(true)
			ck.p.log.Info("endpoint passed its health check: healthy", zap.String("cluster", ck.cluster), zap.String("endpoint", ck.addr))
			return changed
		}
		return changePending
	}
	ck.p.resil.hcFailures.WithLabelValues(ck.cluster).Inc()
	ck.numHealthy = 0
	if !healthy {
		return unchanged
	}
	ck.numUnhealth++
	if res == checkFailed || ck.numUnhealth == ck.spec.UnhealthyThreshold {
		ck.numUnhealth = 0
		ck.healthy.Store(false)
		ck.p.log.Info("endpoint failed its health check: unhealthy", zap.String("cluster", ck.cluster), zap.String("endpoint", ck.addr))
		return changed
	}
	return changePending
}

// next is the wait before the next check: Envoy's choice of interval, and
// its jitter.
func (ck *checker) next(tr transition, used bool) time.Duration {
	s := ck.spec
	healthy := ck.healthy.Load()
	var d time.Duration
	switch {
	case !used && healthy && tr != changePending:
		d = s.NoTrafficHealthyInterval
	case !used:
		d = s.NoTrafficInterval
	case !healthy && tr == changed:
		d = s.UnhealthyEdgeInterval
	case !healthy:
		d = s.UnhealthyInterval
	case tr == changed:
		d = s.HealthyEdgeInterval
	default:
		d = s.Interval
	}
	if j := time.Duration(float64(d) * float64(s.IntervalJitterPercent) / 100); j > 0 && j < maxDuration {
		d += rand.N(j)
	}
	if j := s.IntervalJitter; j > 0 {
		d += rand.N(j)
	}
	return d
}

// check runs one check, bounded by the check's timeout.
func (ck *checker) check(ctx context.Context) checkResult {
	ctx, cancel := context.WithTimeout(ctx, ck.spec.Timeout)
	defer cancel()
	if ck.spec.HTTP == nil {
		conn, err := ck.dial(ctx)
		if err != nil {
			return ck.failed(err)
		}
		conn.Close()
		ck.passed()
		return checkPassed
	}
	status, err := ck.httpCheck(ctx)
	switch {
	case err != nil:
		return ck.failed(err)
	case inRanges(ck.spec.HTTP.Expected, status):
		ck.passed()
		return checkPassed
	case inRanges(ck.spec.HTTP.Retriable, status):
		ck.p.log.Debug("health check answered a retriable status", zap.String("cluster", ck.cluster), zap.String("endpoint", ck.addr), zap.Int("status", status))
		return checkRetriable
	}
	ck.p.log.Debug("health check answered an unexpected status", zap.String("cluster", ck.cluster), zap.String("endpoint", ck.addr), zap.Int("status", status))
	return checkFailed
}

func (ck *checker) passed() {
	ck.p.resil.outliers.uneject(ck.cluster, ck.addr, ck.p.now())
}

func (ck *checker) failed(err error) checkResult {
	if errors.Is(err, errNoIdentity) {
		return checkSkipped
	}
	ck.p.log.Debug("health check failed", zap.String("cluster", ck.cluster), zap.String("endpoint", ck.addr), zap.Error(err))
	return checkNetwork
}

// addrToCheck is the endpoint's address, with AltPort when set.
func (ck *checker) addrToCheck() string {
	if ck.spec.AltPort == 0 {
		return ck.addr
	}
	host, _, err := net.SplitHostPort(ck.addr)
	if err != nil {
		return ck.addr
	}
	return net.JoinHostPort(host, strconv.Itoa(int(ck.spec.AltPort)))
}

// dial connects to the endpoint as a real upstream connection of the
// cluster would (SO_MARK, connect timeout, mTLS with SNI and the server's
// identity checked), within ctx; an HTTP check offers by ALPN the
// protocol it speaks. Checks are not counted by circuit breakers or
// outlier detection.
func (ck *checker) dial(ctx context.Context) (net.Conn, error) {
	c := ck.target.Load()
	conn, err := ck.p.endpointDialer(c, ck.addrToCheck()).DialContext(ctx, "tcp", ck.addrToCheck())
	if err != nil {
		return nil, err
	}
	if !c.TLS {
		return conn, nil
	}
	if h := ck.spec.HTTP; h != nil {
		alpn := *c
		alpn.ALPN = []string{"http/1.1"}
		if h.HTTP2 {
			alpn.ALPN = []string{"h2"}
		}
		c = &alpn
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	tc, err := ck.p.originate(ck.p.cfg.Load(), conn, c)
	if !stop() {
		err = errors.Join(err, ctx.Err())
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return tc, nil
}

// httpCheck sends the check's request and returns the response's status.
func (ck *checker) httpCheck(ctx context.Context) (int, error) {
	h := ck.spec.HTTP
	tlsUp := ck.target.Load().TLS
	if ck.client != nil && ck.clientTLS != tlsUp {
		ck.client.CloseIdleConnections()
		ck.client = nil
	}
	if ck.client == nil {
		ck.clientTLS = tlsUp
		t := &http.Transport{
			DisableKeepAlives:   !ck.spec.ReuseConnection,
			MaxIdleConnsPerHost: 1,
			Protocols:           new(http.Protocols),
		}
		dial := func(ctx context.Context, _, _ string) (net.Conn, error) { return ck.dial(ctx) }
		switch {
		case h.HTTP2 && tlsUp:
			t.Protocols.SetHTTP2(true)
			t.DialTLSContext = dial
		case h.HTTP2:
			t.Protocols.SetUnencryptedHTTP2(true)
			t.DialContext = dial
		default:
			// Over TLS too: dial returns the TLS connection, and the
			// request is written on it as on a plain one.
			t.Protocols.SetHTTP1(true)
			t.DialContext = dial
		}
		ck.client = &http.Client{Transport: t, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	scheme := "http"
	if h.HTTP2 && tlsUp {
		scheme = "https"
	}
	req, err := http.NewRequestWithContext(ctx, h.Method, scheme+"://health-check"+h.Path, nil)
	if err != nil {
		return 0, err
	}
	req.Host = h.Host
	if req.Host == "" {
		req.Host = hostHeader(ck.cluster)
	}
	req.Header.Set("User-Agent", "Envoy/HC")
	for _, a := range h.AddHeaders {
		switch {
		case a.IfAbsent && req.Header.Get(a.Key) != "":
		case a.Overwrite || a.IfAbsent:
			req.Header.Set(a.Key, a.Value)
		default:
			req.Header.Add(a.Key, a.Value)
		}
	}
	for _, k := range h.RemoveHeaders {
		req.Header.Del(k)
	}
	resp, err := ck.client.Do(req)
	if err != nil {
		return 0, err
	}
	// Drain a little, so that the connection can be reused.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode, nil
}

// hostHeader is Envoy's default host of a health check, the cluster's
// name, with the bytes a Host header may not carry (a subset cluster's
// braces) percent-encoded.
func hostHeader(name string) string {
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		if ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') || strings.IndexByte("-._~!$&'()*+,;=:", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}
