package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// maxReplay is the most request body the proxy keeps to send again on a
// retry; a request with more is not retried. As Envoy's router's retry
// buffer, the decoder buffer limit: the listener's
// per_connection_buffer_limit_bytes, 1 MiB by default.
const maxReplay = 1 << 20

// forward is the router: it sends r to the route's cluster, retrying as
// the route's policy says, within its timeout, and streams the response
// back (trailers too: gRPC passes through end to end). The request is the
// handler's own: its header becomes the upstream request's, changed in
// place (no copy per request). An upgrade (a WebSocket; upgrade says r
// asks for one) goes through the reverse proxy, which copies both ways
// once the upstream switches.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, hr *httpRequest, cfg *Config, rt *HTTPRoute, upgrade bool) {
	if r.ContentLength == 0 {
		r.Body = http.NoBody // none: the upstream request has none either
	}
	ri := &hr.info
	ex := p.newExchange(r, hr, cfg, rt, upgrade)
	defer ex.end()
	if upgrade {
		ex.reverseProxy(w, r)
		return
	}
	if r.ProtoMajor == 1 && !ri.Chain.EnableTrailers {
		r.Trailer = nil // Envoy's HTTP/1 codec drops them (enable_trailers)
	}
	h := r.Header
	te := hasToken(h["Te"], "trailers")
	removeHopByHop(h)
	if te {
		// gRPC asks for trailers: the upstream is told it may send them.
		h["Te"] = []string{"trailers"}
	}
	ex.prepare(r)
	ex.rewrite(r)
	resp, err := ex.RoundTrip(r)
	if err != nil {
		ex.fail(w, r, err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// Not asked for: nothing here can copy an upgraded connection.
		p.localReply(w, r, ri, http.StatusBadGateway, "UPE", "upstream switched protocols unasked")
		return
	}
	removeHopByHop(resp.Header)
	ex.modifyResponse(resp)
	takeHeader(w, resp.Header)
	// Trailers come back unless an HTTP/1 codec on the way drops them:
	// the caller's (the HCM's enable_trailers) or the upstream's (the
	// cluster's, RoundTrip).
	trailers := !ex.dropTrailers && (r.ProtoMajor != 1 || ri.Chain.EnableTrailers)
	announced := 0
	if trailers {
		announced = len(resp.Trailer)
	}
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		w.Header().Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(resp.StatusCode)
	if err := p.copyResponse(w, resp.Body, resp.ContentLength == -1 || isEventStream(resp.Header)); err != nil {
		// Streaming: all that is left is to abort the response (the
		// connection closes, or the stream resets), as the reverse proxy
		// does.
		panic(http.ErrAbortHandler)
	}
	resp.Body.Close() // now: the trailers are in once the body is read
	for k := range resp.Trailer {
		if !validFieldName(k) {
			// net/http's parser takes a name with a space before its
			// colon, Envoy's codec refuses it: a protocol error once the
			// response is under way, which resets it.
			ri.flag("UPE")
			panic(http.ErrAbortHandler)
		}
	}
	if !trailers || len(resp.Trailer) == 0 {
		return
	}
	if len(resp.Trailer) == announced {
		dst := w.Header()
		for k, vs := range resp.Trailer {
			dst[k] = append(dst[k], vs...)
		}
		return
	}
	for k, vs := range resp.Trailer {
		w.Header()[http.TrailerPrefix+k] = append(w.Header()[http.TrailerPrefix+k], vs...)
	}
}

// headerAdopter is a response writer that takes a header map as its own
// instead of having it copied (the HTTP/1.1 fast path's).
type headerAdopter interface{ adoptHeader(http.Header) }

// takeHeader gives w the header h: its own when w adopts headers, else a
// copy added to w's.
func takeHeader(w http.ResponseWriter, h http.Header) {
	if a, ok := w.(headerAdopter); ok {
		a.adoptHeader(h)
		return
	}
	dst := w.Header()
	for k, vs := range h {
		dst[k] = append(dst[k], vs...)
	}
}

// isEventStream says whether a response streams events, to be flushed as
// they come.
func isEventStream(h http.Header) bool {
	ct, _, _ := strings.Cut(h.Get("Content-Type"), ";")
	return strings.EqualFold(strings.TrimSpace(ct), "text/event-stream")
}

// copyResponse copies a response body to w, flushing after each write
// when it streams; the error is the first read (but EOF) or write error.
func (p *Proxy) copyResponse(w http.ResponseWriter, body io.Reader, stream bool) error {
	bp := p.l7.buffers.take()
	defer p.l7.buffers.give(bp)
	buf := *bp
	flusher, _ := w.(http.Flusher)
	if stream && flusher != nil {
		flusher.Flush() // the header goes now: the body may be long to come
	}
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			if stream && flusher != nil {
				flusher.Flush()
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// removeHopByHop removes the hop-by-hop headers from h (RFC 9110 §7.6.1,
// and those net/http's reverse proxy also removes), and those its
// Connection header names.
func removeHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for f := range strings.SplitSeq(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				delete(h, http.CanonicalHeaderKey(f))
			}
		}
	}
	// A header has a few keys: looking at each is cheaper than deleting
	// nine that are mostly not there.
	for k := range h {
		switch k {
		// Those Envoy's router takes out; the Proxy-Auth* headers go on
		// (a forward proxy in the mesh reads them).
		case "Connection", "Proxy-Connection", "Keep-Alive", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
			delete(h, k)
		}
	}
}

// upgradeType is the protocol a request asks to switch to, "" for none.
// An h2c upgrade is none: Envoy's HTTP/1.1 codec ignores it (curl --http2
// asks for one), and the request goes on as it came, without the
// hop-by-hop headers that asked (forward takes them out).
func upgradeType(h http.Header) string {
	if !hasToken(h["Connection"], "upgrade") {
		return ""
	}
	if up := h.Get("Upgrade"); !strings.EqualFold(up, "h2c") {
		return up
	}
	return ""
}

