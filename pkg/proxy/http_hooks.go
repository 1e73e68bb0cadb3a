package proxy

import (
	"errors"
	"net/http"

	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// This file holds the HTTP engine's hook points, no-ops until the parts
// that fill them in land: observability (access logs, tracing) replaces
// httpObs, translateHCMObs, logRequest and startSpan. Cluster resilience
// filled in breakerFor (breaker.go) and outcome (outlier.go).
// Each keeps its signature, so that the engine does not change with them.

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
