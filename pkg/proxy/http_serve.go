package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// httpMetrics are the L7 metrics of l7contract §3.
type httpMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	retries  *prometheus.CounterVec
}

// l7Engine is the Proxy's HTTP state.
type l7Engine struct {
	m       *httpMetrics
	buffers *bufferPool
	errLog  *log.Logger
	poolsMu sync.Mutex
	pools   map[string]*httpPoolEntry
	h1pools map[string]*h1Pool // the HTTP/1.1 fast path's, by cluster
	// routesCame is closed, and replaced, by each Apply: requests of a
	// chain whose RDS route configuration has not arrived wait on it.
	routesMu   sync.Mutex
	routesCame chan struct{}
}

// initL7 makes the HTTP engine's state and registers its metrics.
func (p *Proxy) initL7(reg prometheus.Registerer) error {
	m, err := newHTTPMetrics(reg)
	if err != nil {
		return err
	}
	p.l7 = &l7Engine{m: m, buffers: &bufferPool{}, errLog: zap.NewStdLog(p.log.Named("http")), pools: map[string]*httpPoolEntry{},
		h1pools: map[string]*h1Pool{}, routesCame: make(chan struct{})}
	return nil
}

// bufferPool lends the reverse proxy its copy buffers.
type bufferPool struct{ pool sync.Pool }

func (b *bufferPool) Get() []byte { return *b.take() }

func (b *bufferPool) Put(buf []byte) { b.pool.Put(&buf) }

// take and give lend a buffer without allocating its pointer anew.
func (b *bufferPool) take() *[]byte {
	if v, ok := b.pool.Get().(*[]byte); ok {
		return v
	}
	buf := make([]byte, 32<<10)
	return &buf
}

func (b *bufferPool) give(buf *[]byte) { b.pool.Put(buf) }

func newHTTPMetrics(reg prometheus.Registerer) (*httpMetrics, error) {
	// A request's duration, in seconds: 15 s is a bound (the default route
	// timeout), so the requests that ran into it are not only in +Inf;
	// long streams reach the last ones.
	requestBuckets := []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15, 30, 60, 300}
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ursa_dp_http_requests_total",
			Help: "HTTP requests served, by direction, destination service, route, zone (the upstream endpoint's outbound, this proxy's inbound) and status code."},
			[]string{"direction", "service", "route", "zone", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ursa_dp_http_request_duration_seconds",
			Help:    "HTTP request duration, from the request's arrival to the end of its response.",
			Buckets: requestBuckets}, []string{"direction", "service", "route", "zone"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ursa_dp_http_retries_total",
			Help: "Retries of HTTP requests (attempts after the first), by destination service and route."}, []string{"service", "route"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.retries} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// httpFront serves the HTTP connections of one listener: handle hands it
// each connection once TLS (when the chain terminates it) is done, and one
// http.Server serves them all, HTTP/1.1, h2c with prior knowledge, and h2
// when ALPN chose it.
type httpFront struct {
	srv   *http.Server
	queue *connQueue
	// conns holds what the handler must know of each connection (its
	// listener, original destination) until the server takes it.
	conns sync.Map // net.Conn → *connMeta
	// shutdown shuts srv down gracefully, once: its HTTP/2 connections get
	// GOAWAY, their streams in flight finish (a drain).
	shutdown sync.Once
}

// connMeta is what the proxy knows of an HTTP connection.
type connMeta struct {
	listener string
	dst      netip.AddrPort
	done     chan struct{}
	// scratch, on an HTTP/1.1 fast-path connection, is what its requests'
	// and responses' heads are parsed into.
	scratch *h1Scratch
	// stopReads, on an HTTP/1.1 connection, ends the read of a request's
	// body that waits for its caller; readsStopped says it did, and the
	// connection closes after the response.
	stopReads    func()
	readsStopped atomic.Bool
	// draining, on an HTTP/1.1 connection, says the drain asked it to end.
	draining atomic.Bool
	// uris are the caller's certificate's URI SANs, once asked for.
	urisOnce sync.Once
	uris     []string
}