// newExchange starts r's exchange: the route's timeout (from the end of
// the request body, as Envoy's; until the answer, for an upgrade), and its
// idle timeout. end ends them.
func (p *Proxy) newExchange(r *http.Request, hr *httpRequest, cfg *Config, rt *HTTPRoute, upgrade bool) *exchange {
	down := r.Context() // the caller's: done when it goes away
	ex := &hr.ex
	*ex = exchange{p: p, cfg: cfg, rt: rt, ri: &hr.info, down: down, ctx: down, body: &hr.replay}
	body := &hr.replay
	body.src = r.Body
	bodyless := noBody(r)
	if bodyless && !upgrade {
		// An upgrade request has come whole only when its caller ends the
		// upgraded stream, as in Envoy (no upstream service time on a 101).
		ex.ended = time.Now()
	}
	switch {
	case rt.Timeout <= 0:
	case upgrade:
		// The route's timeout bounds the wait for the upstream's answer,
		// and ends at a 101: the upgraded connection (a WebSocket) lasts
		// as long as it is not idle, as with Envoy's (which runs its route
		// timeout on an upgrade until the answer since 1.36, and never
		// after it).
		ctx, stop := context.WithCancel(down)
		ex.upgradeTimer = time.AfterFunc(rt.Timeout, stop)
		ex.ctx, ex.cancel = ctx, func() { ex.upgradeTimer.Stop(); stop() }
	case bodyless:
		ex.deadline = &hr.deadline
		*ex.deadline = deadlineCtx{parent: down, deadline: ex.ended.Add(rt.Timeout)}
		ex.ctx = ex.deadline
	default:
		// As Envoy's, the route timeout runs from the end of the request
		// body: a long upload to a fast backend is not cut short.
		ctx, stop := context.WithCancel(down)
		var timer *time.Timer
		var mu sync.Mutex
		body.onEOF = func() {
			mu.Lock()
			defer mu.Unlock()
			if timer == nil {
				timer = time.AfterFunc(rt.Timeout, stop)
			}
		}
		ex.ctx, ex.cancel = ctx, func() {
			mu.Lock()
			if timer != nil {
				timer.Stop()
			}
			mu.Unlock()
			stop()
		}
	}
	if _, ok := ex.ctx.Deadline(); ok || ex.ctx == down {
		ex.watch = down // all ctx adds to down is a deadline
	}
	if idle := rt.idleTimeout(hr.info.Chain); idle > 0 {
		ex.watch = nil
		ex.idle = newIdleWatch(idle)
		ex.ctx, ex.idleStop = ex.idle.bind(ex.ctx, hr.delayed)
		if !bodyless {
			ex.stopStalledUpload(r)
		}
	}
	return ex
}

// noBody says r has no body: it came whole with its header.
func noBody(r *http.Request) bool {
	return r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0
}

// idleTimeout is how long a request on rt through chain c may see no
// activity: the route's idle_timeout when it sets one (0 included), else
// the HCM's stream_idle_timeout; 0 is no limit.
func (rt *HTTPRoute) idleTimeout(c *HTTPChain) time.Duration {
	if rt.idleSet {
		return rt.IdleTimeout
	}
	return c.StreamIdle
}

// stopStalledUpload makes the idle timeout, when it fires while the caller
// is still sending r's body, end the read that waits for more, as Envoy's
// ends the stream: the exchange then fails (408), and the caller's
// connection (HTTP/1.1) or stream (HTTP/2) with it.
func (ex *exchange) stopStalledUpload(r *http.Request) {
	stop := r.Body.Close // HTTP/2's ends a read waiting on the stream
	if meta, _ := r.Context().Value(connKey{}).(*connMeta); meta != nil && meta.stopReads != nil {
		stop = func() error { meta.stopReads(); return nil }
	}
	// The request's body kicks the watch as it comes, as Envoy's stream
	// idle timer is reset by each chunk of it.
	ex.body.idle = ex.idle
	ex.stalled = make(chan struct{})
	ran := context.AfterFunc(ex.ctx, func() {
		defer close(ex.stalled)
		if _, whole := ex.requestEnd(); ex.idle.fired() && !whole {
			ex.stopped = true
			stop()
		}
	})
	idleStop := ex.idleStop
	ex.idleStop = func() {
		if ran() {
			close(ex.stalled) // it never runs now
		}
		idleStop()
	}
}

// requestEnd is when the request had come whole, as Envoy's router counts
// it (downstream_request_complete_time): when it reached the router, or
// when its body ended; false while its body is still coming.
func (ex *exchange) requestEnd() (time.Time, bool) {
	if !ex.ended.IsZero() {
		return ex.ended, true
	}
	return ex.body.end()
}

// end ends the exchange's timeouts: its idle timeout's, then the
// route's.
func (ex *exchange) end() {
	if ex.idleStop != nil {
		ex.idleStop()
	}
	switch {
	case ex.deadline != nil:
		ex.deadline.stop()
	case ex.cancel != nil:
		ex.cancel()
	}
}

// deadlineCtx is parent with a deadline, whose timer is made only when
// something waits for it (Done): the HTTP/1.1 pool keeps to the deadline
// with its connection's, and most requests end before anything asks.
type deadlineCtx struct {
	parent   context.Context
	deadline time.Time
	mu       sync.Mutex
	timed    context.Context // WithDeadline(parent, deadline), once asked
	cancel   context.CancelFunc
	stopped  bool
}

func (c *deadlineCtx) Deadline() (time.Time, bool) {
	if d, ok := c.parent.Deadline(); ok && d.Before(c.deadline) {
		return d, true
	}
	return c.deadline, true
}

func (c *deadlineCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.timed == nil {
		c.timed, c.cancel = context.WithDeadline(c.parent, c.deadline)
		if c.stopped {
			c.cancel()
		}
	}
	return c.timed.Done()
}

