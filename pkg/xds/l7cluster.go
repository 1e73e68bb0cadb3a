package xds

import (
	"math"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/api"
)

// Defaults of the cluster policies, written out so that every proxy reads
// the same values (they are Envoy's and the API's documented ones).
const (
	DefaultConnectTimeout     = 5 * time.Second
	defaultConsecutive5xx     = 5
	defaultOutlierInterval    = 10 * time.Second
	defaultBaseEjectionTime   = 30 * time.Second
	defaultMaxEjectionPercent = 10
	// success rate and failure percentage
	defaultRateMinimumHosts        = 5
	defaultSuccessRateVolume       = 100
	defaultSuccessRateStdevFactor  = 1.9
	defaultFailurePercentVolume    = 50
	defaultFailurePercentThreshold = 85
	defaultHealthInterval          = 10 * time.Second
	defaultHealthTimeout           = 2 * time.Second
	defaultUnhealthyThreshold      = 3
	defaultHealthyThreshold        = 1
	defaultRetryBudgetPercent      = 20
	defaultRetryMinConcurrency     = 3
)

// setHTTPProtocol gives a cluster of an HTTP-family service the protocol
// its upstreams speak: HTTP/2 for http2 and grpc, HTTP/1.1 for http; idle,
// when set, closes connections without requests for that long.
func setHTTPProtocol(c *cluster.Cluster, protocol string, idle *api.Duration) {
	opts := &httpopts.HttpProtocolOptions{}
	explicit := &httpopts.HttpProtocolOptions_ExplicitHttpConfig{}
	if protocol == api.ProtocolHTTP {
		explicit.ProtocolConfig = &httpopts.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &core.Http1ProtocolOptions{}}
	} else {
		explicit.ProtocolConfig = &httpopts.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}}
	}
	opts.UpstreamProtocolOptions = &httpopts.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: explicit}
	if idle != nil {
		opts.CommonHttpProtocolOptions = &core.HttpProtocolOptions{IdleTimeout: durationpb.New(idle.D())}
	}
	if c.TypedExtensionProtocolOptions == nil {
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{}
	}
	c.TypedExtensionProtocolOptions[httpProtocolsName] = MustAny(opts)
}

// applyClusterPolicies sets what the pair's policies say of a cluster of a
// service speaking protocol: the connect timeout (5 s by default), the
// HTTP protocol options, circuit breakers (with the Retry's budget),
// outlier detection and health checks (with the HealthCheck's panic
// threshold). TCP services get all but the HTTP
// options.
func applyClusterPolicies(c *cluster.Cluster, protocol string, pp pairPolicies) {
	c.ConnectTimeout = durationpb.New(DefaultConnectTimeout)
	var idle *api.Duration
	if t := pp.timeout; t != nil {
		if t.Spec.ConnectTimeout != nil {
			c.ConnectTimeout = durationpb.New(t.Spec.ConnectTimeout.D())
		}
		if t.Spec.HTTP != nil {
			idle = t.Spec.HTTP.IdleTimeout
		}
	}
	if api.IsHTTP(protocol) {
		setHTTPProtocol(c, protocol, idle)
	}
	c.CircuitBreakers = circuitBreakers(protocol, pp)
	if b := pp.breaker; b != nil && b.Spec.Outlier != nil {
		c.OutlierDetection = outlierDetection(b.Spec.Outlier)
	}
	if h := pp.health; h != nil {
		c.HealthChecks = []*core.HealthCheck{healthCheck(h, protocol)}
		if t := h.Spec.HealthyPanicThreshold; t != nil {
			c.CommonLbConfig = &cluster.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{Value: *t}}
		}
	}
}

// circuitBreakers are the CircuitBreaker's thresholds, only those it
// sets, and the Retry's budget; nil when there are none.
func circuitBreakers(protocol string, pp pairPolicies) *cluster.CircuitBreakers {
	th := &cluster.CircuitBreakers_Thresholds{Priority: core.RoutingPriority_DEFAULT}
	set := false
	u32 := func(n int) *wrapperspb.UInt32Value {
		if n <= 0 {
			return nil
		}
		set = true
		return wrapperspb.UInt32(uint32(n))
	}
	if b := pp.breaker; b != nil && b.Spec.Thresholds != nil {
		t := b.Spec.Thresholds
		th.MaxConnections = u32(t.MaxConnections)
		th.MaxPendingRequests = u32(t.MaxPendingRequests)
		th.MaxRequests = u32(t.MaxRequests)
		th.MaxRetries = u32(t.MaxRetries)
	}
	if r := pp.retry; r != nil && api.IsHTTP(protocol) {
		retry := r.Spec.HTTP
		if protocol == api.ProtocolGRPC {
			retry = r.Spec.GRPC
		}
		if retry != nil && retry.Budget != nil {
			percent, min := retry.Budget.Percent, retry.Budget.MinConcurrency
			if percent == 0 {
				percent = defaultRetryBudgetPercent
			}
			if min == 0 {
				min = defaultRetryMinConcurrency
			}
			th.RetryBudget = &cluster.CircuitBreakers_Thresholds_RetryBudget{
				BudgetPercent:       &typev3.Percent{Value: float64(percent)},
				MinRetryConcurrency: wrapperspb.UInt32(uint32(min)),
			}
			set = true
		}
	}
	if !set {
		return nil
	}
	return &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{th}}
}