// peerURIs are the URI SANs of the connection's caller's certificate
// (st is its TLS state), made once per connection.
func (m *connMeta) peerURIs(st *tls.ConnectionState) []string {
	m.urisOnce.Do(func() {
		if st != nil && len(st.PeerCertificates) > 0 {
			m.uris = uriSANs(st.PeerCertificates[0])
		}
	})
	return m.uris
}

type connKey struct{}

// connQueue is a net.Listener whose connections the proxy pushes.
type connQueue struct {
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.conns:
		return c, nil
	case <-q.closed:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.closed) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }

// shutdownOnce shuts the server down gracefully, at most once, without
// waiting: its HTTP/2 connections get GOAWAY and close once their streams
// in flight are done (the drain's end closes what remains), and it takes
// no more connections.
func (f *httpFront) shutdownOnce() {
	f.shutdown.Do(func() { go f.srv.Shutdown(context.Background()) })
}

func (p *Proxy) newHTTPFront(addr net.Addr) *httpFront {
	f := &httpFront{queue: &connQueue{addr: addr, conns: make(chan net.Conn), closed: make(chan struct{})}}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetHTTP2(true)
	protos.SetUnencryptedHTTP2(true)
	f.srv = &http.Server{
		Handler:           http.HandlerFunc(p.serveHTTP),
		Protocols:         &protos,
		ReadHeaderTimeout: time.Minute,
		IdleTimeout:       time.Hour, // Envoy's downstream idle_timeout
		ErrorLog:          p.l7.errLog,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			m, _ := f.conns.Load(c)
			return context.WithValue(ctx, connKey{}, m)
		},
		ConnState: func(c net.Conn, s http.ConnState) {
			if s != http.StateClosed && s != http.StateHijacked {
				return
			}
			if m, ok := f.conns.LoadAndDelete(c); ok {
				close(m.(*connMeta).done)
			}
		},
	}
	go f.srv.Serve(f.queue)
	return f
}

// serveHTTPFront serves an HTTP chain's connection through net/http (h2
// and h2c; HTTP/1.1 takes the fast path, serveHTTPConn) until it ends.
// Drained (ds), the listener's server shuts down gracefully.
func (p *Proxy) serveHTTPFront(name string, c net.Conn, dst netip.AddrPort, ds *downstream) {
	m := &connMeta{listener: name, dst: dst, done: make(chan struct{})}
	var f *httpFront
	for try := 0; ; try++ {
		// r.http is read and written under p.mu only: Drain replaces it.
		p.mu.Lock()
		r, ok := p.listeners[name]
		if ok && r.http == nil {
			r.http = p.newHTTPFront(r.ln.Addr())
		}
		if ok {
			f = r.http
		}
		p.mu.Unlock()
		if !ok {
			c.Close()
			return
		}
		f.conns.Store(c, m)
		select {
		case f.queue.conns <- c:
		case <-f.queue.closed:
			f.conns.Delete(c)
			if try == 0 {
				continue // Drain shut this server down: the listener's next one serves c
			}
			c.Close()
			return
		}
		break
	}
	end := func() {}
	if ds != nil && ds.inbound {
		// Not at once: a GOAWAY before the caller's first stream would
		// refuse it; a connection that came as the drain began is served
		// a moment first.
		end = func() { time.AfterFunc(drainGrace, f.shutdownOnce) }
	}
	ds.endWith(end)
	<-m.done
}

// directionOf is the direction of the requests listener name takes:
// "inbound" for an inbound listener, else "outbound".
func directionOf(name string) string {
	if strings.HasPrefix(name, "inbound") || strings.HasPrefix(name, "ursa:inbound") {
		return "inbound"
	}
	return "outbound"
}

