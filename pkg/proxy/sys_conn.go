package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// sysConn is a TCP connection that reads and writes its socket itself:
// the HTTP engine's (a caller's, or an upstream's: the HTTP/1.1 pool's or
// the HTTP/2 Transport's), and both of a TCP proxy's with TLS on either
// side (two bare ones stay net.TCPConn, which io.Copy splices). It makes
// two savings that Go's own net.TCPConn cannot (the second, armed writes,
// on the HTTP/1.1 pool's only).
//
// No scheduler hand-off per system call. net.TCPConn tells the scheduler
// of every read and write (entersyscall); one that has not returned at
// the scheduler monitor's next look (every 20 µs while it finds any) loses
// its processor to another thread, which has to be woken, and gets it back
// through the scheduler. A non-blocking socket call never blocks, so
// sysConn makes it raw (syscall.RawSyscall, inside syscall.RawConn's Read
// and Write, which still park the goroutine on the poller when the socket
// has nothing or no room). In a profile of two sidecars under load, the
// monitor alone took 9 % of their CPU, and context switches 14 % against
// nginx's 10 % (test/BENCHMARKS.md, "The engine's own socket calls").
//
// No read that finds nothing after a request (armed writes). Go's reads
// try the socket first and wait for the poller only when it has nothing
// (EAGAIN), so a read right after a request, whose answer cannot be there
// yet, costs a system call that finds nothing: one in every exchange. An
// armed write avoids it. It is made from within a read of the socket
// (RawConn.Read), which clears the poller's readiness before it calls us:
// the request leaves, and the read waits for the readiness its answer
// brings, then returns. The next read finds the answer at once. The
// readiness must be cleared before the write, never after: an answer
// quick enough to come in between would be forgotten, and with
// edge-triggered polling nothing would wake the read again.
//
// Only a request that leaves in one write may wait on it. An earlier write
// would wait for an answer to a request not yet whole; and once part of a
// request has left, the upstream may answer before the rest (a 413 to a
// large upload, kept alive): that answer's readiness, seen before the last
// write, would be cleared by it, and the wait would last until the
// deadline. So the exchange arms only when nothing of its request has been
// written yet (writeCount), and an armed write is known by its length:
// the buffered bytes, and with TLS the one record that holds them
// (tlsRecordOverhead). A write of another length (a flush that TLS cut
// into several records) disarms and writes as usual.
//
// While an armed write waits it holds the connection's write lock, and
// with TLS the tls.Conn's: a Close or CloseWrite of the TLS connection
// (which writes an alert) waits for the answer or the deadline. What ends
// an exchange early moves the deadline (SetDeadline), which ends the
// wait at once.
type sysConn struct {
	*net.TCPConn
	rc syscall.RawConn

	// The call in progress in each direction, for the functions rc runs
	// (made once, with the connection: no allocation per call).
	rmu             sync.Mutex
	rp              []byte
	rn              int
	rerr            syscall.Errno
	reads           uint64 // Read calls (tests read it)
	wmu             sync.Mutex
	wp              []byte
	wn              int
	werr            syscall.Errno
	want            int    // the length of the write that waits; 0 for none
	writes          uint64 // Write calls, to tell whether a request has begun to leave
	waited          uint64 // armed writes that waited for their answer (tests read it)
	readFn, writeFn func(fd uintptr) bool
	replyFn         func(fd uintptr) bool

	// The deadlines as asked, and as the poller has them (SetDeadline).
	dmu            sync.Mutex
	rdAsked, rdSet time.Time
	wdAsked, wdSet time.Time
}

// newSysConn wraps c, or returns nil when c is not a TCP connection.
func newSysConn(c net.Conn) *sysConn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	sc := &sysConn{TCPConn: tc, rc: rc}
	sc.readFn, sc.writeFn, sc.replyFn = sc.read, sc.write, sc.writeThenWait
	return sc
}

// sysUnder is c as a sysConn when it is a TCP connection, else c.
func sysUnder(c net.Conn) net.Conn {
	if sc := newSysConn(c); sc != nil {
		return sc
	}
	return c
}