func outlierDetection(o *api.OutlierDetection) *cluster.OutlierDetection {
	or := func(n, def int) *wrapperspb.UInt32Value {
		if n == 0 {
			n = def
		}
		return wrapperspb.UInt32(uint32(n))
	}
	dur := func(d *api.Duration, def time.Duration) *durationpb.Duration {
		if d != nil {
			return durationpb.New(d.D())
		}
		return durationpb.New(def)
	}
	od := &cluster.OutlierDetection{
		Consecutive_5Xx:    or(o.Consecutive5xx, defaultConsecutive5xx),
		Interval:           dur(o.Interval, defaultOutlierInterval),
		BaseEjectionTime:   dur(o.BaseEjectionTime, defaultBaseEjectionTime),
		MaxEjectionPercent: or(o.MaxEjectionPercent, defaultMaxEjectionPercent),
		// Without it, Envoy ejects nothing from a cluster of fewer than
		// 100/MaxEjectionPercent instances: a failing one of two would
		// stay.
		AlwaysEjectOneHost: wrapperspb.Bool(true),
	}
	// Only the detections the policy names run: Envoy would run its
	// success rate unless told not to.
	od.EnforcingSuccessRate = wrapperspb.UInt32(0)
	if sr := o.SuccessRate; sr != nil {
		factor := sr.StandardDeviationFactor
		if factor == 0 {
			factor = defaultSuccessRateStdevFactor
		}
		od.EnforcingSuccessRate = wrapperspb.UInt32(100)
		od.SuccessRateMinimumHosts = or(sr.MinimumHosts, defaultRateMinimumHosts)
		od.SuccessRateRequestVolume = or(sr.RequestVolume, defaultSuccessRateVolume)
		od.SuccessRateStdevFactor = wrapperspb.UInt32(uint32(math.Round(factor * 1000)))
	}
	if fp := o.FailurePercentage; fp != nil {
		od.EnforcingFailurePercentage = wrapperspb.UInt32(100)
		od.FailurePercentageMinimumHosts = or(fp.MinimumHosts, defaultRateMinimumHosts)
		od.FailurePercentageRequestVolume = or(fp.RequestVolume, defaultFailurePercentVolume)
		od.FailurePercentageThreshold = or(fp.Threshold, defaultFailurePercentThreshold)
	}
	return od
}

// healthCheck checks with HTTP when the HealthCheck sets http, else by
// connecting. Checks go through the cluster's transport socket: mTLS to
// the endpoint's sidecar. An HTTP check speaks the service's protocol:
// HTTP/2 for http2 and grpc (whose inbounds may serve only h2), else
// HTTP/1.1.
func healthCheck(h *api.HealthCheck, protocol string) *core.HealthCheck {
	s := h.Spec
	dur := func(d *api.Duration, def time.Duration) *durationpb.Duration {
		if d != nil {
			return durationpb.New(d.D())
		}
		return durationpb.New(def)
	}
	or := func(n, def int) *wrapperspb.UInt32Value {
		if n == 0 {
			n = def
		}
		return wrapperspb.UInt32(uint32(n))
	}
	hc := &core.HealthCheck{
		Timeout:            dur(s.Timeout, defaultHealthTimeout),
		Interval:           dur(s.Interval, defaultHealthInterval),
		UnhealthyThreshold: or(s.UnhealthyThreshold, defaultUnhealthyThreshold),
		HealthyThreshold:   or(s.HealthyThreshold, defaultHealthyThreshold),
	}
	if s.HTTP == nil {
		hc.HealthChecker = &core.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &core.HealthCheck_TcpHealthCheck{}}
		return hc
	}
	statuses := s.HTTP.ExpectedStatuses
	if len(statuses) == 0 {
		statuses = []int{200}
	}
	check := &core.HealthCheck_HttpHealthCheck{Path: s.HTTP.Path}
	if protocol == api.ProtocolHTTP2 || protocol == api.ProtocolGRPC {
		check.CodecClientType = typev3.CodecClientType_HTTP2
	}
	for _, code := range statuses {
		check.ExpectedStatuses = append(check.ExpectedStatuses, &typev3.Int64Range{Start: int64(code), End: int64(code) + 1})
	}
	hc.HealthChecker = &core.HealthCheck_HttpHealthCheck_{HttpHealthCheck: check}
	return hc
}
