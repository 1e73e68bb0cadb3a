// Package proxy is ursa-dp's built-in L4 proxy: an honest xDS client of the
// configuration the zone CP generates for a sidecar. It runs listeners with
// tcp_proxy and weighted clusters, terminates downstream mTLS with RBAC on
// the URI SANs of the caller's certificate (its SPIFFE ID and tags),
// originates upstream mTLS with SNI and checks the server's SPIFFE ID, with
// a key it made itself (a CSR) when it sends one, and balances
// over EDS endpoints by weight and locality priority, ejecting endpoints
// that refuse connections. What it cannot apply it NACKs, with the reason.
package proxy

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Config is everything the proxy runs, translated from xDS resources.
type Config struct {
	Listeners map[string]*Listener
	Clusters  map[string]*Cluster
	// Identity and Roots come from SDS; nil until they arrive.
	Identity *tls.Certificate
	Roots    *x509.CertPool
	// Revoked comes with Roots: the validation context's CRLs, nil for
	// none.
	Revoked *Revocations
	// DNS is the DNS listener (Envoy's DNS filter on UDP), nil for none.
	DNS *DNS
	// RouteTables are the RDS route configurations, by name.
	RouteTables map[string]*RouteTable
}

// Listener accepts connections on Addr and proxies them to Routes.
type Listener struct {
	Name string
	Addr string
	// TLS terminates mTLS, requiring a client certificate from Roots.
	TLS bool
	// RBAC, when set, admits only callers whose certificate's URI SANs
	// it allows.
	RBAC   *rbacRules
	Routes []Route
	// SNIRoutes, for an ingress, picks routes by the SNI of each
	// connection's ClientHello, read without terminating TLS.
	SNIRoutes map[string][]Route
	// OriginalDst (Envoy's use_original_dst) routes each connection by
	// where it was headed before the transparent proxy's redirection: to
	// the routes of the DstChains entry that matches it.
	OriginalDst bool
	DstChains   []DstChain
	// HTTP, when set, makes the listener an HTTP one: its HTTP connection
	// manager routes each request (Routes is then empty).
	HTTP *HTTPChain
	// dsts indexes DstChains; made with them.
	dsts dstIndex
}

// Route is a weighted cluster of a tcp_proxy.
type Route struct {
	Cluster string
	Weight  uint32
	// Logs are the access loggers of the tcp_proxy the route is of (the
	// same for all its routes).
	Logs []*accessLog
	// IdleTimeout closes a connection with no bytes either way for this
	// long (the tcp_proxy's idle_timeout, Envoy's hour when unset); 0 for
	// never.
	IdleTimeout time.Duration
	// ConnectAttempts is how many endpoints a connection tries, each
	// another, before it gives up (the tcp_proxy's max_connect_attempts,
	// Envoy's 1 when unset).
	ConnectAttempts int
}

