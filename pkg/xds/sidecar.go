package xds

import (
	"fmt"
	"maps"
	"net/url"
	"regexp"
	"slices"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/mtls"
)

// SDS secret names a sidecar's TLS contexts refer to.
const (
	SecretIdentity = "identity"
	SecretMeshCA   = "mesh-ca"
)

// Sidecar generates a sidecar's listeners, clusters and endpoints: inbound
// listeners that (with mTLS) terminate TLS and enforce TrafficPermissions,
// outbound listeners on each service's VIP, and EDS clusters per subset
// whose endpoints include other zones' ingresses, prioritised by Failover.
func Sidecar(state *State, p Proxy) (Resources, error) {
	dp := p.Dataplane
	if dp == nil {
		return nil, fmt.Errorf("sidecar: no Dataplane")
	}
	s := state.Mesh(dp.Mesh)
	if s == nil {
		return nil, fmt.Errorf("sidecar %s: mesh %q does not exist in this zone", dp.Name, dp.Mesh)
	}
	out := Resources{}
	mtls := s.Mesh.MTLSEnabled()
	var inboundPort uint32 // inbound TCP redirected there: no listener per inbound
	if p.TransparentInbound != "" {
		port, err := ParseTransparentPort(p.TransparentInbound)
		if err != nil {
			return nil, fmt.Errorf("sidecar %s: inbound: %w", dp.Name, err)
		}
		inboundPort = port
		build := func() *listener.Listener { return s.transparentInbound(dp, port, mtls, p.InboundPassthrough) }
		if dp.Version != 0 {
			// Its chains speak the protocols of the inbounds' services,
			// which the PolicyHash does not cover.
			var protocols []string
			for _, in := range dp.Networking.Inbound {
				protocols = append(protocols, s.Protocol(in.Tags[api.TagService]))
			}
			key := fmt.Sprintf("transparent-inbound|%s|%d|%d|%d|%t|%q", dp.Name, dp.Version, dp.CreationTime.UnixNano(), port, p.InboundPassthrough, protocols)
			out.Add(resource.ListenerType, memoInbound(s, key, build))
		} else {
			out.Add(resource.ListenerType, build())
		}
		if p.InboundPassthrough {
			out.Add(resource.ClusterType, memoPolicy(s, "inbound-passthrough", inboundPassthroughCluster))
		}
	}
	collectors := map[string]*cluster.Cluster{}
	for i, in := range dp.Networking.Inbound {
		servicePort := in.AppPort()
		local := localCluster(in)
		protocol := s.Protocol(in.Tags[api.TagService])
		pp := s.inboundPolicies(in.Tags)
		collectorClusters(pp, collectors)
		build := func() *listener.Listener { return inboundListener(s, dp, in, local, mtls) }
		switch {
		case inboundPort != 0:
		case dp.Version != 0: // a stored Dataplane: its version and creation time name its content
			key := fmt.Sprintf("inbound|%s|%d|%d|%d|%s|%s", dp.Name, dp.Version, dp.CreationTime.UnixNano(), i, protocol, pp.listenerKey())
			out.Add(resource.ListenerType, memoInbound(s, key, build))
		default:
			out.Add(resource.ListenerType, build())
		}
		out.Add(resource.ClusterType, memoPolicy(s, "local|"+local+"|"+protocol, func() *cluster.Cluster {
			c := StaticCluster(local, "127.0.0.1", uint32(servicePort))
			if api.IsHTTP(protocol) {
				setHTTPProtocol(c, protocol, nil)
			}
			return c
		}))
	}
	// In the order of their names, as a snapshot lists them, so that the
	// xDS server recognises the lists of the proxy's last snapshot.
	shared := s.outboundResources(dp, p.TransparentProxy != "")
	for typ, list := range shared {
		out[typ] = mergeByName(out[typ], list)
	}
	// An inbound's log and trace collectors, unless an outbound's are
	// the same.
	if len(collectors) > 0 {
		var own []types.Resource
		for _, name := range slices.Sorted(maps.Keys(collectors)) {
			if !slices.ContainsFunc(shared[resource.ClusterType], func(r types.Resource) bool { return cache.GetResourceName(r) == name }) {
				own = append(own, memoPolicy(s, "collector|"+name, func() *cluster.Cluster { return collectors[name] }))
			}
		}
		out[resource.ClusterType] = mergeByName(own, out[resource.ClusterType])
	}
	if p.DNSAddress != "" {
		addr, err := ParseDNSAddress(p.DNSAddress)
		if err != nil {
			return nil, fmt.Errorf("sidecar %s: %w", dp.Name, err)
		}
		if l := s.dnsListener(addr, state.DNSDomain, state.DNSTTL); l != nil {
			out[resource.ListenerType] = mergeByName([]types.Resource{l}, out[resource.ListenerType])
		}
	}
	if p.TransparentProxy != "" {
		port, err := ParseTransparentPort(p.TransparentProxy)
		if err != nil {
			return nil, fmt.Errorf("sidecar %s: %w", dp.Name, err)
		}
		l, clusters := s.transparentResources(dp, port)
		out[resource.ListenerType] = mergeByName([]types.Resource{l}, out[resource.ListenerType])
		out[resource.ClusterType] = mergeByName(slices.Clone(clusters), out[resource.ClusterType])
	}
	return out, nil
}

