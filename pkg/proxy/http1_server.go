package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"
)

// The HTTP/1.1 fast path, downstream: a connection of an HTTP chain that
// speaks HTTP/1.1 is served on its own goroutine, one request after the
// other (pipelined requests wait in the reader), without net/http's
// server: no background read per request, no goroutine hand-off. h2c
// (prior knowledge) and h2 (by ALPN) go to net/http (httpFront).

const (
	// h1IdleTimeout is a keep-alive connection's wait for its next request
	// (Envoy's downstream idle_timeout), h1HeaderTimeout a request's wait
	// for the rest of its header once it has begun.
	h1IdleTimeout   = time.Hour
	h1HeaderTimeout = time.Minute
	// h1MaxDrain is the most of an unread request body the proxy reads
	// away to keep a connection; past it the connection closes.
	h1MaxDrain = 256 << 10
	// h1WatchAfter is how long a request is in flight before its
	// connection is watched for the caller leaving.
	h1WatchAfter = 50 * time.Millisecond
)

var (
	h1Readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	h1Writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
	// h1Server stands for the server in a fast-path request's context: the
	// reverse proxy then aborts a response whose copy fails
	// (http.ErrAbortHandler), as under net/http, and serveHTTP1 recovers.
	h1Server = &http.Server{}
)

// drainGrace is how long a drained HTTP connection waiting for a request
// still takes one (served with Connection: close) before it closes.
const drainGrace = time.Second

// h2Preface is what an h2c connection with prior knowledge begins with.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// serveHTTPConn serves an HTTP chain's connection until it ends: h2 (by
// ALPN) and h2c through net/http, HTTP/1.1 on this goroutine. ds, when
// not nil, is the connection as the drain knows it.
func (p *Proxy) serveHTTPConn(name string, c net.Conn, dst netip.AddrPort, ds *downstream) {
	tc, isTLS := c.(*tls.Conn)
	if isTLS && tc.ConnectionState().NegotiatedProtocol == "h2" {
		p.serveHTTPFront(name, c, dst, ds)
		return
	}
	src := &h1Src{c: c, limit: math.MaxInt64}
	br := takeReader(src)
	if !isTLS {
		// A connection that has sent nothing yet ends drainGrace after the drain asks.
		ds.endWith(func() { c.SetReadDeadline(time.Now().Add(drainGrace)) })
		h2c, err := sniffH2C(c, br)
		if err != nil {
			c.Close()
			giveReader(br)
			return
		}
		if h2c {
			// br is the connection's until it ends: not pooled again.
			p.serveHTTPFront(name, &peekedConn{Conn: c, r: br}, dst, ds)
			return
		}
	}
	if p.serveHTTP1(name, c, src, br, dst, ds) {
		giveReader(br)
	}
}

