package proxy

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	dnstable "github.com/envoyproxy/go-control-plane/envoy/data/dns/v3"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/durationpb"
)

// recorder is a ResponseWriter over UDP that keeps the packed answer.
type recorder struct{ out []byte }

func (r *recorder) LocalAddr() net.Addr { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (r *recorder) RemoteAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5000}
}
func (r *recorder) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	r.out = b
	return err
}
func (r *recorder) Write(b []byte) (int, error) { r.out = bytes.Clone(b); return len(b), nil }
func (r *recorder) Close() error                { return nil }
func (r *recorder) TsigStatus() error           { return nil }
func (r *recorder) TsigTimersOnly(bool)         {}
func (r *recorder) Hijack()                     {}

// fastProxy is a Proxy whose table is dnsFilter's plus a name with two
// addresses of each family, and one whose answers overflow 512 octets.
func fastProxy(t testing.TB, upstreams ...string) *Proxy {
	p, err := New(zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	p.DNSUpstreams = upstreams
	cfg := dnsFilter()
	table := cfg.GetServerConfig().GetInlineDnsTable()
	many := []string{}
	for i := range 40 {
		many = append(many, net.IPv4(240, 0, 1, byte(i)).String())
	}
	for name, ips := range map[string][]string{"dual.mesh": {"240.0.0.2", "fd00::2", "240.0.0.3", "fd00::3"}, "many.mesh": many} {
		table.VirtualDomains = append(table.VirtualDomains, &dnstable.DnsTable_DnsVirtualDomain{Name: name, AnswerTtl: durationpb.New(30e9),
			Endpoint: &dnstable.DnsTable_DnsEndpoint{EndpointConfig: &dnstable.DnsTable_DnsEndpoint_AddressList{
				AddressList: &dnstable.DnsTable_AddressList{Address: ips}}}})
	}
	c, err := translate([]*listener.Listener{dnsListener(t, "127.0.0.1", 1, cfg)}, nil, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.cfg.Store(c)
	return p
}

// fullPath is what the DNS listener sends for packet without the fast path
// (miekg/dns's server unpacks it, serveDNS answers and packs), nil for
// nothing; accepted is false when the server would not pass packet to the
// handler at all.
func fullPath(t testing.TB, p *Proxy, packet []byte) (out []byte, accepted bool) {
	req := new(dns.Msg)
	if err := req.Unpack(packet); err != nil {
		return nil, false
	}
	if req.Response || req.Opcode != dns.OpcodeQuery || len(req.Question) != 1 || len(req.Answer) > 1 || len(req.Ns) > 1 || len(req.Extra) > 2 {
		return nil, false
	}
	w := &recorder{}
	p.serveDNS(w, req)
	return w.out, true
}

func pack(t testing.TB, m *dns.Msg) []byte {
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func query(name string, qtype uint16) *dns.Msg { return new(dns.Msg).SetQuestion(name, qtype) }

func TestDNSFastPath(t *testing.T) {
	for _, upstreams := range [][]string{nil, {"127.0.0.1:1"}} {
		p := fastProxy(t, upstreams...)
		fast := p.cfg.Load().DNS.fast
		cd := query("Billing.Mesh.", dns.TypeA)
		cd.CheckingDisabled, cd.RecursionDesired, cd.Id = true, false, 0xbeef
		anyClass := query("dual.mesh.", dns.TypeAAAA)
		anyClass.Question[0].Qclass = dns.ClassANY
		for _, q := range []*dns.Msg{
			query("billing.mesh.", dns.TypeA),
			query("BILLING.default.MESH.", dns.TypeA),
			cd,
			query("billing.mesh.", dns.TypeAAAA), // NOERROR, no answer
			query("billing.mesh.", dns.TypeMX),
			query("v6.mesh.", dns.TypeAAAA),
			query("dual.mesh.", dns.TypeANY),
			query("dual.mesh.", dns.TypeA),
			anyClass,
			query("dual.mesh.", dns.TypeA).SetEdns0(4096, true),
			query("many.mesh.", dns.TypeA).SetEdns0(1232, false), // fits 1,232 octets, not 512
		} {
			b := pack(t, q)
			got := fast.answer(b, nil, len(upstreams) > 0)
			if got == nil {
				t.Fatalf("%v: not answered by the fast path", q.Question[0])
			}
			want, _ := fullPath(t, p, b)
			if !bytes.Equal(got, want) {
				t.Fatalf("%v: fast path\n%x\nfull path\n%x", q.Question[0], got, want)
			}
			// An EDNS0 query's answer carries an OPT record (RFC 6891 §7).
			var m dns.Msg
			if err := m.Unpack(got); err != nil {
				t.Fatalf("%v: answer does not unpack: %v", q.Question[0], err)
			}
			if opt := m.IsEdns0(); (opt != nil) != (q.IsEdns0() != nil) || (opt != nil && (opt.UDPSize() != maxUDP || opt.Do())) {
				t.Fatalf("%v: answer's OPT %v for a query's %v", q.Question[0], opt, q.IsEdns0())
			}
		}
		// What the full path answers differently, or the fast path cannot
		// answer without unpacking, is left to it.
		withCookie := query("billing.mesh.", dns.TypeA).SetEdns0(1232, false)
		withCookie.IsEdns0().Option = append(withCookie.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0123456789abcdef"})
		response := query("billing.mesh.", dns.TypeA)
		response.Response = true
		notify := query("billing.mesh.", dns.TypeA)
		notify.Opcode = dns.OpcodeNotify
		chaos := query("billing.mesh.", dns.TypeA)
		chaos.Question[0].Qclass = dns.ClassCHAOS
		compressed := query("billing.mesh.", dns.TypeA)
		compressed.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "billing.mesh.", Rrtype: dns.TypeA, Class: dns.ClassINET}, A: net.IPv4(1, 2, 3, 4)}}
		compressed.Compress = true
		trailing := append(pack(t, query("billing.mesh.", dns.TypeA)), 0)
		for name, b := range map[string][]byte{
			"unknown name":          pack(t, query("nope.mesh.", dns.TypeA)),
			"the domain":            pack(t, query("mesh.", dns.TypeA)),
			"forwarded name":        pack(t, query("example.org.", dns.TypeA)),
			"EDNS0 with an option":  pack(t, withCookie),
			"response":              pack(t, response),
			"NOTIFY":                pack(t, notify),
			"class CH":              pack(t, chaos),
			"a record in answers":   pack(t, compressed),
			"trailing octet":        trailing,
			"over 512 octets":       pack(t, query("many.mesh.", dns.TypeA)),
			"header only":           pack(t, new(dns.Msg)),
			"cut in the name":       pack(t, query("billing.mesh.", dns.TypeA))[:16],
			"compression pointer":   append(pack(t, new(dns.Msg).SetQuestion(".", dns.TypeA))[:12], 0xc0, 12, 0, 1, 0, 1),
			"two questions (count)": func() []byte { b := pack(t, query("billing.mesh.", dns.TypeA)); b[5] = 2; return b }(),
		} {
			if got := fast.answer(b, nil, false); got != nil {
				t.Errorf("%s: answered by the fast path: %x", name, got)
			}
		}
	}
}

// The fast path is what the DNS listener answers with, and it counts.
func TestDNSFastPathListener(t *testing.T) {
	p := answeringDNS(t)
	c := &dns.Client{Net: "udp"}
	for range 3 {
		resp, _, err := c.Exchange(query("billing.MESH.", dns.TypeA), p.DNSAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Answer) != 1 || resp.Answer[0].Header().Name != "billing.MESH." || resp.Answer[0].(*dns.A).A.String() != "240.0.0.1" {
			t.Fatalf("%v", resp)
		}
	}
	if n := testutil.ToFloat64(p.dnsQueries.WithLabelValues("NOERROR")); n != 3 {
		t.Fatalf("ursa_dp_dns_queries_total{rcode=NOERROR} = %v, want 3", n)
	}

	// A wildcard address's socket is served as a *net.UDPConn, with the
	// destination of each query (IP_PKTINFO) to answer from: the same
	// reader over it, on loopback.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(p.serveDNS), UDPSize: maxUDP, DecorateReader: p.fastReader,
		NotifyStartedFunc: func() { close(started) }}
	failed := make(chan error, 1)
	go func() { failed <- srv.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-failed:
		t.Fatal(err)
	}
	defer srv.Shutdown()
	for _, name := range []string{"BILLING.mesh.", "nope.mesh."} { // the fast path, the full path
		resp, _, err := c.Exchange(query(name, dns.TypeA), pc.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		if resp.Question[0].Name != name || (name == "nope.mesh.") != (resp.Rcode == dns.RcodeNameError) {
			t.Fatalf("%s: %v", name, resp)
		}
	}
	if n := testutil.ToFloat64(p.dnsQueries.WithLabelValues("NOERROR")); n != 4 {
		t.Fatalf("ursa_dp_dns_queries_total{rcode=NOERROR} = %v, want 4", n)
	}
}

// FuzzDNSFastPath: whatever the fast path answers, the full path answers
// with the same octets.
func FuzzDNSFastPath(f *testing.F) {
	for _, q := range []*dns.Msg{
		query("billing.mesh.", dns.TypeA),
		query("BILLING.default.Mesh.", dns.TypeANY).SetEdns0(1232, true),
		query("dual.mesh.", dns.TypeANY),
		query("many.mesh.", dns.TypeA).SetEdns0(600, false),
		query("v6.mesh.", dns.TypeAAAA),
		query("nope.mesh.", dns.TypeA),
	} {
		f.Add(pack(f, q), false)
	}
	p := fastProxy(f)
	pr := fastProxy(f, "127.0.0.1:1")
	f.Fuzz(func(t *testing.T, packet []byte, recursion bool) {
		p := p
		if recursion {
			p = pr
		}
		got := p.cfg.Load().DNS.fast.answer(packet, nil, recursion)
		if got == nil {
			return
		}
		want, accepted := fullPath(t, p, packet)
		if !accepted {
			t.Fatalf("answered %x, which the server does not pass to the handler", packet)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("query %x: fast path\n%x\nfull path\n%x", packet, got, want)
		}
	})
}

// BenchmarkDNSAnswer is the per-query work of the DNS listener for a table
// name, without the sockets: the fast path, and the full path (unpack,
// answerDNS, pack) the rest takes.
func BenchmarkDNSAnswer(b *testing.B) {
	p := fastProxy(b)
	q := pack(b, query("Billing.mesh.", dns.TypeA))
	b.Run("fast", func(b *testing.B) {
		fast, out := p.cfg.Load().DNS.fast, make([]byte, 0, maxUDP)
		b.ReportAllocs()
		for b.Loop() {
			binary.BigEndian.PutUint16(q, uint16(b.N))
			if fast.answer(q, out[:0], false) == nil {
				b.Fatal("not answered")
			}
		}
	})
	b.Run("full", func(b *testing.B) {
		w := &recorder{}
		b.ReportAllocs()
		for b.Loop() {
			req := new(dns.Msg)
			if err := req.Unpack(q); err != nil {
				b.Fatal(err)
			}
			p.serveDNS(w, req)
		}
	})
}

// BenchmarkDNSListenerUDP is one query at a time over loopback UDP to the
// running DNS listener: the per-query cost with the server and syscalls.
func BenchmarkDNSListenerUDP(b *testing.B) {
	p := answeringDNS(b)
	conn, err := net.Dial("udp", p.DNSAddr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	q, buf := pack(b, query("billing.mesh.", dns.TypeA)), make([]byte, 512)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := conn.Write(q); err != nil {
			b.Fatal(err)
		}
		if _, err := conn.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// The DNS listener binds dnsSockets UDP sockets to its address: clients on
// any of them are answered; an address a socket of this user holds with
// SO_REUSEPORT is in use all the same.
func TestDNSListenerSockets(t *testing.T) {
	s, err := startDNS("127.0.0.1:0", dns.HandlerFunc(fastProxy(t).serveDNS), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.stop()
	if len(s.servers) != dnsSockets()+1 {
		t.Fatalf("%d servers, want %d over UDP and one over TCP", len(s.servers), dnsSockets())
	}
	for i := range 16 { // 16 client ports: the kernel spreads them over the sockets
		c, err := net.Dial("udp", s.udpAddr.String())
		if err != nil {
			t.Fatal(err)
		}
		resp, _, err := (&dns.Client{}).ExchangeWithConn(query("billing.mesh.", dns.TypeA), &dns.Conn{Conn: c})
		c.Close()
		if err != nil || len(resp.Answer) != 1 {
			t.Fatalf("client %d: %v %v", i, resp, err)
		}
	}

	lc := net.ListenConfig{Control: reusePort}
	taken, err := lc.ListenPacket(t.Context(), "udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	if s, err := startDNS(taken.LocalAddr().String(), dns.HandlerFunc(fastProxy(t).serveDNS), nil); err == nil {
		s.stop()
		t.Fatal("bound an address a SO_REUSEPORT socket holds")
	}
}