// writeCount is the number of Write calls so far.
func (c *sysConn) writeCount() uint64 {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writes
}

// File is refused: the descriptor it would dup is the one this connection
// reads and writes without telling the scheduler, which must never block,
// and os.File.Fd makes a descriptor blocking, for both copies.
func (c *sysConn) File() (*os.File, error) {
	return nil, &net.OpError{Op: "file", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: errors.ErrUnsupported}
}

// arm makes the next write wait for the answer when it is n bytes long;
// 0 disarms.
func (c *sysConn) arm(n int) {
	c.wmu.Lock()
	c.want = n
	c.wmu.Unlock()
}

// sysRead and sysWrite are read(2) and write(2) without telling the
// scheduler: the socket is non-blocking.
func sysRead(fd uintptr, p []byte) (int, syscall.Errno) {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
		if e != syscall.EINTR {
			return int(n), e
		}
	}
}

func sysWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
		if e != syscall.EINTR {
			return int(n), e
		}
	}
}

// read is rc.Read's function for Read: false (wait for the poller) while
// the socket has nothing.
func (c *sysConn) read(fd uintptr) bool {
	n, e := sysRead(fd, c.rp)
	if e == syscall.EAGAIN {
		return false
	}
	c.rn, c.rerr = n, e
	return true
}

func (c *sysConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	c.reads++
	c.rp, c.rn, c.rerr = p, 0, 0
	err := c.rc.Read(c.readFn)
	for err != nil && errors.Is(err, os.ErrDeadlineExceeded) && c.resume(true) {
		err = c.rc.Read(c.readFn)
	}
	n, e := c.rn, c.rerr
	c.rp = nil
	c.rmu.Unlock()
	switch {
	case err != nil:
		return 0, c.opError("read", err)
	case e != 0:
		return 0, c.opError("read", os.NewSyscallError("read", e))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// write is rc.Write's function for Write: false (wait for room) while the
// socket's buffer is full.
func (c *sysConn) write(fd uintptr) bool {
	for c.wn < len(c.wp) {
		n, e := sysWrite(fd, c.wp[c.wn:])
		switch {
		case e == syscall.EAGAIN:
			return false
		case e != 0:
			c.werr = e
			return true
		}
		c.wn += n
	}
	return true
}

// writeThenWait is rc.Read's function for an armed write: it writes what
// it can, then waits (false) until the socket is readable; true at once
// when the write failed or found no room, for Write to go on without
// waiting.
func (c *sysConn) writeThenWait(fd uintptr) bool {
	if c.wn == len(c.wp) {
		return true // readable: the answer has begun (or the end)
	}
	for c.wn < len(c.wp) {
		n, e := sysWrite(fd, c.wp[c.wn:])
		if e != 0 {
			if e != syscall.EAGAIN {
				c.werr = e
			}
			return true
		}
		c.wn += n
	}
	return false
}

func (c *sysConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	c.writes++
	c.wp, c.wn, c.werr = p, 0, 0
	err := c.writeLocked()
	n := c.wn
	c.wp = nil
	c.wmu.Unlock()
	return n, err
}

func (c *sysConn) writeLocked() error {
	if c.want != 0 && len(c.wp) == c.want {
		c.want = 0
		err := c.rc.Read(c.replyFn)
		switch {
		case c.werr != 0:
			return c.opError("write", os.NewSyscallError("write", c.werr))
		case c.wn == len(c.wp):
			c.waited++
			// The request left. A wait that ended in a passed deadline or
			// a close is the next read's error, not the write's: the
			// request must not look unsent to a retry.
			return nil
		case err != nil && !errors.Is(err, os.ErrDeadlineExceeded):
			return c.opError("write", err)
		}
		// Not all of it went (a full send buffer), or the read could not
		// start (its deadline had passed): the usual write, which waits
		// for room and keeps the write deadline.
	}
	c.want = 0
	err := c.rc.Write(c.writeFn)
	for err != nil && errors.Is(err, os.ErrDeadlineExceeded) && c.resume(false) {
		err = c.rc.Write(c.writeFn)
	}
	if err != nil {
		return c.opError("write", err)
	}
	if c.werr != 0 {
		return c.opError("write", os.NewSyscallError("write", c.werr))
	}
	return nil
}

// ReadFrom and WriteTo copy through this connection's own Read and Write.
// net.TCPConn's, which would otherwise be promoted, make Go's socket calls
// (or splice, which only a pair of bare connections can use), so io.Copy
// would bypass what this type is for.
func (c *sysConn) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(struct{ io.Writer }{c}, r)
}

func (c *sysConn) WriteTo(w io.Writer) (int64, error) {
	return io.Copy(w, struct{ io.Reader }{c})
}

// SetDeadline, SetReadDeadline and SetWriteDeadline keep the deadline
// asked, and move the poller's (a runtime timer, which costs a lock and a
// heap operation each time) only when it must come sooner: earlier than
// the one it has, or where it has none, or none at all. A later deadline
// waits: when the earlier one passes, the call it ends finds a later one
// asked and waits on (resume). The HTTP/1.1 pool asks each exchange's
// deadline (its route timeout from now) anew, later each time: the
// poller's then moves about once a timeout, not once a request.
func (c *sysConn) SetDeadline(t time.Time) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.rdAsked, c.wdAsked = t, t
	r, w := mustMove(c.rdSet, t), mustMove(c.wdSet, t)
	switch {
	case r && w:
		c.rdSet, c.wdSet = t, t
		return c.TCPConn.SetDeadline(t)
	case r:
		c.rdSet = t
		return c.TCPConn.SetReadDeadline(t)
	case w:
		c.wdSet = t
		return c.TCPConn.SetWriteDeadline(t)
	}
	return nil
}

