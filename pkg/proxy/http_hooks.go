package proxy

import (
	"errors"
	"net/http"

	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// This file holds the HTTP engine's hook points, no-ops until the parts
// that fill them in land: cluster resilience (circuit breakers, outlier
// detection) replaces breakerFor and outcome; observability (access logs,
// tracing) replaces httpObs, translateHCMObs, logRequest and startSpan.
// Each keeps its signature, so that the engine does not change with them.

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

// httpObs is what an HCM's access_log and tracing say to do.
type httpObs struct{}

// translateHCMObs reads an HCM's access_log and tracing into chain.Obs;
// until the built-in proxy implements them it NACKs them.
func translateHCMObs(h *hcm.HttpConnectionManager, chain *HTTPChain) error {
	if len(h.GetAccessLog()) > 0 {
		return errors.New("access_log is not supported by the built-in proxy yet")
	}
	if h.GetTracing() != nil {
		return errors.New("tracing is not supported by the built-in proxy yet")
	}
	return nil
}

// logRequest is called once per request, when it has ended, with what it
// did (ri.Chain.Obs says where to log it).
func (p *Proxy) logRequest(ri *requestInfo) {}

// startSpan starts the span of a request's upstream exchange, before its
// first attempt: in holds the downstream request's headers (an incoming
// traceparent), out the upstream request's, which it may set (the
// traceparent to propagate). The returned end is called once, when the
// exchange has ended and ri is complete.
func (p *Proxy) startSpan(ri *requestInfo, in, out http.Header) (end func()) { return func() {} }