// takeReader and takeWriter are pooled buffers reading r and writing w;
// giveReader and giveWriter put them back, detached. The engine takes them
// per exchange rather than holding them per connection: with many
// connections, a buffer each is met cold at every request, where the few
// the pools hand out stay in cache (as nginx frees a keep-alive
// connection's buffers).
func takeReader(r io.Reader) *bufio.Reader {
	br := h1Readers.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

func giveReader(br *bufio.Reader) {
	br.Reset(nil)
	h1Readers.Put(br)
}

func takeWriter(w io.Writer) *bufio.Writer {
	bw := h1Writers.Get().(*bufio.Writer)
	bw.Reset(w)
	return bw
}

func giveWriter(bw *bufio.Writer) {
	bw.Reset(nil)
	h1Writers.Put(bw)
}

// sniffH2C reads (without consuming) the start of a plain connection
// until it is or is not the h2c preface.
func sniffH2C(c net.Conn, br *bufio.Reader) (bool, error) {
	c.SetReadDeadline(time.Now().Add(h1IdleTimeout))
	defer c.SetReadDeadline(time.Time{})
	for n := 1; ; n = br.Buffered() + 1 {
		b, err := br.Peek(min(n, len(h2Preface)))
		if len(b) > 0 && !strings.HasPrefix(h2Preface, string(b)) {
			return false, nil
		}
		if len(b) == len(h2Preface) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
	}
}

// fixedAddr is an address whose string is made once (access logs ask for
// it per request).
type fixedAddr struct {
	net.Addr
	s string
}

func (a *fixedAddr) String() string { return a.s }

// h1Src is what a connection's reader reads: the connection, up to a
// limit (a message head's most); n counts what it has read, which tells
// how long a head was.
type h1Src struct {
	c     net.Conn
	limit int64
	n     int64
	// rec, while recording, is a copy of what br holds and what it has
	// read since: a head net/http's parser reads (record).
	rec       []byte
	recording bool
}

// record starts keeping a copy of what br, reading s, parses next: what
// it holds now and what it reads until recorded.
func (s *h1Src) record(br *bufio.Reader) {
	b, _ := br.Peek(br.Buffered())
	s.rec = append(s.rec[:0], b...)
	s.recording = true
}

// recorded ends record, returning the message head it kept (through the
// blank line, bare LFs as net/http takes them) and true, or all it kept
// and false when the head did not end.
func (s *h1Src) recorded() ([]byte, bool) {
	s.recording = false
	head := s.rec
	s.rec = nil // rare, and as large as a head may be: not kept
	for i := 0; i+1 < len(head); i++ {
		if head[i] != '\n' {
			continue
		}
		switch {
		case head[i+1] == '\n':
			return head[:i+2], true
		case head[i+1] == '\r' && i+2 < len(head) && head[i+2] == '\n':
			return head[:i+3], true
		}
	}
	return head, false
}

// at is the position in the connection's bytes that br, reading src, has
// reached.
func (s *h1Src) at(br *bufio.Reader) int64 { return s.n - int64(br.Buffered()) }

// errHeadTooLarge is a message head past its reader's limit.
var errHeadTooLarge = errors.New("http1: message head too large")

func (s *h1Src) Read(p []byte) (int, error) {
	if s.limit <= 0 {
		return 0, errHeadTooLarge
	}
	if int64(len(p)) > s.limit {
		p = p[:s.limit]
	}
	n, err := s.c.Read(p)
	s.limit -= int64(n)
	s.n += int64(n)
	if s.recording {
		s.rec = append(s.rec, p[:n]...)
	}
	return n, err
}

// peekedConn is a connection whose first bytes a reader already holds.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// headBound is how much more of a connection its reader may read for the
// next request's head before it stops (431): the bound of the chain of
// listener name (for dst) on a head, less what br holds already, and a
// read past the head's end.
func (p *Proxy) headBound(name string, dst netip.AddrPort, br *bufio.Reader) int64 {
	c := chainNow(p.cfg.Load(), name, dst)
	if c == nil {
		c = &HTTPChain{} // Envoy's defaults (serveHTTP answers 503)
	}
	size, _ := c.headerLimits()
	return int64(size - br.Buffered() + br.Size())
}

// rawReply answers a request the connection's reader could not take (a
// head too large, or one HTTP cannot carry) and ends the connection, as
// Envoy's codec does: status with body (of contentType), the chain's
// Server header, and a line in its access logs flagged DPE.
func (p *Proxy) rawReply(name string, dst netip.AddrPort, c net.Conn, remote string, status int, contentType, body string) {
	start := time.Now()
	chain := chainNow(p.cfg.Load(), name, dst)
	head := "HTTP/1.1 " + strconv.Itoa(status) + " " + http.StatusText(status) + "\r\n" + rawServerHeader(chain)
	if contentType != "" {
		head += "Content-Type: " + contentType + "\r\n"
	}
	msg := head + "Connection: close\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
	n, _ := io.WriteString(c, msg)
	if chain == nil {
		return // the listener is gone: no access log to write to
	}
	ri := &requestInfo{Start: start, Listener: name, Direction: directionOf(name), Chain: chain, Protocol: "HTTP/1.1", Status: status,
		Downstream: remote, Local: c.LocalAddr().String(), RequestHeaders: http.Header{}, ResponseHeaders: http.Header{}, Duration: time.Since(start)}
	if dst.IsValid() {
		ri.Local = dst.String()
	}
	if n == len(msg) {
		ri.BytesOut = int64(len(body))
	}
	ri.flag("DPE")
	p.countRequest(ri)
	p.logRequest(ri)
}

// rawServerHeader is the Server header line chain c (nil: none) puts on
// its connections' raw replies, as its HCM does on every response; "" for
// none.
func rawServerHeader(c *HTTPChain) string {
	if c == nil {
		return ""
	}
	h := http.Header{}
	c.Headers.response(h)
	if v := h.Get("Server"); v != "" {
		return "Server: " + v + "\r\n"
	}
	return ""
}

// serveHTTP1 serves HTTP/1.1 requests on c until it closes, a request
// or response says close, or the drain (ds) asks it to end. It reports
// whether br is free to reuse (false when an upgrade took the connection).
func (p *Proxy) serveHTTP1(name string, c net.Conn, src *h1Src, br *bufio.Reader, dst netip.AddrPort, ds *downstream) (reusable bool) {
	meta := &connMeta{listener: name, dst: dst, scratch: &h1Scratch{}}
	meta.stopReads = func() {
		meta.readsStopped.Store(true)
		c.SetReadDeadline(time.Unix(1, 0))
	}
	var idleUntil time.Time
	// connKey outermost: the engine looks it up first in every request.
	conn, cancel := context.WithCancel(context.Background())
	ctx := context.WithValue(conn, http.ServerContextKey, h1Server)
	ctx = context.WithValue(ctx, http.LocalAddrContextKey, &fixedAddr{Addr: c.LocalAddr(), s: c.LocalAddr().String()})
	ctx = context.WithValue(ctx, connKey{}, meta)
	remote := c.RemoteAddr().String()
	var tlsState *tls.ConnectionState
	if tc, ok := c.(*tls.Conn); ok {
		st := tc.ConnectionState()
		tlsState = &st
	}
	w := &h1Writer{c: c, br: br, draining: &meta.draining}
	// While a request is in flight and its body has been read, one read
	// waits on the connection, as net/http's server does: the caller
	// closing it cancels what the request started (the upstream call, its
	// breaker slots), instead of that running on to its timeout. A
	// pipelined request's first byte stays in br. The read starts only
	// once the request has taken h1WatchAfter: most are done before, and
	// a goroutine and a read per request cost what the rest of the
	// request does.
	var (
		watchMu sync.Mutex
		armed   bool      // the request in flight is to be watched
		since   time.Time // from then
		pending bool      // the timer is set
		watch   *h1Watch
		// gen numbers the requests: a request's body may still be read
		// (by an HTTP/2 upstream's writer) after it ended, and its end
		// must not start the watch during the next one.
		gen uint64
		// waiting: the connection waits for its next request (from a
		// response's end until a request's head is read), which the drain
		// then ends. Its first request is served even during the drain:
		// the caller connected to send it (the drain closes a connection
		// that sent nothing in sniffH2C, or at its end).
		waiting bool
	)
	// The timer is not set and stopped per request: it fires at most
	// every h1WatchAfter while requests come, and starts the watch when
	// the one in flight has been armed that long.
	var watchTimer *time.Timer
	watchTimer = time.AfterFunc(time.Hour, func() {
		watchMu.Lock()
		defer watchMu.Unlock()
		pending = false
		if !armed || watch != nil {
			return
		}
		if wait := h1WatchAfter - time.Since(since); wait > 0 {
			pending = true
			watchTimer.Reset(wait)
			return
		}
		c.SetReadDeadline(time.Time{})
		watch = &h1Watch{done: make(chan struct{})}
		go func(wa *h1Watch) {
			defer close(wa.done)
			if _, err := br.Peek(1); err != nil && !wa.stopping.Load() {
				cancel() // the caller went away
				meta.scratch.callerGone()
			}
		}(watch)
	})
	watchTimer.Stop()
	// stopWatch ends the request's watch; next: the connection then waits
	// for its next request (not a hijack, not the end). It says so only
	// once the watching read has ended: a drain's grace deadline set
	// before that would be lost under the long-past one, or would keep
	// the read (and the response's end) waiting for the grace. A drain
	// that asks meanwhile is seen by the loop, after its deadline.
	stopWatch := func(next bool) {
		watchMu.Lock()
		armed = false
		gen++
		wa := watch
		watch = nil
		if wa == nil {
			waiting = next
		}
		watchMu.Unlock()
		if wa == nil {
			return
		}
		wa.stopping.Store(true)
		c.SetReadDeadline(time.Unix(1, 0)) // long past: the pending read ends at once
		<-wa.done
		idleUntil = time.Time{} // the loop sets the deadline again
		if next {
			watchMu.Lock()
			waiting = true
			watchMu.Unlock()
		}
	}
	startWatch := func(g uint64) {
		watchMu.Lock()
		defer watchMu.Unlock()
		if g != gen {
			return // a request that has ended
		}
		armed, since = true, time.Now()
		if !pending {
			pending = true
			watchTimer.Reset(h1WatchAfter)
		}
	}
	// A hijack: the connection is the upgrade's now, never waiting for a
	// request the drain would end.
	w.stopWatch = func() { stopWatch(false) }
	// Drained, the connection's responses say Connection: close (h1Writer
	// reads the flag), and a wait for the next request ends at once.
	ds.endWith(func() {
		meta.draining.Store(true)
		watchMu.Lock()
		if waiting {
			c.SetReadDeadline(time.Now().Add(drainGrace))
		}
		watchMu.Unlock()
	})
	var body *h1ReqBody // the request's in flight
	defer func() {
		stopWatch(false)
		watchTimer.Stop()
		cancel()
		if !w.hijacked {
			c.Close()
			w.release()
			meta.scratch.releaseHeaders()
		}
		if body != nil && !w.hijacked {
			// A reader still holding the body (an HTTP/2 upstream's
			// writer) must not reach br, which goes back to its pool.
			body.Close()
		}
	}()
	for {
		// One deadline for the wait and the header: moved only when less
		// than the header timeout is left (not per request).
		if now := time.Now(); idleUntil.Sub(now) < h1HeaderTimeout {
			idleUntil = now.Add(h1IdleTimeout)
			c.SetReadDeadline(idleUntil)
		}
		// After the deadline is set: a drain that asked before this ends
		// the connection here, one after it ends the wait.
		if meta.draining.Load() && w.req != nil && br.Buffered() == 0 {
			// The last response said keep-alive (its head went out before
			// the drain): a request sent at once on it is served, with
			// Connection: close; the connection closes if none comes.
			idleUntil = time.Now().Add(drainGrace)
			c.SetReadDeadline(idleUntil)
		}
		src.limit = p.headBound(name, dst, br)
		start := src.at(br)
		req, err := readRequest(ctx, br, src, meta.scratch)
		tooLarge := src.limit <= 0
		src.limit = math.MaxInt64
		meta.scratch.head = int(src.at(br) - start)
		if err != nil {
			if tooLarge {
				p.rawReply(name, dst, c, remote, 431, "text/plain", "Request Header Fields Too Large")
				lingerClose(c)
				return true
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !isTimeout(err) && !isClosedConn(err) {
				if strings.Contains(err.Error(), "unsupported transfer encoding") {
					// A coding but chunked (gzip, chunked): Envoy's codec
					// answers 501, as RFC 9112 §6.1 says a server should.
					p.rawReply(name, dst, c, remote, 501, "text/plain; charset=utf-8", "Not Implemented")
				} else {
					p.rawReply(name, dst, c, remote, 400, "text/plain; charset=utf-8", "Bad Request")
				}
				lingerClose(c)
			}
			return true
		}
		if req.ProtoMajor != 1 || req.ProtoAtLeast(1, 1) && len(req.Header["Host"]) == 0 && req.Host == "" {
			p.rawReply(name, dst, c, remote, 400, "", "")
			return true
		}
		if !httpguts.ValidHostHeader(req.Host) {
			p.rawReply(name, dst, c, remote, 400, "text/plain; charset=utf-8", "Bad Request: Host\r\n")
			lingerClose(c)
			return true
		}
		req.RemoteAddr = remote
		req.TLS = tlsState
		watchMu.Lock()
		g := gen
		waiting = false
		watchMu.Unlock()
		body = nil
		upgrade := upgradeType(req.Header) != ""
		if req.Body != http.NoBody {
			// The keep-alive wait's deadline is not the body's: an upload
			// takes as long as it takes (the idle timeout, when set, stops
			// a stalled one), as through Envoy. The next wait sets its own.
			c.SetReadDeadline(time.Time{})
			idleUntil = time.Time{}
			body = &h1ReqBody{src: req.Body, trailer: req.Trailer}
			if !upgrade {
				body.onEOF = func() { startWatch(g) }
			}
			req.Body = body
			if strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
				// Asked for at once: the engine reads bodies as it forwards.
				bw := w.out()
				bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
				bw.Flush()
			}
		}
		if body == nil && !upgrade {
			startWatch(g)
		}
		w.reset(req)
		if !p.serveH1Request(w, req) || w.hijacked {
			return !w.hijacked
		}
		stopWatch(true)
		if conn.Err() != nil {
			return true // the caller went away
		}
		w.finish()
		w.release()
		meta.scratch.releaseHeaders()
		if w.err != nil || w.closeAfter || meta.readsStopped.Load() {
			if w.err == nil && body != nil && !body.done() {
				// A reply that ends the connection (a 431, a 403) before
				// the body was read: closing at once would reset the
				// connection under it.
				lingerClose(c)
			}
			return true
		}
		if body != nil && !body.finish() {
			// The caller is still sending a body no one reads: closing at
			// once would reset the connection under the response.
			lingerClose(c)
			return true
		}
		body = nil
	}
}

// serveH1Request runs the engine's handler for one request; false when it
// aborted the response (a failed copy: the connection is done).
func (p *Proxy) serveH1Request(w *h1Writer, r *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			ok = false
			if v != http.ErrAbortHandler {
				p.log.Error("http request handler panicked", zap.Any("panic", v), zap.Stack("stack"))
			}
		}
	}()
	p.serveHTTP(w, r)
	return true
}