// Cluster is where a route's connections go.
type Cluster struct {
	Name           string
	ConnectTimeout time.Duration
	// TLS originates mTLS with SNI.
	TLS bool
	SNI string
	// ServerSANs, when any, are what the upstream's certificate must
	// match one of its URI SANs with (WantSANs says them, for logs): it
	// must be the workload the cluster is for.
	ServerSANs []stringMatch
	WantSANs   []string
	// Static endpoints, or EDS ones once they arrive.
	Endpoints []Endpoint
	// Overprovisioning, in percent, decides when a priority spills over.
	Overprovisioning uint32
	// rotation, for Envoy's ROUND_ROBIN (the default lb_policy), takes a
	// priority's endpoints in turn by weight; nil (RANDOM) draws each pick
	// by weight. It is the cluster's state, not configuration: unexported.
	rotation *roundRobin
	// PanicThreshold, in percent (Envoy's healthy_panic_threshold,
	// default 50; 0: never), is the share of a priority's endpoints
	// below which, when the priorities cannot take all the load, it
	// balances over all of them, healthy or not.
	PanicThreshold float64
	// Warming is an EDS cluster whose endpoints have not arrived yet.
	Warming bool
	// OriginalDst (Envoy's ORIGINAL_DST) connects to where the
	// connection was headed: the passthrough of the transparent proxy,
	// or, with TLS, an instance its application called by address.
	OriginalDst bool
	// Source is the address the cluster's upstream sockets are bound to
	// (upstream_bind_config's source_address): a sidecar's inbound
	// passthrough connects from 127.0.0.6, which its transparent proxy's
	// rules let out as it is. Invalid for none: the system picks.
	Source netip.AddrPort
	// Breaker, Outlier and HealthCheck are the cluster's circuit breaker
	// thresholds, outlier detection and active health check (resilience.go);
	// nil for none.
	Breaker     *Thresholds
	Outlier     *OutlierDetection
	HealthCheck *HealthCheck
	// HTTP is the version HTTP routes speak to the endpoints (its
	// HttpProtocolOptions), HTTPIdleTimeout how long an idle upstream
	// HTTP connection is kept (0: an hour, Envoy's default), and ALPN
	// what the TLS handshake offers.
	HTTP            HTTPProtocol
	HTTPIdleTimeout time.Duration
	ALPN            []string
	// MaxResponseHeaderBytes and MaxResponseHeaders bound an upstream
	// response's head, as Envoy's codecs count it, and its number of
	// fields: the HttpProtocolOptions' common max_response_headers_kb and
	// max_headers_count, 0 for Envoy's defaults (80 KiB over HTTP/1.1,
	// 60 KiB over HTTP/2; 100). A response past a bound is a 503 (502 for
	// the count over HTTP/1.1), flagged UPE, as from Envoy.
	MaxResponseHeaderBytes int
	MaxResponseHeaders     int
	// EnableTrailers is an HTTP/1.1 cluster's http_protocol_options
	// enable_trailers: without it trailers neither go to its endpoints
	// nor come back from them, as Envoy's HTTP/1 codec drops them.
	EnableTrailers bool
}

// Endpoint is one address of a cluster.
type Endpoint struct {
	Addr     string
	Weight   uint32
	Priority uint32
	// Zone is its locality's zone: where its connections are counted.
	Zone string
	// Unhealthy is its health_status from EDS (UNHEALTHY or TIMEOUT):
	// never healthy, whatever its checks say. Excluded (DRAINING) is not
	// counted at all, as Envoy excludes it: neither in its priority's size
	// nor in its health; it takes calls only in panic.
	Unhealthy, Excluded bool
}

