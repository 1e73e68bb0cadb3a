package proxy

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	dnstable "github.com/envoyproxy/go-control-plane/envoy/data/dns/v3"
	dnsfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/dns_filter/v3"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// dnsFilter is the DNS filter config the zone CP sends: billing and web of
// mesh default, authority for .mesh.
func dnsFilter() *dnsfilter.DnsFilterConfig {
	table := &dnstable.DnsTable{}
	for name, ip := range map[string]string{"billing.mesh": "240.0.0.1", "billing.default.mesh": "240.0.0.1", "v6.mesh": "fd00::1"} {
		table.VirtualDomains = append(table.VirtualDomains, &dnstable.DnsTable_DnsVirtualDomain{Name: name, AnswerTtl: durationpb.New(30e9),
			Endpoint: &dnstable.DnsTable_DnsEndpoint{EndpointConfig: &dnstable.DnsTable_DnsEndpoint_AddressList{
				AddressList: &dnstable.DnsTable_AddressList{Address: []string{ip}}}}})
	}
	return &dnsfilter.DnsFilterConfig{StatPrefix: "ursa_dns", ServerConfig: &dnsfilter.DnsFilterConfig_ServerContextConfig{
		ConfigSource: &dnsfilter.DnsFilterConfig_ServerContextConfig_InlineDnsTable{InlineDnsTable: table}}}
}

func dnsListener(t testing.TB, addr string, port uint32, cfg *dnsfilter.DnsFilterConfig) *listener.Listener {
	a, err := anypb.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &listener.Listener{Name: "ursa:dns",
		Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
			Protocol: core.SocketAddress_UDP, Address: addr, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port}}}},
		ListenerFilters: []*listener.ListenerFilter{{Name: dnsFilterName, ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: a}}}}
}

// answeringDNS is a proxy answering dnsFilter's table on a free port of
// 127.0.0.1 (the same over UDP and TCP), forwarding to upstreams.
func answeringDNS(tb testing.TB, upstreams ...string) *Proxy {
	p, err := New(zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Close)
	p.DNSUpstreams = upstreams
	cfg, err := translate([]*listener.Listener{dnsListener(tb, "127.0.0.1", 1, dnsFilter())}, nil, nil, nil, nil)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.DNS.Addr = "127.0.0.1:0"
	if err := p.Apply(cfg); err != nil {
		tb.Fatal(err)
	}
	return p
}

// fakeUpstream is a resolver on loopback, over UDP and TCP, that answers
// every query with 192.0.2.7.
func fakeUpstream(t *testing.T) string {
	s, err := startDNS("127.0.0.1:0", dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg).SetReply(r)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 7)})
		_ = w.WriteMsg(m)
	}), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.stop)
	return s.udpAddr.String()
}

