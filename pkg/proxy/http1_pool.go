package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The HTTP/1.1 fast path, upstream: a cluster speaking HTTP/1.1 keeps a
// pool of persistent connections per endpoint, and an attempt writes its
// request and reads the response on the calling goroutine (no
// Transport writeLoop/readLoop). Cancellation (the route's and per-try
// timeouts, the caller gone) moves the connection's deadline into the
// past, which ends a blocked read or write; such a connection closes.

// h1MaxIdle is the most idle connections an endpoint keeps.
const h1MaxIdle = 1024

// h1ProbeAfter is how long a connection may have been idle before it is
// checked for a close by its server before reuse.
const h1ProbeAfter = 250 * time.Millisecond

// aLongTimeAgo is a deadline that has passed.
var aLongTimeAgo = time.Unix(1, 0)

// h1Pool is one cluster's HTTP/1.1 connections, by endpoint address.
type h1Pool struct {
	p    *Proxy
	c    atomic.Pointer[Cluster] // the latest configuration's
	key  string                  // of the connection settings
	idle time.Duration           // how long a connection may wait unused

	mu     sync.Mutex
	conns  map[string][]*h1Conn
	closed bool
	// freed is closed (and replaced) when a connection is put back while
	// an attempt waits for one at max_connections.
	freed   chan struct{}
	waiters int
}

func newH1Pool(p *Proxy, c *Cluster) *h1Pool {
	idle := c.HTTPIdleTimeout
	if idle == 0 {
		idle = time.Hour
	}
	pl := &h1Pool{p: p, key: h1Key(c), idle: idle, conns: map[string][]*h1Conn{}}
	pl.c.Store(c)
	return pl
}

// h1Key is what a cluster's connections are made with: a change makes a
// new pool.
func h1Key(c *Cluster) string {
	return fmt.Sprintf("%t|%s|%q|%s|%s|%q", c.TLS, c.SNI, c.ALPN, c.HTTPIdleTimeout, c.ConnectTimeout, c.WantSANs)
}

// upstreamFor is the connection pool of cluster c: the HTTP/1.1 fast
// path's, or an http.Transport for HTTP/2.
func (p *Proxy) upstreamFor(c *Cluster) http.RoundTripper {
	if c.HTTP == HTTP2 {
		return p.httpPool(c)
	}
	p.l7.poolsMu.Lock()
	defer p.l7.poolsMu.Unlock()
	pl, ok := p.l7.h1pools[c.Name]
	switch {
	case ok && pl.c.Load() == c:
		return pl
	case ok && pl.key == h1Key(c):
		pl.c.Store(c)
		return pl
	case ok:
		pl.closeIdle()
	}
	pl = newH1Pool(p, c)
	p.l7.h1pools[c.Name] = pl
	return pl
}

// sweepH1Pools closes the pools of clusters cfg no longer has, and the
// idle connections of the others to endpoints they no longer have (which
// would otherwise hold their max_connections slots); the caller holds
// poolsMu.
func (p *Proxy) sweepH1Pools(cfg *Config) {
	for name, pl := range p.l7.h1pools {
		c, ok := cfg.Clusters[name]
		if !ok {
			pl.closeIdle()
			delete(p.l7.h1pools, name)
			continue
		}
		if c.Warming || c.OriginalDst {
			continue // no endpoints yet, or none listed: nothing to go by
		}
		live := make(map[string]bool, len(c.Endpoints))
		for _, ep := range c.Endpoints {
			live[ep.Addr] = true
		}
		pl.closeIdleExcept(live)
	}
}

// closeIdleExcept closes the idle connections to endpoints not in live.
func (pl *h1Pool) closeIdleExcept(live map[string]bool) {
	var gone []*h1Conn
	pl.mu.Lock()
	for addr, cs := range pl.conns {
		if !live[addr] {
			gone = append(gone, cs...)
			delete(pl.conns, addr)
		}
	}
	pl.mu.Unlock()
	for _, pc := range gone {
		pc.Close()
	}
}

// closePools closes every pool's idle connections, at the proxy's end.
func (p *Proxy) closePools() {
	if p.l7 == nil {
		return
	}
	p.l7.poolsMu.Lock()
	defer p.l7.poolsMu.Unlock()
	for name, pl := range p.l7.h1pools {
		pl.closeIdle()
		delete(p.l7.h1pools, name)
	}
	for name, pl := range p.l7.pools {
		pl.t.CloseIdleConnections()
		delete(p.l7.pools, name)
	}
}