// translate builds a Config from the latest resources of each type; key,
// when set, is the key this proxy made and sent a CSR for. It returns an
// error naming the first thing it cannot apply. routes are the RDS route
// configurations.
func translate(listeners []*listener.Listener, clusters []*cluster.Cluster, assignments []*endpoint.ClusterLoadAssignment, secrets []*tlsv3.Secret, key crypto.Signer, routes ...*route.RouteConfiguration) (*Config, error) {
	cfg := &Config{Listeners: map[string]*Listener{}, Clusters: map[string]*Cluster{}, RouteTables: map[string]*RouteTable{}}
	// Envoy's own rules first (protoc-gen-validate's): what Envoy would
	// NACK (a connect_timeout of 0, an overprovisioning_factor of 0) is
	// NACKed here, naming the field, before anything is taken.
	if err := validateAll(listeners, "listener"); err != nil {
		return nil, err
	}
	if err := validateAll(clusters, "cluster"); err != nil {
		return nil, err
	}
	if err := validateAll(assignments, "load assignment"); err != nil {
		return nil, err
	}
	if err := validateAll(secrets, "secret"); err != nil {
		return nil, err
	}
	if err := validateAll(routes, "route configuration"); err != nil {
		return nil, err
	}
	for _, rc := range routes {
		t, err := translateRouteConfig(rc)
		if err != nil {
			return nil, err
		}
		cfg.RouteTables[rc.GetName()] = t
	}
	for _, s := range secrets {
		if err := secretFields(s); err != nil {
			return nil, fmt.Errorf("secret %q: %w", s.Name, err)
		}
		switch {
		case s.GetTlsCertificate() != nil:
			id, err := identityOf(s.GetTlsCertificate(), key)
			if err != nil {
				return nil, fmt.Errorf("secret %q: %w", s.Name, err)
			}
			cfg.Identity = id
		case s.GetValidationContext() != nil:
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(s.GetValidationContext().GetTrustedCa().GetInlineBytes()) {
				return nil, fmt.Errorf("secret %q: no CA certificate", s.Name)
			}
			cfg.Roots = pool
			revoked, err := ParseRevocations(s.GetValidationContext().GetCrl().GetInlineBytes())
			if err != nil {
				return nil, fmt.Errorf("secret %q: %w", s.Name, err)
			}
			cfg.Revoked = revoked
		}
	}
	eds := map[string]*endpoint.ClusterLoadAssignment{}
	for _, a := range assignments {
		eds[a.ClusterName] = a
	}
	for _, c := range clusters {
		// What the proxy would otherwise ignore of a cluster is NACKed.
		if err := onlyFields(c, "name", "type", "eds_cluster_config", "load_assignment", "connect_timeout", "lb_policy",
			"common_lb_config", "transport_socket", "typed_extension_protocol_options", "circuit_breakers",
			"outlier_detection", "health_checks", "lrs_server", "upstream_bind_config"); err != nil {
			return nil, fmt.Errorf("cluster %q: %w", c.Name, err)
		}
		out := &Cluster{Name: c.Name, ConnectTimeout: 5 * time.Second, Overprovisioning: 140, PanicThreshold: defaultPanicThreshold}
		if bc := c.GetUpstreamBindConfig(); bc != nil {
			var err error
			if out.Source, err = bindSource(bc); err != nil {
				return nil, fmt.Errorf("cluster %q: upstream_bind_config: %w", c.Name, err)
			}
		}
		// As Envoy: an ORIGINAL_DST cluster's balancer is its own
		// (CLUSTER_PROVIDED), and only its.
		switch lb, origDst := c.GetLbPolicy(), c.GetType() == cluster.Cluster_ORIGINAL_DST; {
		case origDst != (lb == cluster.Cluster_CLUSTER_PROVIDED):
			return nil, fmt.Errorf("cluster %q: lb_policy %s with type %s is not supported", c.Name, lb, c.GetType())
		case lb == cluster.Cluster_ROUND_ROBIN:
			out.rotation = &roundRobin{}
		case lb == cluster.Cluster_RANDOM, origDst:
		default:
			return nil, fmt.Errorf("cluster %q: lb_policy %s is not supported by the built-in proxy", c.Name, lb)
		}
		if d := c.GetConnectTimeout(); d != nil {
			out.ConnectTimeout = d.AsDuration()
		}
		if ts := c.GetTransportSocket(); ts != nil {
			up := &tlsv3.UpstreamTlsContext{}
			if err := unpackTyped(ts.GetTypedConfig(), up); err != nil {
				return nil, fmt.Errorf("cluster %q: transport socket: %w", c.Name, err)
			}
			if err := upstreamTLSFields(up); err != nil {
				return nil, fmt.Errorf("cluster %q: transport socket: %w", c.Name, err)
			}
			out.TLS, out.SNI, out.ALPN = true, up.GetSni(), up.GetCommonTlsContext().GetAlpnProtocols()
			var err error
			if out.ServerSANs, out.WantSANs, err = serverSANs(up.GetCommonTlsContext()); err != nil {
				return nil, fmt.Errorf("cluster %q: %w", c.Name, err)
			}
		}
		if err := translateLB(c.GetCommonLbConfig(), out); err != nil {
			return nil, fmt.Errorf("cluster %q: %w", c.Name, err)
		}
		if err := translateResilience(c, out); err != nil {
			return nil, err
		}
		if err := clusterHTTP(c, out); err != nil {
			return nil, fmt.Errorf("cluster %q: %w", c.Name, err)
		}
		if out.TLS && len(out.ALPN) == 0 {
			out.ALPN = map[HTTPProtocol][]string{HTTP1: {"http/1.1"}, HTTP2: {"h2"}}[out.HTTP]
		}
		cla := c.GetLoadAssignment()
		switch c.GetType() {
		case cluster.Cluster_STATIC:
		case cluster.Cluster_STRICT_DNS:
			// A collector named by host (the CP's log and tracing
			// clusters): each endpoint's name is resolved when it is
			// dialed, by the system's resolver.
		case cluster.Cluster_ORIGINAL_DST:
			out.OriginalDst = true
		case cluster.Cluster_EDS:
			name := c.GetEdsClusterConfig().GetServiceName()
			if name == "" {
				name = c.Name
			}
			cla = eds[name] // may not have arrived yet: no endpoints until it does
		default:
			return nil, fmt.Errorf("cluster %q: discovery type %s is not supported by the built-in proxy", c.Name, c.GetType())
		}
		out.Warming = cla == nil && !out.OriginalDst
		if cla != nil {
			var err error
			if out.Endpoints, err = endpointsOf(cla); err != nil {
				return nil, fmt.Errorf("cluster %q: load assignment: %w", c.Name, err)
			}
			if f := cla.GetPolicy().GetOverprovisioningFactor(); f != nil {
				out.Overprovisioning = f.GetValue()
			}
		}
		cfg.Clusters[c.Name] = out
	}
	for _, l := range listeners {
		if isDNSListener(l) {
			if cfg.DNS != nil {
				return nil, fmt.Errorf("listener %q: a second DNS listener (%q is one); the built-in proxy runs one", l.Name, cfg.DNS.Name)
			}
			d, err := translateDNS(l)
			if err != nil {
				return nil, err
			}
			cfg.DNS = d
			continue
		}
		out, err := translateListener(l)
		if err != nil {
			return nil, err
		}
		// A route to a cluster that has not arrived yet is not an error:
		// listeners and clusters come in separate responses, in any order,
		// as for Envoy; the listener keeps its previous routes until the
		// cluster is ready (see warm).
		cfg.Listeners[l.Name] = out
	}
	return cfg, nil
}

