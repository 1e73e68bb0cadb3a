package proxy

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/google/uuid"
	"golang.org/x/net/http/httpguts"
)

// hcmHeaders is what an HTTP connection manager and its router do to the
// headers of every request and response on their own, as Envoy's do
// (ConnectionManagerUtility, the router's x-envoy-* headers), under the
// configuration the built-in proxy accepts: use_remote_address off, no
// trusted hops, no internal_address_config. Envoy then counts no request
// as internal (an address it would judge is trusted only by an
// internal_address_config, which by default trusts none), so none is an
// edge request either.
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
	// X-Envoy-Original-Path or -Host when rewritten), responses from
	// upstream X-Envoy-Upstream-Service-Time, a circuit breaker's 503
	// X-Envoy-Overloaded.
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
	// a caller does not steer the mesh's retries and timeouts, nor says it
	// is internal (Envoy takes that out of every request first). And a
	// caller's own X-Forwarded-Client-Cert never reaches the application:
	// one that trusts it (written for Envoy, whose default is SANITIZE)
	// would take the claimed identity.
	for k := range h {
		if isEnvoyControlHeader(k) || k == "X-Forwarded-Client-Cert" {
			delete(h, k)
		}
	}
	// Envoy's Referer sanitising: more than one, or one that is not a
	// URI reference as isValidReferer says, is taken out.
	if vs, ok := h["Referer"]; ok && (len(vs) != 1 || !validReferer(vs[0])) {
		delete(h, "Referer")
	}
	if _, ok := h["X-Request-Id"]; !ok && hh.requestID {
		h["X-Request-Id"] = []string{newRequestID()}
	}
}

// validReferer is Envoy's isValidRefererValue (with its default,
// http_allow_partial_urls_in_referer): an absolute URL (a scheme of
// letters, "://", a host) without user info or fragment, or else a
// relative reference whose first segment has no ':' and whose bytes are
// all those a query may hold (RFC 3986's pchar, '/' and '?'; so no
// fragment). Envoy reads the absolute form with http_parser, whose
// grammar absoluteReferer follows.
func validReferer(v string) bool {
	if ok, clean := absoluteReferer(v); ok {
		return clean
	}
	seenSlash := false
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == ':':
			if !seenSlash {
				return false
			}
		case c == '/':
			seenSlash = true
		case !queryByte(c):
			return false
		}
	}
	return true
}

// absoluteReferer reports whether v parses as an absolute URL the way
// http_parser reads one (letters, "://", an authority with a host, then a
// path, query and fragment of visible bytes), and if so whether it is
// free of user info and fragment.
func absoluteReferer(v string) (absolute, clean bool) {
	i := 0
	for i < len(v) && ('a' <= v[i]|0x20 && v[i]|0x20 <= 'z') {
		i++
	}
	if i == 0 || !strings.HasPrefix(v[i:], "://") {
		return false, false
	}
	rest := v[i+3:]
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority, tail := rest[:end], rest[end:]
	userinfo := false
	if at := strings.LastIndexByte(authority, '@'); at >= 0 {
		userinfo, authority = true, authority[at+1:]
	}
	if !validURLHost(authority) {
		return false, false
	}
	for i := 0; i < len(tail); i++ {
		if c := tail[i]; c <= ' ' || c == 0x7f {
			return false, false
		}
	}
	return true, !userinfo && !strings.Contains(tail, "#")
}

// validURLHost reports whether a is a host, and maybe ":port", as
// http_parser takes one (not strict): a bracketed IPv6 address, or a name
// of letters, digits, '.', '-' and '_'; a port, when there is a ':', of
// one to five digits up to 65535.
func validURLHost(a string) bool {
	host, port, hasPort := a, "", false
	if strings.HasPrefix(a, "[") {
		end := strings.IndexByte(a, ']')
		if end < 0 {
			return false
		}
		host = a[1:end]
		if host == "" || strings.Trim(host, "0123456789abcdefABCDEF:.") != "" {
			return false
		}
		switch rest := a[end+1:]; {
		case rest == "":
		case rest[0] == ':':
			port, hasPort = rest[1:], true
		default:
			return false
		}
	} else {
		if colon := strings.IndexByte(a, ':'); colon >= 0 {
			host, port, hasPort = a[:colon], a[colon+1:], true
		}
		if host == "" || strings.IndexFunc(host, func(r rune) bool {
			return !('a' <= r|0x20 && r|0x20 <= 'z' || '0' <= r && r <= '9' || r == '.' || r == '-' || r == '_')
		}) >= 0 {
			return false
		}
	}
	if !hasPort {
		return true
	}
	n, err := strconv.ParseUint(port, 10, 16)
	return err == nil && len(port) <= 5 && n <= 65535
}

