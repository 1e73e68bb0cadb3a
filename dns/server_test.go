package dns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// viewOf builds the catalogue of a view holding the given VirtualIPs,
// through a real Mirror over a memory store.
func viewOf(t *testing.T, vips ...*api.VirtualIPs) *catalog.Catalog {
	t.Helper()
	st := store.NewMemory(0)
	ctx, cancel := context.WithCancel(context.Background())
	var puts []api.Resource
	for _, v := range vips {
		puts = append(puts, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: v.Mesh}}, v)
	}
	if _, err := st.Apply(ctx, puts, nil); err != nil {
		t.Fatal(err)
	}
	m := store.NewMirror(st, catalog.Types(), zaptest.NewLogger(t))
	var wg sync.WaitGroup
	wg.Go(func() { m.Start(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	<-m.Ready()
	v, _ := m.Current()
	cat, err := catalog.Build("zone-1", v)
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

func vips(mesh string, entries map[string]string) *api.VirtualIPs {
	v := &api.VirtualIPs{Meta: api.Meta{Type: "VirtualIPs", Mesh: mesh, Name: vipsName}, Entries: map[string]api.VirtualIP{}}
	for svc, ip := range entries {
		v.Entries[svc] = api.VirtualIP{IP: ip}
	}
	return v
}

// serve starts a resolver on loopback and returns its address.
func serve(t *testing.T, view *catalog.Catalog, upstreams ...string) string {
	t.Helper()
	addr, _ := serveWithMetrics(t, view, upstreams...)
	return addr
}

func serveWithMetrics(t *testing.T, view *catalog.Catalog, upstreams ...string) (string, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	r := NewResolver()
	r.table.Store(NewTable(view))
	s := &Server{Resolver: r, Domain: "mesh", TTL: 5 * time.Second, Upstreams: upstreams, Log: zaptest.NewLogger(t), Metrics: m}
	udp, tcp := udpAndTCP(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Start(ctx, udp, tcp); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	c := &dns.Client{Timeout: 200 * time.Millisecond}
	testutil.Eventually(t, 10*time.Second, "the DNS server to answer over UDP", func() error {
		_, _, err := c.Exchange(new(dns.Msg).SetQuestion("x.mesh.", dns.TypeA), udp.LocalAddr().String())
		return err
	})
	return udp.LocalAddr().String(), reg
}

func ask(t *testing.T, addr, net string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: net, Timeout: 2 * time.Second, UDPSize: 65535}
	resp, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s query %s: %v", net, m.Question[0].Name, err)
	}
	return resp
}

func TestAnswers(t *testing.T) {
	view := viewOf(t, vips("default", map[string]string{"billing": "240.0.0.1", "web": "240.0.0.2"}),
		vips("other", map[string]string{"billing": "240.0.0.3", "search": "fd00::5"}))
	addr, reg := serveWithMetrics(t, view)
	defer func() {
		families, _ := reg.Gather()
		found := map[string]bool{}
		for _, f := range families {
			found[f.GetName()] = true
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					found[l.GetName()+"="+l.GetValue()] = true
				}
			}
		}
		for _, want := range []string{"qtype=A", "rcode=NXDOMAIN", "rcode=NOERROR", "ursa_dns_answer_duration_seconds"} {
			if !found[want] {
				t.Errorf("metrics lack %s", want)
			}
		}
	}()

	tests := []struct {
		name  string
		qtype uint16
		rcode int
		want  string // answer RR text contains
	}{
		{"billing.mesh.", dns.TypeA, dns.RcodeSuccess, "240.0.0.1"},
		{"BiLLing.MESH.", dns.TypeA, dns.RcodeSuccess, "240.0.0.1"},
		{"billing.other.mesh.", dns.TypeA, dns.RcodeSuccess, "240.0.0.3"},
		{"search.mesh.", dns.TypeAAAA, dns.RcodeSuccess, "fd00::5"},
		{"search.mesh.", dns.TypeA, dns.RcodeSuccess, ""},     // exists, no A: NODATA
		{"billing.mesh.", dns.TypeAAAA, dns.RcodeSuccess, ""}, // exists, no AAAA
		{"nope.mesh.", dns.TypeA, dns.RcodeNameError, ""},
		{"mesh.", dns.TypeSOA, dns.RcodeSuccess, "hostmaster.mesh."},
		{"example.com.", dns.TypeA, dns.RcodeRefused, ""},
	}
	for _, proto := range []string{"udp", "tcp"} {
		for _, tt := range tests {
			t.Run(proto+" "+tt.name+" "+dns.TypeToString[tt.qtype], func(t *testing.T) {
				resp := ask(t, addr, proto, new(dns.Msg).SetQuestion(tt.name, tt.qtype))
				if resp.Rcode != tt.rcode {
					t.Fatalf("rcode %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tt.rcode])
				}
				got := fmt.Sprint(resp.Answer)
				if tt.want == "" && len(resp.Answer) != 0 || tt.want != "" && !strings.Contains(got, tt.want) {
					t.Fatalf("answer %s, want %q", got, tt.want)
				}
				if tt.rcode != dns.RcodeRefused && tt.want == "" && len(resp.Ns) != 1 {
					t.Fatalf("a negative answer must carry the SOA for negative caching: %v", resp.Ns)
				}
				if len(resp.Answer) > 0 && resp.Answer[0].Header().Ttl != 5 {
					t.Fatalf("TTL %d, want 5", resp.Answer[0].Header().Ttl)
				}
			})
		}
	}
	// EDNS0: the answer carries an OPT record when the query did.
	m := new(dns.Msg).SetQuestion("billing.mesh.", dns.TypeA)
	m.SetEdns0(4096, false)
	if resp := ask(t, addr, "udp", m); resp.IsEdns0() == nil || resp.IsEdns0().UDPSize() != maxUDP {
		t.Fatalf("EDNS0 answer without a proper OPT: %v", resp.Extra)
	}
}

// A mesh's own name exists: it has its services under it. NOERROR without
// answers, with the SOA (RFC 8020 2, RFC 2308 2.2), where NXDOMAIN would
// tell a resolver that nothing under it exists. A query of an EDNS version
// past 0 gets BADVERS with an OPT of version 0 (RFC 6891 6.1.3).
func TestNamesWithNamesUnderThemAndEDNSVersions(t *testing.T) {
	addr := serve(t, viewOf(t, vips("default", map[string]string{"billing": "240.0.0.1"}), vips("payments", map[string]string{"ledger": "240.0.0.2"})))
	for _, proto := range []string{"udp", "tcp"} {
		for name, rcode := range map[string]int{"default.mesh.": dns.RcodeSuccess, "payments.mesh.": dns.RcodeSuccess, "nope.mesh.": dns.RcodeNameError, "x.default.mesh.": dns.RcodeNameError} {
			r := ask(t, addr, proto, new(dns.Msg).SetQuestion(name, dns.TypeA))
			if r.Rcode != rcode || len(r.Answer) != 0 || len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != dns.TypeSOA {
				t.Errorf("%s %s: %v, want %s with the SOA", proto, name, r, dns.RcodeToString[rcode])
			}
		}
		if r := ask(t, addr, proto, new(dns.Msg).SetQuestion("ledger.payments.mesh.", dns.TypeA)); len(r.Answer) != 1 {
			t.Errorf("%s ledger.payments.mesh.: %v", proto, r)
		}
		for version, rcode := range map[uint8]int{0: dns.RcodeSuccess, 1: dns.RcodeBadVers} {
			m := new(dns.Msg).SetQuestion("billing.mesh.", dns.TypeA)
			m.SetEdns0(1232, false)
			m.IsEdns0().SetVersion(version)
			if r := ask(t, addr, proto, m); r.Rcode != rcode || r.IsEdns0() == nil || r.IsEdns0().Version() != 0 {
				t.Errorf("%s EDNS version %d: %v, want rcode %d with an OPT of version 0", proto, version, r, rcode)
			}
		}
	}
}

// upstream runs a resolver for example.com that answers big.example.com
// with 40 A records: more than 512 bytes.
func upstream(t *testing.T) string {
	t.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg).SetReply(r)
		n := 1
		if strings.HasPrefix(r.Question[0].Name, "big.") {
			n = 40
		}
		for i := range n {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A: net.IPv4(127, 1, 0, byte(i+1))})
		}
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			size := 512
			if o := r.IsEdns0(); o != nil {
				size = int(o.UDPSize())
			}
			m.Truncate(size)
		}
		w.WriteMsg(m)
	})
	pc, ln := udpAndTCP(t)
	servers := []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}}
	for _, s := range servers {
		go s.ActivateAndServe()
	}
	t.Cleanup(func() {
		for _, s := range servers {
			s.Shutdown()
		}
	})
	return pc.LocalAddr().String()
}