// bindSource reads an upstream_bind_config: a source address, an IP and a
// port (0: any) over TCP, is all the proxy binds; what else it may ask
// (freebind, socket options, further source addresses) is refused.
func bindSource(bc *core.BindConfig) (netip.AddrPort, error) {
	if err := onlyFields(bc, "source_address"); err != nil {
		return netip.AddrPort{}, err
	}
	sa := bc.GetSourceAddress()
	if sa == nil {
		return netip.AddrPort{}, errors.New("no source_address")
	}
	if err := onlyFields(sa, "address", "port_value", "protocol"); err != nil {
		return netip.AddrPort{}, fmt.Errorf("source_address: %w", err)
	}
	if sa.GetProtocol() != core.SocketAddress_TCP {
		return netip.AddrPort{}, fmt.Errorf("source_address: protocol %s: the built-in proxy binds TCP sockets only", sa.GetProtocol())
	}
	a, err := netip.ParseAddr(sa.GetAddress())
	if err != nil || a.Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("source_address: %q is not an IP address", sa.GetAddress())
	}
	if sa.GetPortValue() > 65535 {
		return netip.AddrPort{}, fmt.Errorf("source_address: port %d", sa.GetPortValue())
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(sa.GetPortValue())), nil
}

// secretFields refuses what a secret sets beyond what the proxy reads: a
// certificate chain and key, or a CA and its revocation list, inline.
func secretFields(s *tlsv3.Secret) error {
	if err := onlyFields(s, "name", "tls_certificate", "validation_context"); err != nil {
		return err
	}
	var sources []*core.DataSource
	if tc := s.GetTlsCertificate(); tc != nil {
		if err := onlyFields(tc, "certificate_chain", "private_key"); err != nil {
			return err
		}
		sources = append(sources, tc.GetCertificateChain(), tc.GetPrivateKey())
	}
	if vc := s.GetValidationContext(); vc != nil {
		if err := onlyFields(vc, "trusted_ca", "crl"); err != nil {
			return err
		}
		sources = append(sources, vc.GetTrustedCa(), vc.GetCrl())
	}
	for _, ds := range sources {
		if ds != nil && ds.GetSpecifier() != nil && ds.GetInlineBytes() == nil {
			return errors.New("only inline_bytes data sources are supported by the built-in proxy")
		}
	}
	return nil
}

