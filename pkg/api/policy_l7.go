package api

import (
	"encoding/json"
	"fmt"
	"time"
)

// TagProtocol says how an inbound's application speaks: tcp (the default),
// http, http2 or grpc. A service's protocol is the one all its inbounds
// agree on; when they disagree, it is tcp.
const TagProtocol = "ursa.io/protocol"

// Protocols an inbound may declare with TagProtocol.
const (
	ProtocolTCP   = "tcp"
	ProtocolHTTP  = "http"
	ProtocolHTTP2 = "http2"
	ProtocolGRPC  = "grpc"
)

// IsHTTP reports whether a protocol is one of the HTTP family, which
// sidecars proxy at L7.
func IsHTTP(protocol string) bool {
	return protocol == ProtocolHTTP || protocol == ProtocolHTTP2 || protocol == ProtocolGRPC
}

// Duration is a time.Duration written as Go writes one: "300ms", "2s", "1h".
type Duration time.Duration

// D returns d as a time.Duration; a nil Duration is 0.
func (d *Duration) D() time.Duration {
	if d == nil {
		return 0
	}
	return time.Duration(*d)
}

// Dur makes a *Duration, for literals.
func Dur(d time.Duration) *Duration { x := Duration(d); return &x }

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "300ms" and the like. A number is refused: it would
// be ambiguous (seconds? nanoseconds?).
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration is a string such as \"300ms\" or \"2s\", not %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration (write it like \"300ms\", \"2s\" or \"1h\")", s)
	}
	*d = Duration(v)
	return nil
}

// HTTPRoute is one L7 rule of a TrafficRoute: requests that match go to its
// split (the route's own split when it has none), with its header changes.
type HTTPRoute struct {
	Match  HTTPMatch   `json:"match"`
	Split  []Split     `json:"split,omitempty"`
	Modify *HTTPModify `json:"modify,omitempty"`
}

// HTTPMatch matches a request on all of what it sets.
type HTTPMatch struct {
	// Path sets exactly one of Exact, Prefix or Regex.
	Path   *StringMatch `json:"path,omitempty"`
	Method string       `json:"method,omitempty"`
	// Headers maps a header name to how its value must match.
	Headers map[string]StringMatch `json:"headers,omitempty"`
}

// StringMatch matches a string by exactly one of its fields. Present (for
// headers only) matches a header that is there, whatever its value.
// Regexes are RE2, matching the whole string.
type StringMatch struct {
	Exact   string `json:"exact,omitempty"`
	Prefix  string `json:"prefix,omitempty"`
	Regex   string `json:"regex,omitempty"`
	Present bool   `json:"present,omitempty"`
}

// HTTPModify changes the requests a route sends upstream (their path,
// Host and headers) and the headers of the responses it returns.
type HTTPModify struct {
	// Path rewrites the path the rule's match names.
	Path *PathModify `json:"path,omitempty"`
	// Host, when set, is the requests' Host (:authority) upstream.
	Host            string        `json:"host,omitempty"`
	RequestHeaders  *HeaderModify `json:"requestHeaders,omitempty"`
	ResponseHeaders *HeaderModify `json:"responseHeaders,omitempty"`
}

// PathModify rewrites a request's path: ReplacePrefix takes the place of
// the prefix (or the exact path) the rule's match.path names, the rest of
// the path and the query kept. With match.path.prefix /api/ and
// replacePrefix /v2/, /api/items?x=1 goes upstream as /v2/items?x=1.
type PathModify struct {
	ReplacePrefix string `json:"replacePrefix"`
}

// HeaderModify sets headers (replacing any value) and removes others.
type HeaderModify struct {
	Set    map[string]string `json:"set,omitempty"`
	Remove []string          `json:"remove,omitempty"`
}

// Timeout bounds connections and requests from sources to destinations.
type Timeout struct {
	Meta
	Spec TimeoutSpec `json:"spec"`
}

// TimeoutSpec is the body of a Timeout.
type TimeoutSpec struct {
	Sources      []Selector `json:"sources"`
	Destinations []Selector `json:"destinations"`
	// ConnectTimeout bounds a new upstream connection (default 5 s).
	ConnectTimeout *Duration     `json:"connectTimeout,omitempty"`
	TCP            *TCPTimeouts  `json:"tcp,omitempty"`
	HTTP           *HTTPTimeouts `json:"http,omitempty"`
}