func (c *deadlineCtx) Err() error {
	c.mu.Lock()
	timed, stopped := c.timed, c.stopped
	c.mu.Unlock()
	switch {
	case timed != nil:
		return timed.Err()
	case stopped:
		return context.Canceled
	}
	if err := c.parent.Err(); err != nil {
		return err
	}
	if !time.Now().Before(c.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

func (c *deadlineCtx) Value(key any) any {
	c.mu.Lock()
	timed := c.timed
	c.mu.Unlock()
	if timed != nil {
		return timed.Value(key) // its cancelCtx: children derived after Done join it
	}
	return c.parent.Value(key)
}

// stop cancels the context (its CancelFunc).
func (c *deadlineCtx) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopped = true
	if c.cancel != nil {
		c.cancel()
	}
}

// prepare makes r, the downstream request, the upstream one (but for its
// rewrites): the router's headers, the route's header changes, and the
// span's traceparent.
func (ex *exchange) prepare(r *http.Request) {
	h := r.Header
	ex.ri.Chain.Headers.timeout(h, ex.rt)
	for _, k := range ex.rt.ReqRemove {
		h.Del(k)
	}
	applyHeaders(h, ex.rt.ReqAdd)
	ex.ri.Chain.Headers.upstream(r, ex.rt)
	ex.p.startSpan(ex.ri, nil, h)
}

// rewrite applies the route's path and host rewrites to r, the upstream
// request. Its path was matched (translateRoute: the rewrite is a path
// and the route's match a prefix or a path), so only that part changes;
// the query stays.
func (ex *exchange) rewrite(r *http.Request) {
	rt := ex.rt
	if rt.PrefixRewrite != "" {
		uri := rt.PrefixRewrite + r.URL.RequestURI()[rt.rewriteLen:]
		path, query, hasQuery := strings.Cut(uri, "?")
		// Both parts are escaped paths (validPath; the request's own,
		// cut only before a byte of it), so this does not fail.
		if p, err := url.PathUnescape(path); err == nil {
			r.URL.Path, r.URL.RawPath = p, path
			if hasQuery {
				r.URL.RawQuery = query
			}
		}
	}
	if rt.HostRewrite != "" {
		r.Host = rt.HostRewrite
	}
}

// modifyResponse applies the router's and the route's response header
// changes.
func (ex *exchange) modifyResponse(resp *http.Response) {
	ended, ok := ex.requestEnd()
	ex.ri.Chain.Headers.upstreamResponse(resp.Header, ended, ok)
	for _, k := range ex.rt.RespRemove {
		resp.Header.Del(k)
	}
	applyHeaders(resp.Header, ex.rt.RespAdd)
}

// fail answers a request whose exchange failed (err from RoundTrip).
func (ex *exchange) fail(w http.ResponseWriter, r *http.Request, err error) {
	p, ri := ex.p, ex.ri
	var lr *localReplyError
	var cbe *callerError
	switch {
	case errors.As(err, &lr):
		if lr.flag == "UO" {
			ri.Chain.Headers.overloaded(w.Header())
		}
		p.localReply(w, r, ri, lr.status, lr.flag, lr.body)
	case ex.down.Err() != nil:
		ri.flag("DC") // the caller went away
	case ex.ctx.Err() != nil && ex.idle != nil && ex.idle.fired():
		// As Envoy's: 408 while the caller was still sending the request,
		// whose reading then stopped (stopStalledUpload decides, once); an
		// HTTP/1.1 connection closes after it.
		status := http.StatusGatewayTimeout
		if ex.stalled != nil {
			<-ex.stalled
			if ex.stopped {
				status = http.StatusRequestTimeout
				if r.ProtoMajor == 1 {
					w.Header().Set("Connection", "close")
				}
			}
		}
		p.localReply(w, r, ri, status, "SI", "stream timeout")
	case ex.ctx.Err() != nil:
		p.localReply(w, r, ri, http.StatusGatewayTimeout, "UT", "upstream request timeout")
	case errors.As(err, &cbe) && cbe.bad:
		// As Envoy's codec error: 400, and an HTTP/1.1 connection whose
		// framing is lost closes.
		if r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		p.localReply(w, r, ri, http.StatusBadRequest, "DPE", "Bad Request")
	case cbe != nil:
		// The caller went away while sending its body: no answer, and its
		// HTTP/1.1 connection ends (net/http's server would write an
		// empty 200 for a handler that wrote nothing).
		ri.flag("DC")
		panic(http.ErrAbortHandler)
	default:
		p.localReply(w, r, ri, http.StatusServiceUnavailable, "UC", "upstream connect error or disconnect/reset before headers. reset reason: connection termination")
	}
}

// reverseProxy forwards an upgrade request through net/http's reverse
// proxy, which hijacks the connection and copies both ways once the
// upstream answers 101.
func (ex *exchange) reverseProxy(w http.ResponseWriter, r *http.Request) {
	p := ex.p
	rp := &httputil.ReverseProxy{
		Transport:  ex,
		BufferPool: p.l7.buffers,
		ErrorLog:   p.l7.errLog,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", r.Host
			// Rewrite leaves the X-Forwarded headers out; the caller's
			// stay as they came.
			for _, k := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
				if vs, ok := pr.In.Header[k]; ok {
					pr.Out.Header[k] = vs
				}
			}
			ex.prepare(pr.Out)
			ex.rewrite(pr.Out)
		},
		ModifyResponse: func(resp *http.Response) error {
			ex.modifyResponse(resp)
			if resp.StatusCode == http.StatusSwitchingProtocols {
				// Written on the hijacked connection, past the writer.
				ex.ri.Chain.Headers.response(resp.Header)
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) { ex.fail(w, r, err) },
	}
	rp.ServeHTTP(&hijackWatch{ResponseWriter: w, ctx: ex.ctx}, r.WithContext(ex.ctx))
	if ex.upgraded != nil {
		// Closed by the reverse proxy, or not when it refused the answer
		// (a protocol it did not ask for): the connection and the breaker
		// slots go now.
		ex.upgraded.Close()
		if ex.down.Err() == nil && ex.idle != nil && ex.idle.fired() {
			ex.ri.flag("SI") // the upgraded connection was idle too long
		}
	}
}

// hijackWatch is a response writer whose hijacked connection closes when
// ctx ends (an upgrade's idle timeout): the reverse proxy then closes only
// the upstream's, and would wait on the caller's reads after the upstream
// ended its side, where Envoy ends the stream.
type hijackWatch struct {
	http.ResponseWriter
	ctx context.Context
}

func (w *hijackWatch) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		context.AfterFunc(w.ctx, func() { c.Close() })
	}
	return c, brw, err
}

func (w *hijackWatch) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// applyHeaders adds a route's headers as their append actions say; an
// empty value is skipped unless it keeps empty values, as in Envoy.
func applyHeaders(h http.Header, ops []headerOp) {
	for _, o := range ops {
		if o.value == "" && !o.keepEmpty {
			continue
		}
		switch o.action {
		case 0: // APPEND_IF_EXISTS_OR_ADD
			h.Add(o.key, o.value)
		case 1: // ADD_IF_ABSENT
			if len(h.Values(o.key)) == 0 {
				h.Set(o.key, o.value)
			}
		case 2: // OVERWRITE_IF_EXISTS_OR_ADD
			h.Set(o.key, o.value)
		case 3: // OVERWRITE_IF_EXISTS
			if len(h.Values(o.key)) > 0 {
				h.Set(o.key, o.value)
			}
		}
	}
}

// localReplyError is an exchange that ends in a reply of the proxy's own.
type localReplyError struct {
	status int
	flag   string
	body   string
}

func (e *localReplyError) Error() string { return fmt.Sprintf("%d %s: %s", e.status, e.flag, e.body) }

