package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/proxy/dnsforward"
)

// DefaultEjectionTime is the longest an endpoint that refused a connection is
// left out before it is tried again.
const DefaultEjectionTime = 5 * time.Second

// DefaultFirstEjection is how long an endpoint is left out after its first
// failed connection in a row.
const DefaultFirstEjection = 100 * time.Millisecond

// Proxy runs a Config. Apply replaces it; established connections keep
// flowing across changes unless their listener goes away.
type Proxy struct {
	log *zap.Logger
	cfg atomic.Pointer[Config]
	// FirstEjection is how long an endpoint is left out after one failed
	// connection; each further failure in a row doubles it, up to
	// EjectionTime, and a connection that succeeds ends the streak.
	FirstEjection time.Duration
	EjectionTime  time.Duration
	// Now is the clock ejections are timed by; nil means time.Now. Like
	// the durations above, set it before the first Apply.
	Now func() time.Time
	// Mark, when not 0, is the SO_MARK of every upstream socket: the
	// transparent proxy's rules let traffic with it through, so that the
	// proxy's own connections are not redirected back into it.
	// Set it before the first Apply.
	Mark uint32

	// DNSUpstreams (host:port) get the DNS queries for names outside the
	// DNS listener's domain (ResolvConf reads them); none: REFUSED. Set
	// it before the first Apply.
	DNSUpstreams []string

	// Zone is this proxy's zone: the zone of its inbound HTTP metrics.
	// Set it before the first Apply.
	Zone string

	// zoneMemo is the zone tag of the identity last asked (localZone).
	zoneMemo atomic.Pointer[zoneMemo]

	// load counts upstream connections per cluster and zone, for LRS.
	load loadCounters
	// resil runs circuit breakers, outlier detection and health checks.
	resil resilience
	// l7 is the HTTP engine's state (http_*.go).
	l7 *l7Engine
	// piped, when set (by tests), sees the two connections each TCP
	// proxy copies between.
	piped func(down, up net.Conn)
	// drain counts the downstream connections, for Drain (drain.go).
	drain drainer

	mu        sync.Mutex
	listeners map[string]*running
	// failing are the listeners (name → address) the last Apply could
	// not open.
	failing map[string]string
	ejected map[string]*ejection
	// dns is the running DNS listener; dnsFailing the address the last
	// Apply could not open it on.
	dns        *dnsServer
	dnsFailing string
	// forwarder asks DNSUpstreams, built once from them and Mark.
	forwarder     *dnsforward.Forwarder
	forwarderOnce sync.Once

	conns        *prometheus.CounterVec
	bytes        *prometheus.CounterVec
	refused      *prometheus.CounterVec
	upstreamTLS  *prometheus.CounterVec
	active       prometheus.Gauge
	healthyGauge *prometheus.GaugeVec
	// healthySeries is healthyGauge's series by cluster name: pick sets
	// one per request, and the vector's own look-up (hashing and checking
	// the label) cost what a cached series' does several times over.
	healthySeries sync.Map
	panics        *prometheus.CounterVec
	dnsQueries    *prometheus.CounterVec

	// obs runs the access log sinks and span exporters (accesslog_bind.go).
	obs *observability
}

type running struct {
	addr string
	ln   net.Listener
	// http serves the listener's HTTP connections, made with the first.
	http *httpFront
}

// close stops accepting connections; established ones go on.
func (r *running) close() {
	r.ln.Close()
	if r.http != nil {
		r.http.queue.Close()
	}
}