// headerTooLarge says whether r's header is past the chain's bounds, as
// Envoy's codecs count them: its size (over HTTP/1.1 the whole head as
// read, head bytes, as Envoy's Balsa parser bounds it; over HTTP/2 each
// field's name and value, the pseudo-headers' included), or its number
// of fields (Host counted; over HTTP/2 the four pseudo-headers).
func (c *HTTPChain) headerTooLarge(r *http.Request, head int) (tooLarge, tooMany bool) {
	maxSize, maxN := c.headerLimits()
	size, n := headerLoad(r.Header)
	switch {
	case r.ProtoMajor == 2:
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		size += len(":authority") + len(r.Host) + len(":method") + len(r.Method) +
			len(":path") + len(r.URL.RequestURI()) + len(":scheme") + len(scheme)
		n += 4
	case head > 0:
		size = head
		if r.Host != "" {
			n++
		}
	default: // a head net/http read (no length known)
		if r.Host != "" {
			size, n = size+len("host")+len(r.Host), n+1
		}
	}
	return size > maxSize, n > maxN
}

// chainNow is the HTTP chain listener name's current configuration
// applies to a connection headed to dst; nil when there is none (any
// more).
func chainNow(cfg *Config, name string, dst netip.AddrPort) *HTTPChain {
	l, ok := cfg.Listeners[name]
	switch {
	case !ok:
		return nil
	case !l.OriginalDst:
		return l.HTTP
	}
	c, ok := l.matchDst(dst)
	if !ok {
		return nil
	}
	return c.HTTP
}