// h1Conn is a pooled upstream connection.
type h1Conn struct {
	net.Conn // plain or TLS, closing it frees its connection slot
	raw      net.Conn
	src      *h1Src // what br reads: bounded while a head is read
	// br and bw are taken from their pools for an exchange (in, out): an
	// idle connection holds neither (see h1Writer.out). br goes back
	// when the connection does, with nothing buffered; bw once the
	// request has left.
	br     *bufio.Reader
	bw     *bufio.Writer
	addr   string
	since  time.Time // idle since
	reused bool
	// reply, when not nil, makes a request's last write wait for the
	// answer (sysConn); what its TLS adds to that write: overhead.
	reply    *sysConn
	overhead int
}

// in is pc's reader, taken from the pool for an exchange's answer.
func (pc *h1Conn) in() *bufio.Reader {
	if pc.br == nil {
		pc.br = takeReader(pc.src)
	}
	return pc.br
}

// buffered is what pc's reader holds unread.
func (pc *h1Conn) buffered() int {
	if pc.br == nil {
		return 0
	}
	return pc.br.Buffered()
}

// out is pc's writer, taken from the pool for an exchange's request;
// releaseOut gives it back.
func (pc *h1Conn) out() *bufio.Writer {
	if pc.bw == nil {
		pc.bw = takeWriter(pc.Conn)
	}
	return pc.bw
}

func (pc *h1Conn) releaseOut() {
	if pc.bw != nil {
		giveWriter(pc.bw)
		pc.bw = nil
	}
}

// closeIdle closes the idle connections, and those put back later.
func (pl *h1Pool) closeIdle() {
	pl.mu.Lock()
	conns := pl.conns
	pl.conns, pl.closed = map[string][]*h1Conn{}, true
	pl.mu.Unlock()
	for _, cs := range conns {
		for _, pc := range cs {
			pc.Close()
		}
	}
}

// take is an idle connection to addr that has not been closed by its
// server, nil for none; with none, and wait, it also returns a channel
// closed when one is put back. A connection idle for long, or any when
// probe says (a request that could not be sent again), is checked first.
func (pl *h1Pool) take(addr string, wait, probe bool) (*h1Conn, <-chan struct{}) {
	now := time.Now()
	pl.mu.Lock()
	for cs := pl.conns[addr]; len(cs) > 0; cs = pl.conns[addr] {
		pc := cs[len(cs)-1]
		cs[len(cs)-1] = nil
		pl.conns[addr] = cs[:len(cs)-1]
		idle := now.Sub(pc.since)
		_, tlsConn := pc.Conn.(*tls.Conn)
		if idle < h1ProbeAfter && !probe {
			pl.mu.Unlock()
			return pc, nil
		}
		pl.mu.Unlock()
		pc.SetDeadline(time.Time{}) // the last request's may have passed
		// A plain connection with bytes waiting holds what its server sent
		// unasked (a TLS one may hold a session ticket, which is fine).
		// Sooner, put's check stands for this one: bytes a server sends
		// past a response come with it, and a peek per request would cost
		// a system call on the busiest path.
		if idle < pl.idle && pc.buffered() == 0 && alive(pc.raw, !tlsConn) {
			return pc, nil
		}
		pc.Close()
		pl.mu.Lock()
	}
	var freed chan struct{}
	if wait {
		if pl.freed == nil {
			pl.freed = make(chan struct{})
		}
		freed = pl.freed
		pl.waiters++
	}
	pl.mu.Unlock()
	return nil, freed
}

func (pl *h1Pool) doneWaiting() {
	pl.mu.Lock()
	pl.waiters--
	pl.mu.Unlock()
}

// put returns a connection whose last response was read to its end. Its
// deadline stays (the next exchange sets its own, take's probe clears it).
// One that has read bytes past that end is closed, as Envoy's codec closes
// on "extraneous data after response complete": kept, they would be read
// as the next request's response, another caller's.
func (pl *h1Pool) put(pc *h1Conn) {
	if pc.buffered() > 0 {
		pc.Close()
		return
	}
	if pc.br != nil {
		giveReader(pc.br)
		pc.br = nil
	}
	pc.since, pc.reused = time.Now(), true
	pl.mu.Lock()
	if pl.closed || len(pl.conns[pc.addr]) >= h1MaxIdle {
		pl.mu.Unlock()
		pc.Close()
		return
	}
	pl.conns[pc.addr] = append(pl.conns[pc.addr], pc)
	if pl.waiters > 0 && pl.freed != nil {
		close(pl.freed)
		pl.freed = nil
	}
	pl.mu.Unlock()
}

