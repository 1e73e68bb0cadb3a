package proxy

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/google/uuid"
	"golang.org/x/net/http/httpguts"
)

// hcmHeaders is what an HTTP connection manager and its router do to the
// headers of every request and response on their own, as Envoy's do
// (ConnectionManagerUtility, the router's x-envoy-* headers), under the
// configuration the built-in proxy accepts: use_remote_address off, no
// trusted hops, no original IP detection. Envoy then counts no request as
// internal (one from an internal address is told by X-Forwarded-For alone,
// which it neither trusts nor appends to), so none is an edge request either.
type hcmHeaders struct {
	// requestID is generate_request_id (Envoy's default: on): a request
	// without an X-Request-Id gets a random UUID; one with keeps it.
	requestID bool
	// server is what the Server header of a response becomes:
	// server_header_transformation with server_name.
	server     hcm.HttpConnectionManager_ServerHeaderTransformation
	serverName string
	// envoyHeaders is the router's !suppress_envoy_headers: upstream
	// requests carry X-Envoy-Expected-Rq-Timeout-Ms (and
	// X-Envoy-Original-Path when rewritten), responses from upstream
	// X-Envoy-Upstream-Service-Time.
	envoyHeaders bool
}

// translateHCMHeaders reads the HCM fields hcmHeaders is made of; the
// router's suppress_envoy_headers is read with the router.
func translateHCMHeaders(h *hcm.HttpConnectionManager) (hcmHeaders, error) {
	out := hcmHeaders{requestID: true, server: h.GetServerHeaderTransformation(), serverName: "envoy", envoyHeaders: true}
	if g := h.GetGenerateRequestId(); g != nil {
		out.requestID = g.GetValue()
	}
	if n := h.GetServerName(); n != "" {
		if !httpguts.ValidHeaderFieldValue(n) {
			return out, fmt.Errorf("server_name %q is not a valid header value", n)
		}
		out.serverName = n
	}
	switch out.server {
	case hcm.HttpConnectionManager_OVERWRITE, hcm.HttpConnectionManager_APPEND_IF_ABSENT, hcm.HttpConnectionManager_PASS_THROUGH:
	default:
		return out, fmt.Errorf("server_header_transformation %s is not supported", out.server)
	}
	return out, nil
}

// request is what the HCM does to a request's header before its filters
// and routes see it; tls says whether it came over TLS.
func (hh *hcmHeaders) request(h http.Header, tls bool) {
	if _, ok := h["X-Forwarded-Proto"]; !ok {
		if tls {
			h["X-Forwarded-Proto"] = []string{"https"}
		} else {
			h["X-Forwarded-Proto"] = []string{"http"}
		}
	}
	// Envoy's cleanInternalHeaders, for a request that is not internal:
	// a caller does not steer the mesh's retries and timeouts.
	for k := range h {
		if isEnvoyControlHeader(k) {
			delete(h, k)
		}
	}
	if _, ok := h["X-Request-Id"]; !ok && hh.requestID {
		h["X-Request-Id"] = []string{uuid.NewString()}
	}
}

// isEnvoyControlHeader reports whether k (canonical) is one of the
// x-envoy-* request headers that steer Envoy's router, which its HCM takes
// out of every request not internal.
func isEnvoyControlHeader(k string) bool {
	const prefix = "X-Envoy-"
	if len(k) <= len(prefix) || k[:len(prefix)] != prefix {
		return false
	}
	switch k[len(prefix):] {
	case "Retriable-Status-Codes", "Retriable-Header-Names", "Retry-On", "Retry-Grpc-On", "Max-Retries",
		"Upstream-Alt-Stat-Name", "Upstream-Rq-Timeout-Ms", "Upstream-Rq-Per-Try-Timeout-Ms",
		"Upstream-Rq-Timeout-Alt-Response", "Expected-Rq-Timeout-Ms", "Force-Trace", "Ip-Tags",
		"Original-Url", "Hedge-On-Per-Try-Timeout":
		return true
	}
	return false
}

// upstream is what the router adds to the upstream request r of route rt
// before its path is rewritten.
func (hh *hcmHeaders) upstream(r *http.Request, rt *HTTPRoute) {
	if !hh.envoyHeaders {
		return
	}
	if rt.expectedTimeout != "" {
		r.Header["X-Envoy-Expected-Rq-Timeout-Ms"] = []string{rt.expectedTimeout}
	}
	if rt.PrefixRewrite != "" {
		r.Header["X-Envoy-Original-Path"] = []string{r.URL.RequestURI()}
	}
}

// expectedTimeout is how long the router gives an attempt of rt: the
// per-try timeout when one is set below the route's, else the route's (0:
// none). translateRoute writes it down once.
func expectedTimeout(rt *HTTPRoute) time.Duration {
	if rt.Retry != nil && rt.Retry.perTry > 0 && (rt.Timeout <= 0 || rt.Retry.perTry < rt.Timeout) {
		return rt.Retry.perTry
	}
	return max(rt.Timeout, 0)
}

// upstreamResponse is what the router adds to a response from upstream,
// before the route's own response header changes: the time since the
// request came (start).
func (hh *hcmHeaders) upstreamResponse(h http.Header, start time.Time) {
	if hh.envoyHeaders {
		h["X-Envoy-Upstream-Service-Time"] = []string{strconv.FormatInt(time.Since(start).Milliseconds(), 10)}
	}
}

// response is what the HCM does to the header of every response it sends
// downstream, the proxy's own replies included.
func (hh *hcmHeaders) response(h http.Header) {
	switch hh.server {
	case hcm.HttpConnectionManager_OVERWRITE:
		h["Server"] = []string{hh.serverName}
	case hcm.HttpConnectionManager_APPEND_IF_ABSENT:
		if _, ok := h["Server"]; !ok {
			h["Server"] = []string{hh.serverName}
		}
	}
}