// lingerClose ends the sending side of a connection the proxy refused and
// reads away (for a while) what the caller still sends, so that its close
// is not a reset that loses the reply.
func lingerClose(c net.Conn) {
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		return
	}
	cw.CloseWrite()
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	io.Copy(io.Discard, io.LimitReader(c, 4<<20))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isClosedConn(err error) bool {
	return errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "connection reset")
}

// h1ReqBody is a fast-path request's body: Close does not read the rest
// (the connection loop does, finish), and reads may come from another
// goroutine (an HTTP/2 upstream's Transport) until finish.
type h1ReqBody struct {
	mu     sync.Mutex
	src    io.ReadCloser
	eof    bool
	closed bool
	// onEOF, when set, is called once, when the body has been read to its
	// end (the connection is then free to watch for the caller leaving).
	onEOF func()
	// trailer is where net/http's chunked reader puts the trailers it
	// finds at the body's end (readRequest), whose names Read checks.
	trailer http.Header
}

// errBadTrailer is a chunked body's trailer field whose name is not a
// token: net/http's reader takes a name with a space (go.dev/issue/34540),
// Envoy's codec refuses it (400), and no upstream could be sent it.
var errBadTrailer = errors.New("http1: invalid trailer field name")

func (b *h1ReqBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	n, err := b.src.Read(p)
	if err == io.EOF && !b.eof {
		for k := range b.trailer {
			if !httpguts.ValidHeaderFieldName(k) {
				return n, fmt.Errorf("%w %q", errBadTrailer, k)
			}
		}
		b.eof = true
		if b.onEOF != nil {
			b.onEOF()
		}
	}
	return n, err
}

