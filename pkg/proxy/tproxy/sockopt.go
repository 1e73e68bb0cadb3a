package tproxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST from linux/netfilter_ipv4.h.
const soOriginalDst = 80

// OriginalDst returns where a connection accepted from a redirected flow was
// headed before REDIRECT rewrote it. A connection that was not redirected
// returns its own local address.
func OriginalDst(c net.Conn) (netip.AddrPort, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: %T has no socket", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	var (
		dst  netip.AddrPort
		gerr error
	)
	if err := raw.Control(func(fd uintptr) {
		// The kernel writes a struct sockaddr_in (16 bytes); an
		// IPv6Mreq is a 16-byte buffer getsockopt fills without unsafe.
		mreq, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, soOriginalDst)
		if err != nil {
			gerr = err
			return
		}
		sa := mreq.Multiaddr
		dst, gerr = parseSockaddrIn(sa[:])
	}); err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	if gerr != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", gerr)
	}
	return dst, nil
}

// parseSockaddrIn reads a struct sockaddr_in as the kernel returns it.
func parseSockaddrIn(b []byte) (netip.AddrPort, error) {
	if len(b) < 8 {
		return netip.AddrPort{}, fmt.Errorf("sockaddr of %d bytes", len(b))
	}
	if fam := binary.NativeEndian.Uint16(b[0:2]); fam != unix.AF_INET {
		return netip.AddrPort{}, fmt.Errorf("address family %d, not AF_INET", fam)
	}
	port := binary.BigEndian.Uint16(b[2:4])
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), nil
}

// MarkControl is a net.Dialer Control that puts mark on the socket
// (SO_MARK, which needs CAP_NET_ADMIN), so that the rules Install makes
// with the same mark let it through unredirected.
func MarkControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("set socket mark %#x: %w", mark, serr)
		}
		return nil
	}
}

// ParsePorts reads a flag's list of TCP ports: decimal numbers 1–65535
// separated by commas ("22,8080"); "" is none.
func ParsePorts(s string) ([]int, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var ports []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			return nil, fmt.Errorf("port list %q has an empty entry", s)
		}
		p, err := strconv.Atoi(f)
		if err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("port list %q: %q is not a port (1-65535)", s, f)
		}
		ports = append(ports, p)
	}
	if len(ports) > 1024 {
		return nil, errors.New("port list: more than 1024 ports")
	}
	return ports, nil
}