// connectError is an attempt that could not connect to its endpoint.
type connectError struct{ err error }

func (e *connectError) Error() string { return "connect: " + e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// exchange is one request's way to its upstream: the reverse proxy's
// RoundTripper, which makes the attempts.
type exchange struct {
	p    *Proxy
	cfg  *Config
	rt   *HTTPRoute
	ri   *requestInfo
	down context.Context // the caller's: done when it goes away
	ctx  context.Context // the route's: done at its timeout too
	// watch, when set, is the context whose end is all of ctx's but its
	// deadline (the caller's, down): the HTTP/1.1 pool keeps to the
	// deadline with its connection's and watches this one.
	watch context.Context
	idle  *idleWatch
	body  *replayBody
	// stalled, on a request with a body and an idle timeout, is closed
	// once what the timeout's end did to the caller's upload is decided:
	// stopped, it stopped reading it (stopStalledUpload).
	stalled chan struct{}
	stopped bool
	// ended is when a request without a body reached the router (the
	// end of one with a body is body's).
	ended time.Time
	// What end stops: the route's timeout (a deadline, or a cancel for
	// a request with a body) and the idle timeout's context.
	deadline *deadlineCtx
	cancel   context.CancelFunc
	idleStop context.CancelFunc
	// upgradeTimer is the route's timeout of an upgrade request, stopped
	// by the upstream's 101; upgraded is the connection that answer
	// upgraded.
	upgradeTimer *time.Timer
	upgraded     *upgradedBody
	// The circuit breaker slots the exchange holds (the request's, and
	// the retry's of the last attempt), and the last attempt's context's
	// cancel, until respBody, the response's body, closes.
	br        breaker
	retryHeld bool
	acancel   context.CancelFunc
	respBody  exchangeBody
	// dropTrailers: the cluster's HTTP/1.1 codec drops trailers both ways
	// (its enable_trailers is off).
	dropTrailers bool
}

// RoundTrip picks the route's cluster once, then makes attempts (with a
// previous_hosts predicate, each to an endpoint the earlier ones did not
// try when there is one), until one is not to be retried. Each attempt is
// bounded by the per-try timeout; the route's timeout bounds all of them
// (req's context).
func (ex *exchange) RoundTrip(req *http.Request) (*http.Response, error) {
	p, ri, rt := ex.p, ex.ri, ex.rt
	name := weighted(rt.Clusters)
	ri.Cluster = name
	c := ex.cfg.Clusters[name]
	if c == nil || c.Warming || c.OriginalDst {
		return nil, &localReplyError{http.StatusServiceUnavailable, "NC", "no healthy upstream"}
	}
	br := p.breakerFor(c)
	if !br.hold(limitRequest) {
		return nil, &localReplyError{http.StatusServiceUnavailable, "UO", "upstream connect error or disconnect/reset before headers. reset reason: overflow"}
	}
	ex.br = br
	if c.HTTP != HTTP2 && !c.EnableTrailers {
		// An HTTP/1.1 upstream's codec, as Envoy's, neither writes
		// trailers nor reads them unless the cluster enables them.
		req.Trailer, ex.dropTrailers = nil, true
	}
	var pol retryPolicy
	if rt.Retry != nil {
		pol = *rt.Retry
	}
	pool := p.upstreamFor(c)
	// tried is made at the first retry that is to leave out the endpoints
	// tried (previous_hosts): most requests make one attempt.
	var tried map[string]bool
	last := ""
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			// The retry's slot was taken before the last attempt's
			// outcome was let go (retryHeld).
			if tried == nil && pol.omitTried {
				tried = map[string]bool{last: true}
			}
			p.l7.m.retries.WithLabelValues(ri.Service, ri.Route).Inc()
			if err := sleepCtx(ex.ctx, retryBackoff(attempt, pol.base, pol.maxi)); err != nil {
				ex.releaseSlots()
				return nil, err
			}
			since := ri.Start
			if ended, ok := ex.requestEnd(); ok {
				since = ended
			}
			ri.Chain.Headers.retry(req.Header, rt, time.Since(since))
		}
		ep, ok := p.pick(c, tried, pol.draws)
		if !ok && len(tried) > 0 {
			// Every endpoint has been tried: start over, from another one
			// than the last when there is one.
			tried = map[string]bool{last: true}
			if ep, ok = p.pick(c, tried, pol.draws); !ok {
				ep, ok = p.pick(c, nil, 1)
			}
		}
		if !ok {
			ex.releaseSlots()
			return nil, &localReplyError{http.StatusServiceUnavailable, "UH", "no healthy upstream"}
		}
		if tried != nil {
			tried[ep.Addr] = true
		}
		last = ep.Addr
		ri.Attempts++
		ri.UpstreamHost, ri.UpstreamZone = ep.Addr, ep.Zone
		actx, acancel := ex.ctx, context.CancelFunc(nop)
		var tries *perTry
		armedLate := false
		if pol.perTry > 0 {
			actx, tries = startPerTry(actx, pol.perTry)
			acancel = tries.end
			// As Envoy's, the timer runs once the request has come whole:
			// an upload is not cut off by it.
			if _, whole := ex.requestEnd(); whole || !ex.body.armAtEnd(tries) {
				tries.arm()
			} else {
				armedLate = true
			}
		}
		var body io.ReadCloser
		var again func() (io.ReadCloser, error)
		if req.Body != nil && req.Body != http.NoBody {
			body, again = ex.body.attempt(), ex.again
		}
		var resp *http.Response
		var err error
		if h1, ok := pool.(*h1Pool); ok {
			// The HTTP/1.1 pool takes the request as it is: no copy.
			// Deadlines bound its I/O; the caller leaving, or an idle
			// timeout, cancels watch.
			watch := ex.watch
			switch {
			case watch == nil, armedLate:
				// A timer armed at the upload's end cannot set the head's
				// deadline the exchange began with: the attempt's context,
				// which it ends (as does the caller leaving), is watched.
				watch = actx
			case ri.scratch != nil:
				watch = nil // the fast path's connection watches itself
			}
			resp, err = h1.send(actx, watch, ep.Addr, req, body, again, ri.scratch)
		} else {
			// A shallow copy with its own URL, header and context, which a dial
			// of the Transport's may wait on as a pending request
			// (connectionSlot) until the attempt has its connection.
			got := make(chan struct{})
			out := req.WithContext(withAttemptDone(actx, got))
			// Its own header: the Transport's writer may read it after
			// RoundTrip returned (on a timeout), when a fast-path
			// connection's next request is parsed into the map.
			out.Header = req.Header.Clone()
			if _, ok := out.Header["User-Agent"]; !ok {
				out.Header["User-Agent"] = []string{""} // none, not Go's
			}
			u := *req.URL
			out.URL = &u
			out.Close = false // the caller's connection's, not this one's
			out.URL.Host = ep.Addr
			out.URL.Scheme = "http"
			if c.TLS {
				out.URL.Scheme = "https"
			}
			out.Body, out.GetBody = body, again
			resp, err = pool.RoundTrip(out)
			close(got)
			if err == nil {
				if herr := checkH2ResponseHead(c, resp); herr != nil {
					resp.Body.Close() // resets the stream
					resp, err = nil, herr
				}
			}
		}
		status := 0
		if resp != nil {
			status = resp.StatusCode
			tries.answered()
		}
		p.outcome(c, ep, status, err)
		// Load reports count an HTTP cluster's requests, as Envoy's do
		// (a pooled connection carries many): a 5xx or no answer is an
		// error.
		p.load.record(c.Name, ep.Zone, err == nil && status < 500)
		perTryTimedOut := err != nil && tries.timedOut() && ex.ctx.Err() == nil
		wanted := pol.wants(resp, err)
		if wanted && attempt < pol.retries && ex.body.replayable() && ex.ctx.Err() == nil {
			// A retry needs a retry slot first; without one (overflow),
			// the attempt's outcome goes on as it is, as in Envoy.
			ex.releaseRetry()
			if br.hold(limitRetry) {
				ex.retryHeld = true
				if resp != nil {
					io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
					resp.Body.Close()
				}
				acancel()
				continue
			}
			ri.flag("UO")
			wanted = false
		}
		if wanted && attempt > 0 && attempt >= pol.retries {
			ri.flag("URX")
		}
		if err != nil {
			acancel()
			ex.releaseSlots()
			return nil, ex.failure(err, perTryTimedOut)
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			// An upgraded connection (a WebSocket) is the reverse proxy's
			// to copy, through its writable body, which the reverse proxy
			// closes when ex.ctx ends. The route's timeout ends here (one
			// that fired first has ended ex.ctx); the idle timeout goes on,
			// kicked by the bytes either way, as Envoy's stream idle timer.
			if ex.upgradeTimer != nil && !ex.upgradeTimer.Stop() {
				// The timeout fired as the answer came: it is the timeout's
				// (504), as it would be a moment before.
				resp.Body.Close()
				acancel()
				ex.releaseSlots()
				<-ex.ctx.Done()
				return nil, ex.ctx.Err()
			}
			ex.idle.kick()
			if rwc, ok := resp.Body.(io.ReadWriteCloser); ok {
				ex.upgraded = &upgradedBody{ReadWriteCloser: rwc, idle: ex.idle, release: func() { acancel(); ex.releaseSlots() }}
				resp.Body = ex.upgraded
				return resp, nil
			}
			acancel()
			ex.releaseSlots()
			return resp, nil
		}
		if ex.idle != nil {
			ex.idle.kick()
			resp.Body = &idleBody{ReadCloser: resp.Body, idle: ex.idle}
		}
		// The slots and the attempt's context are the response's until
		// its body closes (the exchange's own body: no allocation).
		ex.acancel = acancel
		ex.respBody = exchangeBody{ReadCloser: resp.Body, ex: ex}
		resp.Body = &ex.respBody
		return resp, nil
	}
}