// downstreamTLSFields refuses what a DownstreamTlsContext sets beyond
// mTLS as the CP sets it up: the identity and the CA from SDS, ALPN, and
// a client certificate always required.
func downstreamTLSFields(down *tlsv3.DownstreamTlsContext) error {
	if err := onlyFields(down, "common_tls_context", "require_client_certificate"); err != nil {
		return err
	}
	if err := onlyFields(down.GetCommonTlsContext(), "tls_certificate_sds_secret_configs", "validation_context_sds_secret_config", "alpn_protocols"); err != nil {
		return err
	}
	if !down.GetRequireClientCertificate().GetValue() {
		return errors.New("the built-in proxy terminates mTLS only: require_client_certificate must be true")
	}
	return nil
}

// upstreamTLSFields refuses what an UpstreamTlsContext sets beyond what
// the proxy does: mTLS with the identity and CA from SDS, an SNI, ALPN,
// and the URI SANs the server's certificate must have.
func upstreamTLSFields(up *tlsv3.UpstreamTlsContext) error {
	if err := onlyFields(up, "common_tls_context", "sni"); err != nil {
		return err
	}
	common := up.GetCommonTlsContext()
	if err := onlyFields(common, "tls_certificate_sds_secret_configs", "validation_context_sds_secret_config",
		"combined_validation_context", "alpn_protocols"); err != nil {
		return err
	}
	if cv := common.GetCombinedValidationContext(); cv != nil {
		if err := onlyFields(cv, "default_validation_context", "validation_context_sds_secret_config"); err != nil {
			return err
		}
		return onlyFields(cv.GetDefaultValidationContext(), "match_typed_subject_alt_names")
	}
	return nil
}

// endpointsOf reads a load assignment's endpoints, by priority. An
// endpoint whose health_status is UNHEALTHY or TIMEOUT is kept but not
// healthy, as in Envoy (it counts towards its priority's size); a
// DRAINING one is excluded; a DEGRADED one, or a field the proxy would
// ignore, is refused.
func endpointsOf(cla *endpoint.ClusterLoadAssignment) ([]Endpoint, error) {
	if err := onlyFields(cla, "cluster_name", "endpoints", "policy"); err != nil {
		return nil, err
	}
	if pol := cla.GetPolicy(); pol != nil {
		if err := onlyFields(pol, "overprovisioning_factor"); err != nil {
			return nil, err
		}
	}
	var out []Endpoint
	for _, loc := range cla.GetEndpoints() {
		// Envoy weighs localities only with locality_weighted_lb_config,
		// which a cluster here cannot set: their weight is not used.
		if err := onlyFields(loc, "locality", "lb_endpoints", "load_balancing_weight", "priority"); err != nil {
			return nil, err
		}
		for _, lb := range loc.GetLbEndpoints() {
			if err := onlyFields(lb, "endpoint", "load_balancing_weight", "health_status"); err != nil {
				return nil, err
			}
			if err := onlyFields(lb.GetEndpoint(), "address"); err != nil {
				return nil, err
			}
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil {
				return nil, errors.New("an endpoint without a socket address")
			}
			ep := Endpoint{Addr: net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(sa.GetPortValue()), 10)), Weight: lb.GetLoadBalancingWeight().GetValue(),
				Priority: loc.GetPriority(), Zone: loc.GetLocality().GetZone()}
			if ep.Weight == 0 {
				ep.Weight = 1
			}
			switch st := lb.GetHealthStatus(); st {
			case core.HealthStatus_UNKNOWN, core.HealthStatus_HEALTHY:
			case core.HealthStatus_UNHEALTHY, core.HealthStatus_TIMEOUT:
				ep.Unhealthy = true
			case core.HealthStatus_DRAINING:
				ep.Excluded = true
			default:
				return nil, fmt.Errorf("endpoint %s: health_status %s is not supported by the built-in proxy", ep.Addr, st)
			}
			out = append(out, ep)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Priority < out[j].Priority })
	return out, nil
}