// serveHTTP is every HTTP request's way through the proxy: the chain's
// RBAC, the route, the fault filter, then the router (forward).
func (p *Proxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	meta, _ := r.Context().Value(connKey{}).(*connMeta)
	if meta == nil {
		http.Error(w, "no connection", http.StatusInternalServerError)
		return
	}
	cfg := p.cfg.Load()
	hr := &httpRequest{} // all of the request's state, in one allocation
	ri := &hr.info
	*ri = requestInfo{Start: time.Now(), Listener: meta.listener, Method: r.Method, Path: r.URL.RequestURI(), Authority: r.Host,
		Protocol: r.Proto, Downstream: r.RemoteAddr, Local: downstreamLocal(r, meta), RequestHeaders: r.Header, scratch: meta.scratch}
	if r.ProtoMajor == 2 {
		ri.Protocol = "HTTP/2" // as Envoy's %PROTOCOL% writes it (r.Proto is "HTTP/2.0")
	}
	ri.Direction = directionOf(meta.listener)
	cw := &hr.w
	cw.ResponseWriter = w
	body := &hr.body
	body.ReadCloser = r.Body
	r.Body = body
	defer func() {
		ri.BytesIn, ri.BytesOut, ri.Status = body.n.Load(), cw.n, cw.status
		if up := hr.ex.upgraded; up != nil && cw.status == 0 {
			// An upgraded connection, written past the writer: its 101,
			// and what crossed it.
			ri.Status = http.StatusSwitchingProtocols
			ri.BytesIn += up.in.Load()
			ri.BytesOut += up.out.Load()
		}
		ri.ResponseHeaders = w.Header()
		ri.Duration = time.Since(ri.Start)
		p.countRequest(ri)
		p.logRequest(ri)
	}()
	chain := chainNow(cfg, meta.listener, meta.dst)
	if chain == nil {
		p.localReply(cw, r, ri, http.StatusServiceUnavailable, "NR", "listener removed")
		return
	}
	ri.Chain = chain
	head := 0
	if meta.scratch != nil {
		head = meta.scratch.head
	}
	if tooLarge, tooMany := chain.headerTooLarge(r, head); tooLarge || tooMany {
		ri.flag("DPE") // as Envoy's codec refuses it
		if r.ProtoMajor == 2 {
			panic(http.ErrAbortHandler) // Envoy's HTTP/2 codec resets the stream
		}
		if r.ProtoMajor == 1 {
			cw.Header().Set("Connection", "close")
		}
		p.localReply(cw, r, ri, http.StatusRequestHeaderFieldsTooLarge, "", "Request Header Fields Too Large")
		return
	}
	if r.ProtoMajor == 1 && r.ProtoMinor == 0 {
		// As Envoy's HCM takes HTTP/1.0: refused unless accepted, then
		// given the default host when it names none.
		if !chain.AcceptHTTP10 {
			// Envoy's codec refuses it: a protocol error (DPE).
			cw.Header().Set("Connection", "close")
			p.localReply(cw, r, ri, http.StatusUpgradeRequired, "DPE", "Upgrade Required")
			return
		}
		if hw, ok := w.(*h1Writer); ok {
			hw.http10 = true // answered in kind, as Envoy's codec does then
		}
		if r.Host == "" && chain.DefaultHostHTTP10 != "" {
			r.Host, ri.Authority = chain.DefaultHostHTTP10, chain.DefaultHostHTTP10
		}
	}
	if r.Host == "" {
		// Envoy's HCM requires an authority: an HTTP/1.1 request without
		// a Host never gets here (the server refuses it), an HTTP/1.0 one
		// may, and an HTTP/2 one without :authority or Host.
		if r.ProtoMajor == 1 {
			cw.Header().Set("Connection", "close")
		}
		p.localReply(cw, r, ri, http.StatusBadRequest, "", "")
		return
	}
	table := chain.Inline
	if table == nil {
		if cfg, chain, table = p.routesOf(r.Context(), meta, cfg, chain); chain == nil {
			p.localReply(cw, r, ri, http.StatusServiceUnavailable, "NR", "listener removed")
			return
		}
		ri.Chain = chain
	}
	if table != nil {
		ri.Service = table.Name
		if dir, svc, ok := strings.Cut(table.Name, ":"); ok && (dir == "inbound" || dir == "outbound") {
			ri.Direction, ri.Service = dir, svc
		}
	}
	if bad := nominatesForwarded(r.Header["Connection"]); bad != "" {
		// As Envoy's codec: what it nominates would be taken out, and
		// the forwarding headers are the mesh's to write.
		if r.ProtoMajor == 1 {
			cw.Header().Set("Connection", "close")
		}
		p.localReply(cw, r, ri, http.StatusBadRequest, "DPE", "Bad Request: Connection: "+bad)
		return
	}
	// Answered by the caller's side (the server says 100 Continue as the
	// engine reads the body), it goes no further, as Envoy's HCM drops it.
	if strings.EqualFold(r.Header.Get("Expect"), "100-continue") {
		r.Header.Del("Expect")
	}
	chain.Headers.request(r.Header, r.TLS != nil)
	cw.hh = &chain.Headers
	if chain.Obs != nil && chain.Obs.Trace != nil {
		ri.traced = chain.Obs.Trace.decide(r.Header)
	}
	var rt *HTTPRoute
	if table != nil {
		if rt = table.route(r); rt != nil {
			ri.Route = rt.Name
		}
	}
	// The HCM refuses an upgrade its upgrade_configs (or the route's) do
	// not allow before its filters run, as Envoy's does once it has a
	// route (without one, the filters and the 404 answer), and closes an
	// HTTP/1.1 connection after: what follows may be the upgraded bytes.
	upgrade := upgradeType(r.Header)
	if r.Method == http.MethodConnect {
		// CONNECT is an upgrade to Envoy (its type "CONNECT"), which the
		// built-in proxy refuses to configure: always a 403.
		upgrade = "CONNECT"
	}
	if upgrade != "" && rt != nil && !chain.upgradeAllowed(upgrade, rt) {
		if r.ProtoMajor == 1 {
			cw.Header().Set("Connection", "close")
		}
		p.localReply(cw, r, ri, http.StatusForbidden, "", "")
		return
	}
	if chain.RBAC != nil {
		if !chain.RBAC.allows(meta.peerURIs(r.TLS)) {
			p.localReply(cw, r, ri, http.StatusForbidden, "", "RBAC: access denied")
			return
		}
	}
	if rt == nil {
		p.localReply(cw, r, ri, http.StatusNotFound, "NR", "")
		return
	}
	if f := chain.Fault; f != nil {
		if f.hasDelay && chance(f.delayPPM) {
			ri.flag("DI")
			// Envoy's stream idle timer runs through the delay: a request
			// that came whole (one without a body) and would idle past its
			// timeout ends there. (One with a body is read by Envoy, and
			// kicks the timer, during the delay; here it waits unread.)
			wait, idled := f.delay, false
			if idle := rt.idleTimeout(chain); idle > 0 && idle < wait && noBody(r) {
				wait, idled = idle, true
			}
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
			if idled {
				p.localReply(cw, r, ri, http.StatusGatewayTimeout, "SI", "stream timeout")
				return
			}
			if noBody(r) {
				hr.delayed = f.delay // the idle timer goes on from here, not again
			}
		}
		if f.hasAbort && chance(f.abortPPM) {
			ri.flag("FI")
			p.localReply(cw, r, ri, f.abortStatus, "", "fault filter abort")
			return
		}
	}
	p.forward(cw, r, hr, cfg, rt, upgrade != "")
}