// New returns a Proxy with an empty configuration.
func New(log *zap.Logger, reg prometheus.Registerer) (*Proxy, error) {
	p := &Proxy{
		log: log, listeners: map[string]*running{}, ejected: map[string]*ejection{},
		FirstEjection: DefaultFirstEjection, EjectionTime: DefaultEjectionTime,
		dnsQueries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ursa_dp_dns_queries_total",
			Help: "DNS queries answered by the DNS listener, by response code."}, []string{"rcode"}),
		conns: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ursa_dp_connections_total",
			Help: "Connections accepted, by listener."}, []string{"listener"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ursa_dp_bytes_total",
			Help: "Bytes proxied, by cluster and direction."}, []string{"cluster", "direction"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ursa_dp_refused_total",
			Help: "Connections refused, by listener and reason."}, []string{"listener", "reason"}),
		upstreamTLS: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ursa_dp_upstream_tls_failures_total",
			Help: "Upstream mTLS handshakes that failed, by cluster and reason (wrong_identity: the server is not the cluster's service)."}, []string{"cluster", "reason"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ursa_dp_active_connections", Help: "Connections open now."}),
		healthyGauge: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ursa_dp_endpoints_healthy",
			Help: "Endpoints of a cluster not ejected, as of its last connection."}, []string{"cluster"}),
		panics: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ursa_dp_lb_healthy_panic_total",
			Help: "Endpoints picked in panic (too few healthy: picked regardless of health, Envoy's lb_healthy_panic), by cluster."}, []string{"cluster"}),
	}
	for _, c := range []prometheus.Collector{p.conns, p.bytes, p.refused, p.upstreamTLS, p.active, p.healthyGauge, p.panics, p.dnsQueries} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	if err := p.resil.init(reg); err != nil {
		return nil, err
	}
	p.resil.outliers.onRateEjection = func(cluster, addr, why string) {
		p.resil.ejections.WithLabelValues(cluster).Inc()
		p.log.Info("endpoint ejected by outlier detection", zap.String("cluster", cluster), zap.String("endpoint", addr), zap.String("by", why))
	}
	if err := p.initL7(reg); err != nil {
		return nil, err
	}
	if err := p.initObservability(reg); err != nil {
		return nil, err
	}
	p.cfg.Store(&Config{Listeners: map[string]*Listener{}, Clusters: map[string]*Cluster{}})
	p.drain.conns, p.drain.left = map[*downstream]struct{}{}, make(chan struct{}, 1)
	return p, nil
}

// Apply makes cfg current: it opens new listeners and closes removed ones.
// As in Envoy, listeners are applied one by one: one that cannot be opened
// (its address is in use) is left out, and the rest is applied. The error
// names the listeners that newly failed; one that failed before and still
// does is tried again on every Apply but not reported again, so that it
// does not make every later update (endpoints, secrets) a rejection too.
func (p *Proxy) Apply(cfg *Config) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	opened := map[string]*running{}
	failing := map[string]string{}
	var errs []error
	for name, l := range cfg.Listeners {
		if r, ok := p.listeners[name]; ok && r.addr == l.Addr {
			continue
		}
		if p.drain.on.Load() && drainsListener(name) {
			continue // draining: it stays closed (its chain still serves what is open)
		}
		ln, err := net.Listen("tcp", l.Addr)
		if err != nil {
			failing[name] = l.Addr
			if p.failing[name] != l.Addr {
				errs = append(errs, fmt.Errorf("listener %q: %w", name, err))
			}
			delete(cfg.Listeners, name)
			continue
		}
		opened[name] = &running{addr: l.Addr, ln: ln}
	}
	p.failing = failing
	prev := p.cfg.Load()
	next := warm(prev, cfg)
	p.bindObservability(next)
	p.cfg.Store(next)
	p.forgetEjections(prev, cfg)
	p.syncResilience(p.cfg.Load())
	p.httpApplied(cfg)
	for name, r := range p.listeners {
		if l, ok := cfg.Listeners[name]; !ok || l.Addr != r.addr {
			r.close()
			delete(p.listeners, name)
		}
	}
	for name, r := range opened {
		p.listeners[name] = r
		go p.serve(name, r.ln)
	}
	if err := p.applyDNS(cfg); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// forgetEjections ends the ejection of each endpoint the control plane
// has just added back to a cluster: it removed it because it was gone (a
// zone with no instance left, an ingress offline) and now says it is back,
// which is better news than an old failure. The same holds when the whole
// cluster comes back. The caller holds mu.
func (p *Proxy) forgetEjections(prev, next *Config) {
	for name, c := range next.Clusters {
		had := map[string]bool{}
		if old, ok := prev.Clusters[name]; ok {
			for _, ep := range old.Endpoints {
				had[ep.Addr] = true
			}
		}
		for _, ep := range c.Endpoints {
			if !had[ep.Addr] {
				delete(p.ejected, name+"|"+ep.Addr)
			}
		}
	}
}

