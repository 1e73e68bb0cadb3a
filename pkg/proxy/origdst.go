package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"

	"github.com/ursamesh/ursa/pkg/proxy/tproxy"
)

// DstChain is a filter chain of a listener with use_original_dst: it takes
// the connections whose original destination its filter_chain_match
// matches.
type DstChain struct {
	// Port is the destination_port; 0 matches any.
	Port uint32
	// Prefixes are the prefix_ranges; none matches any address.
	Prefixes []netip.Prefix
	// TLS, RBAC and Routes are as on a Listener: what the chain does with
	// the connections it takes.
	TLS    bool
	RBAC   *rbacRules
	Routes []Route
	HTTP   *HTTPChain
}

// matchDst picks the filter chain for a connection headed to dst as Envoy
// does: the chains of dst's port first, then those of any port; among them
// the one whose prefix holds dst most specifically, a chain without
// prefixes matching least specifically of all.
func matchDst(chains []DstChain, dst netip.AddrPort) (*DstChain, bool) {
	addr := dst.Addr().Unmap()
	for _, port := range []uint32{uint32(dst.Port()), 0} {
		best, bestBits := -1, -2
		for i, c := range chains {
			if c.Port != port {
				continue
			}
			bits := -1
			if len(c.Prefixes) > 0 {
				bits = -2
				for _, p := range c.Prefixes {
					if p.Contains(addr) && p.Bits() > bits {
						bits = p.Bits()
					}
				}
				if bits == -2 {
					continue
				}
			}
			if bits > bestBits {
				best, bestBits = i, bits
			}
		}
		if best >= 0 {
			return &chains[best], true
		}
	}
	return nil, false
}

// origDstListener translates a listener with use_original_dst, the
// transparent proxy's outbound or inbound listener: filter chains that
// match on destination port and prefix ranges only, each one read as an
// ordinary listener's chain (optional mTLS and RBAC, then tcp_proxy), and
// an optional default_filter_chain that takes what none matches.
func origDstListener(out *Listener, l *listener.Listener) (*Listener, error) {
	out.OriginalDst = true
	chains := l.GetFilterChains()
	if d := l.GetDefaultFilterChain(); d != nil {
		chains = append(chains[:len(chains):len(chains)], d)
	}
	catchAll := false
	for i, fc := range chains {
		var c DstChain
		if i < len(l.GetFilterChains()) {
			m := fc.GetFilterChainMatch()
			if len(m.GetServerNames()) > 0 || m.GetTransportProtocol() != "" || len(m.GetApplicationProtocols()) > 0 ||
				len(m.GetSourcePrefixRanges()) > 0 || len(m.GetDirectSourcePrefixRanges()) > 0 || len(m.GetSourcePorts()) > 0 ||
				m.GetSourceType() != listener.FilterChainMatch_ANY || m.GetAddressSuffix() != "" || m.GetSuffixLen() != nil {
				return nil, fmt.Errorf("listener %q: filter chain %d: an original-destination listener matches only on destination_port and prefix_ranges", l.Name, i)
			}
			c.Port = m.GetDestinationPort().GetValue()
			if c.Port > 65535 {
				return nil, fmt.Errorf("listener %q: filter chain %d: destination port %d", l.Name, i, c.Port)
			}
			for _, r := range m.GetPrefixRanges() {
				a, err := netip.ParseAddr(r.GetAddressPrefix())
				if err != nil {
					return nil, fmt.Errorf("listener %q: filter chain %d: prefix range: %w", l.Name, i, err)
				}
				p, err := a.Unmap().Prefix(int(r.GetPrefixLen().GetValue()))
				if err != nil || r.GetPrefixLen().GetValue() > uint32(a.Unmap().BitLen()) {
					return nil, fmt.Errorf("listener %q: filter chain %d: prefix %s/%d is not a prefix", l.Name, i, r.GetAddressPrefix(), r.GetPrefixLen().GetValue())
				}
				c.Prefixes = append(c.Prefixes, p)
			}
		}
		if c.Port == 0 && len(c.Prefixes) == 0 {
			if catchAll {
				return nil, fmt.Errorf("listener %q: two filter chains match every connection", l.Name)
			}
			catchAll = true
		}
		var err error
		if c.TLS, c.RBAC, c.Routes, c.HTTP, err = translateChain(l.Name, fc); err != nil {
			return nil, err
		}
		out.DstChains = append(out.DstChains, c)
		out.Routes = append(out.Routes, c.Routes...) // checked against the clusters like any route
	}
	if len(out.DstChains) == 0 {
		return nil, fmt.Errorf("listener %q: no filter chain", l.Name)
	}
	out.dsts = newDstIndex(out.DstChains)
	return out, nil
}