func TestForwarding(t *testing.T) {
	addr := serve(t, viewOf(t), upstream(t))
	resp := ask(t, addr, "udp", new(dns.Msg).SetQuestion("www.example.com.", dns.TypeA))
	if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Fatalf("forwarded answer: %v", resp)
	}
	// Too big for a plain UDP answer: truncated, and complete over TCP.
	plain := ask(t, addr, "udp", new(dns.Msg).SetQuestion("big.example.com.", dns.TypeA))
	plain.Compress = true // measure it as it was sent
	if !plain.Truncated || plain.Len() > 512 {
		t.Fatalf("plain UDP answer: TC=%v, %d bytes", plain.Truncated, plain.Len())
	}
	full := ask(t, addr, "tcp", new(dns.Msg).SetQuestion("big.example.com.", dns.TypeA))
	if full.Truncated || len(full.Answer) != 40 {
		t.Fatalf("TCP answer: TC=%v, %d records", full.Truncated, len(full.Answer))
	}
	// With EDNS0 the client gets everything over UDP: we fetched it from the
	// upstream over TCP when its UDP answer was truncated.
	m := new(dns.Msg).SetQuestion("big.example.com.", dns.TypeA)
	m.SetEdns0(1232, false)
	if e := ask(t, addr, "udp", m); e.Truncated || len(e.Answer) != 40 {
		t.Fatalf("EDNS0 UDP answer: TC=%v, %d records", e.Truncated, len(e.Answer))
	}
	// An unreachable upstream: SERVFAIL, not a hang.
	dead := serve(t, viewOf(t), "127.0.0.1:1")
	if r := ask(t, dead, "udp", new(dns.Msg).SetQuestion("www.example.com.", dns.TypeA)); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("dead upstream: %s", dns.RcodeToString[r.Rcode])
	}
}

