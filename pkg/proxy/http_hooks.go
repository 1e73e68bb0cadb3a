package proxy

// This file holds the HTTP engine's hook points, no-ops until the parts
// that fill them in land: cluster resilience (circuit breakers, outlier
// detection) replaces breakerFor and outcome. Each keeps its signature, so
// that the engine does not change with them. Observability's (httpObs,
// translateHCMObs, logRequest, startSpan) are in accesslog_http.go.

// limitKind is what a circuit breaker slot is for.
type limitKind int

// The kinds of circuit breaker slots the HTTP engine asks for.
const (
	// limitRequest is held for the whole of a request to the cluster.
	limitRequest limitKind = iota
	// limitRetry is held for the whole of a retry (an attempt after the
	// first).
	limitRetry
	// limitConnection is held by each upstream connection while it is
	// open.
	limitConnection
)

// breaker is a cluster's circuit breaker.
type breaker interface {
	// acquire takes a slot of kind; false when the cluster's threshold
	// for it is reached (overflow: 503 UO). release frees the slot; it is
	// called exactly once when acquire says true.
	acquire(kind limitKind) (release func(), ok bool)
}

// noBreaker admits everything.
type noBreaker struct{}

func (noBreaker) acquire(limitKind) (func(), bool) { return func() {}, true }

// breakerFor is cluster c's circuit breaker.
func (p *Proxy) breakerFor(c *Cluster) breaker { return noBreaker{} }

// outcome reports one attempt of a request to endpoint ep of cluster c:
// the response's status, or the error that left it without one (err is
// then a *connectError when no connection could be made). Outlier
// detection counts these.
func (p *Proxy) outcome(c *Cluster, ep Endpoint, status int, err error) {}