// outboundResources is the part of a sidecar's configuration that reaches
// other services: the outbound listeners, and the EDS clusters and load
// assignments of their subsets. It depends on the dataplane only through
// the services it is an instance of, its explicit outbounds and whether it
// is transparent, so dataplanes that agree on those share one, built once
// per MeshState. A transparent sidecar gets no listener on a VIP: its
// original-destination listener takes those connections (a VIP is on no
// interface, so a listener there could not bind).
func (s *MeshState) outboundResources(dp *api.Dataplane, transparent bool) Resources {
	key := fmt.Sprintf("outbound-resources|%s|%t", outboundKey(s, dp), transparent)
	return memo(s, key, func() Resources { return s.buildOutboundResources(dp, transparent) })
}

// outboundKey is what a sidecar's outbound side depends on of its
// dataplane: the services it is an instance of, its explicit outbounds,
// and which policies' sources match its tags (sourcePolicies).
func outboundKey(s *MeshState, dp *api.Dataplane) string {
	var own []string
	for _, in := range dp.Networking.Inbound {
		own = append(own, in.Tags[api.TagService])
	}
	slices.Sort(own)
	var explicit []string
	for _, o := range dp.Networking.Outbound {
		explicit = append(explicit, fmt.Sprintf("%s@%s:%d", o.Tags[api.TagService], o.Address, o.Port))
	}
	return fmt.Sprintf("%q|%q|%s", slices.Compact(own), explicit, sourcePolicies(s, dp))
}

// selfService is the service a sidecar's spans name: its first inbound's,
// else its Dataplane's name.
func selfService(dp *api.Dataplane) string {
	for _, in := range dp.Networking.Inbound {
		if svc := in.Tags[api.TagService]; svc != "" {
			return svc
		}
	}
	return dp.Name
}