// warm keeps, for each listener whose new routes name a cluster that is
// missing or still warming, the routes it had, with their clusters, until
// the new ones are ready: like Envoy's listener warming, a policy change
// never sends connections to a cluster whose endpoints have not arrived
// (listeners, clusters and endpoints come in separate responses).
// An HTTP listener warms the same way, also until its RDS route
// configuration has arrived.
//
// An original-destination listener (the transparent proxy's) warms chain
// by chain: a chain whose routes name a cold cluster keeps the routes of
// the chain it replaces (the same port and prefixes), while the others
// take their new routes at once.
func warm(prev, next *Config) *Config {
	for name, l := range next.Listeners {
		old, ok := prev.Listeners[name]
		switch {
		case !ok || len(l.SNIRoutes) > 0:
		case l.OriginalDst && old.OriginalDst:
			warmChains(prev, next, name, old, l)
		case !l.OriginalDst && !warmRoutes(next, l.Routes, l.HTTP) && warmRoutes(prev, old.Routes, old.HTTP):
			kept := *l
			kept.Routes, kept.HTTP = old.Routes, old.HTTP
			next.Listeners[name] = &kept
			keepRoutes(prev, next, old.Routes, old.HTTP)
		}
	}
	return next
}

// warmRoutes tells whether routes (or an HTTP chain's) are ready in cfg:
// every cluster they name is there and warm, and an HTTP chain's route
// configuration has arrived.
func warmRoutes(cfg *Config, routes []Route, http *HTTPChain) bool {
	ok := true
	if http != nil {
		routes, ok = httpRoutes(cfg, http)
	}
	if !ok {
		return false
	}
	for _, r := range routes {
		if c, ok := cfg.Clusters[r.Cluster]; !ok || c.Warming {
			return false
		}
	}
	return true
}

// keepRoutes carries into next what routes (or an HTTP chain) kept from
// prev need: their clusters, where next has none or a cold one, and an
// HTTP chain's route configuration.
func keepRoutes(prev, next *Config, routes []Route, http *HTTPChain) {
	if http != nil {
		routes, _ = httpRoutes(prev, http)
		if http.RDS != "" {
			if next.RouteTables == nil {
				next.RouteTables = map[string]*RouteTable{}
			}
			next.RouteTables[http.RDS] = prev.RouteTables[http.RDS]
		}
	}
	for _, r := range routes {
		if c, ok := next.Clusters[r.Cluster]; !ok || c.Warming {
			next.Clusters[r.Cluster] = prev.Clusters[r.Cluster]
		}
	}
}

// warmChains keeps, in next's original-destination listener l (name),
// the routes of each chain of old that a chain of l replaces with routes
// not ready yet.
func warmChains(prev, next *Config, name string, old, l *Listener) {
	var chains []DstChain
	for i, c := range l.DstChains {
		if warmRoutes(next, c.Routes, c.HTTP) {
			continue
		}
		j := slices.IndexFunc(old.DstChains, func(o DstChain) bool { return o.Port == c.Port && slices.Equal(o.Prefixes, c.Prefixes) })
		if j < 0 || !warmRoutes(prev, old.DstChains[j].Routes, old.DstChains[j].HTTP) {
			continue
		}
		if chains == nil {
			chains = slices.Clone(l.DstChains)
		}
		o := old.DstChains[j]
		chains[i].Routes, chains[i].HTTP = o.Routes, o.HTTP
		keepRoutes(prev, next, o.Routes, o.HTTP)
	}
	if chains == nil {
		return
	}
	kept := *l
	kept.DstChains, kept.Routes = chains, nil
	for _, c := range chains {
		kept.Routes = append(kept.Routes, c.Routes...)
	}
	kept.dsts = newDstIndex(chains)
	next.Listeners[name] = &kept
}

// Close stops every listener; established connections end with their peers.
func (p *Proxy) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, r := range p.listeners {
		r.close()
		delete(p.listeners, name)
	}
	if p.dns != nil {
		p.dns.stop()
		p.dns = nil
	}
	p.resil.health.stop()
	p.closeObservability()
	p.closePools()
}

// Ready reports whether the proxy has listeners to serve and is not
// draining.
func (p *Proxy) Ready() bool { return !p.drain.on.Load() && len(p.cfg.Load().Listeners) > 0 }

func (p *Proxy) serve(name string, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		p.conns.WithLabelValues(name).Inc()
		go p.handle(name, c)
	}
}

func (p *Proxy) refuse(c net.Conn, listener, reason string, err error) {
	p.refused.WithLabelValues(listener, reason).Inc()
	p.log.Debug("connection refused", zap.String("listener", listener), zap.String("reason", reason), zap.Error(err))
	c.Close()
}