func TestDNSListener(t *testing.T) {
	p := answeringDNS(t, fakeUpstream(t))
	addr := p.DNSAddr().String()
	for _, network := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: network}
		ask := func(name string, qtype uint16) *dns.Msg {
			t.Helper()
			resp, _, err := c.Exchange(new(dns.Msg).SetQuestion(name, qtype), addr)
			if err != nil {
				t.Fatalf("%s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
			}
			return resp
		}
		for _, name := range []string{"billing.mesh.", "BILLING.default.Mesh."} {
			resp := ask(name, dns.TypeA)
			if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 || resp.Answer[0].(*dns.A).A.String() != "240.0.0.1" || resp.Answer[0].Header().Ttl != 30 {
				t.Fatalf("%s over %s: %v", name, network, resp)
			}
		}
		// Negative answers carry their zone's SOA, with the answers' TTL,
		// so that caches keep them (RFC 2308 3, 5).
		soa := func(resp *dns.Msg) bool {
			if len(resp.Ns) != 1 {
				return false
			}
			s, ok := resp.Ns[0].(*dns.SOA)
			return ok && s.Hdr.Name == "mesh." && s.Hdr.Ttl == 30 && s.Minttl == 30
		}
		if resp := ask("billing.mesh.", dns.TypeAAAA); resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 0 || !soa(resp) {
			t.Fatalf("AAAA of a v4 name over %s: %v, want an empty NOERROR with the SOA of mesh.", network, resp)
		}
		if resp := ask("v6.mesh.", dns.TypeAAAA); len(resp.Answer) != 1 || resp.Answer[0].(*dns.AAAA).AAAA.String() != "fd00::1" {
			t.Fatalf("AAAA of v6.mesh over %s: %v", network, resp)
		}
		for _, name := range []string{"nope.mesh.", "a.b.mesh.", "nope.default.mesh."} {
			if resp := ask(name, dns.TypeA); resp.Rcode != dns.RcodeNameError || !resp.Authoritative || !soa(resp) {
				t.Fatalf("unknown name %s under .mesh over %s: %v, want an authoritative NXDOMAIN with the SOA of mesh.", name, network, resp)
			}
		}
		for _, name := range []string{"mesh.", "default.mesh."} {
			if resp := ask(name, dns.TypeA); resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 0 || !resp.Authoritative || !soa(resp) {
				t.Fatalf("the domain %s over %s: %v, want an authoritative NOERROR without answers, with the SOA of mesh.", name, network, resp)
			}
		}
		if resp := ask("example.org.", dns.TypeA); resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 || resp.Answer[0].(*dns.A).A.String() != "192.0.2.7" {
			t.Fatalf("a name outside .mesh over %s: %v, want the upstream's answer", network, resp)
		}
	}
	// A configuration without the DNS listener stops it.
	if err := p.Apply(&Config{Listeners: map[string]*Listener{}, Clusters: map[string]*Cluster{}}); err != nil {
		t.Fatal(err)
	}
	if p.DNSAddr() != nil {
		t.Fatal("the DNS listener still runs")
	}
	if _, _, err := (&dns.Client{Net: "tcp"}).Exchange(new(dns.Msg).SetQuestion("billing.mesh.", dns.TypeA), addr); err == nil {
		t.Fatal("answered after the DNS listener went away")
	}
}

// A query of an EDNS version past 0 gets BADVERS with an OPT of version 0
// (RFC 6891 6.1.3), over UDP (where the fast path leaves it to the full
// one) and TCP.
func TestDNSEDNSVersion(t *testing.T) {
	p := answeringDNS(t)
	for _, network := range []string{"udp", "tcp"} {
		for version, rcode := range map[uint8]int{0: dns.RcodeSuccess, 1: dns.RcodeBadVers} {
			m := new(dns.Msg).SetQuestion("billing.mesh.", dns.TypeA)
			m.SetEdns0(1232, false)
			m.IsEdns0().SetVersion(version)
			resp, _, err := (&dns.Client{Net: network}).Exchange(m, p.DNSAddr().String())
			if err != nil {
				t.Fatal(err)
			}
			if opt := resp.IsEdns0(); resp.Rcode != rcode || opt == nil || opt.Version() != 0 {
				t.Fatalf("EDNS version %d over %s: %v, want rcode %d with an OPT of version 0", version, network, resp, rcode)
			}
		}
	}
}