func (s *MeshState) buildOutboundResources(dp *api.Dataplane, transparent bool) Resources {
	out := Resources{}
	mtls := s.Mesh.MTLSEnabled()
	type clusterSpec struct {
		sub      Subset
		protocol string
		pp       pairPolicies
	}
	clusters := map[string]clusterSpec{}
	routes := map[string]*route.RouteConfiguration{}
	collectors := map[string]*cluster.Cluster{}
	sources, self := sourceTags(s, dp), selfService(dp)
	policies := map[string]pairPolicies{}
	for _, o := range s.outbounds(dp, transparent) {
		subsets := s.Subsets(o.service)
		if len(subsets) == 0 {
			continue
		}
		protocol := s.Protocol(o.service)
		pp, ok := policies[o.service]
		if !ok {
			pp = s.outboundPolicies(sources, o.service, protocol)
			policies[o.service] = pp
		}
		// A transparent sidecar's ursa:outbound has a chain for every
		// outbound at an IP that is not loopback (redirected there).
		if !transparent || (o.explicit && !redirected(o.addr)) {
			key := fmt.Sprintf("outbound|%s|%s|%d|%s|%s|%s", o.service, o.addr, o.port, protocol, pp.listenerKey(), traceSelf(pp, self))
			out.Add(resource.ListenerType, memoPolicy(s, key,
				func() *listener.Listener { return outboundListener(o, protocol, subsets, pp, self) }))
		}
		if api.IsHTTP(protocol) {
			name := OutboundRouteName(o.service)
			routes[name] = memoPolicy(s, fmt.Sprintf("route|%s|%s|%s", o.service, protocol, pp.routeKey()), func() *route.RouteConfiguration {
				return RouteConfig(RouteOptions{Name: name, Service: o.service, Protocol: protocol, Route: s.routeFor(o.service),
					Timeout: pp.timeout, Retry: pp.retry})
			})
		}
		for _, sub := range s.RouteSubsets(o.service) {
			clusters[sub.ClusterName()] = clusterSpec{sub, protocol, pp}
		}
		collectorClusters(pp, collectors)
	}
	for _, name := range slices.Sorted(maps.Keys(clusters)) {
		spec := clusters[name]
		sub := spec.sub
		key := fmt.Sprintf("cluster|%s|%s|%s", name, spec.protocol, spec.pp.clusterKey())
		out.Add(resource.ClusterType, memoPolicy(s, key, func() *cluster.Cluster {
			c := EDSCluster(name)
			if mtls {
				var alpn []string
				if spec.protocol == api.ProtocolHTTP2 || spec.protocol == api.ProtocolGRPC {
					alpn = []string{"h2"}
				}
				c.TransportSocket = upstreamTLS(s.Mesh.Name, sub, alpn...)
			}
			applyClusterPolicies(c, spec.protocol, spec.pp)
			return c
		}))
		out.Add(resource.EndpointType, memo(s, "cla|"+name, func() *endpoint.ClusterLoadAssignment {
			// A subset pinned to a zone gets every zone's instances of the
			// subset, its own zone first: when that zone cannot take its
			// share, the share fails over instead of failing. Other zones'
			// instances are reached through their ingresses, which route by
			// the SNI of the mesh's mTLS: without it, this zone's only.
			plan := s.failoverFor(sub.Tags[api.TagService])
			cla := LoadAssignment(name, s.Endpoints(sub.AnyZone(), !mtls), plan.priorities(s, sub.pinnedZone()))
			if f := plan.overprovisioning(); f > 0 {
				cla.Policy = &endpoint.ClusterLoadAssignment_Policy{OverprovisioningFactor: wrapperspb.UInt32(f)}
			}
			return cla
		}))
	}
	for _, name := range slices.Sorted(maps.Keys(routes)) {
		out.Add(resource.RouteType, routes[name])
	}
	for _, name := range slices.Sorted(maps.Keys(collectors)) {
		if _, clash := clusters[name]; !clash {
			out.Add(resource.ClusterType, memoPolicy(s, "collector|"+name, func() *cluster.Cluster { return collectors[name] }))
		}
	}
	// In the order of their names, as a snapshot lists them: a sidecar's
	// own resources (inbound:…, localhost:…) come first by name as well, so
	// that versioning its snapshot finds each type's list already sorted.
	for _, list := range out {
		slices.SortFunc(list, func(a, b types.Resource) int {
			return strings.Compare(cache.GetResourceName(a), cache.GetResourceName(b))
		})
	}
	return out
}

// traceSelf is what an outbound's filters depend on of the proxy when a
// TrafficTrace applies: the service its spans name.
func traceSelf(pp pairPolicies, self string) string {
	if pp.trace == nil {
		return ""
	}
	return self
}

// outbound is one listener a sidecar offers its application.
type outbound struct {
	service string
	addr    string
	port    uint32
	// explicit: the Dataplane's own outbound, not a VIP's.
	explicit bool
}

// outbounds lists, for every service of the mesh, an outbound at its VIP
// at the service's port and at 80, plus the dataplane's explicit outbounds.
// The proxy's own services are left out unless transparent: a sidecar
// binds a VIP's listener itself, and several sidecars on one host (a demo,
// a host of explicit sidecars) would each bind the VIPs of the others'
// services, not their own; a transparent sidecar binds none (its
// application's connections reach ursa:outbound), and its application
// calls its own service by name as any other. A sidecar that is not
// transparent gets a VIP's listeners only when the VIP is a loopback
// address (a demo's 127.240.0.0/16): one on no interface of its host (the
// default 240.0.0.0/4) it could not bind, and would refuse every
// configuration naming it (a host's second sidecar, beside the one that
// runs the transparent proxy and takes the host's calls to VIPs).
func (s *MeshState) outbounds(dp *api.Dataplane, transparent bool) []outbound {
	own := map[string]bool{}
	for _, in := range dp.Networking.Inbound {
		own[in.Tags[api.TagService]] = !transparent
	}
	var out []outbound
	seen := map[string]bool{}
	addOut := func(o outbound) {
		k := fmt.Sprintf("%s:%d", o.addr, o.port)
		if !seen[k] {
			seen[k] = true
			out = append(out, o)
		}
	}
	for _, o := range dp.Networking.Outbound {
		addr := o.Address
		if addr == "" {
			addr = "127.0.0.1"
		}
		addOut(outbound{service: o.Tags[api.TagService], addr: addr, port: uint32(o.Port), explicit: true})
	}
	for _, svc := range s.Services() {
		vip, ok := s.VIPs[svc]
		if !ok || own[svc] || !transparent && !vip.IsLoopback() {
			continue
		}
		if p := s.Service(svc).Port; p != 0 {
			addOut(outbound{service: svc, addr: vip.String(), port: p})
		}
		addOut(outbound{service: svc, addr: vip.String(), port: 80})
	}
	return out
}