func (p *Proxy) handle(name string, down net.Conn) {
	p.active.Inc()
	defer p.active.Dec()
	ds := p.drain.open(name, down)
	defer p.drain.closed(ds)
	cfg := p.cfg.Load()
	l, ok := cfg.Listeners[name]
	if !ok {
		down.Close()
		return
	}
	// An ingress reads the ClientHello's SNI, and passes on the bytes it
	// read before the rest: then both directions copy between the bare
	// sockets, which the kernel does (splice).
	var peeked []byte
	if len(l.SNIRoutes) > 0 {
		sni, hello, err := peekSNI(down)
		if err != nil {
			p.refuse(down, name, "no_sni", err)
			return
		}
		routes, ok := l.SNIRoutes[strings.ToLower(sni)]
		if !ok {
			p.refuse(down, name, "unknown_sni", fmt.Errorf("SNI %q", sni))
			return
		}
		peeked = hello
		l = &Listener{Name: l.Name, Routes: routes}
	}
	var dst netip.AddrPort
	if l.OriginalDst {
		var chain *DstChain
		var reason string
		var err error
		if dst, chain, reason, err = originalDst(l, down); err != nil {
			p.refuse(down, name, reason, err)
			return
		}
		l = &Listener{Name: l.Name, TLS: chain.TLS, RBAC: chain.RBAC, Routes: chain.Routes, HTTP: chain.HTTP}
	}
	if l.HTTP == nil && len(l.Routes) == 0 {
		// A filter chain without filters closes what it takes, as
		// Envoy's does: the inbound listener's for an application's own
		// port, which only the inbound in front of it may reach.
		p.refuse(down, name, "empty_filter_chain", nil)
		return
	}
	if l.HTTP != nil || l.TLS {
		// The HTTP engine, and a TCP proxy with TLS on this side, read and
		// write the socket themselves (sysConn), under the TLS.
		down = sysUnder(down)
	}
	if l.TLS {
		tc, uris, err := p.terminate(down, l.HTTP != nil)
		if err != nil {
			p.refuse(down, name, "tls", err)
			return
		}
		down = tc
		// RBAC is read at connection time: a policy change applies to new
		// connections; established ones the new policy refuses keep going
		// until they end, like Envoy's network RBAC filter.
		if rules, ok := p.rbacNow(name, dst); !ok || !rules.allows(uris) {
			p.refuse(down, name, "rbac", fmt.Errorf("caller %q not allowed", uris))
			return
		}
	}
	if l.HTTP != nil {
		p.serveHTTPConn(name, down, dst, ds)
		return
	}
	c := p.pickCluster(cfg, l)
	access := p.tcpAccessFor(l.Routes, down, c)
	if c == nil {
		access.finish(0, 0)
		p.refuse(down, name, "no_cluster", nil)
		return
	}
	release, ok := p.breakerFor(c).acquire(limitConnection)
	if !ok {
		p.refuse(down, name, "overflow", fmt.Errorf("cluster %q: max_connections", c.Name))
		return
	}
	defer release()
	var up net.Conn
	var err error
	if c.OriginalDst {
		up, err = p.connectOriginal(cfg, c, dst)
	} else {
		attempts := 1
		if len(l.Routes) > 0 {
			attempts = l.Routes[0].ConnectAttempts // one tcp_proxy's, the same for all
		}
		up, err = p.connect(cfg, c, attempts)
	}
	if err != nil {
		access.failed()
		access.finish(0, 0)
		p.refuse(down, name, "no_endpoint", err)
		return
	}
	access.connected(up)
	// With TLS on either side both sockets do their own I/O (sysConn): a
	// TLS side's is under its TLS already (sysUnder leaves a *tls.Conn
	// as it is), a bare side's from here. Two bare ones stay
	// *net.TCPConn, for io.Copy to splice.
	if l.TLS || c.TLS {
		down, up = sysUnder(down), sysUnder(up)
	}
	if p.piped != nil {
		p.piped(down, up)
	}
	upBytes := p.bytes.WithLabelValues(c.Name, "upstream")
	if len(peeked) > 0 {
		if _, err := up.Write(peeked); err != nil {
			up.Close()
			p.refuse(down, name, "upstream_write", err)
			return
		}
		upBytes.Add(float64(len(peeked)))
	}
	var idle time.Duration
	if len(l.Routes) > 0 {
		idle = l.Routes[0].IdleTimeout // one tcp_proxy's, the same for all
	}
	access.finish(pipe(down, up, upBytes, p.bytes.WithLabelValues(c.Name, "downstream"), idle))
}