func (b *h1ReqBody) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

// done says the body has been read to its end.
func (b *h1ReqBody) done() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.eof
}

// finish ends the body once the response is out: what is left is read
// away, up to h1MaxDrain; it reports whether the connection can go on.
func (b *h1ReqBody) finish() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	if b.eof {
		return true
	}
	n, err := io.CopyN(io.Discard, b.src, h1MaxDrain+1)
	return n <= h1MaxDrain && err == io.EOF
}

// dateNow is the Date header's value for now, formatted once a second.
func dateNow() string {
	now := time.Now().Unix()
	if d := dateCache.Load(); d != nil && d.unix == now {
		return d.s
	}
	d := &cachedDate{unix: now, s: time.Unix(now, 0).UTC().Format(http.TimeFormat)}
	dateCache.Store(d)
	return d.s
}

type cachedDate struct {
	unix int64
	s    string
}

// dateCache is the last second's Date (a cache of a pure function of the
// clock, shared by every proxy in the process).
var dateCache atomic.Pointer[cachedDate]

// h1Watch is the read that watches a connection for its caller leaving.
type h1Watch struct {
	done     chan struct{}
	stopping atomic.Bool
}

// h1Writer is a fast-path response: the header goes out at the first
// write or flush (or at the end), framed by Content-Length when the
// handler set it, chunked otherwise (close-delimited to an HTTP/1.0
// caller), without a body for HEAD, 1xx, 204 and 304.
type h1Writer struct {
	c net.Conn
	// bw is the response's buffer (out), from h1Writers; nil between
	// responses.
	bw *bufio.Writer
	br *bufio.Reader
	// stopWatch ends the connection's watching read (before a hijack).
	stopWatch func()
	// draining, set when the connection is drained, makes the response
	// say Connection: close.
	draining *atomic.Bool

	req         *http.Request
	header      http.Header
	status      int
	wroteStatus bool // a final status is chosen
	wroteHeader bool // and its header is in bw
	noBody      bool
	chunked     bool
	cl          int64 // the declared Content-Length, -1 for none
	written     int64
	closeAfter  bool
	hijacked    bool
	err         error
	// http10: the status line says HTTP/1.0 (an HTTP/1.0 request its
	// HCM accepts); HTTP/1.1 otherwise.
	http10 bool
}

