package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	dnsfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/udp/dns_filter/v3"
	"github.com/miekg/dns"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/proxy/dnsforward"
	"github.com/ursamesh/ursa/pkg/proxy/tproxy"
)

// dnsFilterName is Envoy's UDP DNS filter, the one listener filter the
// built-in proxy applies.
const dnsFilterName = "envoy.filters.udp.dns_filter"

// DNS is a DNS listener's configuration (Envoy's DNS filter with an inline
// table): names in Names are answered, other names under Suffixes are
// unknown (NXDOMAIN), and the rest are forwarded to the proxy's
// DNSUpstreams.
type DNS struct {
	Name string
	Addr string
	// Names maps a lower-case FQDN ("billing.mesh.") to its answer.
	Names map[string]dnsEntry
	// Domains are the lower-case FQDNs ("mesh.", "default.mesh.") the
	// table is the authority for, and for the names under them: as in
	// Envoy, the parents of its names (it ignores the deprecated
	// known_suffixes, as Envoy does).
	Domains map[string]bool
	// soas are the SOA records of negative answers, by zone: each domain
	// with no domain of the table above it.
	soas map[string]dns.RR
	// fast holds the answers of Names prepared for the fast path
	// (dnsfast.go), built with them.
	fast fastTable
}

type dnsEntry struct {
	addrs []netip.Addr
	ttl   uint32
}

// isDNSListener tells a UDP listener, or one with the DNS filter, from a
// TCP one (whose listener filters, such as an ingress's TLS inspector, are
// not the DNS filter).
func isDNSListener(l *listener.Listener) bool {
	if l.GetAddress().GetSocketAddress().GetProtocol() == core.SocketAddress_UDP {
		return true
	}
	for _, f := range l.GetListenerFilters() {
		if f.GetName() == dnsFilterName || f.GetTypedConfig().MessageIs(&dnsfilter.DnsFilterConfig{}) {
			return true
		}
	}
	return false
}

// translateDNS reads a DNS filter listener; what it cannot honour (another
// listener filter, an external table, a client config with resolvers of its
// own, endpoints other than address lists) is an error that names it.
func translateDNS(l *listener.Listener) (*DNS, error) {
	sa := l.GetAddress().GetSocketAddress()
	if sa == nil || sa.GetProtocol() != core.SocketAddress_UDP {
		return nil, fmt.Errorf("listener %q: a DNS listener needs a UDP socket address", l.Name)
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil || sa.GetPortValue() == 0 || sa.GetPortValue() > 65535 {
		return nil, fmt.Errorf("listener %q: DNS address %s:%d: want an IP and a port", l.Name, sa.GetAddress(), sa.GetPortValue())
	}
	if len(l.GetFilterChains()) > 0 || len(l.GetListenerFilters()) != 1 {
		return nil, fmt.Errorf("listener %q: a UDP listener must hold exactly one listener filter, %s, and no filter chains", l.Name, dnsFilterName)
	}
	f := l.GetListenerFilters()[0]
	cfg := &dnsfilter.DnsFilterConfig{}
	if tc := f.GetTypedConfig(); tc == nil || !tc.MessageIs(cfg) {
		return nil, fmt.Errorf("listener %q: listener filter %q is not supported by the built-in proxy (only %s)", l.Name, f.GetName(), dnsFilterName)
	}
	if err := unpackTyped(f.GetTypedConfig(), cfg); err != nil {
		return nil, fmt.Errorf("listener %q: dns filter: %w", l.Name, err)
	}
	if cfg.GetClientConfig() != nil {
		return nil, fmt.Errorf("listener %q: dns filter: client_config is not supported by the built-in proxy (it forwards to the host's resolvers)", l.Name)
	}
	table := cfg.GetServerConfig().GetInlineDnsTable()
	if table == nil {
		return nil, fmt.Errorf("listener %q: dns filter: only an inline_dns_table is supported by the built-in proxy", l.Name)
	}
	out := &DNS{Name: l.Name, Addr: netip.AddrPortFrom(ip, uint16(sa.GetPortValue())).String(), Names: map[string]dnsEntry{}, Domains: map[string]bool{}}
	for _, d := range table.GetVirtualDomains() {
		name := strings.ToLower(d.GetName())
		if _, ok := dns.IsDomainName(name); !ok || name == "" {
			return nil, fmt.Errorf("listener %q: dns filter: virtual domain %q is not a domain name", l.Name, d.GetName())
		}
		list := d.GetEndpoint().GetAddressList()
		if list == nil {
			return nil, fmt.Errorf("listener %q: dns filter: virtual domain %q: only address_list endpoints are supported by the built-in proxy", l.Name, d.GetName())
		}
		e := dnsEntry{ttl: 300} // Envoy's default answer TTL
		if t := d.GetAnswerTtl(); t != nil {
			e.ttl = uint32(min(max(t.AsDuration(), 0), 7*24*time.Hour) / time.Second)
		}
		for _, a := range list.GetAddress() {
			ip, err := netip.ParseAddr(a)
			if err != nil {
				return nil, fmt.Errorf("listener %q: dns filter: virtual domain %q: address %q: %w", l.Name, d.GetName(), a, err)
			}
			e.addrs = append(e.addrs, ip.Unmap())
		}
		out.Names[dns.Fqdn(name)] = e
		if _, parent, ok := strings.Cut(dns.Fqdn(name), "."); ok && parent != "" {
			out.Domains[parent] = true
		}
	}
	out.soas = zoneSOAs(out)
	out.fast = newFastTable(out)
	return out, nil
}

// zoneSOAs makes the SOA of each zone of d: a domain with no domain of d
// above it. Its TTL, and the negative answers' (RFC 2308 5), is the
// shortest answer TTL of the names in it, as the zone CP's resolver gives
// its own answers' TTL to its SOA.
func zoneSOAs(d *DNS) map[string]dns.RR {
	ttl := map[string]uint32{}
	for name, e := range d.Names {
		if _, parent, _ := strings.Cut(name, "."); parent != "" {
			zone := d.zoneOf(parent)
			if t, ok := ttl[zone]; !ok || e.ttl < t {
				ttl[zone] = e.ttl
			}
		}
	}
	out := map[string]dns.RR{}
	for zone, t := range ttl {
		out[zone] = dnsforward.SOA(zone, t)
	}
	return out
}

// ResolvConf reads the resolvers of a resolv.conf file as host:port.
func ResolvConf(path string) ([]string, error) {
	c, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("resolv.conf: %w", err)
	}
	var out []string
	for _, s := range c.Servers {
		out = append(out, net.JoinHostPort(s, c.Port))
	}
	return out, nil
}