func outboundListener(o outbound, protocol string, subsets []Subset, pp pairPolicies, self string) *listener.Listener {
	name := fmt.Sprintf("outbound:%s:%d", o.addr, o.port)
	return &listener.Listener{
		Name:         name,
		Address:      SocketAddress(o.addr, o.port),
		FilterChains: []*listener.FilterChain{{Filters: outboundFilters(name, o.service, protocol, subsets, pp, self)}},
	}
}

func inboundListener(s *MeshState, dp *api.Dataplane, in api.Inbound, local string, mtls bool) *listener.Listener {
	name := inboundName(dp, in)
	return &listener.Listener{Name: name, Address: SocketAddress(dp.Networking.Address, uint32(in.Port)),
		FilterChains: []*listener.FilterChain{inboundChain(s, in, name, local, mtls)}}
}

// localCluster names the static cluster of an inbound's application.
func localCluster(in api.Inbound) string { return fmt.Sprintf("localhost:%d", in.AppPort()) }

func inboundName(dp *api.Dataplane, in api.Inbound) string {
	return fmt.Sprintf("inbound:%s:%d", dp.Networking.Address, in.Port)
}

// inboundChain is what an inbound does with a connection, wherever it is
// accepted: with mTLS it terminates TLS, requiring a client certificate,
// and lets through the callers TrafficPermissions allow; then it proxies
// to the application at local.
//
// An inbound of an HTTP-family service has one network filter, an HTTP
// connection manager that does the same at L7 (the RBAC as its HTTP
// filter), and its TLS offers h2 and http/1.1 by ALPN. A TrafficLog or
// TrafficTrace that selects the inbound's tags as its destination logs or
// traces what it takes, whoever the callers.
func inboundChain(s *MeshState, in api.Inbound, name, local string, mtls bool) *listener.FilterChain {
	chain := &listener.FilterChain{}
	http := api.IsHTTP(s.Protocol(in.Tags[api.TagService]))
	pp := s.inboundPolicies(in.Tags)
	if mtls {
		common := commonTLS()
		if http {
			common.AlpnProtocols = []string{"h2", "http/1.1"}
		} else {
			chain.Filters = append(chain.Filters, rbacFilter(s, in.Tags, name))
		}
		chain.TransportSocket = &core.TransportSocket{Name: wellknown.TransportSocketTLS,
			ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: MustAny(&tlsv3.DownstreamTlsContext{
				CommonTlsContext:         common,
				RequireClientCertificate: wrapperspb.Bool(true),
			})}}
	}
	if http {
		chain.Filters = append(chain.Filters, inboundHTTPFilter(s, in, name, local, mtls, pp))
		return chain
	}
	chain.Filters = append(chain.Filters, tcpProxyWithLog(name, []Subset{{Tags: map[string]string{api.TagService: local}, Weight: 1}}, pp.log, 0))
	return chain
}

// commonTLS points at the SDS identity and CA secrets.
func commonTLS() *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: SecretIdentity, SdsConfig: ads()}},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: SecretMeshCA, SdsConfig: ads()}},
	}
}

// upstreamTLS originates mTLS to an instance of sub's service, and accepts
// only a server whose certificate names that service's SPIFFE ID (chained
// to the mesh CA from SDS): a connection that reaches any other workload
// fails its handshake, wherever it was routed.
//
// alpn, when given, is offered in the handshake (h2 for HTTP/2 upstreams).
func upstreamTLS(mesh string, sub Subset, alpn ...string) *core.TransportSocket {
	common := commonTLS()
	common.AlpnProtocols = alpn
	common.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{
		CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext: &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
				SanType: tlsv3.SubjectAltNameMatcher_URI,
				Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: SpiffeID(mesh, sub.Tags[api.TagService])}},
			}}},
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: SecretMeshCA, SdsConfig: ads()},
		}}
	return &core.TransportSocket{Name: wellknown.TransportSocketTLS,
		ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: MustAny(&tlsv3.UpstreamTlsContext{
			CommonTlsContext: common,
			Sni:              catalog.SNI(mesh, sub.Tags),
		})}}
}