// perTry is an attempt's per_try_timeout: once armed, it ends the
// attempt's context, unless the response's headers came first. As in
// Envoy, it is armed when the request has come whole
// (UpstreamRequest::setupPerTryTimeout), and a response that has begun is
// not cut off by it (UpstreamRequest::onPerTryTimeout): only the route's
// timeout bounds its body. The HTTP/1.1 pool reads the head's deadline
// from the context (headDeadlineKey) of an attempt armed at its start; an
// attempt armed later (at the end of its upload) ends through its
// context.
type perTry struct {
	mu       sync.Mutex
	d        time.Duration
	headers  bool
	expired  bool
	ended    bool
	deadline time.Time // when armed
	timer    *time.Timer
	cancel   context.CancelFunc
}

// headDeadlineKey keys an attempt's *perTry in its context.
type headDeadlineKey struct{}

// startPerTry returns the attempt's context under parent, and its timer,
// not yet armed.
func startPerTry(parent context.Context, d time.Duration) (context.Context, *perTry) {
	ctx, cancel := context.WithCancel(parent)
	t := &perTry{d: d, cancel: cancel}
	return context.WithValue(ctx, headDeadlineKey{}, t), t
}

// arm starts the timer, once.
func (t *perTry) arm() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.timer != nil || t.ended || t.headers {
		return
	}
	t.deadline = time.Now().Add(t.d)
	t.timer = time.AfterFunc(t.d, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if !t.headers && !t.ended {
			t.expired = true
			t.cancel()
		}
	})
}

// headDeadline is when the timer fires; false while it is not armed.
func (t *perTry) headDeadline() (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.deadline, t.timer != nil
}

// answered stops the timer: the response's headers came.
func (t *perTry) answered() {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.headers = true
	if t.timer != nil {
		t.timer.Stop()
	}
}