// out is the response's buffer, taken from the pool at its first write
// (takeWriter): a connection waiting for its next request holds none.
func (w *h1Writer) out() *bufio.Writer {
	if w.bw == nil {
		w.bw = takeWriter(w.c)
	}
	return w.bw
}

// release gives the buffer back once the response is flushed (or failed:
// what it holds then is dropped with the connection); a hijacker keeps it.
func (w *h1Writer) release() {
	if w.bw == nil || w.hijacked {
		return
	}
	giveWriter(w.bw)
	w.bw = nil
}

func (w *h1Writer) reset(req *http.Request) {
	*w = h1Writer{c: w.c, bw: w.bw, br: w.br, stopWatch: w.stopWatch, draining: w.draining, req: req, cl: -1}
	w.closeAfter = req.Close || !req.ProtoAtLeast(1, 1) && !hasToken(req.Header["Connection"], "keep-alive")
}

func (w *h1Writer) Header() http.Header {
	if w.header == nil {
		w.header = make(http.Header) // most responses adopt the upstream's instead
	}
	return w.header
}

// adoptHeader makes h the response's header, before WriteHeader: the
// upstream response's, which nothing else holds, without a copy. What
// was set before stays, unless h has the key too.
func (w *h1Writer) adoptHeader(h http.Header) {
	if w.wroteStatus || w.hijacked {
		return
	}
	for k, vs := range w.header {
		if _, ok := h[k]; !ok {
			h[k] = vs
		}
	}
	w.header = h
}