// dnsServer is a running DNS listener: one address over UDP (dnsSockets
// sockets) and TCP.
type dnsServer struct {
	addr    string // as configured
	udpAddr net.Addr
	servers []*dns.Server
}

// maxUDP is the largest UDP answer sent to an EDNS0 client (RFC 9715).
const maxUDP = 1232

// dnsSockets is how many UDP sockets the DNS listener binds to its address
// (SO_REUSEPORT: the kernel spreads the clients over them by address and
// port). Each has its own read loop, in which the fast path answers
// (dnsfast.go), so one socket would answer on one core at most, and on a
// busy machine get one thread's share of the CPU. A sidecar's resolver
// needs no more than a few.
func dnsSockets() int { return min(runtime.GOMAXPROCS(0), 4) }

// listenDNS binds addr over UDP (n sockets) and TCP. With port 0 it takes
// the port UDP got for TCP too, and tries another when that one is taken.
func listenDNS(addr string, n int) ([]net.PacketConn, net.Listener, error) {
	_, port, _ := net.SplitHostPort(addr)
	for attempt := 1; ; attempt++ {
		pcs, ln, err := listenDNSOnce(addr, n)
		if err == nil || port != "0" || attempt == 10 {
			return pcs, ln, err
		}
	}
}

func listenDNSOnce(addr string, n int) ([]net.PacketConn, net.Listener, error) {
	// A plain socket first: it fails when the address is taken, even by
	// sockets of this user with SO_REUSEPORT (which the others would
	// silently share the queries with), and with port 0 it gets a port
	// no socket uses (the kernel may give a SO_REUSEPORT socket one that
	// sockets of the same user share).
	first, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, nil, err
	}
	host, _, _ := net.SplitHostPort(addr)
	bound := net.JoinHostPort(host, strconv.Itoa(first.LocalAddr().(*net.UDPAddr).Port))
	pcs := []net.PacketConn{first}
	fail := func(err error) ([]net.PacketConn, net.Listener, error) {
		for _, pc := range pcs {
			pc.Close()
		}
		return nil, nil, err
	}
	if n > 1 {
		first.Close()
		pcs = nil
		lc := net.ListenConfig{Control: reusePort}
		for range n {
			pc, err := lc.ListenPacket(context.Background(), "udp", bound)
			if err != nil {
				return fail(err)
			}
			pcs = append(pcs, pc)
		}
	}
	ln, err := net.Listen("tcp", bound)
	if err != nil {
		return fail(err)
	}
	return pcs, ln, nil
}