// timedOut says whether the timer ended the attempt.
func (t *perTry) timedOut() bool {
	if t == nil {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.expired
}

// end ends the attempt's context and its timer.
func (t *perTry) end() {
	t.mu.Lock()
	t.ended = true
	if t.timer != nil {
		t.timer.Stop()
	}
	t.mu.Unlock()
	t.cancel()
}

// releaseSlots frees the circuit breaker slots the exchange holds: the
// request's, and the retry's when it holds one.
func (ex *exchange) releaseSlots() {
	ex.releaseRetry()
	ex.br.free(limitRequest)
}

// releaseRetry frees the retry slot the exchange holds, if it holds one.
func (ex *exchange) releaseRetry() {
	if ex.retryHeld {
		ex.retryHeld = false
		ex.br.free(limitRetry)
	}
}

// nop does nothing.
func nop() {}

// exchangeBody is a response's body as the exchange hands it on: closing
// it frees the exchange's breaker slots and ends its last attempt's
// context, once.
type exchangeBody struct {
	io.ReadCloser
	ex   *exchange
	done bool
}

func (b *exchangeBody) Close() error {
	err := b.ReadCloser.Close()
	if !b.done {
		b.done = true
		ex := b.ex
		ex.acancel()
		ex.releaseSlots()
	}
	return err
}

// again is the request body from its start, for a connection pool that
// sends an attempt again on a fresh connection.
func (ex *exchange) again() (io.ReadCloser, error) {
	if !ex.body.replayable() {
		return nil, errors.New("request body: too large to replay")
	}
	return ex.body.attempt(), nil
}

// failure is the local reply for an attempt's error.
func (ex *exchange) failure(err error, perTryTimedOut bool) error {
	var ce *connectError
	var local *localReplyError
	var head *upstreamHeadError
	switch {
	case errors.As(err, &local):
		return local // a circuit breaker's overflow while connecting
	case errors.As(err, new(*callerError)):
		return err // the caller's: fail tells how
	case errors.As(err, &head):
		return &localReplyError{head.status, "UPE", "upstream connect error or disconnect/reset before headers. reset reason: protocol error"}
	case h2ProtocolError(err):
		return &localReplyError{http.StatusServiceUnavailable, "UPE", "upstream connect error or disconnect/reset before headers. reset reason: protocol error"}
	case perTryTimedOut:
		return &localReplyError{http.StatusGatewayTimeout, "UT", "upstream request timeout"}
	case ex.ctx.Err() != nil:
		return err // the route's timeout, or the caller gone: the error handler tells which
	case errors.As(err, &ce):
		return &localReplyError{http.StatusServiceUnavailable, "UF", "upstream connect error or disconnect/reset before headers. reset reason: connection failure"}
	}
	return &localReplyError{http.StatusServiceUnavailable, "UC", "upstream connect error or disconnect/reset before headers. reset reason: connection termination"}
}

// h2ProtocolError says whether err is an HTTP/2 upstream's protocol
// error, which Envoy flags UPE: a head past the bound the Transport
// advertises (httpPool: the cluster's and the slack), a header its
// decoder refuses (COMPRESSION_ERROR), a PROTOCOL_ERROR. net/http's
// errors for them are not exported: their texts are what tells.
func h2ProtocolError(err error) bool {
	s := err.Error()
	if strings.Contains(s, "received from peer") || strings.Contains(s, "server sent GOAWAY") {
		return false // the upstream's own reset or GOAWAY: a reset (UR) or a termination (UC), as in Envoy
	}
	return strings.Contains(s, "response header list larger than advertised limit") ||
		strings.Contains(s, "COMPRESSION_ERROR") || strings.Contains(s, "PROTOCOL_ERROR")
}

// upstreamHeadError is an upstream response whose header is past its
// cluster's bounds: status is what the caller gets (Envoy's: 503 for the
// size, and for the count over HTTP/2; 502 for the count over HTTP/1.1).
type upstreamHeadError struct {
	status int
	why    string // when not the bounds
}

func (e *upstreamHeadError) Error() string {
	if e.why != "" {
		return e.why
	}
	return fmt.Sprintf("upstream response header past the cluster's bounds (%d)", e.status)
}

// checkH2ResponseHead says whether resp's header, from an HTTP/2 endpoint
// of c, is within c's bounds as Envoy's HTTP/2 codec counts them (each
// field's name and value, and their number, :status's included): nil, or
// the error it is past one with (503 for either, as Envoy's codec resets
// the stream). The HTTP/1.1 pool checks its own (readHead).
func checkH2ResponseHead(c *Cluster, resp *http.Response) error {
	maxSize, maxN := c.responseHeaderLimits()
	size, n := headerLoad(resp.Header)
	if size+len(":status")+3 > maxSize || n+1 > maxN {
		return &upstreamHeadError{status: http.StatusServiceUnavailable}
	}
	return nil
}

// wants says whether the policy retries an attempt that ended with resp
// or err, as Envoy's retry_on conditions do.
func (pol *retryPolicy) wants(resp *http.Response, err error) bool {
	if len(pol.on) == 0 {
		return false
	}
	if err != nil {
		var local *localReplyError
		if errors.As(err, &local) {
			return false // a local reply, a breaker's overflow: retrying adds load where it must shed it (Envoy does not)
		}
		if errors.As(err, new(*callerError)) {
			return false // the caller's body failed: it would fail again
		}
		var ce *connectError
		connect := errors.As(err, &ce)
		refused := strings.Contains(err.Error(), "REFUSED_STREAM")
		// An upstream reset counts as the 5xx (gateway error) it ends in,
		// and a connection that failed as a reset, as in Envoy's
		// wouldRetryFromReset.
		return pol.on["5xx"] || pol.on["gateway-error"] || pol.on["reset"] ||
			pol.on["connect-failure"] && connect || pol.on["refused-stream"] && refused
	}
	s := resp.StatusCode
	switch {
	case pol.on["5xx"] && s >= 500 && s <= 599,
		pol.on["gateway-error"] && (s == 502 || s == 503 || s == 504),
		pol.on["retriable-4xx"] && s == 409:
		return true
	case pol.on["retriable-status-codes"]:
		for _, c := range pol.statuses {
			if int(c) == s {
				return true
			}
		}
	}
	// gRPC's trailers-only replies carry grpc-status in the headers.
	if g := resp.Header.Get("Grpc-Status"); g != "" {
		code, _ := strconv.Atoi(g)
		return pol.on["cancelled"] && code == 1 || pol.on["deadline-exceeded"] && code == 4 ||
			pol.on["resource-exhausted"] && code == 8 || pol.on["internal"] && code == 13 || pol.on["unavailable"] && code == 14
	}
	return false
}

// retryBackoff is a retry's wait: full jitter over an exponential ceiling from
// base, at most maxi (Envoy's).
func retryBackoff(retry int, base, maxi time.Duration) time.Duration {
	if base <= 0 {
		base = 25 * time.Millisecond
	}
	if maxi <= 0 {
		maxi = 10 * base
	}
	ceil := base << min(retry-1, 30)
	if ceil > maxi || ceil <= 0 {
		ceil = maxi
	}
	return rand.N(ceil + 1)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// weighted picks a route's cluster by weight.
func weighted(rs []Route) string {
	var total uint32
	for _, r := range rs {
		total += r.Weight
	}
	if total == 0 {
		return ""
	}
	n := rand.Uint32N(total)
	for _, r := range rs {
		if n < r.Weight {
			return r.Cluster
		}
		n -= r.Weight
	}
	return ""
}

// upgradedBody is an upgraded connection as the response's body, which
// the reverse proxy writes to as well; closing it calls release, once.
type upgradedBody struct {
	io.ReadWriteCloser
	idle *idleWatch // kicked by the bytes either way (nil: none)
	// in and out count the bytes to and from the upstream, for the
	// access log (the caller's, which the reverse proxy copies past the
	// request's counters).
	in, out atomic.Int64
	release func()
	once    sync.Once
}

func (b *upgradedBody) Read(p []byte) (int, error) {
	n, err := b.ReadWriteCloser.Read(p)
	if n > 0 {
		b.out.Add(int64(n))
		b.idle.kick()
	}
	return n, err
}

func (b *upgradedBody) Write(p []byte) (int, error) {
	n, err := b.ReadWriteCloser.Write(p)
	if n > 0 {
		b.in.Add(int64(n))
		b.idle.kick()
	}
	return n, err
}

func (b *upgradedBody) Close() error {
	err := b.ReadWriteCloser.Close()
	b.once.Do(b.release)
	return err
}

// idleWatch cancels a request that sees no activity (response bytes) for
// its route's idle timeout.
type idleWatch struct {
	d     time.Duration
	timer *time.Timer
	mu    sync.Mutex
	fire  bool
}

func newIdleWatch(d time.Duration) *idleWatch { return &idleWatch{d: d} }

// bind starts the watch over a context that it cancels when it fires,
// first after used less than its timeout (the time already idle); done
// stops it and cancels the context.
func (w *idleWatch) bind(ctx context.Context, used time.Duration) (_ context.Context, done context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	w.timer = time.AfterFunc(w.d-used, func() {
		w.mu.Lock()
		w.fire = true
		w.mu.Unlock()
		cancel()
	})
	return ctx, func() { w.timer.Stop(); cancel() }
}

// kick restarts the watch; a nil watch is none.
func (w *idleWatch) kick() {
	if w != nil {
		w.timer.Reset(w.d)
	}
}

func (w *idleWatch) fired() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fire
}

// idleBody kicks its watch on every read.
type idleBody struct {
	io.ReadCloser
	idle *idleWatch
}

func (b *idleBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.idle.kick()
	}
	return n, err
}