// httpRequest is one request's state in the engine: what it did (info),
// its writer and body counting bytes, its exchange with the upstream and
// its body kept for retries.
type httpRequest struct {
	info     requestInfo
	w        countingWriter
	body     countingBody
	ex       exchange
	replay   replayBody
	deadline deadlineCtx // the route's timeout, on a request without a body
	// delayed is how long a fault delay held a request without a body:
	// time its idle timeout has used already.
	delayed time.Duration
}

// routeWait is how long a request waits for its chain's RDS route
// configuration: a listener comes before its routes (they are subscribed
// to once it is there), and Envoy would not serve it until they came.
const routeWait = 10 * time.Second

// routesOf is chain's RDS route table, waiting for it (routeWait at most)
// when it has not arrived yet; it returns the configuration and chain it
// found it in, a nil chain when the listener went away meanwhile, and a
// nil table when the routes did not come.
func (p *Proxy) routesOf(ctx context.Context, meta *connMeta, cfg *Config, chain *HTTPChain) (*Config, *HTTPChain, *RouteTable) {
	var deadline <-chan time.Time
	for {
		if t := cfg.RouteTables[chain.RDS]; t != nil {
			return cfg, chain, t
		}
		p.l7.routesMu.Lock()
		came := p.l7.routesCame
		p.l7.routesMu.Unlock()
		if cfg = p.cfg.Load(); cfg.RouteTables[chain.RDS] == nil {
			if deadline == nil {
				t := time.NewTimer(routeWait)
				defer t.Stop()
				deadline = t.C
			}
			select {
			case <-came:
			case <-deadline:
				return cfg, chain, nil
			case <-ctx.Done():
				return cfg, chain, nil
			}
			cfg = p.cfg.Load()
		}
		if chain = chainNow(cfg, meta.listener, meta.dst); chain == nil {
			return cfg, nil, nil
		}
		if chain.Inline != nil {
			return cfg, chain, chain.Inline
		}
	}
}

// chance is true for ppm of a million calls.
func chance(ppm uint32) bool { return ppm >= 1_000_000 || rand.Uint32N(1_000_000) < ppm }

// route is the first route of the virtual host for r's authority that
// matches r.
func (t *RouteTable) route(r *http.Request) *HTTPRoute {
	vh := t.vhost(r.Host)
	if vh == nil {
		return nil
	}
	for _, rt := range vh.Routes {
		if rt.Match.matches(r) {
			return rt
		}
	}
	return nil
}

