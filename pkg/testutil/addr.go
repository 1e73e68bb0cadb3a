package testutil

import (
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// RefusingAddr returns a loopback TCP address that refuses connections for
// the rest of the test: a socket bound to a port the kernel chose, which
// never listens. Holding the port (unlike closing a listener and hoping no
// one takes its port) means nothing else can start listening there.
func RefusingAddr(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatalf("refusing address: socket: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("refusing address: bind: %v", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatalf("refusing address: getsockname: %v", err)
	}
	in4, ok := sa.(*syscall.SockaddrInet4)
	if !ok {
		t.Fatalf("refusing address: bound to %T", sa)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(in4.Port))
}

// FreeAddr returns 127.0.0.1:PORT for a test to hand to a process's flag:
// a port TCP and UDP could both bind a moment ago, never one FreeAddr
// returned before in this test binary, and chosen below the kernel's
// ephemeral range (net.ipv4.ip_local_port_range). A port the kernel picked
// for a bind to port 0 and that was then released is the one the next bind
// to port 0 anywhere on the machine may get, before the process the test
// starts binds it; a port below that range is taken only by a process that
// names it.
func FreeAddr(t testing.TB) string {
	t.Helper()
	low := ephemeralLow()
	const floor = 10000
	for range 1000 {
		port := floor + rand.IntN(low-floor)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if _, seen := handedOut.Load(addr); seen || !bindable(addr) {
			continue
		}
		if _, seen := handedOut.LoadOrStore(addr, true); !seen {
			return addr
		}
	}
	t.Fatalf("free address: no port in [%d, %d) is free", floor, low)
	return ""
}

// handedOut are the addresses FreeAddr returned.
var handedOut sync.Map

// ephemeralLow is the first port of the kernel's ephemeral range (32768
// when it cannot be read, Linux's default).
func ephemeralLow() int {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 11000 {
				low = n
			}
		}
	}
	return low
}

// bindable reports whether addr is free for TCP and for UDP.
func bindable(addr string) bool {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	pc.Close()
	return true
}