func (w *h1Writer) WriteHeader(code int) {
	if w.hijacked || w.wroteStatus {
		return
	}
	if code < 100 || code > 999 {
		panic("invalid WriteHeader code " + strconv.Itoa(code))
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		// An informational response goes out now; the final one follows.
		w.writeStatusLine(code)
		w.writeFields(w.header, nil)
		w.out().WriteString("\r\n")
		w.flush()
		return
	}
	w.status, w.wroteStatus = code, true
	w.noBody = w.req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified || code < 200
	if v := w.header.Get("Content-Length"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			w.cl = n
		} else {
			w.header.Del("Content-Length")
		}
	}
	if hasToken(w.header["Connection"], "close") {
		w.closeAfter = true
	}
}

// writeHeaderNow puts the response's header in bw; last says the handler
// is done, so a body never written is empty.
func (w *h1Writer) writeHeaderNow(last bool) {
	if w.wroteHeader {
		return
	}
	w.wroteHeader = true
	if w.draining != nil && w.draining.Load() {
		w.closeAfter = true
	}
	h := w.Header()
	var trailers []string
	switch {
	case w.noBody || w.cl >= 0:
	case last && !hasTrailers(h):
		h.Set("Content-Length", "0")
		w.cl = 0
	case w.req.ProtoAtLeast(1, 1):
		w.chunked = true
		trailers = h["Trailer"]
	default:
		w.closeAfter = true
	}
	w.writeStatusLine(w.status)
	w.writeFields(h, trailers)
	bw := w.out()
	if w.chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if _, ok := h["Date"]; !ok {
		bw.WriteString("Date: ")
		bw.WriteString(dateNow())
		bw.WriteString("\r\n")
	}
	switch {
	case w.closeAfter && len(h["Connection"]) == 0:
		bw.WriteString("Connection: close\r\n")
	case !w.closeAfter && !w.req.ProtoAtLeast(1, 1):
		bw.WriteString("Connection: keep-alive\r\n")
	}
	bw.WriteString("\r\n")
}