func translateListener(l *listener.Listener) (*Listener, error) {
	sa := l.GetAddress().GetSocketAddress()
	if sa == nil {
		return nil, fmt.Errorf("listener %q: only socket addresses are supported", l.Name)
	}
	if err := onlyFields(l, "name", "address", "filter_chains", "use_original_dst", "default_filter_chain", "listener_filters"); err != nil {
		return nil, fmt.Errorf("listener %q: %w", l.Name, err)
	}
	for _, lf := range l.GetListenerFilters() {
		// The proxy reads a ClientHello's server name itself, as the TLS
		// inspector does for Envoy's server_names matches.
		if tc := lf.GetTypedConfig(); tc != nil && !tc.MessageIs(&tlsinspector.TlsInspector{}) || tc == nil && lf.GetName() != wellknown.TlsInspector {
			return nil, fmt.Errorf("listener %q: listener filter %q (%s) is not supported by the built-in proxy", l.Name, lf.GetName(), lf.GetTypedConfig().GetTypeUrl())
		}
		if err := onlyFields(lf, "name", "typed_config"); err != nil {
			return nil, fmt.Errorf("listener %q: %w", l.Name, err)
		}
		if tc := lf.GetTypedConfig(); tc != nil {
			ti := &tlsinspector.TlsInspector{}
			if err := unpackTyped(tc, ti); err != nil {
				return nil, fmt.Errorf("listener %q: tls_inspector: %w", l.Name, err)
			}
			// Fingerprints are for logs and matches the proxy does not
			// make: off is what it does. The read buffer's size is a hint
			// (it reads a ClientHello whole, whatever its size).
			if ti.GetEnableJa3Fingerprinting().GetValue() || ti.GetEnableJa4Fingerprinting().GetValue() {
				return nil, fmt.Errorf("listener %q: tls_inspector fingerprinting is not supported by the built-in proxy", l.Name)
			}
			if err := unsupportedFields(ti, "tls_inspector", "enable_ja3_fingerprinting", "enable_ja4_fingerprinting", "initial_read_buffer_size"); err != nil {
				return nil, fmt.Errorf("listener %q: %w", l.Name, err)
			}
		}
	}
	origDst := l.GetUseOriginalDst().GetValue()
	if l.GetDefaultFilterChain() != nil && !origDst {
		return nil, fmt.Errorf("listener %q: a default_filter_chain is supported only with use_original_dst", l.Name)
	}
	for _, fc := range append(l.GetFilterChains()[:len(l.GetFilterChains()):len(l.GetFilterChains())], l.GetDefaultFilterChain()) {
		if fc == nil {
			continue
		}
		if err := onlyFields(fc, "name", "filter_chain_match", "filters", "transport_socket"); err != nil {
			return nil, fmt.Errorf("listener %q: %w", l.Name, err)
		}
		// What a chain may match on: the original destination (checked
		// by origDstListener), or the server name (an SNI listener).
		if m := fc.GetFilterChainMatch(); m != nil && !origDst {
			if err := onlyFields(m, "server_names"); err != nil {
				return nil, fmt.Errorf("listener %q: %w", l.Name, err)
			}
		}
	}
	out := &Listener{Name: l.Name, Addr: net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(sa.GetPortValue()), 10))}
	if origDst {
		return origDstListener(out, l)
	}
	if chains := l.GetFilterChains(); len(chains) > 0 && len(chains[0].GetFilterChainMatch().GetServerNames()) > 0 {
		return sniListener(out, l)
	}
	if len(l.GetFilterChains()) != 1 {
		return nil, fmt.Errorf("listener %q: the built-in proxy supports exactly one filter chain, got %d", l.Name, len(l.GetFilterChains()))
	}
	var err error
	if out.TLS, out.RBAC, out.Routes, out.HTTP, err = translateChain(l.Name, l.GetFilterChains()[0]); err != nil {
		return nil, err
	}
	return out, nil
}