// vhost picks a virtual host as Envoy does: an exact domain, then the
// longest suffix wildcard ("*.example.com"), then the longest prefix
// wildcard ("example.*"), then "*"; a host with a port that matches none is
// tried again without it.
func (t *RouteTable) vhost(host string) *VirtualHost {
	host = strings.ToLower(host)
	find := func(host string) *VirtualHost {
		var best *VirtualHost
		bestRank, bestLen := 0, -1
		for _, vh := range t.VHosts {
			for _, d := range vh.Domains {
				d = strings.ToLower(d)
				rank, n := 0, len(d)
				switch {
				case d == host:
					return vh
				case d == "*":
					rank = 1
				case strings.HasPrefix(d, "*") && strings.HasSuffix(host, d[1:]) && len(host) > len(d)-1:
					rank = 3
				case strings.HasSuffix(d, "*") && strings.HasPrefix(host, d[:len(d)-1]) && len(host) > len(d)-1:
					rank = 2
				default:
					continue
				}
				if rank > bestRank || rank == bestRank && n > bestLen {
					best, bestRank, bestLen = vh, rank, n
				}
			}
		}
		return best
	}
	if vh := find(host); vh != nil {
		return vh
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		return find(h)
	}
	return nil
}

// matches reports whether r matches the route: its path (the whole :path
// for a prefix, without the query for an exact path or a regex) and every
// header matcher.
func (m *routeMatch) matches(r *http.Request) bool {
	full := r.URL.RequestURI()
	path, _, _ := strings.Cut(full, "?")
	switch {
	case m.regex != nil:
		if !m.regex.MatchString(path) {
			return false
		}
	case m.exact:
		if path != m.path {
			return false
		}
	default:
		if !strings.HasPrefix(full, m.prefix) {
			return false
		}
	}
	for _, h := range m.headers {
		if !h.matches(r) {
			return false
		}
	}
	return true
}

func (h *headerMatch) matches(r *http.Request) bool {
	var v string
	present := true
	switch h.name {
	case ":method":
		v = r.Method
	case ":path":
		v = r.URL.RequestURI()
	case ":authority", "host":
		v = r.Host
	case ":scheme":
		v = "http"
		if r.TLS != nil {
			v = "https"
		}
	default:
		vs := r.Header.Values(h.name)
		present = len(vs) > 0
		v = strings.Join(vs, ",")
	}
	ok := present && (h.present || h.value(v))
	return ok != h.invert
}

// localReply answers a request itself, with status and a short text body,
// or, to a gRPC request, as gRPC does (200, the status in grpc-status and
// grpc-message), as Envoy's local replies do.
func (p *Proxy) localReply(w http.ResponseWriter, r *http.Request, ri *requestInfo, status int, flag, body string) {
	if flag != "" {
		ri.flag(flag)
	}
	// What the proxy answers itself (no route, a fault's abort, RBAC's
	// 403) is traced too, as Envoy's HCM starts its span before its
	// filters; a request that goes upstream has its span from the router
	// (prepare), which sets the trace headers after the route's own
	// header changes, as Envoy's router does.
	p.startSpan(ri, nil, r.Header)
	if isGRPC(r.Header.Get("Content-Type")) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", strconv.Itoa(grpcStatusOf(status)))
		if body != "" {
			w.Header().Set("Grpc-Message", body)
		}
		w.WriteHeader(http.StatusOK)
		return
	}
	if body == "" {
		w.WriteHeader(status)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write([]byte(body))
}

// nominatesForwarded returns what of a request's Connection header Envoy's
// codec refuses (sanitizeConnectionHeader): a forwarding header or a
// pseudo-header nominated as hop-by-hop, or ten tokens or more; "" for
// none.
func nominatesForwarded(connection []string) string {
	n := 0
	for _, v := range connection {
		for f := range strings.SplitSeq(v, ",") {
			f = strings.ToLower(strings.TrimSpace(f))
			if f == "" {
				continue
			}
			if n++; n >= 10 {
				return "ten or more tokens"
			}
			if strings.HasPrefix(f, "x-forwarded-") || strings.HasPrefix(f, ":") {
				return f
			}
		}
	}
	return ""
}

// isGRPC says whether a content type is gRPC's, as Envoy's
// hasGrpcContentType: application/grpc, or application/grpc+ a subtype;
// not gRPC-Web's, whose callers read local replies as HTTP.
func isGRPC(contentType string) bool {
	return contentType == "application/grpc" || strings.HasPrefix(contentType, "application/grpc+")
}