// terminate does the server side of mTLS with the current identity and
// returns the URI SANs of the caller's certificate (its SPIFFE IDs and
// tags), which RBAC judges. An HTTP chain offers h2 and http/1.1 by ALPN.
func (p *Proxy) terminate(c net.Conn, http bool) (*tls.Conn, []string, error) {
	var alpn []string
	if http {
		alpn = []string{"h2", "http/1.1"}
	}
	cfg := p.cfg.Load()
	if cfg.Identity == nil || cfg.Roots == nil {
		return nil, nil, errNoIdentity
	}
	tc := tls.Server(c, &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Read per handshake: a rotated certificate serves new
		// connections without touching established ones.
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return p.cfg.Load().Identity, nil },
		ClientAuth:     tls.RequireAndVerifyClientCert,
		ClientCAs:      cfg.Roots,
		NextProtos:     alpn,
		VerifyPeerCertificate: func(_ [][]byte, chains [][]*x509.Certificate) error {
			return checkChains(cfg.Revoked, chains, time.Now())
		},
	})
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		return nil, nil, err
	}
	c.SetDeadline(time.Time{})
	uris := uriSANs(tc.ConnectionState().PeerCertificates[0])
	if len(uris) == 0 {
		return nil, nil, errors.New("peer certificate has no URI SAN")
	}
	return tc, uris, nil
}

func (p *Proxy) pickCluster(cfg *Config, l *Listener) *Cluster {
	var total uint32
	for _, r := range l.Routes {
		total += r.Weight
	}
	if total == 0 {
		return nil
	}
	n := rand.Uint32N(total)
	for _, r := range l.Routes {
		if n < r.Weight {
			return cfg.Clusters[r.Cluster]
		}
		n -= r.Weight
	}
	return nil
}

// connect dials an endpoint of c — trying others, up to attempts in all,
// and ejecting each that fails — and originates mTLS when the cluster asks
// for it.
func (p *Proxy) connect(cfg *Config, c *Cluster, attempts int) (net.Conn, error) {
	tried := map[string]bool{}
	var lastErr error
	for range max(attempts, 1) {
		ep, ok := p.pick(c, tried, 1)
		if !ok {
			break
		}
		tried[ep.Addr] = true
		p.trying(c, ep.Addr)
		conn, err := p.endpointDialer(c, ep.Addr).Dial("tcp", ep.Addr)
		if err != nil {
			p.load.record(c.Name, ep.Zone, false)
			p.eject(c.Name, ep.Addr)
			p.outcome(c, ep, 0, err)
			lastErr = err
			continue
		}
		if !c.TLS {
			p.load.record(c.Name, ep.Zone, true)
			p.connected(c.Name, ep.Addr)
			p.outcome(c, ep, 0, nil)
			return conn, nil
		}
		tc, err := p.originate(cfg, sysUnder(conn), c)
		p.load.record(c.Name, ep.Zone, err == nil)
		if err != nil {
			// The handshake is part of connecting, as in Envoy: a remote
			// zone's ingress with no instance left for the SNI closes the
			// connection before the handshake ends, and the caller's bytes
			// have not gone anywhere yet, so another endpoint (the next
			// zone) is tried.
			conn.Close()
			if !errors.Is(err, errNoIdentity) {
				p.eject(c.Name, ep.Addr)
				p.upstreamRefused(c, ep, err)
				p.outcome(c, ep, 0, err)
			}
			lastErr = err
			continue
		}
		p.connected(c.Name, ep.Addr)
		p.outcome(c, ep, 0, nil)
		return tc, nil
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("cluster %q has no healthy endpoint", c.Name)
	}
	return nil, lastErr
}

// upstreamRefused counts an upstream handshake that failed, and logs one
// whose server is not the workload the cluster is for: a misrouted or
// impersonating endpoint, never a passing fault.
func (p *Proxy) upstreamRefused(c *Cluster, ep Endpoint, err error) {
	var wrong *wrongPeerError
	if errors.As(err, &wrong) {
		p.upstreamTLS.WithLabelValues(c.Name, "wrong_identity").Inc()
		p.log.Warn("refused an upstream whose certificate names another workload", zap.String("cluster", c.Name),
			zap.String("endpoint", ep.Addr), zap.Strings("want", wrong.want), zap.Strings("got", wrong.got))
		return
	}
	p.upstreamTLS.WithLabelValues(c.Name, "handshake").Inc()
}