// boundUDP is a UDP socket bound to one address, which miekg/dns's server
// serves as a net.PacketConn: it answers with plain sendto. On a
// *net.UDPConn it asks for the destination of every query (IP_PKTINFO) and
// sends each answer from it, which only a wildcard address needs, at the
// cost of control messages and allocations per query.
type boundUDP struct{ *net.UDPConn }

func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("set SO_REUSEPORT: %w", serr)
	}
	return nil
}

// startDNS serves h on addr over UDP and TCP (port 0: a free port, the same
// for both); decorate, when not nil, wraps the UDP servers' readers.
func startDNS(addr string, h dns.Handler, decorate dns.DecorateReader) (*dnsServer, error) {
	pcs, ln, err := listenDNS(addr, dnsSockets())
	if err != nil {
		return nil, err
	}
	s := &dnsServer{addr: addr, udpAddr: pcs[0].LocalAddr()}
	for _, pc := range pcs {
		if u := pc.(*net.UDPConn); !u.LocalAddr().(*net.UDPAddr).IP.IsUnspecified() {
			pc = boundUDP{u}
		}
		s.servers = append(s.servers, &dns.Server{PacketConn: pc, Handler: h, UDPSize: maxUDP, DecorateReader: decorate})
	}
	s.servers = append(s.servers, &dns.Server{Listener: ln, Handler: h, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second,
		IdleTimeout: func() time.Duration { return 10 * time.Second }, MaxTCPQueries: 128})
	for _, srv := range s.servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		failed := make(chan error, 1)
		go func() { failed <- srv.ActivateAndServe() }()
		select {
		case <-started:
		case err := <-failed:
			s.stop()
			for _, pc := range pcs {
				pc.Close()
			}
			ln.Close()
			return nil, err
		}
	}
	return s, nil
}

func (s *dnsServer) stop() {
	for _, srv := range s.servers {
		_ = srv.Shutdown() // "not started" for one that never was: nothing to stop
	}
}

// applyDNS starts, moves or stops the DNS listener for cfg; the caller
// holds mu. Like a TCP listener, one that cannot be opened is reported
// once and tried again on every Apply.
func (p *Proxy) applyDNS(cfg *Config) error {
	want := ""
	if cfg.DNS != nil {
		want = cfg.DNS.Addr
	}
	if p.dns != nil && p.dns.addr == want {
		return nil
	}
	if p.dns != nil {
		p.dns.stop()
		p.dns = nil
	}
	if want == "" {
		p.dnsFailing = ""
		return nil
	}
	s, err := startDNS(want, dns.HandlerFunc(p.serveDNS), p.fastReader)
	if err != nil {
		reported := p.dnsFailing == want
		p.dnsFailing = want
		if reported {
			return nil
		}
		return fmt.Errorf("listener %q: %w", cfg.DNS.Name, err)
	}
	p.dnsFailing = ""
	p.dns = s
	p.log.Info("answering DNS", zap.String("addr", s.udpAddr.String()), zap.Int("names", len(cfg.DNS.Names)))
	return nil
}

// DNSAddr is the UDP address the DNS listener is bound to, nil for none.
func (p *Proxy) DNSAddr() net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dns == nil {
		return nil
	}
	return p.dns.udpAddr
}

func (p *Proxy) serveDNS(w dns.ResponseWriter, req *dns.Msg) {
	_, udp := w.RemoteAddr().(*net.UDPAddr)
	resp := p.answerDNS(req, udp)
	if resp == nil {
		return
	}
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		size = int(min(max(opt.UDPSize(), dns.MinMsgSize), maxUDP))
		// An EDNS0 query gets an EDNS0 answer (RFC 6891 §7), saying
		// how large an answer this resolver takes.
		if resp.IsEdns0() == nil {
			resp.SetEdns0(maxUDP, false)
		}
	}
	if udp {
		resp.Truncate(size)
	} else {
		resp.Truncate(dns.MaxMsgSize)
	}
	// Counted before it is sent: whoever saw the answer sees it counted.
	p.dnsQueries.WithLabelValues(dns.RcodeToString[resp.Rcode]).Inc()
	if err := w.WriteMsg(resp); err != nil {
		p.log.Debug("cannot write DNS answer", zap.Error(err))
	}
}

