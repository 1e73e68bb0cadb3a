package proxy

import (
	"net/http"
	"slices"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// requestInfo is what one HTTP request through the proxy did: access logs
// and spans are made of it. The engine fills it in as the request goes;
// it is complete when logRequest gets it.
type requestInfo struct {
	Start time.Time
	// Direction is "inbound" or "outbound"; Service the destination
	// service (the route configuration's); Listener the listener's name.
	Direction, Service, Listener string
	Chain                        *HTTPChain
	Method, Path, Authority      string
	// Protocol is the downstream protocol, "HTTP/1.1" or "HTTP/2".
	Protocol string
	// Status is the status sent downstream; 0 when none was (a reset).
	Status int
	// Flags are Envoy's response flags (UT, UF, UH, UO, NR, NC, URX, DI,
	// FI, UC, SI), in the order they were raised.
	Flags             []string
	BytesIn, BytesOut int64
	// Route is the route's name; Cluster, UpstreamHost and UpstreamZone
	// where its last attempt went.
	Route, Cluster, UpstreamHost, UpstreamZone string
	// Downstream is the caller's address (host:port), Local where it
	// came to (downstreamLocal).
	Downstream, Local string
	// RequestHeaders are the downstream request's, ResponseHeaders the
	// response's as sent downstream.
	RequestHeaders, ResponseHeaders http.Header
	Duration                        time.Duration
	// Attempts counts the upstream attempts, retries included.
	Attempts int
	// span is the request's span, when its chain traces (startSpan).
	span trace.Span
	// traced is the HCM's decision to trace the request (tracer.decide).
	traced bool
	// scratch is the connection's, for the response's header (h1Scratch).
	scratch *h1Scratch
}

// flag raises a response flag once.
func (ri *requestInfo) flag(f string) {
	if slices.Contains(ri.Flags, f) {
		return
	}
	// In Envoy's order (ResponseFlagUtils' CORE_RESPONSE_FLAGS), which
	// %RESPONSE_FLAGS% writes them in whatever order they were set: a
	// delayed request that then failed to connect is "UF,DI".
	at := len(ri.Flags)
	for i, g := range ri.Flags {
		if flagRank(f) < flagRank(g) {
			at = i
			break
		}
	}
	ri.Flags = slices.Insert(ri.Flags, at, f)
}

// envoyFlags are Envoy's response flags in the order it writes them.
var envoyFlags = [...]string{"LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
	"URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR", "UDO"}

// flagRank is f's place in envoyFlags (past them for one Envoy lacks).
func flagRank(f string) int {
	if i := slices.Index(envoyFlags[:], f); i >= 0 {
		return i
	}
	return len(envoyFlags)
}

// FlagString is the flags as Envoy's %RESPONSE_FLAGS% writes them: comma
// separated, "-" for none.
func (ri *requestInfo) FlagString() string {
	if len(ri.Flags) == 0 {
		return "-"
	}
	return strings.Join(ri.Flags, ",")
}