// closeIdleElsewhere closes the longest idle connection to an endpoint
// other than addr, which gives its connection slot back; false when
// there is none.
func (pl *h1Pool) closeIdleElsewhere(addr string) bool {
	pl.mu.Lock()
	for a, cs := range pl.conns {
		if a == addr || len(cs) == 0 {
			continue
		}
		pc := cs[0] // put back first: idle longest
		copy(cs, cs[1:])
		cs[len(cs)-1] = nil
		pl.conns[a] = cs[:len(cs)-1]
		pl.mu.Unlock()
		pc.Close()
		return true
	}
	pl.mu.Unlock()
	return false
}

// get is a connection to addr: an idle one, else a new one once the
// cluster's circuit breaker gives a connection slot (waiting as a pending
// request at max_connections for a slot or a connection put back).
func (pl *h1Pool) get(ctx context.Context, addr string, probe bool) (*h1Conn, error) {
	for {
		pc, freed := pl.take(addr, true, probe)
		if pc != nil {
			return pc, nil
		}
		pc, err := pl.dial(withIdleToClose(withAttemptDone(ctx, freed), func() bool { return pl.closeIdleElsewhere(addr) }), addr)
		pl.doneWaiting()
		if errors.Is(err, errServed) {
			continue
		}
		return pc, err
	}
}

// dial connects to an endpoint as the cluster says (dialEndpoint).
func (pl *h1Pool) dial(ctx context.Context, addr string) (*h1Conn, error) {
	c := pl.c.Load()
	var reply *sysConn
	conn, raw, err := pl.p.dialEndpoint(ctx, c, addr, c.TLS, func(raw net.Conn) net.Conn {
		if reply = newSysConn(raw); reply != nil {
			return reply
		}
		return raw
	})
	if err != nil {
		return nil, err
	}
	src := &h1Src{c: conn, limit: math.MaxInt64}
	pc := &h1Conn{Conn: conn, raw: raw, addr: addr, reply: reply, src: src}
	if tc, ok := conn.(*tls.Conn); ok && reply != nil {
		if pc.overhead = tlsRecordOverhead(tc.ConnectionState()); pc.overhead < 0 {
			pc.reply = nil
		}
	}
	return pc, nil
}

// alive reports whether an idle connection's server has not closed it:
// a peek at the socket finds no end of stream (data, such as a TLS 1.3
// session ticket, or nothing yet; with quiet, nothing at all).
func alive(c net.Conn, quiet bool) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ok = true
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		ok = (n > 0 && !quiet) || err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
		return true
	})
	return ok && err == nil
}

// RoundTrip sends req to the endpoint in its URL (send).
func (pl *h1Pool) RoundTrip(req *http.Request) (*http.Response, error) {
	body := req.Body
	if body == http.NoBody {
		body = nil
	}
	return pl.send(req.Context(), req.Context(), req.URL.Host, req, body, req.GetBody, nil)
}