// callerError is a request that fails through its caller: a head that
// cannot be sent as it is, a body that breaks HTTP's framing (a bad
// chunk), or the caller gone while sending it. It says nothing of the
// upstream: the exchange ends without a retry or an outlier count, and
// the reply (if any) is the caller's fault, as Envoy's codec errors are.
type callerError struct {
	err error
	// bad says the caller sent what HTTP cannot carry (400); else it went
	// away, or was stopped (a deadline, a closed body): no answer.
	bad bool
}

func (e *callerError) Error() string { return "the caller's request: " + e.err.Error() }
func (e *callerError) Unwrap() error { return e.err }

// bodyError is the callerError of err, from reading a request's body.
func bodyError(err error) *callerError {
	return &callerError{err: fmt.Errorf("reading its body: %w", err), bad: badChunking(err)}
}

// badChunking says whether err, from reading a request body, is net/http's
// chunked reader finding the caller's chunks or trailers malformed (its
// errors are not exported: net/http/internal/chunked.go): an HTTP/1.1
// caller's framing error, as Envoy's codec finds it. Anything else (a
// short body, a reset, an HTTP/2 stream's end) is the caller gone.
func badChunking(err error) bool {
	if errors.Is(err, http.ErrLineTooLong) || errors.As(err, new(textproto.ProtocolError)) || errors.Is(err, errBadTrailer) {
		return true
	}
	msg := err.Error()
	for _, s := range [...]string{"malformed chunked encoding", "chunked encoding contains too much non-data",
		"chunked line ends with bare LF", "invalid CR in chunked line", "empty hex number for chunk length",
		"invalid byte in chunk length", "http chunk length too large"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// replayBody is a request body that attempts read in turn: what the first
// read is kept (up to maxReplay) so that a retry sends it again, then goes
// on from the source. A retry is possible while everything read so far is
// kept.
type replayBody struct {
	mu sync.Mutex
	// srcMu serialises reads of src: an earlier attempt's writer (an
	// HTTP/2 upstream's body goroutine) may still be blocked in one when
	// the retry starts reading.
	srcMu sync.Mutex
	src   io.Reader
	// onEOF, when set, is called once, when the source ends.
	onEOF func()
	// tries, when set, is the attempt's per-try timer to arm then.
	tries    *perTry
	buf      []byte
	eof      bool
	ended    time.Time // when eof was found
	overflow bool
	// idle, when set, is kicked by every read of the source that gives
	// bytes.
	idle    *idleWatch
	current *attemptBody
}

func newReplayBody(src io.Reader) *replayBody { return &replayBody{src: src} }

// end is when the source ended; false while it has not.
func (b *replayBody) end() (time.Time, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ended, b.eof
}

// attempt is the body of a new attempt; the previous attempt's reads end.
func (b *replayBody) attempt() io.ReadCloser {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.current != nil {
		b.current.dead = true
	}
	b.current = &attemptBody{b: b}
	return b.current
}

// armAtEnd makes t armed when the source ends; false when it has ended.
func (b *replayBody) armAtEnd(t *perTry) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.eof {
		return false
	}
	b.tries = t
	return true
}

func (b *replayBody) replayable() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.overflow
}

// attemptBody is one attempt's reader of a replayBody.
type attemptBody struct {
	b    *replayBody
	pos  int
	dead bool
}

func (a *attemptBody) Read(p []byte) (int, error) {
	b := a.b
	for {
		if n, done, err := a.fromBuffer(p); done {
			return n, err
		}
		// Read the source with srcMu held, so that a dead attempt's
		// reader still blocked in it finishes (and appends what it read)
		// before this one looks again.
		b.srcMu.Lock()
		b.mu.Lock()
		behind := a.pos < len(b.buf) || b.eof || a.dead
		b.mu.Unlock()
		if behind {
			b.srcMu.Unlock()
			continue
		}
		n, err := b.src.Read(p)
		if n > 0 && b.idle != nil {
			b.idle.kick()
		}
		if err != nil && err != io.EOF {
			err = bodyError(err)
		}
		b.mu.Lock()
		if n > 0 {
			if !b.overflow && len(b.buf)+n <= maxReplay {
				b.buf = append(b.buf, p[:n]...)
				a.pos += n
			} else {
				b.overflow = true
				b.buf = nil
				a.pos = 0
			}
		}
		if err == io.EOF && !b.eof {
			b.eof, b.ended = true, time.Now()
			if b.onEOF != nil {
				b.onEOF()
			}
			if b.tries != nil {
				b.tries.arm()
			}
		}
		b.mu.Unlock()
		b.srcMu.Unlock()
		return n, err
	}
}