// answerDNS answers req from the current table, forwarding the names it is
// not the authority for; nil drops req.
func (p *Proxy) answerDNS(req *dns.Msg, udp bool) *dns.Msg {
	if resp, done := dnsforward.Screen(req); done {
		return resp
	}
	resp, q := new(dns.Msg), req.Question[0]
	table := p.cfg.Load().DNS
	if table == nil {
		return resp.SetRcode(req, dns.RcodeRefused)
	}
	name := strings.ToLower(q.Name)
	e, known := table.Names[name]
	if !known && !table.authority(name) {
		return p.forwardDNS(req, udp)
	}
	resp.SetReply(req)
	resp.Authoritative = true
	resp.RecursionAvailable = len(p.DNSUpstreams) > 0
	if !known {
		if !table.Domains[name] { // a known domain itself has names under it: NODATA
			resp.Rcode = dns.RcodeNameError
		}
		return table.negative(resp, name)
	}
	for _, ip := range e.addrs {
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: e.ttl}
		switch {
		case (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY) && ip.Is4():
			hdr.Rrtype = dns.TypeA
			resp.Answer = append(resp.Answer, &dns.A{Hdr: hdr, A: ip.AsSlice()})
		case (q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY) && ip.Is6():
			hdr.Rrtype = dns.TypeAAAA
			resp.Answer = append(resp.Answer, &dns.AAAA{Hdr: hdr, AAAA: ip.AsSlice()})
		}
	}
	if len(resp.Answer) == 0 { // a known name without this type: NOERROR, no answer
		return table.negative(resp, name)
	}
	return resp
}

// negative completes a negative answer for name (a lower-case FQDN the
// table is the authority for) with the SOA of its zone, so that caches
// keep it (RFC 2308 3).
func (d *DNS) negative(resp *dns.Msg, name string) *dns.Msg {
	if soa := d.soas[d.zoneOf(name)]; soa != nil {
		resp.Ns = append(resp.Ns, soa)
	}
	return resp
}

// zoneOf is the zone of name (a lower-case FQDN): the topmost domain of
// the table at or above it.
func (d *DNS) zoneOf(name string) string {
	zone := name
	for off, end := 0, false; !end; off, end = dns.NextLabel(name, off) {
		if d.Domains[name[off:]] {
			zone = name[off:]
		}
	}
	return zone
}

// authority tells whether name (a lower-case FQDN) is a known domain or
// under one.
func (d *DNS) authority(name string) bool {
	for off, end := 0, false; !end; off, end = dns.NextLabel(name, off) {
		if d.Domains[name[off:]] {
			return true
		}
	}
	return false
}

// forwardDNS asks the upstreams (dnsforward: over the query's transport,
// within its budget and its bound on queries in flight).
func (p *Proxy) forwardDNS(req *dns.Msg, udp bool) *dns.Msg {
	if len(p.DNSUpstreams) == 0 {
		return new(dns.Msg).SetRcode(req, dns.RcodeRefused)
	}
	p.forwarderOnce.Do(func() {
		udpClient := &dns.Client{Net: "udp", Timeout: 2 * time.Second, UDPSize: dns.DefaultMsgSize}
		tcpClient := &dns.Client{Net: "tcp", Timeout: 2 * time.Second}
		if p.Mark != 0 {
			// The transparent proxy lets the proxy's own queries through.
			udpClient.Dialer = &net.Dialer{Timeout: 2 * time.Second, Control: tproxy.MarkControl(p.Mark)}
			tcpClient.Dialer = udpClient.Dialer
		}
		p.forwarder = dnsforward.New(p.DNSUpstreams, udpClient, tcpClient)
	})
	resp, err := p.forwarder.Forward(req, udp)
	if err != nil {
		p.log.Debug("no DNS upstream answered", zap.Error(err))
	}
	return resp
}