// errNoIdentity is a connection this proxy cannot make yet, through no
// fault of the endpoint.
var errNoIdentity = errors.New("no identity or CA yet")

func (p *Proxy) originate(cfg *Config, conn net.Conn, c *Cluster) (net.Conn, error) {
	if cfg.Identity == nil || cfg.Roots == nil {
		return nil, errNoIdentity
	}
	roots, revoked := cfg.Roots, cfg.Revoked
	tc := tls.Client(conn, &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Full records from the first: small first records help a
		// browser's first paint over a lossy path; between sidecars they
		// only cut a request of over ~1.2 KB into several writes (and out
		// of the HTTP engine's armed write, sysConn).
		DynamicRecordSizingDisabled: true,
		ServerName:                  c.SNI,
		NextProtos:                  c.ALPN,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if id := p.cfg.Load().Identity; id != nil {
				return id, nil
			}
			return cfg.Identity, nil
		},
		// The server proves its mesh identity, not a host name: verify the
		// chain against the mesh CA, and its identity against the
		// cluster's, ourselves.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyServer(raw, roots, revoked, c)
		},
	})
	conn.SetDeadline(time.Now().Add(c.ConnectTimeout))
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return tc, nil
}

// ejection is an endpoint's streak of failed connections.
type ejection struct {
	failures int
	until    time.Time
	// trial, once the ejection is over, is when the connection that tries
	// the endpoint again gives up at the latest: until then the endpoint
	// counts as unhealthy to every other, so that one connection, not
	// every new one, waits on an endpoint that may still hang (an ingress
	// that takes connections and never answers).
	trial time.Time
}

// eject leaves an endpoint of a cluster out for a while: FirstEjection,
// doubled for each failure in a row, at most EjectionTime. Ejection is per
// cluster, as Envoy's outlier detection: a remote ingress that has no
// instance left of one service still serves the others. A short first
// ejection matters: an endpoint that was just added may refuse for a
// moment (a remote ingress learning its routes an instant after the
// callers learn of it), and should not be shunned for long for that.
func (p *Proxy) eject(cluster, addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.ejected[cluster+"|"+addr]
	if e == nil {
		e = &ejection{}
		p.ejected[cluster+"|"+addr] = e
	}
	e.failures++
	d := p.FirstEjection << min(e.failures-1, 30)
	if d > p.EjectionTime || d <= 0 {
		d = p.EjectionTime
	}
	e.until, e.trial = p.now().Add(d), time.Time{}
}

// trying marks a connection to an endpoint of c whose ejection is over as
// its trial (see ejection.trial): until it connects, fails, or twice c's
// connect timeout (the dial, then the TLS handshake) and a second pass, the
// endpoint counts as unhealthy. A trial that ended neither way (its caller
// gone) makes way for the next once that time is past.
func (p *Proxy) trying(c *Cluster, addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if e := p.ejected[c.Name+"|"+addr]; e != nil && now.After(e.until) && (e.trial.IsZero() || now.After(e.trial)) {
		timeout := c.ConnectTimeout
		if timeout <= 0 {
			timeout = 5 * time.Second
		}
		e.trial = now.Add(2*timeout + time.Second)
	}
}

// now reads the Proxy's clock.
func (p *Proxy) now() time.Time {
	if p.Now != nil {
		return p.Now()
	}
	return time.Now()
}

// connected ends an endpoint's streak of failures.
func (p *Proxy) connected(cluster, addr string) {
	p.mu.Lock()
	delete(p.ejected, cluster+"|"+addr)
	p.mu.Unlock()
}