// queryByte is a byte a URI's query may hold: RFC 3986's pchar (unreserved,
// '%', sub-delims, ':', '@'), '/' and '?' (Envoy's
// kUriQueryAndFragmentCharTable).
func queryByte(c byte) bool {
	return 'a' <= c|0x20 && c|0x20 <= 'z' || '0' <= c && c <= '9' || strings.IndexByte("-._~%!$&'()*+,;=:@/?", c) >= 0
}

// newRequestID is a random (version 4) UUID from the runtime's generator
// (ChaCha8, seeded by the system), as Envoy makes its request IDs from its
// own generator rather than a system call each: an ID is to be unique,
// not secret.
func newRequestID() string {
	var u uuid.UUID
	binary.LittleEndian.PutUint64(u[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(u[8:], rand.Uint64())
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	return u.String()
}

// isEnvoyControlHeader reports whether k (canonical) is one of the
// x-envoy-* request headers that steer Envoy's router, which its HCM takes
// out of every request not internal, or X-Envoy-Internal.
func isEnvoyControlHeader(k string) bool {
	const prefix = "X-Envoy-"
	if len(k) <= len(prefix) || k[:len(prefix)] != prefix {
		return false
	}
	switch k[len(prefix):] {
	case "Internal", "Retriable-Status-Codes", "Retriable-Header-Names", "Retry-On", "Retry-Grpc-On", "Max-Retries",
		"Upstream-Alt-Stat-Name", "Upstream-Rq-Timeout-Ms", "Upstream-Rq-Per-Try-Timeout-Ms",
		"Upstream-Rq-Timeout-Alt-Response", "Expected-Rq-Timeout-Ms", "Force-Trace", "Ip-Tags",
		"Original-Url", "Hedge-On-Per-Try-Timeout":
		return true
	}
	return false
}

// timeout is what the router adds to the upstream request's header h of
// route rt before the route's own header changes (Envoy's finalTimeout):
// the time the first attempt has.
func (hh *hcmHeaders) timeout(h http.Header, rt *HTTPRoute) {
	if hh.envoyHeaders && rt.expectedTimeout != "" {
		h["X-Envoy-Expected-Rq-Timeout-Ms"] = []string{rt.expectedTimeout}
	}
}

// upstream is what the router adds to the upstream request r of route rt
// after the route's own header changes and before its rewrites (Envoy's
// finalizeRequestHeaders): the path and Host it rewrites.
func (hh *hcmHeaders) upstream(r *http.Request, rt *HTTPRoute) {
	if !hh.envoyHeaders {
		return
	}
	if rt.PrefixRewrite != "" {
		r.Header["X-Envoy-Original-Path"] = []string{r.URL.RequestURI()}
	}
	if rt.HostRewrite != "" {
		r.Header["X-Envoy-Original-Host"] = []string{r.Host}
	}
}

// retry is what the router changes in the upstream request's header h for
// a retry of rt, elapsed after the request came whole: the time left.
func (hh *hcmHeaders) retry(h http.Header, rt *HTTPRoute, elapsed time.Duration) {
	if hh.envoyHeaders && rt.expectedTimeout != "" {
		h["X-Envoy-Expected-Rq-Timeout-Ms"] = []string{strconv.FormatInt(expectedTimeoutMs(rt, elapsed.Milliseconds()), 10)}
	}
}

// expectedTimeoutMs is what Envoy's router (setTimeoutHeaders) tells the
// upstream of the time an attempt of rt has, elapsedMs after the request
// came whole, in whole milliseconds as Envoy counts them: the per-try
// timeout, or the route's when there is none, but never more than the
// route's has left (1 when nothing is left); 0 when neither is set.
func expectedTimeoutMs(rt *HTTPRoute, elapsedMs int64) int64 {
	global, expected := rt.Timeout.Milliseconds(), int64(0)
	if rt.Retry != nil {
		expected = rt.Retry.perTry.Milliseconds()
	}
	if expected <= 0 {
		expected = global
	}
	if expected <= 0 {
		return 0
	}
	if global > 0 {
		if elapsedMs >= global {
			return 1
		}
		expected = min(expected, global-elapsedMs)
	}
	return expected
}

// upstreamResponse is what the router adds to a response from upstream,
// before the route's own response header changes: how long the upstream
// took since the request came whole (ended); Envoy leaves it out of an
// answer that comes before that (ok false).
func (hh *hcmHeaders) upstreamResponse(h http.Header, ended time.Time, ok bool) {
	if hh.envoyHeaders && ok {
		h["X-Envoy-Upstream-Service-Time"] = []string{strconv.FormatInt(time.Since(ended).Milliseconds(), 10)}
	}
}

// overloaded is what the router adds to its 503 when a circuit breaker
// refused the request.
func (hh *hcmHeaders) overloaded(h http.Header) {
	if hh.envoyHeaders {
		h["X-Envoy-Overloaded"] = []string{"true"}
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