// send sends req, with body, to the endpoint at addr on a pooled
// connection and reads the response's header; the body streams from the
// connection, which goes back to the pool when the body was read to its
// end and the upstream keeps the connection alive. ctx's deadline bounds
// the connection's I/O; watch ending (ctx's other ends) moves the
// connection's deadline into the past (a nil watch: sc's caller leaving
// does, h1Scratch.callerGone). A reused connection found broken
// before the response began is replaced once, when the request can be
// sent again (as net/http does): again gives the body from its start.
func (pl *h1Pool) send(ctx, watch context.Context, addr string, req *http.Request, body io.ReadCloser, again func() (io.ReadCloser, error), sc *h1Scratch) (*http.Response, error) {
	probe := !replayable(req, body != nil, again != nil, true)
	for try := 0; ; try++ {
		pc, err := pl.get(ctx, addr, probe)
		if err != nil {
			return nil, err
		}
		resp, sent, err := pl.exchange(ctx, watch, pc, req, body, sc)
		if err == nil {
			return resp, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !pc.reused || try > 0 || !replayable(req, body != nil, again != nil, sent) ||
			errors.As(err, new(*callerError)) || errors.As(err, new(*upstreamHeadError)) {
			return nil, err
		}
		if body != nil {
			if body, err = again(); err != nil {
				return nil, err
			}
		}
	}
}

// replayable reports whether a request that failed on a reused connection
// may go again: one not sent, or an idempotent one, whose body (if it
// has one) can be had again.
func replayable(req *http.Request, hasBody, canAgain, sent bool) bool {
	if hasBody && !canAgain {
		return false
	}
	if !sent {
		return true
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return len(req.Header["Idempotency-Key"]) > 0 || len(req.Header["X-Idempotency-Key"]) > 0
}

// exchange makes one request on pc; sent says whether the request left
// (the write succeeded), for a retry's choice. On error pc is closed.
func (pl *h1Pool) exchange(ctx, watch context.Context, pc *h1Conn, req *http.Request, body io.ReadCloser, sc *h1Scratch) (_ *http.Response, sent bool, _ error) {
	// Until the head: the attempt's per-try deadline when earlier than
	// the route's (perTry); after it, the route's alone.
	deadline, hasDeadline := ctx.Deadline()
	head, hasHead := deadline, hasDeadline
	if t, ok := ctx.Value(headDeadlineKey{}).(*perTry); ok {
		if d, armed := t.headDeadline(); armed && (!hasDeadline || d.Before(deadline)) {
			head, hasHead = d, true
		}
	}
	pc.SetDeadline(head) // the zero time (none) without one
	// stop ends the watch for the caller leaving (or another end of
	// watch); false when that came first, and moved the deadline.
	var stop h1Stop
	switch {
	case watch == nil:
		// The caller's connection watches for its caller leaving, and
		// moves the deadline of the connection its request has now.
		if !sc.attach(pc) {
			pc.Close()
			return nil, false, context.Canceled
		}
		stop.sc = sc
	case watch.Done() != nil:
		stop.f, stop.watch = context.AfterFunc(watch, func() { pc.SetDeadline(aLongTimeAgo) }), watch
	}
	fail := func(err error) (*http.Response, bool, error) {
		stop.stop()
		pc.Close()
		if hasHead && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(head) {
			<-ctx.Done() // its timer is about to fire: the error is the timeout's
		}
		return nil, sent, err
	}
	// An upstream may answer before it has read the whole body (a 413 to
	// a large upload) and close: the write then fails, and that answer,
	// already on its way, is the response.
	early := func(werr error) (*http.Response, bool, error) {
		if ctx.Err() != nil {
			return fail(werr) // the request ended (a timeout): no answer is awaited
		}
		pc.SetReadDeadline(time.Now().Add(time.Second))
		resp, err := pl.readHead(pc, req, sc)
		if err != nil || resp.StatusCode < 200 {
			return fail(werr)
		}
		sent = true
		if ctx.Err() == nil {
			pc.SetReadDeadline(deadline) // the zero time without one
		}
		resp.Body = &h1RespBody{src: resp.Body, pc: pc, pl: pl, keep: false, stop: stop}
		return resp, true, nil
	}
	var began uint64
	if pc.reply != nil {
		began = pc.reply.writeCount()
	}
	// The writer goes back once the request has left (or failed), before
	// anything can put pc back to the pool: not deferred, as a response
	// without a body puts it back within this exchange, and the next
	// exchange on it (another caller's) takes pc.bw at once.
	if err := writeRequest(pc.out(), req, body); err != nil {
		pc.releaseOut()
		if errors.As(err, new(*callerError)) {
			return fail(err) // the caller's body, not the upstream: no answer is awaited
		}
		return early(err)
	}
	// A request that leaves in this one flush waits in it for its answer
	// (sysConn); one whose start has left already may have it already.
	if pc.reply != nil && pc.bw.Buffered() > 0 && pc.reply.writeCount() == began {
		pc.reply.arm(pc.bw.Buffered() + pc.overhead)
	}
	err := pc.bw.Flush()
	pc.releaseOut()
	if pc.reply != nil {
		pc.reply.arm(0)
	}
	if err != nil {
		return early(err)
	}
	sent = true
	var resp *http.Response
	for {
		var err error
		if resp, err = pl.readHead(pc, req, sc); err != nil {
			return fail(err)
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
	}
	if hasHead && !head.Equal(deadline) {
		// The route's alone, now the answer has begun. (Not set again when
		// they are the same: that would cost a timer's move per request.)
		stop.moveDeadline(pc, deadline)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The upgraded connection is the reverse proxy's to copy, without
		// the request's deadlines.
		stop.stop()
		pc.SetDeadline(time.Time{})
		resp.Body = &h1Upgraded{pc: pc}
		return resp, true, nil
	}
	// The proxy never asks an upstream to close: the caller's Connection
	// header is its own connection's.
	keep := !resp.Close
	if resp.Body == http.NoBody {
		if !stop.stop() {
			keep = false // the caller left: its deadline moved
		}
		resp.Body = http.NoBody
		if keep {
			pl.put(pc)
		} else {
			pc.Close()
		}
		return resp, true, nil
	}
	resp.Body = &h1RespBody{src: resp.Body, pc: pc, pl: pl, keep: keep, stop: stop}
	return resp, true, nil
}

// readHead reads the response to req on pc within the cluster's bounds,
// as Envoy's HTTP/1 codec keeps to them: the head as read (past it, 503;
// the reader stops a buffer past it) and its number of fields (past it,
// 502). A response past them is an upstreamHeadError, and the exchange
// closes the connection.
func (pl *h1Pool) readHead(pc *h1Conn, req *http.Request, sc *h1Scratch) (*http.Response, error) {
	size, n := pl.c.Load().responseHeaderLimits()
	br := pc.in()
	start := pc.src.at(br)
	pc.src.limit = int64(size - br.Buffered() + br.Size())
	resp, err := readResponse(br, pc.src, req, sc)
	tooLarge := pc.src.limit <= 0
	pc.src.limit = math.MaxInt64
	switch {
	case err != nil && tooLarge, err == nil && pc.src.at(br)-start > int64(size):
		return nil, &upstreamHeadError{status: http.StatusServiceUnavailable}
	case err == nil:
		if _, fields := headerLoad(resp.Header); fields > n {
			return nil, &upstreamHeadError{status: http.StatusBadGateway}
		}
	}
	return resp, err
}

// h1Stop ends an exchange's watch for its caller leaving: the
// connection's (sc), a context's (f), or none.
type h1Stop struct {
	sc    *h1Scratch
	f     func() bool
	watch context.Context // f's
}

// moveDeadline sets pc's deadline to t, unless the caller has left: the
// long-past deadline that ends the exchange then stays, whether the watch
// set it before this or sets it after.
func (s h1Stop) moveDeadline(pc *h1Conn, t time.Time) {
	switch {
	case s.sc != nil:
		s.sc.mu.Lock()
		defer s.sc.mu.Unlock()
		if !s.sc.gone {
			pc.SetDeadline(t)
		}
	case s.f != nil:
		pc.SetDeadline(t)
		if s.watch.Err() != nil {
			pc.SetDeadline(aLongTimeAgo) // the watch may have run before
		}
	default:
		pc.SetDeadline(t)
	}
}

// stop ends the watch; false when the caller left first (the
// connection's deadline moved: it is not to be used again).
func (s h1Stop) stop() bool {
	switch {
	case s.sc != nil:
		return s.sc.detach()
	case s.f != nil:
		return s.f()
	}
	return true
}

// h1RespBody streams a response from its connection, which goes back to
// the pool at the body's end; closed earlier, the connection closes.
type h1RespBody struct {
	src  io.ReadCloser
	pc   *h1Conn
	pl   *h1Pool
	keep bool
	stop h1Stop
	done bool
}

func (b *h1RespBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.src.Read(p)
	if err != nil {
		b.done = true
		// A cancellation that moved the deadline is not the connection
		// put back to the pool with it.
		if b.stop.stop() && err == io.EOF && b.keep {
			b.pl.put(b.pc)
		} else {
			b.pc.Close()
		}
	}
	return n, err
}

func (b *h1RespBody) Close() error {
	if !b.done {
		b.done = true
		b.stop.stop()
		b.pc.Close()
	}
	return nil
}

// h1Upgraded is an upgraded (101) connection as a response body the
// reverse proxy reads and writes.
type h1Upgraded struct {
	pc   *h1Conn
	once sync.Once
}

func (u *h1Upgraded) Read(p []byte) (int, error)  { return u.pc.br.Read(p) }
func (u *h1Upgraded) Write(p []byte) (int, error) { return u.pc.Conn.Write(p) }
func (u *h1Upgraded) Close() error {
	var err error
	u.once.Do(func() { err = u.pc.Close() })
	return err
}