// tcpRoutes reads the routes of a tcp_proxy filter.
func tcpRoutes(listenerName string, f *listener.Filter) ([]Route, error) {
	tp := &tcp.TcpProxy{}
	if err := unpackTyped(f.GetTypedConfig(), tp); err != nil {
		return nil, fmt.Errorf("listener %q: tcp_proxy: %w", listenerName, err)
	}
	return tcpProxyRoutes(listenerName, tp)
}

// tcpProxyRoutes reads a tcp_proxy's clusters, each with its access logs
// and idle timeout.
func tcpProxyRoutes(listenerName string, tp *tcp.TcpProxy) ([]Route, error) {
	if err := onlyFields(tp, "stat_prefix", "cluster", "weighted_clusters", "idle_timeout", "access_log", "max_connect_attempts"); err != nil {
		return nil, fmt.Errorf("listener %q: %w", listenerName, err)
	}
	for _, wc := range tp.GetWeightedClusters().GetClusters() {
		if err := onlyFields(wc, "name", "weight"); err != nil {
			return nil, fmt.Errorf("listener %q: tcp_proxy: %w", listenerName, err)
		}
	}
	logs, err := tcpAccessLogs(listenerName, tp)
	if err != nil {
		return nil, err
	}
	idle, err := tcpIdle(listenerName, tp)
	if err != nil {
		return nil, err
	}
	attempts := 1
	if a := tp.GetMaxConnectAttempts(); a != nil {
		if a.GetValue() < 1 {
			return nil, fmt.Errorf("listener %q: tcp_proxy: max_connect_attempts must be at least 1", listenerName)
		}
		attempts = int(min(a.GetValue(), 100))
	}
	var routes []Route
	if c := tp.GetCluster(); c != "" {
		routes = []Route{{Cluster: c, Weight: 1, Logs: logs, IdleTimeout: idle, ConnectAttempts: attempts}}
	}
	for _, wc := range tp.GetWeightedClusters().GetClusters() {
		routes = append(routes, Route{Cluster: wc.GetName(), Weight: wc.GetWeight(), Logs: logs, IdleTimeout: idle, ConnectAttempts: attempts})
	}
	if len(routes) == 0 {
		return nil, fmt.Errorf("listener %q: tcp_proxy without a cluster", listenerName)
	}
	return routes, nil
}

// originalDst is where a connection accepted by an original-destination
// listener was headed, and the filter chain that takes it. A connection
// made to the listener itself (not redirected) is refused: passing it
// through would connect the proxy to itself.
func originalDst(l *Listener, down net.Conn) (netip.AddrPort, *DstChain, string, error) {
	dst, err := tproxy.OriginalDst(down)
	if err != nil {
		return dst, nil, "no_original_dst", err
	}
	if local, ok := down.LocalAddr().(*net.TCPAddr); ok {
		if la := local.AddrPort(); la.Addr().Unmap() == dst.Addr().Unmap() && la.Port() == dst.Port() {
			return dst, nil, "not_redirected", fmt.Errorf("connection to the listener itself (%s)", dst)
		}
	}
	c, ok := l.matchDst(dst)
	if !ok {
		return dst, nil, "no_filter_chain", fmt.Errorf("no filter chain for %s", dst)
	}
	return dst, c, "", nil
}