func TestDNSWithoutUpstreamsRefuses(t *testing.T) {
	p := newProxy(t)
	cfg, err := translate([]*listener.Listener{dnsListener(t, "127.0.0.1", 1, dnsFilter())}, nil, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.cfg.Store(cfg)
	if resp := p.answerDNS(new(dns.Msg).SetQuestion("example.org.", dns.TypeA), true); resp.Rcode != dns.RcodeRefused {
		t.Fatalf("%v, want REFUSED", resp)
	}
}

// TestDNSRefusesWhatItCannotHonour: a DNS filter config the built-in proxy
// would answer differently from Envoy is rejected, with the reason.
func TestDNSRefusesWhatItCannotHonour(t *testing.T) {
	withClient := dnsFilter()
	withClient.ClientConfig = &dnsfilter.DnsFilterConfig_ClientContextConfig{}
	external := dnsFilter()
	external.ServerConfig.ConfigSource = &dnsfilter.DnsFilterConfig_ServerContextConfig_ExternalDnsTable{ExternalDnsTable: &core.DataSource{}}
	cluster := dnsFilter()
	cluster.ServerConfig.GetInlineDnsTable().VirtualDomains[0].Endpoint = &dnstable.DnsTable_DnsEndpoint{
		EndpointConfig: &dnstable.DnsTable_DnsEndpoint_ClusterName{ClusterName: "billing"}}
	tcpDNS := dnsListener(t, "127.0.0.1", 15053, dnsFilter())
	tcpDNS.Address.GetSocketAddress().Protocol = core.SocketAddress_TCP
	tcpDNS.FilterChains = []*listener.FilterChain{{}}
	for want, l := range map[string]*listener.Listener{
		"ClientConfig":          dnsListener(t, "127.0.0.1", 15053, withClient),
		"ExternalDnsTable":      dnsListener(t, "127.0.0.1", 15053, external),
		"address_list":          dnsListener(t, "127.0.0.1", 15053, cluster),
		"UDP socket address":    tcpDNS,
		"want an IP and a port": dnsListener(t, "localhost", 15053, dnsFilter()),
	} {
		_, err := translate([]*listener.Listener{l}, nil, nil, nil, nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err %v, want one saying %q", err, want)
		}
	}
	_, err := translate([]*listener.Listener{dnsListener(t, "127.0.0.1", 1, dnsFilter()), dnsListener(t, "127.0.0.1", 2, dnsFilter())}, nil, nil, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "second DNS listener") {
		t.Errorf("two DNS listeners: err %v", err)
	}
}

func TestResolvConf(t *testing.T) {
	file := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(file, []byte("search example.org\nnameserver 127.0.0.53\nnameserver ::1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := ResolvConf(file)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != "127.0.0.53:53 [::1]:53" {
		t.Fatalf("%q", got)
	}
	if _, err := ResolvConf(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Fatal("no error for a missing file")
	}
}

// FuzzDNSAnswer: whatever arrives on the DNS listener, the answer never
// panics, packs, and is never an answer to an answer.
func FuzzDNSAnswer(f *testing.F) {
	for _, q := range []*dns.Msg{
		new(dns.Msg).SetQuestion("billing.mesh.", dns.TypeA),
		new(dns.Msg).SetQuestion("v6.mesh.", dns.TypeANY),
		new(dns.Msg).SetQuestion("nope.mesh.", dns.TypeAAAA),
		new(dns.Msg).SetQuestion("mesh.", dns.TypeSOA),
		new(dns.Msg).SetQuestion("example.org.", dns.TypeA).SetEdns0(4096, true),
	} {
		b, _ := q.Pack()
		f.Add(b)
	}
	f.Add([]byte{0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0})
	p, err := New(zap.NewNop(), prometheus.NewRegistry())
	if err != nil {
		f.Fatal(err)
	}
	l := dnsListener(f, "127.0.0.1", 1, dnsFilter())
	cfg, err := translate([]*listener.Listener{l}, nil, nil, nil, nil)
	if err != nil {
		f.Fatal(err)
	}
	p.cfg.Store(cfg)
	f.Fuzz(func(t *testing.T, b []byte) {
		req := new(dns.Msg)
		if req.Unpack(b) != nil {
			return
		}
		resp := p.answerDNS(req, true)
		if resp == nil {
			if !req.Response {
				t.Fatal("dropped a query")
			}
			return
		}
		if req.Response {
			t.Fatal("answered an answer")
		}
		resp.Truncate(dns.MinMsgSize)
		if _, err := resp.Pack(); err != nil {
			t.Fatalf("answer does not pack: %v", err)
		}
	})
}

// An ingress's TCP listener with its TLS inspector is no DNS listener.
func TestTCPListenerWithListenerFilterIsNotDNS(t *testing.T) {
	l := &listener.Listener{Name: "ingress", Address: socket("127.0.0.1", 1),
		ListenerFilters: []*listener.ListenerFilter{{Name: "envoy.filters.listener.tls_inspector"}}}
	if isDNSListener(l) {
		t.Fatal("taken for a DNS listener")
	}
}