func (c *sysConn) SetReadDeadline(t time.Time) error {
	return c.setOne(&c.rdAsked, &c.rdSet, t, c.TCPConn.SetReadDeadline)
}

func (c *sysConn) SetWriteDeadline(t time.Time) error {
	return c.setOne(&c.wdAsked, &c.wdSet, t, c.TCPConn.SetWriteDeadline)
}

// setOne asks deadline t of one direction: asked and set are its, apply
// moves the poller's.
func (c *sysConn) setOne(asked, set *time.Time, t time.Time, apply func(time.Time) error) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	*asked = t
	if !mustMove(*set, t) {
		return nil
	}
	*set = t
	return apply(t)
}

// mustMove reports whether a poller's deadline set must become t at once:
// t is earlier, or one of them is none. (None is set at once too: a
// connection's socket is also read without this type, to check it is
// alive, which must not find a deadline passed that was cleared.)
func mustMove(set, t time.Time) bool {
	return !t.Equal(set) && (set.IsZero() || t.IsZero() || t.Before(set))
}

// resume is for a call that the poller's deadline ended (os.
// ErrDeadlineExceeded): true, with the poller's moved, when the deadline
// asked is still to come, for the call to wait on; false when it has
// passed.
func (c *sysConn) resume(read bool) bool {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	asked, set, apply := &c.wdAsked, &c.wdSet, c.TCPConn.SetWriteDeadline
	if read {
		asked, set, apply = &c.rdAsked, &c.rdSet, c.TCPConn.SetReadDeadline
	}
	if asked.Equal(*set) || !asked.IsZero() && !time.Now().Before(*asked) {
		return false
	}
	*set = *asked
	return apply(*asked) == nil
}

// opError is err as net.TCPConn gives it: a *net.OpError whose Err is
// the cause (a deadline, a close, an errno).
func (c *sysConn) opError(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// tlsRecordOverhead is what a TLS record adds to the data it carries, on
// a connection with state st: header, and for TLS 1.3 the content type
// byte and the AEAD tag; for TLS 1.2 the AEAD's explicit nonce and tag.
// -1 when it varies (block ciphers' padding) or is not known.
func tlsRecordOverhead(st tls.ConnectionState) int {
	const header, tag = 5, 16
	if st.Version == tls.VersionTLS13 {
		return header + 1 + tag
	}
	switch st.CipherSuite {
	case tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
		tls.TLS_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_RSA_WITH_AES_256_GCM_SHA384:
		return header + 8 + tag
	case tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256:
		return header + tag
	}
	return -1
}