// rbacNow is the RBAC that listener name's current configuration applies
// to a connection headed to dst (on an original-destination listener, that
// of the chain that takes it now); false when the listener or the chain
// is gone.
func (p *Proxy) rbacNow(name string, dst netip.AddrPort) (*rbacRules, bool) {
	cur, ok := p.cfg.Load().Listeners[name]
	switch {
	case !ok:
		return nil, false
	case !cur.OriginalDst:
		return cur.RBAC, true
	}
	c, ok := cur.matchDst(dst)
	if !ok {
		return nil, false
	}
	return c.RBAC, true
}

// dialer is how the proxy makes its upstream sockets: with the transparent
// proxy's mark, when set, so that the redirection lets them through, and
// bound to the cluster's source address, when it has one.
func (p *Proxy) dialer(c *Cluster) *net.Dialer {
	d := &net.Dialer{Timeout: c.ConnectTimeout}
	if c.Source.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(c.Source)
	}
	if p.Mark != 0 {
		d.Control, d.Resolver = tproxy.MarkControl(p.Mark), markedResolver(p.Mark)
	}
	return d
}

// endpointDialer is dialer(c) for an endpoint of c at addr. An endpoint
// named by a host name (a Dataplane's DNS address) that resolves to an
// address naming no one host (loopback, link-local, unspecified,
// multicast) is refused: the zone CP refuses such addresses when given as
// such, and a name that resolves to one would make this proxy (an
// ingress passes TLS through to what it dials) a way into its own host's
// loopback services. "localhost" itself passes: the zone CP admits it only
// when run for a single host (--xds-allow-loopback-dataplanes).
func (p *Proxy) endpointDialer(c *Cluster, addr string) *net.Dialer {
	d := p.dialer(c)
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return d
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return d
	}
	if h := strings.ToLower(strings.TrimSuffix(host, ".")); h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return d
	}
	mark := d.Control
	d.Control = func(network, address string, rc syscall.RawConn) error {
		if ap, err := netip.ParseAddrPort(address); err == nil {
			ip := ap.Addr().Unmap()
			if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsUnspecified() || ip.IsMulticast() {
				return fmt.Errorf("endpoint %s resolved to %s, which names no one host: refused", host, ip)
			}
		}
		if mark != nil {
			return mark(network, address, rc)
		}
		return nil
	}
	return d
}

// markedResolver looks names up over sockets that carry mark, so that the
// transparent proxy's DNS redirection lets them through to the host's
// resolvers: redirected, they would reach this proxy's own resolver, which
// answers only once the zone CP has configured it.
func markedResolver(mark uint32) *net.Resolver {
	d := &net.Dialer{Control: tproxy.MarkControl(mark)}
	return &net.Resolver{PreferGo: true, Dial: d.DialContext}
}

// connectOriginal connects an ORIGINAL_DST cluster's connection to where it
// was headed, and originates mTLS when the cluster asks for it, as connect
// does for an endpoint: a server that is not the cluster's workload fails
// the handshake, and is counted. There is no other endpoint to try, and
// none is ejected: the destination is the application's choice.
func (p *Proxy) connectOriginal(cfg *Config, c *Cluster, dst netip.AddrPort) (net.Conn, error) {
	if !dst.IsValid() {
		return nil, errors.New("an original-destination cluster behind a listener without use_original_dst")
	}
	conn, err := p.dialer(c).Dial("tcp", dst.String())
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", c.Name, err)
	}
	if !c.TLS {
		return conn, nil
	}
	tc, err := p.originate(cfg, sysUnder(conn), c)
	if err != nil {
		conn.Close()
		if !errors.Is(err, errNoIdentity) {
			p.upstreamRefused(c, Endpoint{Addr: dst.String()}, err)
		}
		return nil, fmt.Errorf("cluster %q: %s: %w", c.Name, dst, err)
	}
	return tc, nil
}