func (w *h1Writer) writeStatusLine(code int) {
	bw := w.out()
	if w.http10 {
		bw.WriteString("HTTP/1.0 ")
	} else {
		bw.WriteString("HTTP/1.1 ")
	}
	bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(code), 10))
	bw.WriteByte(' ')
	if text := http.StatusText(code); text != "" {
		bw.WriteString(text)
	} else {
		bw.WriteString("status code ")
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(code), 10))
	}
	bw.WriteString("\r\n")
}

// writeFields writes the header fields of h but the framing ones the
// writer decides, announced trailers and trailer-prefixed keys; a value's
// line breaks become spaces.
func (w *h1Writer) writeFields(h http.Header, skip []string) {
	bw := w.out()
	for k, vs := range h {
		switch {
		case k == "Transfer-Encoding", strings.HasPrefix(k, http.TrailerPrefix), !validFieldName(k):
			continue
		case k == "Content-Length" && w.noBody && w.req.Method != http.MethodHead:
			continue
		case len(skip) > 0 && isAnnounced(skip, k):
			continue
		}
		for _, v := range vs {
			bw.WriteString(k)
			bw.WriteString(": ")
			if strings.ContainsAny(v, "\r\n") {
				v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
			}
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
}

func validFieldName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return true
}

// isAnnounced reports whether key is one of the trailers a Trailer header
// announced (comma-separated values).
func isAnnounced(announced []string, key string) bool {
	for _, v := range announced {
		for f := range strings.SplitSeq(v, ",") {
			if http.CanonicalHeaderKey(strings.TrimSpace(f)) == key {
				return true
			}
		}
	}
	return false
}

func hasTrailers(h http.Header) bool {
	if len(h["Trailer"]) > 0 {
		return true
	}
	for k := range h {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			return true
		}
	}
	return false
}