// rbacFilter allows the sources TrafficPermissions let call this inbound's
// service, by the URI SANs of their certificates, and denies the rest. A
// DENY permission overrides any ALLOW for the same source.
func rbacFilter(s *MeshState, tags map[string]string, statPrefix string) *listener.Filter {
	r := &rbac.RBAC{StatPrefix: statPrefix, Rules: rbacRules(s, tags)}
	return &listener.Filter{Name: wellknown.RoleBasedAccessControl, ConfigType: &listener.Filter_TypedConfig{TypedConfig: MustAny(r)}}
}

// rbacRules are the rules of an inbound's RBAC filter, network or HTTP.
func rbacRules(s *MeshState, tags map[string]string) *rbacconfig.RBAC {
	allow := &rbacconfig.Policy{Permissions: []*rbacconfig.Permission{{Rule: &rbacconfig.Permission_Any{Any: true}}}}
	var denied []*rbacconfig.Principal
	for _, tp := range s.Permissions {
		if !slices.ContainsFunc(tp.Spec.Destinations, func(d api.Selector) bool { return catalog.Matches(d.Match, tags) }) {
			continue
		}
		for _, src := range tp.Spec.Sources {
			p := principal(s.Mesh.Name, src.Match)
			if tp.Spec.Action == api.ActionDeny {
				denied = append(denied, p)
			} else {
				allow.Principals = append(allow.Principals, p)
			}
		}
	}
	if len(denied) > 0 {
		for i, p := range allow.Principals {
			allow.Principals[i] = &rbacconfig.Principal{Identifier: &rbacconfig.Principal_AndIds{AndIds: &rbacconfig.Principal_Set{
				Ids: []*rbacconfig.Principal{p, {Identifier: &rbacconfig.Principal_NotId{NotId: &rbacconfig.Principal{
					Identifier: &rbacconfig.Principal_OrIds{OrIds: &rbacconfig.Principal_Set{Ids: denied}}}}}}}}}
		}
	}
	policies := map[string]*rbacconfig.Policy{}
	if len(allow.Principals) > 0 {
		policies["allowed-sources"] = allow
	}
	return &rbacconfig.RBAC{Action: rbacconfig.RBAC_ALLOW, Policies: policies}
}

// principal matches a caller whose certificate carries every tag of a
// source selector: the AND, over its tags, of an authenticated principal
// whose name is one of the caller's URI SANs. The service is matched by
// its SPIFFE ID ("*" or no service: any of the mesh's), every other tag by
// ursa://<tag>/<value> ("*": any value of the tag).
func principal(mesh string, match map[string]string) *rbacconfig.Principal {
	service := &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: SpiffeID(mesh, match[api.TagService])}}
	if svc := match[api.TagService]; svc == "*" || svc == "" {
		service = &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: "spiffe://" + mesh + "/"}}
	}
	ids := []*rbacconfig.Principal{authenticated(service)}
	for _, name := range slices.Sorted(maps.Keys(match)) {
		if name == api.TagService {
			continue
		}
		ids = append(ids, authenticated(tagMatcher(name, match[name])))
	}
	if len(ids) == 1 {
		return ids[0]
	}
	return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_AndIds{AndIds: &rbacconfig.Principal_Set{Ids: ids}}}
}

func authenticated(m *matcher.StringMatcher) *rbacconfig.Principal {
	return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_Authenticated_{Authenticated: &rbacconfig.Principal_Authenticated{PrincipalName: m}}}
}

// tagMatcher matches the URI SAN of a tag's value; "*" any value of it
// (values hold no '/', so the regex cannot reach into a longer tag name).
// A tag no certificate can carry (mtls.TagURI) matches nothing.
func tagMatcher(name, value string) *matcher.StringMatcher {
	if value == "*" {
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{
			Regex: regexp.QuoteMeta(mtls.TagURIPrefix(name)) + "[^/]+"}}}
	}
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: mtls.TagURIPrefix(name) + url.PathEscape(value)}}
}

// SpiffeID is the identity of a service's certificates.
func SpiffeID(mesh, service string) string { return mtls.SpiffeID(mesh, service) }
