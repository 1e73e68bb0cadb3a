package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/proxy/dnsforward"
)

// Server answers <service>.<domain> from a Resolver's table, forwards other
// names to upstreams or refuses them.
type Server struct {
	Resolver *Resolver
	// Domain is the zone answered for, such as "mesh".
	Domain string
	// TTL of answers, and of the negative answers' SOA.
	TTL time.Duration
	// Upstreams (host:port) get the names outside Domain; none means those
	// are REFUSED.
	Upstreams []string
	Log       *zap.Logger
	Metrics   *Metrics

	suffix    string // ".mesh."
	apex      string // "mesh."
	soa       dns.RR
	forwarder *dnsforward.Forwarder
}

// maxUDP is the largest UDP answer we send to an EDNS0 client (RFC 9715's
// advice against fragmentation).
const maxUDP = 1232

func (s *Server) init() {
	s.apex = dns.Fqdn(strings.ToLower(strings.Trim(s.Domain, ".")))
	s.suffix = "." + s.apex
	ttl := uint32(s.TTL.Seconds())
	s.soa = dnsforward.SOA(s.apex, ttl)
	s.forwarder = dnsforward.New(s.Upstreams,
		&dns.Client{Net: "udp", Timeout: 2 * time.Second, UDPSize: dns.DefaultMsgSize},
		&dns.Client{Net: "tcp", Timeout: 2 * time.Second})
}

// Start serves on addr over UDP and TCP until ctx ends.
func (s *Server) Start(ctx context.Context, udp net.PacketConn, tcp net.Listener) error {
	s.init()
	servers := []*dns.Server{
		{PacketConn: udp, Handler: s, UDPSize: maxUDP},
		{Listener: tcp, Handler: s, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second, IdleTimeout: func() time.Duration { return 10 * time.Second }},
	}
	errc := make(chan error, len(servers))
	for _, srv := range servers {
		go func() { errc <- srv.ActivateAndServe() }()
	}
	select {
	case err := <-errc:
		for _, srv := range servers {
			srv.Shutdown()
		}
		return err
	case <-ctx.Done():
	}
	var errs []error
	for _, srv := range servers {
		if err := srv.Shutdown(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	start := time.Now()
	resp, qtype := s.answer(w, req)
	if resp == nil {
		return // dropped
	}
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		size = int(min(max(opt.UDPSize(), dns.MinMsgSize), maxUDP))
		if resp.IsEdns0() == nil {
			resp.SetEdns0(maxUDP, false)
		}
	}
	if isUDP(w) {
		resp.Truncate(size)
	} else {
		resp.Truncate(dns.MaxMsgSize)
	}
	// Counted before it is sent: whoever saw the answer sees it counted.
	s.Metrics.observe(qtype, resp.Rcode, time.Since(start))
	if err := w.WriteMsg(resp); err != nil {
		s.Log.Debug("cannot write DNS answer", zap.Error(err))
	}
}

func isUDP(w dns.ResponseWriter) bool {
	_, ok := w.RemoteAddr().(*net.UDPAddr)
	return ok
}

// answer builds the response to req, or returns nil to drop it.
func (s *Server) answer(w dns.ResponseWriter, req *dns.Msg) (*dns.Msg, uint16) {
	if resp, done := dnsforward.Screen(req); done {
		var qtype uint16
		if req.Opcode == dns.OpcodeQuery && len(req.Question) == 1 {
			qtype = req.Question[0].Qtype
		}
		return resp, qtype
	}
	resp, q := new(dns.Msg), req.Question[0]
	name := strings.ToLower(q.Name)
	if name != s.apex && !strings.HasSuffix(name, s.suffix) {
		return s.forward(w, req), q.Qtype
	}
	resp.SetReply(req)
	resp.Authoritative = true
	resp.RecursionAvailable = len(s.Upstreams) > 0
	if name == s.apex {
		if q.Qtype == dns.TypeSOA {
			resp.Answer = append(resp.Answer, s.soa)
		} else {
			resp.Ns = append(resp.Ns, s.soa)
		}
		return resp, q.Qtype
	}
	table, rel := s.Resolver.Table(), strings.TrimSuffix(name, s.suffix)
	ip, ok := table.Lookup(rel)
	if !ok {
		if !table.HasNamesUnder(rel) { // a mesh's own name has its services under it: NODATA (RFC 8020)
			resp.Rcode = dns.RcodeNameError
		}
		resp.Ns = append(resp.Ns, s.soa)
		return resp, q.Qtype
	}
	hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: uint32(s.TTL.Seconds())}
	switch {
	case (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY) && ip.Is4():
		hdr.Rrtype = dns.TypeA
		resp.Answer = append(resp.Answer, &dns.A{Hdr: hdr, A: ip.AsSlice()})
	case (q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY) && ip.Is6():
		hdr.Rrtype = dns.TypeAAAA
		resp.Answer = append(resp.Answer, &dns.AAAA{Hdr: hdr, AAAA: ip.AsSlice()})
	default:
		resp.Ns = append(resp.Ns, s.soa) // the name exists, without this type
	}
	return resp, q.Qtype
}

// forward asks the upstreams (dnsforward); with none it refuses.
func (s *Server) forward(w dns.ResponseWriter, req *dns.Msg) *dns.Msg {
	resp, err := s.forwarder.Forward(req, isUDP(w))
	if err != nil {
		s.Log.Debug("no upstream answered", zap.Strings("upstreams", s.Upstreams), zap.Error(err))
	}
	return resp
}

// Metrics count queries by type and rcode, and time answers.
type Metrics struct {
	queries *prometheus.CounterVec
	latency prometheus.Histogram
}

// NewMetrics registers the resolver's metrics on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ursa_dns_queries_total",
			Help: "DNS queries answered, by query type and response code.",
		}, []string{"qtype", "rcode"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ursa_dns_answer_duration_seconds",
			Help:    "Time from reading a DNS query to writing its answer.",
			Buckets: prometheus.ExponentialBuckets(0.00001, 4, 8),
		}),
	}
	for _, c := range []prometheus.Collector{m.queries, m.latency} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("dns metrics: %w", err)
		}
	}
	return m, nil
}

func (m *Metrics) observe(qtype uint16, rcode int, took time.Duration) {
	if m == nil {
		return
	}
	t, ok := dns.TypeToString[qtype]
	if !ok {
		t = "OTHER"
	}
	m.queries.WithLabelValues(t, dns.RcodeToString[rcode]).Inc()
	m.latency.Observe(took.Seconds())
}