// TCPTimeouts are the timeouts of TCP services.
type TCPTimeouts struct {
	// IdleTimeout closes a connection with no bytes either way for this long
	// (default 1 h: what Envoy applies to a tcp_proxy without one).
	IdleTimeout *Duration `json:"idleTimeout,omitempty"`
}

// HTTPTimeouts are the timeouts of HTTP-family services.
type HTTPTimeouts struct {
	// RequestTimeout bounds a whole request, retries included (default 15 s
	// for http and http2; none for grpc).
	RequestTimeout *Duration `json:"requestTimeout,omitempty"`
	// IdleTimeout closes an upstream connection without requests for this
	// long, and a request stream without activity.
	IdleTimeout *Duration `json:"idleTimeout,omitempty"`
	// PerTryTimeout bounds each attempt when no Retry sets its own.
	PerTryTimeout *Duration `json:"perTryTimeout,omitempty"`
}

// Retry retries failed requests from sources to destinations.
type Retry struct {
	Meta
	Spec RetrySpec `json:"spec"`
}

// RetrySpec is the body of a Retry. HTTP applies to http and http2
// services, GRPC to grpc ones (and proxyless gRPC clients).
type RetrySpec struct {
	Sources      []Selector `json:"sources"`
	Destinations []Selector `json:"destinations"`
	HTTP         *HTTPRetry `json:"http,omitempty"`
	GRPC         *HTTPRetry `json:"grpc,omitempty"`
}

// HTTPRetry says when and how often a request is tried again.
type HTTPRetry struct {
	// NumRetries is how many times a request is retried (default 1).
	NumRetries    int       `json:"numRetries,omitempty"`
	PerTryTimeout *Duration `json:"perTryTimeout,omitempty"`
	// RetryOn lists the failures that are retried: for http, 5xx,
	// gateway-error, reset, connect-failure, retriable-4xx, refused-stream,
	// retriable-status-codes; for grpc, cancelled, deadline-exceeded,
	// internal, resource-exhausted, unavailable (and the http ones).
	RetryOn []string `json:"retryOn,omitempty"`
	// RetriableStatusCodes are retried with retriable-status-codes.
	RetriableStatusCodes []int        `json:"retriableStatusCodes,omitempty"`
	BackOff              *BackOff     `json:"backOff,omitempty"`
	Budget               *RetryBudget `json:"budget,omitempty"`
}

// BackOff is a jittered exponential back-off between retries.
type BackOff struct {
	Base *Duration `json:"base,omitempty"`
	Max  *Duration `json:"max,omitempty"`
}

// RetryBudget caps retries at a share of the requests in flight.
type RetryBudget struct {
	// Percent of active requests that may be retries (default 20).
	Percent int `json:"percent,omitempty"`
	// MinConcurrency retries are always allowed (default 3).
	MinConcurrency int `json:"minConcurrency,omitempty"`
}

// CircuitBreaker limits what sources send to destinations, and ejects
// instances that keep failing.
type CircuitBreaker struct {
	Meta
	Spec CircuitBreakerSpec `json:"spec"`
}

// CircuitBreakerSpec is the body of a CircuitBreaker.
type CircuitBreakerSpec struct {
	Sources      []Selector         `json:"sources"`
	Destinations []Selector         `json:"destinations"`
	Thresholds   *BreakerThresholds `json:"thresholds,omitempty"`
	Outlier      *OutlierDetection  `json:"outlierDetection,omitempty"`
}

// BreakerThresholds are per-cluster limits; a request or connection over a
// limit fails at once (503) instead of queueing. Zero leaves a limit unset.
type BreakerThresholds struct {
	MaxConnections     int `json:"maxConnections,omitempty"`
	MaxPendingRequests int `json:"maxPendingRequests,omitempty"`
	MaxRequests        int `json:"maxRequests,omitempty"`
	MaxRetries         int `json:"maxRetries,omitempty"`
}