// translateChain reads what a filter chain does with a connection: whether
// it terminates mTLS (a downstream TLS transport socket, its identity and
// CA from SDS), whom its RBAC filter admits, and its tcp_proxy's routes, or
// its HTTP connection manager, the chain's only network filter then. A
// chain without filters has no routes: it closes every connection it
// takes, as Envoy's does.
// An ordinary listener's chain and an original-destination listener's
// chains are read alike, and run alike.
func translateChain(listenerName string, fc *listener.FilterChain) (tls bool, rules *rbacRules, routes []Route, httpc *HTTPChain, err error) {
	var alpn []string
	if ts := fc.GetTransportSocket(); ts != nil {
		down := &tlsv3.DownstreamTlsContext{}
		if err := unpackTyped(ts.GetTypedConfig(), down); err != nil {
			return false, nil, nil, nil, fmt.Errorf("listener %q: transport socket: %w", listenerName, err)
		}
		// mTLS as the CP sets it up: the identity and the CA from SDS, a
		// client certificate always required.
		if err := downstreamTLSFields(down); err != nil {
			return false, nil, nil, nil, fmt.Errorf("listener %q: transport socket: %w", listenerName, err)
		}
		tls, alpn = true, down.GetCommonTlsContext().GetAlpnProtocols()
	}
	if len(fc.GetFilters()) == 0 {
		return tls, nil, nil, nil, nil
	}
	for _, f := range fc.GetFilters() {
		tc := f.GetTypedConfig()
		switch {
		case tc.MessageIs(&rbac.RBAC{}):
			r := &rbac.RBAC{}
			if err := unpackTyped(tc, r); err != nil {
				return false, nil, nil, nil, fmt.Errorf("listener %q: rbac: %w", listenerName, err)
			}
			if rules, err = compileRBAC(r.GetRules()); err != nil {
				return false, nil, nil, nil, fmt.Errorf("listener %q: %w", listenerName, err)
			}
		case tc.MessageIs(&tcp.TcpProxy{}):
			if routes, err = tcpRoutes(listenerName, f); err != nil {
				return false, nil, nil, nil, err
			}
		case tc.MessageIs(&hcm.HttpConnectionManager{}):
			h := &hcm.HttpConnectionManager{}
			if err := unpackTyped(tc, h); err != nil {
				return false, nil, nil, nil, fmt.Errorf("listener %q: http_connection_manager: %w", listenerName, err)
			}
			if len(fc.GetFilters()) != 1 {
				return false, nil, nil, nil, fmt.Errorf("listener %q: the http_connection_manager must be the chain's only network filter", listenerName)
			}
			if httpc, err = translateHCM(listenerName, h); err != nil {
				return false, nil, nil, nil, err
			}
			// The proxy offers h2 and http/1.1 on an HTTP chain (and
			// serves both whatever was negotiated, as Envoy's AUTO codec).
			if len(alpn) > 0 && !slices.Equal(alpn, []string{"h2", "http/1.1"}) {
				return false, nil, nil, nil, fmt.Errorf("listener %q: alpn_protocols %q: the built-in proxy offers [h2 http/1.1] on an HTTP chain", listenerName, alpn)
			}
			return tls, nil, nil, httpc, nil
		default:
			return false, nil, nil, nil, fmt.Errorf("listener %q: filter %q (%s) is not supported by the built-in proxy", listenerName, f.GetName(), strings.TrimPrefix(tc.GetTypeUrl(), "type.googleapis.com/"))
		}
	}
	if len(routes) == 0 {
		return false, nil, nil, nil, fmt.Errorf("listener %q: no tcp_proxy", listenerName)
	}
	if len(alpn) > 0 {
		return false, nil, nil, nil, fmt.Errorf("listener %q: alpn_protocols %q on a TCP chain is not supported by the built-in proxy", listenerName, alpn)
	}
	return tls, rules, routes, nil, nil
}

