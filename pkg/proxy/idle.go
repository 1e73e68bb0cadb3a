package proxy

import (
	"crypto/tls"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	tcp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"golang.org/x/sys/unix"
)

// tcpDefaultIdle is a tcp_proxy's idle_timeout when it sets none:
// Envoy's default.
const tcpDefaultIdle = time.Hour

// tcpIdle is a tcp_proxy's idle timeout: its idle_timeout (0: none, as
// Envoy's 0s), or when unset Envoy's default.
func tcpIdle(listenerName string, tp *tcp.TcpProxy) (time.Duration, error) {
	d := tp.GetIdleTimeout()
	if d == nil {
		return tcpDefaultIdle, nil
	}
	if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
		return 0, fmt.Errorf("listener %q: tcp_proxy: idle_timeout: not a valid duration", listenerName)
	}
	return d.AsDuration(), nil
}

// watchIdle closes down and up once no data has moved on either socket
// for idle, as their kernel counts it (TCP_INFO: the time since data was
// last sent and last received), as Envoy's tcp_proxy idle_timeout does.
// The copies themselves keep no clock, so two bare sockets still splice,
// and a busy connection costs one look per idle period. stop ends the
// watch. Two connections without a TCP socket under them (none reach a
// TCP proxy) are not watched.
//
// The kernel's times are 32-bit milliseconds: an idle timeout over 49
// days never fires.
func watchIdle(down, up net.Conn, idle time.Duration) (stop func()) {
	socks := []syscall.RawConn{socketOf(down), socketOf(up)}
	if socks[0] == nil && socks[1] == nil {
		return func() {}
	}
	var stopped atomic.Bool
	var check *time.Timer
	check = time.AfterFunc(time.Hour, func() {
		// The least time since data moved on a socket that says; none
		// that says (both closed) ends the watch with the connections.
		quiet, read := idle, false
		for _, rc := range socks {
			if q, ok := sinceData(rc); ok {
				quiet, read = min(quiet, q), true
			}
		}
		if !read || quiet >= idle {
			down.Close()
			up.Close()
			return
		}
		// Not after a stop: the connections are done. (A stop between
		// this check and the Reset re-arms it once; that look finds the
		// sockets closed and ends.)
		if !stopped.Load() {
			check.Reset(idle - quiet)
		}
	})
	check.Reset(idle)
	return func() {
		stopped.Store(true)
		check.Stop()
	}
}

// socketOf is the socket under c (under its TLS, if any); nil when c is not
// a TCP connection.
func socketOf(c net.Conn) syscall.RawConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(interface {
		SyscallConn() (syscall.RawConn, error)
	})
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// sinceData is how long ago the socket rc last sent or received data;
// false when that cannot be read.
func sinceData(rc syscall.RawConn) (time.Duration, bool) {
	if rc == nil {
		return 0, false
	}
	var info *unix.TCPInfo
	var err error
	if cerr := rc.Control(func(fd uintptr) {
		info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); cerr != nil || err != nil {
		return 0, false
	}
	return time.Duration(min(info.Last_data_recv, info.Last_data_sent)) * time.Millisecond, true
}