// OutlierDetection ejects an instance after consecutive failures, or
// when, over an interval, it fails far more than the others.
type OutlierDetection struct {
	// Consecutive5xx failures eject an instance (default 5).
	Consecutive5xx int `json:"consecutive5xx,omitempty"`
	// Interval between ejection sweeps (default 10 s).
	Interval *Duration `json:"interval,omitempty"`
	// BaseEjectionTime, times the number of ejections, is how long an
	// instance stays out (default 30 s).
	BaseEjectionTime *Duration `json:"baseEjectionTime,omitempty"`
	// MaxEjectionPercent of a cluster's instances may be out (default 10).
	MaxEjectionPercent int `json:"maxEjectionPercent,omitempty"`
	// SuccessRate ejects, at each interval, an instance whose success
	// rate over it is more than StandardDeviationFactor standard
	// deviations below the mean of the instances with RequestVolume
	// requests in it, when there are MinimumHosts such (defaults 1.9,
	// 100 requests, 5 instances, Envoy's). Off unless set.
	SuccessRate *SuccessRateDetection `json:"successRate,omitempty"`
	// FailurePercentage ejects, at each interval, an instance whose
	// requests in it failed Threshold percent or more, among the
	// instances with RequestVolume requests, when there are MinimumHosts
	// such (defaults 85 %, 50 requests, 5 instances). Off unless set.
	FailurePercentage *FailurePercentageDetection `json:"failurePercentage,omitempty"`
}

// SuccessRateDetection is OutlierDetection's success-rate detector.
type SuccessRateDetection struct {
	MinimumHosts            int     `json:"minimumHosts,omitempty"`
	RequestVolume           int     `json:"requestVolume,omitempty"`
	StandardDeviationFactor float64 `json:"standardDeviationFactor,omitempty"`
}

// FailurePercentageDetection is OutlierDetection's failure-percentage
// detector.
type FailurePercentageDetection struct {
	MinimumHosts  int `json:"minimumHosts,omitempty"`
	RequestVolume int `json:"requestVolume,omitempty"`
	Threshold     int `json:"threshold,omitempty"`
}

// HealthCheck has sources actively check destinations' instances; an
// instance that fails leaves the load balancing, and when a zone has none
// healthy left, failover moves on to the next.
type HealthCheck struct {
	Meta
	Spec HealthCheckSpec `json:"spec"`
}

// HealthCheckSpec is the body of a HealthCheck. It checks with HTTP when
// HTTP is set, else by opening a TCP connection.
type HealthCheckSpec struct {
	Sources      []Selector `json:"sources"`
	Destinations []Selector `json:"destinations"`
	// Interval between checks (default 10 s); Timeout of one check
	// (default 2 s).
	Interval *Duration `json:"interval,omitempty"`
	Timeout  *Duration `json:"timeout,omitempty"`
	// UnhealthyThreshold failed checks make an instance unhealthy
	// (default 3), HealthyThreshold passed ones healthy again (default 1).
	UnhealthyThreshold int              `json:"unhealthyThreshold,omitempty"`
	HealthyThreshold   int              `json:"healthyThreshold,omitempty"`
	HTTP               *HTTPHealthCheck `json:"http,omitempty"`
	// HealthyPanicThreshold is the percentage of a zone's instances
	// (a priority's) that must be healthy (neither failing checks nor
	// ejected by outlier detection) for the unhealthy ones to be left
	// out (default 50, Envoy's; 0: always). Below it, when the other
	// zones cannot take the rest of the traffic either, the zone's
	// traffic goes to all its instances, healthy or not: the proxies
	// do not pile it on the few checks still pass.
	HealthyPanicThreshold *float64 `json:"healthyPanicThreshold,omitempty"`
}

// HTTPHealthCheck is a GET of Path that must answer one of
// ExpectedStatuses (default 200).
type HTTPHealthCheck struct {
	Path             string `json:"path"`
	ExpectedStatuses []int  `json:"expectedStatuses,omitempty"`
}

// FaultInjection delays or fails some of the requests from sources to
// destinations, to test how callers cope.
type FaultInjection struct {
	Meta
	Spec FaultInjectionSpec `json:"spec"`
}

// FaultInjectionSpec is the body of a FaultInjection.
type FaultInjectionSpec struct {
	Sources      []Selector  `json:"sources"`
	Destinations []Selector  `json:"destinations"`
	Delay        *FaultDelay `json:"delay,omitempty"`
	Abort        *FaultAbort `json:"abort,omitempty"`
}

// FaultDelay delays Percentage of requests by Value.
type FaultDelay struct {
	Percentage float64   `json:"percentage"`
	Value      *Duration `json:"value"`
}

// FaultAbort answers Percentage of requests with HTTPStatus.
type FaultAbort struct {
	Percentage float64 `json:"percentage"`
	HTTPStatus int     `json:"httpStatus"`
}

