package proxy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// The fast path: a plain query for a name of the table (one question, class
// IN or ANY, no other records but an option-less EDNS0 OPT) is answered
// from its wire form into a reused buffer, in the UDP server's read loop:
// no goroutine, no unpacking into a dns.Msg, no packing, no allocation of
// ours. Its reply is byte for byte the one the full path (unpack,
// answerDNS, Truncate, Pack) sends for the same query — FuzzDNSFastPath
// holds it to that; every other query takes the full path.

// fastAnswers are the answer records of a table name by query type, each
// without its owner name (the query's name, in the query's case, goes
// before it): type, class, TTL, RDLENGTH and RDATA; and soa, the whole
// SOA record of its zone that a NODATA answer carries.
type fastAnswers struct {
	a, aaaa, any [][]byte
	soa          []byte
}

// fastTable maps the lower-case wire form of the table's names to their
// answers.
type fastTable map[string]*fastAnswers

// newFastTable prepares the answers of d's names. A name whose wire form
// does not read back as the same key (escapes such as "\065") is left to
// the full path.
func newFastTable(d *DNS) fastTable {
	t := fastTable{}
	buf := make([]byte, 256)
	soas := map[string][]byte{} // packed, by zone
	for zone, rr := range d.soas {
		b := make([]byte, dns.Len(rr))
		if n, err := dns.PackRR(rr, b, 0, nil, false); err == nil {
			soas[zone] = b[:n]
		}
	}
	for name, e := range d.Names {
		n, err := dns.PackDomainName(name, buf, 0, nil, false)
		if err != nil {
			continue
		}
		if back, _, err := dns.UnpackDomainName(buf[:n], 0); err != nil || strings.ToLower(back) != name {
			continue
		}
		key := string(lowerASCII(buf[:n]))
		fa := &fastAnswers{soa: soas[d.zoneOf(name)]}
		for _, ip := range e.addrs {
			rr := make([]byte, 10, 10+16)
			binary.BigEndian.PutUint16(rr[2:], dns.ClassINET)
			binary.BigEndian.PutUint32(rr[4:], e.ttl)
			rr = append(rr, ip.AsSlice()...)
			binary.BigEndian.PutUint16(rr[8:], uint16(len(rr)-10))
			if ip.Is4() {
				binary.BigEndian.PutUint16(rr, dns.TypeA)
				fa.a = append(fa.a, rr)
			} else {
				binary.BigEndian.PutUint16(rr, dns.TypeAAAA)
				fa.aaaa = append(fa.aaaa, rr)
			}
			fa.any = append(fa.any, rr)
		}
		t[key] = fa
	}
	return t
}

func lowerASCII(b []byte) []byte {
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return b
}

// Header bits (RFC 1035 4.1.1).
const (
	bitQR = 1 << 15
	bitAA = 1 << 10
	bitRD = 1 << 8
	bitRA = 1 << 7
	bitCD = 1 << 4
)

// answer appends to out the reply to the query q when it is a plain query
// for a name of t; otherwise it returns nil and the full path answers q.
// recursion is the RA bit (the proxy has upstreams).
func (t fastTable) answer(q, out []byte, recursion bool) []byte {
	const hdr = 12
	if len(q) < hdr+1+4 || len(t) == 0 {
		return nil
	}
	flags := binary.BigEndian.Uint16(q[2:])
	if flags&bitQR != 0 || flags>>11&0xF != dns.OpcodeQuery {
		return nil
	}
	if binary.BigEndian.Uint16(q[4:]) != 1 || binary.BigEndian.Uint16(q[6:]) != 0 || binary.BigEndian.Uint16(q[8:]) != 0 {
		return nil
	}
	arcount := binary.BigEndian.Uint16(q[10:])
	// The question's name: plain labels only (no compression pointer),
	// at most 255 octets.
	off := hdr
	for {
		if off >= len(q) {
			return nil
		}
		l := int(q[off])
		if l == 0 {
			off++
			break
		}
		if l > 63 {
			return nil
		}
		off += 1 + l
	}
	name := q[hdr:off]
	if len(name) > 255 || off+4 > len(q) {
		return nil
	}
	qtype := binary.BigEndian.Uint16(q[off:])
	if qclass := binary.BigEndian.Uint16(q[off+2:]); qclass != dns.ClassINET && qclass != dns.ClassANY {
		return nil
	}
	end := off + 4
	size, edns := dns.MinMsgSize, false
	switch arcount {
	case 0:
	case 1: // an OPT record without options: root name, type, UDP size, TTL, RDLENGTH 0
		if len(q) != end+11 || q[end] != 0 || binary.BigEndian.Uint16(q[end+1:]) != dns.TypeOPT || binary.BigEndian.Uint16(q[end+9:]) != 0 {
			return nil
		}
		if q[end+6] != 0 {
			return nil // an EDNS version past 0: the full path answers BADVERS
		}
		size = int(min(max(binary.BigEndian.Uint16(q[end+3:]), dns.MinMsgSize), maxUDP))
		end, edns = end+11, true
	default:
		return nil
	}
	if end != len(q) {
		return nil
	}
	var lower [255]byte
	fa := t[string(lowerASCII(append(lower[:0], name...)))]
	if fa == nil {
		return nil
	}
	var rrs [][]byte
	switch qtype {
	case dns.TypeA:
		rrs = fa.a
	case dns.TypeAAAA:
		rrs = fa.aaaa
	case dns.TypeANY:
		rrs = fa.any
	}
	var soa []byte // a NODATA answer's authority
	if len(rrs) == 0 {
		if soa = fa.soa; soa == nil {
			return nil
		}
	}
	n := hdr + len(name) + 4 + len(soa)
	for _, rr := range rrs {
		n += len(name) + len(rr)
	}
	if edns {
		n += len(optRecord)
	}
	if n > size {
		return nil // the full path truncates
	}
	bits := uint16(bitQR | bitAA)
	bits |= flags & (bitRD | bitCD)
	if recursion {
		bits |= bitRA
	}
	var arcountOut byte
	if edns {
		arcountOut = 1
	}
	var nscount byte
	if soa != nil {
		nscount = 1
	}
	out = append(out, q[0], q[1], byte(bits>>8), byte(bits), 0, 1, byte(len(rrs)>>8), byte(len(rrs)), 0, nscount, 0, arcountOut)
	out = append(out, q[hdr:off+4]...)
	for _, rr := range rrs {
		out = append(out, name...)
		out = append(out, rr...)
	}
	out = append(out, soa...)
	if edns {
		out = append(out, optRecord[:]...)
	}
	return out
}