// grpcStatusOf maps an HTTP status to a gRPC code as Envoy does.
func grpcStatusOf(status int) int {
	switch status {
	case 400:
		return 13 // INTERNAL
	case 401:
		return 16 // UNAUTHENTICATED
	case 403:
		return 7 // PERMISSION_DENIED
	case 404:
		return 12 // UNIMPLEMENTED
	case 429, 502, 503, 504:
		return 14 // UNAVAILABLE
	}
	return 2 // UNKNOWN
}

// countRequest records a finished request's metrics.
func (p *Proxy) countRequest(ri *requestInfo) {
	zone := ri.UpstreamZone
	if ri.Direction == "inbound" {
		zone = p.localZone()
	}
	key := metricKey{dir: ri.Direction, service: ri.Service, route: ri.Route, zone: zone, code: ri.Status}
	if sc := ri.scratch; sc != nil && sc.metrics.requests != nil && sc.metrics.key == key {
		// The connection's last request's series: most are the same.
		sc.metrics.requests.Inc()
		sc.metrics.duration.Observe(ri.Duration.Seconds())
		return
	}
	m := requestSeries{key: key,
		requests: p.l7.m.requests.WithLabelValues(ri.Direction, ri.Service, ri.Route, zone, strconv.Itoa(ri.Status)),
		duration: p.l7.m.duration.WithLabelValues(ri.Direction, ri.Service, ri.Route, zone)}
	m.requests.Inc()
	m.duration.Observe(ri.Duration.Seconds())
	if ri.scratch != nil {
		ri.scratch.metrics = m
	}
}

// metricKey is the labels of a request's series.
type metricKey struct {
	dir, service, route, zone string
	code                      int
}

// requestSeries is the series of the requests of one metricKey (series
// are never deleted: they can be kept).
type requestSeries struct {
	key      metricKey
	requests prometheus.Counter
	duration prometheus.Observer
}

// countingWriter counts the body bytes sent downstream and keeps the
// status; Flush and Unwrap let the reverse proxy stream through it.
type countingWriter struct {
	http.ResponseWriter
	n      int64
	status int
	// hh, once the request's chain is known, changes the header of the
	// response as it leaves (a switch to an upgraded protocol does not
	// come through here: reverseProxy sees to it).
	hh *hcmHeaders
}

func (w *countingWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.final()
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.final()
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.n += int64(n)
	return n, err
}

// final applies the HCM's response header changes, once.
func (w *countingWriter) final() {
	if w.hh != nil {
		w.hh.response(w.ResponseWriter.Header())
		w.hh = nil
	}
}

func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// adoptHeader hands h to the writer underneath (takeHeader).
func (w *countingWriter) adoptHeader(h http.Header) { takeHeader(w.ResponseWriter, h) }

// countingBody counts the request body bytes read; the upstream
// transport may still be reading when the handler returns.
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// zoneTagURI is what the URI SAN of a certificate's zone tag starts with
// (mtls.TagURIPrefix(api.TagZone); the proxy does not import them).
const zoneTagURI = "ursa://ursa.io/zone/"

// localZone is the proxy's zone: Zone, else its identity's zone tag
// (read once per identity).
func (p *Proxy) localZone() string {
	if p.Zone != "" {
		return p.Zone
	}
	id := p.cfg.Load().Identity
	if m := p.zoneMemo.Load(); m != nil && m.id == id {
		return m.zone
	}
	m := &zoneMemo{id: id, zone: zoneOf(id)}
	p.zoneMemo.Store(m)
	return m.zone
}

// zoneMemo is an identity's zone tag.
type zoneMemo struct {
	id   *tls.Certificate
	zone string
}

// zoneOf is the zone tag in an identity's certificate, "" for none.
func zoneOf(id *tls.Certificate) string {
	if id == nil || id.Leaf == nil {
		return ""
	}
	for _, u := range id.Leaf.URIs {
		if v, ok := strings.CutPrefix(u.String(), zoneTagURI); ok {
			if z, err := url.PathUnescape(v); err == nil {
				return z
			}
		}
	}
	return ""
}