func (p *Proxy) healthy(cluster, addr string) bool {
	if !p.resil.available(cluster, addr, p.now) {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.ejected[cluster+"|"+addr]
	if !ok {
		return true
	}
	now := p.now()
	return now.After(e.until) && (e.trial.IsZero() || now.After(e.trial))
}

// healthyOf is the ursa_dp_endpoints_healthy series of a cluster.
func (p *Proxy) healthyOf(cluster string) prometheus.Gauge {
	if g, ok := p.healthySeries.Load(cluster); ok {
		return g.(prometheus.Gauge)
	}
	g, _ := p.healthySeries.LoadOrStore(cluster, p.healthyGauge.WithLabelValues(cluster))
	return g.(prometheus.Gauge)
}

// pick chooses an endpoint: a priority level by Envoy's rule (each level
// takes as much load as its share of healthy endpoints, counted as Envoy
// counts them without weighted_priority_health, times the
// overprovisioning factor allows; the rest spills to the next), then an
// endpoint of that level by the cluster's balancer (in turn, or drawn by
// weight). When the levels together cannot take all the load, a level
// with fewer healthy endpoints than the cluster's panic threshold is in
// panic, as in Envoy: it balances over all its endpoints, healthy or not;
// and when every level is, each takes load by its number of endpoints.
// A retry leaves out the endpoints in tried, drawing the level up to
// draws times; false when none is left.
func (p *Proxy) pick(c *Cluster, tried map[string]bool, draws int) (Endpoint, bool) {
	// Levels in the order their priorities first appear, and which
	// endpoints are healthy and of which level: on the stack for the
	// usual few.
	var levelBuf [4]priorityLevel
	var wellBuf [16]bool
	var ofBuf [16]int
	levels, well, of := levelBuf[:0], wellBuf[:0], ofBuf[:0]
	if len(c.Endpoints) > len(wellBuf) {
		well, of = make([]bool, 0, len(c.Endpoints)), make([]int, 0, len(c.Endpoints))
	}
	if len(tried) == 0 {
		p.resil.health.traffic(c.Name)
	}
	n := 0
	for _, ep := range c.Endpoints {
		li := slices.IndexFunc(levels, func(lv priorityLevel) bool { return lv.prio == ep.Priority })
		if li < 0 {
			levels = append(levels, priorityLevel{prio: ep.Priority})
			li = len(levels) - 1
		}
		// Priority loads follow health only: a retry avoids the endpoints
		// it tried within the priority it lands in (Envoy's
		// previous_hosts), it does not shift load to the next one.
		ok := !ep.Unhealthy && !ep.Excluded && p.healthy(c.Name, ep.Addr)
		if !ep.Excluded {
			levels[li].hosts++
		}
		if ok {
			levels[li].healthy++
			n++
		}
		well, of = append(well, ok), append(of, li)
	}
	if len(tried) == 0 {
		p.healthyOf(c.Name).Set(float64(n))
	}
	sum := priorityLoads(levels, c)
	if sum == 0 {
		return Endpoint{}, false
	}
	pickable := func(i int) bool { return (well[i] || levels[of[i]].panic) && !tried[c.Endpoints[i].Addr] }
	for i, ep := range c.Endpoints {
		if pickable(i) {
			levels[of[i]].avail += ep.Weight
		}
	}
	from := func(li int) (Endpoint, bool) {
		lv := &levels[li]
		if lv.avail == 0 {
			return Endpoint{}, false
		}
		candidate := func(i int) bool { return of[i] == li && pickable(i) }
		var i int
		if rr := c.rotation; rr != nil {
			i = rr.next(c.Endpoints, candidate)
		} else {
			i = drawByWeight(c.Endpoints, candidate, lv.avail)
		}
		if lv.panic {
			p.panics.WithLabelValues(c.Name).Inc()
		}
		return c.Endpoints[i], true
	}
	// A retry whose priority has no endpoint left untried draws the
	// priority again, as Envoy's host selection does, up to draws times;
	// then it gives up (the caller starts over), rather than go on to a
	// priority its load does not send it to.
	for range max(draws, 1) {
		r := rand.Uint32N(sum)
		for i := range levels {
			if r >= levels[i].load {
				r -= levels[i].load
				continue
			}
			if ep, ok := from(i); ok {
				return ep, true
			}
			break // every endpoint that may be picked of that priority was tried
		}
	}
	return Endpoint{}, false
}

// drawByWeight is the index of an endpoint of eps that candidate admits,
// drawn by weight; avail is those endpoints' total weight (above 0).
func drawByWeight(eps []Endpoint, candidate func(int) bool, avail uint32) int {
	k := rand.Uint32N(avail)
	last := -1
	for i, ep := range eps {
		if !candidate(i) {
			continue
		}
		if k < ep.Weight {
			return i
		}
		k -= ep.Weight
		last = i
	}
	return last // not reached: the weights add up to avail
}

// roundRobin is a ROUND_ROBIN cluster's turns: smooth weighted round
// robin, which takes endpoints of equal weight in rotation and spreads a
// heavier one's turns among the others' rather than in a row (Envoy's EDF
// scheduler orders them alike), from a random start, as Envoy seeds its
// own, so that proxies configured at once do not all begin with the same
// endpoint. Only endpoints of one priority are ever candidates together,
// and only candidates move, so each priority keeps its own rotation.
type roundRobin struct {
	mu      sync.Mutex
	current []int64 // by endpoint
}

// rrUnit is how finely roundRobin's random start is drawn: a 1024th of
// a weight.
const rrUnit = 1 << 10

// next is the index of the endpoint whose turn it is among those of eps
// that candidate admits (at least one).
func (rr *roundRobin) next(eps []Endpoint, candidate func(int) bool) int {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	if len(rr.current) != len(eps) {
		// Each starts less than its own weight ahead, in units of a
		// 1024th of a weight (the order does not depend on the unit):
		// random, yet never two turns in a row for equal weights.
		rr.current = make([]int64, len(eps))
		for i, ep := range eps {
			rr.current[i] = rand.Int64N(int64(ep.Weight)*rrUnit + 1)
		}
	}
	best, total := -1, int64(0)
	for i, ep := range eps {
		if !candidate(i) {
			continue
		}
		rr.current[i] += int64(ep.Weight) * rrUnit
		total += int64(ep.Weight) * rrUnit
		if best < 0 || rr.current[i] > rr.current[best] {
			best = i
		}
	}
	rr.current[best] -= total
	return best
}

// priorityLevel is what pick knows of one priority of a cluster.
type priorityLevel struct {
	prio           uint32
	hosts, healthy uint32 // counts
	avail          uint32 // the weight of those that may be picked
	load           uint32 // percent
	panic          bool
}

// priorityLoads sets each level's load and panic as Envoy does, and
// returns their sum (0: nothing can be picked).
func priorityLoads(levels []priorityLevel, c *Cluster) uint32 {
	remaining, hosts := uint32(100), uint32(0)
	for i := range levels {
		lv := &levels[i]
		if lv.hosts > 0 { // none when all its endpoints are excluded
			lv.load = min(remaining, c.Overprovisioning*lv.healthy/lv.hosts, 100)
		}
		remaining -= lv.load
		hosts += lv.hosts
	}
	sum := 100 - remaining
	if sum == 100 || c.PanicThreshold == 0 {
		return sum
	}
	all := true
	for i := range levels {
		lv := &levels[i]
		lv.panic = float64(lv.healthy)*100 < c.PanicThreshold*float64(lv.hosts)
		all = all && lv.panic
	}
	if all && hosts > 0 {
		sum = 0
		for i := range levels {
			levels[i].load = levels[i].hosts * 100 / hosts
			sum += levels[i].load
		}
	}
	for i := range levels {
		// A level that takes no load is not in panic: a retry that has
		// tried all its level's endpoints may go on to its healthy ones
		// only.
		levels[i].panic = levels[i].panic && levels[i].load > 0
	}
	return sum
}

// pipe copies both ways until both directions end, half-closing as each
// side finishes so protocols that rely on it work, or until no data has
// moved either way for idle (0: no limit; watchIdle). A reset or a failed
// write ends both sides at once, as Envoy's tcp_proxy closes both
// connections on either's RemoteClose: only a clean end of stream is passed
// on as a half-close (else the other side, and the cluster's connection
// slot, stayed held until it closed or went idle). It returns the bytes
// received from the downstream and sent to it.
func pipe(down, up net.Conn, upBytes, downBytes prometheus.Counter, idle time.Duration) (received, sent int64) {
	if idle > 0 {
		defer watchIdle(down, up, idle)()
	}
	var wg sync.WaitGroup
	cp := func(dst, src net.Conn, count prometheus.Counter, n *int64) {
		defer wg.Done()
		var err error
		*n, err = io.Copy(dst, src)
		count.Add(float64(*n))
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			// A TLS peer that closed without close_notify is an end of
			// stream too; anything else is not.
			down.Close()
			up.Close()
			return
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
	}
	wg.Add(2)
	go cp(up, down, upBytes, &received)
	go cp(down, up, downBytes, &sent)
	wg.Wait()
	down.Close()
	up.Close()
	return received, sent
}