// optRecord is the OPT record an EDNS0 query's answer carries, as the full
// path writes it: root name, type OPT, our UDP size, no extended rcode,
// version 0, no DO bit, no options.
var optRecord = [11]byte{0, byte(dns.TypeOPT >> 8), byte(dns.TypeOPT), byte(maxUDP >> 8), byte(maxUDP & 0xff)}

// fastReader is the DNS listener's UDP reader: it answers what the fast
// path can right in the read loop and returns the other queries to the
// server, which serves them as it reads them.
type fastReader struct {
	dns.Reader
	p       *Proxy
	in, out []byte // the read loop's own
	noError prometheus.Counter
}

func (p *Proxy) fastReader(r dns.Reader) dns.Reader {
	return &fastReader{Reader: r, p: p, in: make([]byte, maxUDP), out: make([]byte, 0, maxUDP),
		noError: p.dnsQueries.WithLabelValues(dns.RcodeToString[dns.RcodeSuccess])}
}

// answer is the fast path's answer to the query in, nil for none.
func (r *fastReader) answer(in []byte) []byte {
	table := r.p.cfg.Load().DNS
	if table == nil {
		return nil
	}
	return table.fast.answer(in, r.out[:0], len(r.p.DNSUpstreams) > 0)
}

// ReadPacketConn reads a boundUDP socket (as ReadUDP reads a wildcard one),
// without allocating for the queries it answers.
func (r *fastReader) ReadPacketConn(conn net.PacketConn, _ time.Duration) ([]byte, net.Addr, error) {
	u, ok := conn.(boundUDP)
	if !ok {
		return nil, nil, fmt.Errorf("dns listener: a %T is no bound UDP socket", conn)
	}
	for {
		n, from, err := u.ReadFromUDPAddrPort(r.in)
		if err != nil {
			return nil, nil, err
		}
		out := r.answer(r.in[:n])
		if out == nil {
			return bytes.Clone(r.in[:n]), net.UDPAddrFromAddrPort(from), nil
		}
		// Counted before it is sent: whoever saw the answer sees it counted.
		r.noError.Inc()
		if _, err := u.WriteToUDPAddrPort(out, from); err != nil {
			r.p.log.Debug("cannot write DNS answer", zap.Error(err))
		}
	}
}

// ReadUDP reads a wildcard address's socket. Like ReadPacketConn, it reads
// without a deadline: the server's Shutdown sets one in the past to end
// the read.
func (r *fastReader) ReadUDP(conn *net.UDPConn, _ time.Duration) ([]byte, *dns.SessionUDP, error) {
	for {
		n, s, err := dns.ReadFromSessionUDP(conn, r.in)
		if err != nil {
			return nil, nil, err
		}
		out := r.answer(r.in[:n])
		if out == nil {
			return bytes.Clone(r.in[:n]), s, nil
		}
		// Counted before it is sent: whoever saw the answer sees it counted.
		r.noError.Inc()
		if _, err := dns.WriteToSessionUDP(conn, out, s); err != nil {
			r.p.log.Debug("cannot write DNS answer", zap.Error(err))
		}
	}
}