// fromBuffer answers a read from what is kept, or says (done false) that
// the source must be read.
func (a *attemptBody) fromBuffer(p []byte) (n int, done bool, err error) {
	b := a.b
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case a.dead:
		return 0, true, errors.New("request body: a newer attempt took it")
	case a.pos < len(b.buf):
		n = copy(p, b.buf[a.pos:])
		a.pos += n
		return n, true, nil
	case b.eof:
		return 0, true, io.EOF
	case b.overflow && a.pos != len(b.buf):
		return 0, true, errors.New("request body: too large to replay")
	}
	return 0, false, nil
}

func (a *attemptBody) Close() error {
	a.b.mu.Lock()
	a.dead = true
	a.b.mu.Unlock()
	return nil
}

// h2HeadSlack is what the HTTP/2 Transport's bound on a response's head
// (MaxResponseHeaderBytes) has past a cluster's, besides net/http's 32
// bytes a field: the exchange checks the cluster's own
// (checkH2ResponseHead).
const h2HeadSlack = 4 << 10

// httpPool is the connection pool (an http.Transport) of cluster c: HTTP/1.1
// or HTTP/2 as its protocol options say, h2c in plain text, and over mTLS
// originated as for TCP (SNI, the server's SPIFFE ID checked), connecting
// to the endpoint in each request's URL. A cluster whose connection
// settings change gets a new pool; the old one's idle connections close.
func (p *Proxy) httpPool(c *Cluster) *http.Transport {
	p.l7.poolsMu.Lock()
	defer p.l7.poolsMu.Unlock()
	// Every request asks: the Cluster the pool was last asked for is the
	// answer without formatting the key (a Config's Clusters do not change).
	if pl, ok := p.l7.pools[c.Name]; ok && pl.c == c {
		return pl.t
	}
	maxHead, maxFields := c.responseHeaderLimits()
	key := fmt.Sprintf("%t|%s|%q|%d|%s|%s|%q|%d|%d", c.TLS, c.SNI, c.ALPN, c.HTTP, c.HTTPIdleTimeout, c.ConnectTimeout, c.WantSANs, maxHead, maxFields)
	if pl, ok := p.l7.pools[c.Name]; ok && pl.key == key {
		pl.c = c
		return pl.t
	} else if ok {
		pl.t.CloseIdleConnections()
	}
	idle := c.HTTPIdleTimeout
	if idle == 0 {
		idle = time.Hour
	}
	t := &http.Transport{
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     idle,
		// What a response's head may take (net/http counts each field's
		// name and value and 32 more): the exchange checks the bounds.
		MaxResponseHeaderBytes: int64(maxHead + 32*(maxFields+1) + h2HeadSlack),
		DisableCompression:     true,
		Protocols:              new(http.Protocols),
	}
	switch {
	case c.HTTP == HTTP2 && c.TLS:
		t.Protocols.SetHTTP2(true)
	case c.HTTP == HTTP2:
		t.Protocols.SetUnencryptedHTTP2(true)
	default:
		t.Protocols.SetHTTP1(true)
	}
	t.DialContext = func(ctx context.Context, _, addr string) (net.Conn, error) {
		conn, _, err := p.dialEndpoint(ctx, c, addr, false, sysUnder)
		return conn, err
	}
	t.DialTLSContext = func(ctx context.Context, _, addr string) (net.Conn, error) {
		conn, _, err := p.dialEndpoint(ctx, c, addr, true, sysUnder)
		return conn, err
	}
	p.l7.pools[c.Name] = &httpPoolEntry{key: key, t: t, c: c}
	return t
}

// dialEndpoint connects to endpoint addr of cluster c once the cluster's
// circuit breaker gives a connection slot (closing conn frees it):
// plain, or with tls mTLS originated as for TCP (SNI, the server's SPIFFE
// ID checked). raw is the TCP connection under conn; under, when not nil,
// gives what conn (or its TLS) is to write and read instead of raw. The
// outcome goes to load reports, and a failure to outlier detection (a
// refused handshake also to the upstream's metrics).
func (p *Proxy) dialEndpoint(ctx context.Context, c *Cluster, addr string, tls bool, under func(raw net.Conn) net.Conn) (conn, raw net.Conn, err error) {
	ep := Endpoint{Addr: addr}
	for _, e := range c.Endpoints {
		if e.Addr == addr {
			ep = e
			break
		}
	}
	release, err := p.connectionSlot(ctx, c)
	if err != nil {
		return nil, nil, err
	}
	p.trying(c, addr)
	raw, err = p.endpointDialer(c, addr).DialContext(ctx, "tcp", addr)
	if err != nil {
		release()
		if ctx.Err() == nil {
			p.eject(c.Name, addr)
		}
		return nil, nil, &connectError{err}
	}
	conn = raw
	if under != nil {
		conn = under(raw)
	}
	conn = &releasingConn{Conn: conn, release: release}
	if tls {
		tc, err := p.originate(p.cfg.Load(), conn, c)
		if err != nil {
			conn.Close()
			if !errors.Is(err, errNoIdentity) {
				p.eject(c.Name, addr)
				p.upstreamRefused(c, ep, err)
			}
			return nil, nil, &connectError{err}
		}
		conn = tc // closing it closes the slot's connection
	}
	p.connected(c.Name, addr)
	return conn, raw, nil
}

// httpPoolEntry is a cluster's pool and the settings it was made with.
type httpPoolEntry struct {
	key string
	t   *http.Transport
	c   *Cluster // the last Cluster whose settings were key
}

// httpApplied is the HTTP engine's part of Apply, once cfg is current: it
// wakes the requests waiting for a route configuration, and closes the
// pools of clusters cfg no longer has.
func (p *Proxy) httpApplied(cfg *Config) {
	p.l7.routesMu.Lock()
	close(p.l7.routesCame)
	p.l7.routesCame = make(chan struct{})
	p.l7.routesMu.Unlock()
	p.l7.poolsMu.Lock()
	defer p.l7.poolsMu.Unlock()
	p.sweepH1Pools(cfg)
	for name, pl := range p.l7.pools {
		if _, ok := cfg.Clusters[name]; !ok {
			pl.t.CloseIdleConnections()
			delete(p.l7.pools, name)
		}
	}
}

// releasingConn frees its circuit breaker slot once, when it closes.
type releasingConn struct {
	net.Conn
	release func()
	once    sync.Once
}

func (c *releasingConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
