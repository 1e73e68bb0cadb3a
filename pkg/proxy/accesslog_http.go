package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
)

// This file joins access logs and tracing to the proxy: the HTTP engine's
// hooks (translateHCMObs, startSpan, logRequest), the tcp_proxy's access
// log, and binding a configuration's loggers and tracers to their running
// sinks and exporters when it is applied.

// translateHCMObs reads an HCM's access_log and tracing into chain.Obs
// (nil when it has neither). An HCM whose route configuration is inline
// and named "inbound:<service>" is an inbound one: its spans are server
// spans, from that service.
func translateHCMObs(h *hcm.HttpConnectionManager, chain *HTTPChain) error {
	server := strings.HasPrefix(chain.StatPrefix, "inbound") || strings.HasPrefix(chain.StatPrefix, "ursa:inbound")
	local := ""
	if chain.Inline != nil {
		if svc, ok := strings.CutPrefix(chain.Inline.Name, "inbound:"); ok {
			server, local = true, svc
		}
	}
	obs, err := translateObs(h.GetAccessLog(), h.GetTracing(), server, local)
	if err != nil {
		return err
	}
	if len(obs.Logs) > 0 || obs.Trace != nil {
		chain.Obs = obs
	}
	return nil
}

// startSpan starts the span of a request's upstream exchange when its
// chain traces: a child of the traceparent the request came with (in
// out, the upstream request's copy of its headers), whose traceparent it
// then sets to the new span's. The span ends in logRequest, once ri is
// complete; the returned end does nothing.
func (p *Proxy) startSpan(ri *requestInfo, _, out http.Header) (end func()) {
	if ri.Chain == nil || ri.Chain.Obs == nil || ri.Chain.Obs.Trace == nil || ri.span != nil {
		return func() {}
	}
	_, ri.span = ri.Chain.Obs.Trace.startSpan(context.Background(), out, ri.Start, ri.traced)
	return func() {}
}

// logRequest ends the request's span and writes its access log lines.
func (p *Proxy) logRequest(ri *requestInfo) {
	if ri.Chain == nil || ri.Chain.Obs == nil {
		return
	}
	obs := ri.Chain.Obs
	if ri.span == nil && len(obs.Logs) == 0 {
		return
	}
	r := p.recordOf(ri)
	if ri.span != nil {
		if sc := ri.span.SpanContext(); sc.IsValid() {
			r.TraceID = sc.TraceID().String()
		}
		obs.Trace.endSpan(ri.span, r)
	}
	for _, l := range obs.Logs {
		l.log(r)
	}
}

// downstreamLocal is where a request came to: the original destination of
// a redirected connection, else the address of the socket it came on.
func downstreamLocal(r *http.Request, meta *connMeta) string {
	if meta.dst.IsValid() {
		return meta.dst.String()
	}
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		return a.String()
	}
	return ""
}

// recordOf is what an HTTP request did, as access logs and spans see it.
func (p *Proxy) recordOf(ri *requestInfo) *accessRecord {
	r := &accessRecord{
		Start: ri.Start, Duration: ri.Duration, HTTP: true, Protocol: ri.Protocol,
		Method: ri.Method, Path: ri.Path, Authority: ri.Authority,
		ReqHeaders: ri.RequestHeaders, RespHeaders: ri.ResponseHeaders,
		Status: ri.Status, BytesReceived: ri.BytesIn, BytesSent: ri.BytesOut,
		Route: ri.Route, UpstreamCluster: ri.Cluster, UpstreamHost: ri.UpstreamHost,
		DownstreamRemote: ri.Downstream, Service: ri.Service, Zone: ri.UpstreamZone,
	}
	if len(ri.Flags) > 0 {
		r.Flags = ri.FlagString()
	}
	r.DownstreamLocal = ri.Local
	if ri.Direction == "inbound" {
		r.Zone = p.localZone()
	}
	return r
}

// tcpAccessLogs reads a tcp_proxy's access_log; its routes carry them.
func tcpAccessLogs(listenerName string, tp *tcp.TcpProxy) ([]*accessLog, error) {
	logs, err := translateAccessLogs(tp.GetAccessLog())
	if err != nil {
		return nil, fmt.Errorf("listener %q: tcp_proxy: %w", listenerName, err)
	}
	return logs, nil
}

// tcpAccess is the access log record of one tcp_proxy connection, written
// by finish when the connection ends. A nil *tcpAccess (a chain without
// access logs) does nothing.
type tcpAccess struct {
	logs []*accessLog
	r    accessRecord
}

// tcpAccessFor starts the record of a connection that routes (of the
// tcp_proxy that carries the loggers) took to cluster c (nil: none).
func (p *Proxy) tcpAccessFor(routes []Route, down net.Conn, c *Cluster) *tcpAccess {
	if len(routes) == 0 || len(routes[0].Logs) == 0 {
		return nil
	}
	a := &tcpAccess{logs: routes[0].Logs, r: accessRecord{Start: time.Now(), DownstreamRemote: down.RemoteAddr().String(),
		DownstreamLocal: down.LocalAddr().String()}}
	if c == nil {
		a.r.Flags = "NR"
	} else {
		a.r.UpstreamCluster = c.Name
	}
	return a
}

// failed notes that no upstream connection could be made.
func (a *tcpAccess) failed() {
	if a != nil {
		a.r.Flags = "UF"
	}
}

// connected notes the upstream the connection went to.
func (a *tcpAccess) connected(up net.Conn) {
	if a == nil {
		return
	}
	if tc, ok := up.(*tls.Conn); ok {
		up = tc.NetConn()
	}
	a.r.UpstreamHost = up.RemoteAddr().String()
}

// finish writes the connection's lines: bytes received from and sent to
// the downstream.
func (a *tcpAccess) finish(received, sent int64) {
	if a == nil {
		return
	}
	a.r.Duration, a.r.BytesReceived, a.r.BytesSent = time.Since(a.r.Start), received, sent
	for _, l := range a.logs {
		l.log(&a.r)
	}
}

// bindObservability binds the access loggers and tracers of cfg, the
// configuration about to be served, to their sinks and exporters.
func (p *Proxy) bindObservability(cfg *Config) {
	var logs []*accessLog
	var tracers []*tracer
	seen := map[*accessLog]bool{}
	addLogs := func(ls []*accessLog) {
		for _, l := range ls {
			if !seen[l] {
				seen[l] = true
				logs = append(logs, l)
			}
		}
	}
	addHTTP := func(h *HTTPChain) {
		if h == nil || h.Obs == nil {
			return
		}
		addLogs(h.Obs.Logs)
		if h.Obs.Trace != nil {
			tracers = append(tracers, h.Obs.Trace)
		}
	}
	addRoutes := func(rs []Route) {
		for _, r := range rs {
			addLogs(r.Logs)
		}
	}
	for _, l := range cfg.Listeners {
		addHTTP(l.HTTP)
		addRoutes(l.Routes)
		for _, c := range l.DstChains {
			addHTTP(c.HTTP)
			addRoutes(c.Routes)
		}
	}
	p.obs.bind(cfg, logs, tracers)
}

// serviceOf is the service a proxy's certificate is for: the path of its
// SPIFFE ID (spiffe://<mesh>/<service>); "" without one.
func serviceOf(id *tls.Certificate) string {
	if id == nil || id.Leaf == nil {
		return ""
	}
	for _, u := range id.Leaf.URIs {
		if u.Scheme == "spiffe" {
			if svc := strings.Trim(u.Path, "/"); svc != "" {
				return svc
			}
		}
	}
	return ""
}