// TrafficLog writes an access log line for every request (or TCP
// connection) from sources to destinations.
type TrafficLog struct {
	Meta
	Spec TrafficLogSpec `json:"spec"`
}

// TrafficLogSpec is the body of a TrafficLog.
type TrafficLogSpec struct {
	Sources      []Selector `json:"sources"`
	Destinations []Selector `json:"destinations"`
	Backend      LogBackend `json:"backend"`
	// Format is an Envoy access log format ("%START_TIME% %REQ(:PATH)%
	// %RESPONSE_CODE%"); empty: Envoy's default.
	Format string `json:"format,omitempty"`
}

// LogBackend is where log lines go: exactly one of its fields.
type LogBackend struct {
	File   *FileLog `json:"file,omitempty"`
	Stdout bool     `json:"stdout,omitempty"`
	// TCP sends the lines to a collector that speaks the Fluent Forward
	// protocol (Fluentd, Fluent Bit, Vector) at Address (host:port).
	TCP *TCPLog `json:"tcp,omitempty"`
}

// FileLog appends lines to Path on the proxy's host.
type FileLog struct {
	Path string `json:"path"`
}

// TCPLog is a log collector's address.
type TCPLog struct {
	Address string `json:"address"`
}

// TrafficTrace sends spans of the requests from sources to destinations to
// a tracing backend.
type TrafficTrace struct {
	Meta
	Spec TrafficTraceSpec `json:"spec"`
}

// TrafficTraceSpec is the body of a TrafficTrace.
type TrafficTraceSpec struct {
	Sources      []Selector   `json:"sources"`
	Destinations []Selector   `json:"destinations"`
	Backend      TraceBackend `json:"backend"`
	// Sampling is the percentage of new traces recorded (default 100).
	Sampling *float64 `json:"sampling,omitempty"`
}

// TraceBackend is exactly one of its fields.
type TraceBackend struct {
	// OpenTelemetry exports spans over OTLP/gRPC to Address (host:port).
	OpenTelemetry *TraceCollector `json:"openTelemetry,omitempty"`
	// Zipkin posts spans (JSON v2) to Address (host:port), at /api/v2/spans.
	Zipkin *TraceCollector `json:"zipkin,omitempty"`
}

// TraceCollector is a collector's address.
type TraceCollector struct {
	Address string `json:"address"`
}

// Policy is what every source/destination policy has: the selectors that
// decide which (caller, destination) pairs it applies to.
type Policy interface {
	Resource
	Selectors() (sources, destinations []Selector)
}

// Selectors returns the policy's sources and destinations.
func (t *Timeout) Selectors() ([]Selector, []Selector) { return t.Spec.Sources, t.Spec.Destinations }

// Selectors returns the policy's sources and destinations.
func (r *Retry) Selectors() ([]Selector, []Selector) { return r.Spec.Sources, r.Spec.Destinations }

// Selectors returns the policy's sources and destinations.
func (c *CircuitBreaker) Selectors() ([]Selector, []Selector) {
	return c.Spec.Sources, c.Spec.Destinations
}

// Selectors returns the policy's sources and destinations.
func (h *HealthCheck) Selectors() ([]Selector, []Selector) {
	return h.Spec.Sources, h.Spec.Destinations
}

// Selectors returns the policy's sources and destinations.
func (f *FaultInjection) Selectors() ([]Selector, []Selector) {
	return f.Spec.Sources, f.Spec.Destinations
}

// Selectors returns the policy's sources and destinations.
func (l *TrafficLog) Selectors() ([]Selector, []Selector) { return l.Spec.Sources, l.Spec.Destinations }

// Selectors returns the policy's sources and destinations.
func (t *TrafficTrace) Selectors() ([]Selector, []Selector) {
	return t.Spec.Sources, t.Spec.Destinations
}

// Selectors returns the policy's sources and destinations.
func (p *TrafficPermission) Selectors() ([]Selector, []Selector) {
	return p.Spec.Sources, p.Spec.Destinations
}

// L7PolicyTypes are the source/destination policies that shape a
// sidecar's connections and requests, in the order the registry lists them.
func L7PolicyTypes() []string {
	return []string{"Timeout", "Retry", "CircuitBreaker", "HealthCheck", "FaultInjection", "TrafficLog", "TrafficTrace"}
}