func TestBadInput(t *testing.T) {
	addr := serve(t, viewOf(t, vips("default", map[string]string{"billing": "240.0.0.1"})))
	two := new(dns.Msg).SetQuestion("billing.mesh.", dns.TypeA)
	two.Question = append(two.Question, two.Question[0])
	notify := new(dns.Msg).SetQuestion("billing.mesh.", dns.TypeA)
	notify.Opcode = dns.OpcodeNotify
	chaos := new(dns.Msg).SetQuestion("billing.mesh.", dns.TypeA)
	chaos.Question[0].Qclass = dns.ClassCHAOS
	for _, tt := range []struct {
		name  string
		m     *dns.Msg
		rcode int
	}{
		{"two questions", two, dns.RcodeFormatError},
		{"a NOTIFY", notify, dns.RcodeNotImplemented},
		{"the CHAOS class", chaos, dns.RcodeNotImplemented},
		{"an unknown type", new(dns.Msg).SetQuestion("billing.mesh.", 65000), dns.RcodeSuccess},
	} {
		if r := ask(t, addr, "udp", tt.m); r.Rcode != tt.rcode {
			t.Errorf("%s: %s, want %s", tt.name, dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.rcode])
		}
	}
	// Raw garbage over UDP and TCP: answered with FORMERR or dropped, and
	// the server keeps answering.
	garbage := [][]byte{{}, {0x12}, {0x12, 0x34, 0x01}, make([]byte, 12), []byte(strings.Repeat("\xff", 600)),
		{0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x3f}}
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, g := range garbage {
		conn.Write(g)
	}
	for _, g := range garbage {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(append([]byte{byte(len(g) >> 8), byte(len(g))}, g...))
		c.Close()
	}
	// A truncated TCP frame whose client goes silent must not block others.
	stuck, _ := net.Dial("tcp", addr)
	defer stuck.Close()
	stuck.Write([]byte{0x01, 0x00, 0x12})
	for _, proto := range []string{"udp", "tcp"} {
		if r := ask(t, addr, proto, new(dns.Msg).SetQuestion("billing.mesh.", dns.TypeA)); len(r.Answer) != 1 {
			t.Fatalf("%s after garbage: %v", proto, r)
		}
	}
}

// discard is a ResponseWriter for the fuzzer.
type discard struct{ udp bool }

func (d discard) LocalAddr() net.Addr { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (d discard) RemoteAddr() net.Addr {
	if d.udp {
		return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5000}
	}
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5000}
}
func (d discard) WriteMsg(m *dns.Msg) error {
	_, err := m.Pack()
	return err
}
func (d discard) Write(b []byte) (int, error) { return len(b), nil }
func (d discard) Close() error                { return nil }
func (d discard) TsigStatus() error           { return nil }
func (d discard) TsigTimersOnly(bool)         {}
func (d discard) Hijack()                     {}

// FuzzServeDNS sends whatever parses as a DNS message through the query
// path: it must answer or drop, never panic.
func FuzzServeDNS(f *testing.F) {
	for _, q := range []*dns.Msg{
		new(dns.Msg).SetQuestion("billing.mesh.", dns.TypeA),
		new(dns.Msg).SetQuestion("BILLING.default.mesh.", dns.TypeAAAA),
		new(dns.Msg).SetQuestion("mesh.", dns.TypeSOA),
		new(dns.Msg).SetQuestion("x.example.", dns.TypeTXT),
	} {
		b, _ := q.Pack()
		f.Add(b)
	}
	r := NewResolver()
	r.table.Store(&Table{byName: map[string]netip.Addr{"billing": netip.MustParseAddr("240.0.0.1")}, vips: map[MeshService]netip.Addr{}})
	s := &Server{Resolver: r, Domain: "mesh", TTL: time.Second, Log: zaptest.NewLogger(f)}
	s.init()
	f.Fuzz(func(t *testing.T, packet []byte) {
		m := new(dns.Msg)
		if err := m.Unpack(packet); err != nil {
			return
		}
		s.ServeDNS(discard{udp: len(packet)%2 == 0}, m)
	})
}

// udpAndTCP listens on one loopback port for both UDP and TCP. The kernel
// picks a free UDP port; its TCP twin may be taken (by a client socket of
// another test), so it tries again with another.
func udpAndTCP(t *testing.T) (net.PacketConn, net.Listener) {
	t.Helper()
	var lastErr error
	for range 20 {
		udp, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		tcp, err := net.Listen("tcp", udp.LocalAddr().String())
		if err == nil {
			return udp, tcp
		}
		udp.Close()
		lastErr = err
	}
	t.Fatalf("no port free for both UDP and TCP: %v", lastErr)
	return nil, nil
}