// hasToken reports whether a comma-separated header has token.
func hasToken(vs []string, token string) bool {
	for _, v := range vs {
		for f := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), token) {
				return true
			}
		}
	}
	return false
}

func (w *h1Writer) Write(b []byte) (int, error) {
	if w.hijacked {
		return 0, http.ErrHijacked
	}
	if !w.wroteStatus {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.noBody {
		if w.req.Method == http.MethodHead {
			return len(b), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if len(b) == 0 {
		return 0, nil
	}
	w.writeHeaderNow(false)
	bw := w.out()
	n := len(b)
	var err error
	if w.cl >= 0 && w.written+int64(n) > w.cl {
		n, err = int(w.cl-w.written), http.ErrContentLength
	}
	if w.chunked {
		bw.Write(strconv.AppendInt(bw.AvailableBuffer(), int64(n), 16))
		bw.WriteString("\r\n")
		bw.Write(b[:n])
		bw.WriteString("\r\n")
	} else {
		bw.Write(b[:n])
	}
	w.written += int64(n)
	if _, werr := bw.Write(nil); werr != nil { // bufio's sticky error
		w.err = werr
	}
	if err == nil {
		err = w.err
	}
	return n, err
}

func (w *h1Writer) Flush() {
	if w.hijacked {
		return
	}
	if !w.wroteStatus {
		w.WriteHeader(http.StatusOK)
	}
	w.writeHeaderNow(false)
	w.flush()
}

func (w *h1Writer) flush() {
	if err := w.out().Flush(); err != nil && w.err == nil {
		w.err = err
	}
}

// Hijack hands the connection to an upgrade (the reverse proxy's 101).
func (w *h1Writer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.wroteHeader {
		return nil, nil, errors.New("http1: hijack after the response began")
	}
	if w.stopWatch != nil {
		w.stopWatch() // the connection's reads are the hijacker's now
	}
	w.c.SetReadDeadline(time.Time{}) // not the keep-alive wait's: an upgraded connection lasts
	bw := w.out()                    // the hijacker's now: not given back
	w.hijacked = true
	return w.c, bufio.NewReadWriter(w.br, bw), nil
}

// finish ends the response: the header if it is not out yet, the last
// chunk and the trailers, and everything flushed.
func (w *h1Writer) finish() {
	if !w.wroteStatus {
		w.WriteHeader(http.StatusOK)
	}
	w.writeHeaderNow(true)
	if w.chunked {
		bw := w.out()
		bw.WriteString("0\r\n")
		w.writeTrailers()
		bw.WriteString("\r\n")
	}
	if w.cl >= 0 && w.written != w.cl && !w.noBody {
		w.closeAfter = true // the caller would wait for the rest
	}
	w.flush()
}

// writeTrailers writes the announced trailers and trailer-prefixed keys
// the handler set.
func (w *h1Writer) writeTrailers() {
	var buf bytes.Buffer
	for k, vs := range w.header {
		name, prefixed := strings.CutPrefix(k, http.TrailerPrefix)
		if !prefixed && !isAnnounced(w.header["Trailer"], k) {
			continue
		}
		if !validFieldName(name) {
			continue
		}
		for _, v := range vs {
			buf.WriteString(name)
			buf.WriteString(": ")
			buf.WriteString(strings.NewReplacer("\r", " ", "\n", " ").Replace(v))
			buf.WriteString("\r\n")
		}
	}
	w.out().Write(buf.Bytes())
}