// sniListener translates an ingress listener: one filter chain per set of
// server names, each a plain tcp_proxy, and no TLS termination.
func sniListener(out *Listener, l *listener.Listener) (*Listener, error) {
	out.SNIRoutes = map[string][]Route{}
	for _, fc := range l.GetFilterChains() {
		names := fc.GetFilterChainMatch().GetServerNames()
		if len(names) == 0 || fc.GetTransportSocket() != nil || len(fc.GetFilters()) != 1 {
			return nil, fmt.Errorf("listener %q: an SNI filter chain must match server names and hold one tcp_proxy, without TLS", l.Name)
		}
		tp := &tcp.TcpProxy{}
		if err := unpackTyped(fc.GetFilters()[0].GetTypedConfig(), tp); err != nil {
			return nil, fmt.Errorf("listener %q: tcp_proxy: %w", l.Name, err)
		}
		if len(tp.GetAccessLog()) > 0 {
			return nil, fmt.Errorf("listener %q: tcp_proxy: access_log on an SNI filter chain is not supported by the built-in proxy", l.Name)
		}
		routes, err := tcpProxyRoutes(l.Name, tp)
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			// Server names match without case, as Envoy's do (a host
			// name's case means nothing, RFC 6066 3).
			n = strings.ToLower(n)
			if _, dup := out.SNIRoutes[n]; dup {
				return nil, fmt.Errorf("listener %q: server name %q is matched by two filter chains", l.Name, n)
			}
			out.SNIRoutes[n] = routes
			out.Routes = append(out.Routes, routes...) // checked against the clusters like any route
		}
	}
	return out, nil
}

// unpackTyped is a typed config's Any.UnmarshalTo, then the message's own
// rules (protoc-gen-validate's, ValidateAll), as Envoy checks every typed
// config it unpacks: ValidateAll of a resource does not look inside Any.
func unpackTyped(a *anypb.Any, m interface {
	proto.Message
	ValidateAll() error
}) error {
	if err := a.UnmarshalTo(m); err != nil {
		return err
	}
	return m.ValidateAll()
}

// validateAll runs each resource's ValidateAll, naming the first that fails.
func validateAll[T interface {
	ValidateAll() error
	proto.Message
}](rs []T, kind string) error {
	for _, r := range rs {
		if err := r.ValidateAll(); err != nil {
			return fmt.Errorf("%s %q: %w", kind, nameOf(r), err)
		}
	}
	return nil
}

// nameOf is a resource's name, for messages.
func nameOf(m proto.Message) string {
	if n, ok := m.(interface{ GetName() string }); ok {
		return n.GetName()
	}
	if n, ok := m.(interface{ GetClusterName() string }); ok {
		return n.GetClusterName()
	}
	return ""
}
