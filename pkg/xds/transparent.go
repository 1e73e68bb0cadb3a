package xds

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/api"
)

// Names of the transparent proxy's resources.
const (
	TransparentListener = "ursa:outbound"
	// InboundListener takes the inbound TCP redirected to a sidecar.
	InboundListener    = "ursa:inbound"
	PassthroughCluster = "ursa:passthrough"
	// InboundPassthroughCluster takes what ursa:inbound takes in no
	// inbound to where it was headed, from PassthroughSource.
	InboundPassthroughCluster = "ursa:inbound-passthrough"
	// PassthroughSource is the address the inbound passthrough connects
	// from: the transparent proxy's rules let the sidecar's connections
	// from it out as they are (tproxy.ProbeSource; Istio's
	// InboundPassthroughClusterIpv4 binds the same), where they would
	// otherwise come back into ursa:inbound.
	PassthroughSource = "127.0.0.6"
)

// ParseTransparentPort checks the port a sidecar's outbound TCP is
// redirected to (node metadata api.MetadataTransparentProxy).
func ParseTransparentPort(s string) (uint32, error) {
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil || p == 0 {
		return 0, fmt.Errorf("transparent proxy port %q: want a port 1-65535", s)
	}
	return uint32(p), nil
}

// redirected says whether the transparent proxy sends an application's
// connections to addr to ursa:outbound: an IP, not loopback (never
// redirected). The listener has a chain for every outbound at one.
func redirected(addr string) bool {
	a, err := netip.ParseAddr(addr)
	return err == nil && !a.IsLoopback()
}

// transparentResources are the listener on 0.0.0.0:port with
// use_original_dst that a transparent sidecar's redirected connections
// arrive at, and its clusters: a filter chain per outbound (a service's VIP
// at its port and at 80, the proxy's own service's too, an explicit
// outbound's address) to the outbound's clusters; a filter chain per
// service and port of its instances, which matches their addresses (an application
// that calls an instance by its address, 10.1.2.3:8080) and goes to the
// service's DirectCluster; and a default chain that passes every other
// connection through to where it was headed. They depend on the dataplane
// only as outboundResources do, and are built once per MeshState for
// dataplanes that agree on that: the listener lists every local instance
// of the mesh, and must not be built again for each proxy. Callers must
// not modify the cluster list.
func (s *MeshState) transparentResources(dp *api.Dataplane, port uint32) (*listener.Listener, []types.Resource) {
	type built struct {
		l        *listener.Listener
		clusters []types.Resource
	}
	b := memo(s, fmt.Sprintf("transparent|%d|%s", port, outboundKey(s, dp)), func() built {
		l, clusters := s.buildTransparent(dp, port)
		return built{l, clusters}
	})
	return b.l, b.clusters
}

func (s *MeshState) buildTransparent(dp *api.Dataplane, port uint32) (*listener.Listener, []types.Resource) {
	l := &listener.Listener{
		Name:           TransparentListener,
		Address:        SocketAddress("0.0.0.0", port),
		UseOriginalDst: wrapperspb.Bool(true),
		DefaultFilterChain: &listener.FilterChain{Name: PassthroughCluster, Filters: []*listener.Filter{
			TCPProxy(PassthroughCluster, []Subset{{Tags: map[string]string{api.TagService: PassthroughCluster}, Weight: 1}})}},
	}
	taken := map[netip.AddrPort]bool{}
	sources, self := sourceTags(s, dp), selfService(dp)
	for _, o := range s.outbounds(dp, true) {
		if !redirected(o.addr) {
			continue
		}
		addr := netip.MustParseAddr(o.addr)
		subsets := s.Subsets(o.service)
		if len(subsets) == 0 {
			continue
		}
		taken[netip.AddrPortFrom(addr.Unmap(), uint16(o.port))] = true
		name := fmt.Sprintf("outbound:%s:%d", o.addr, o.port)
		protocol := s.Protocol(o.service)
		pp := s.outboundPolicies(sources, o.service, protocol)
		l.FilterChains = append(l.FilterChains, &listener.FilterChain{
			Name: name,
			FilterChainMatch: &listener.FilterChainMatch{
				DestinationPort: wrapperspb.UInt32(o.port),
				PrefixRanges:    []*core.CidrRange{{AddressPrefix: addr.String(), PrefixLen: wrapperspb.UInt32(uint32(addr.BitLen()))}},
			},
			Filters: outboundFilters(name, o.service, protocol, subsets, pp, self),
		})
	}
	clusters := []types.Resource{&cluster.Cluster{
		Name:                 PassthroughCluster,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST},
		LbPolicy:             cluster.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(5 * time.Second),
		// What leaves the mesh is the application's own.
		CircuitBreakers: unlimited(),
	}}
	// Every service's instances, this sidecar's own service's too: a
	// service's members call each other by address (a StatefulSet's, a
	// cluster's peers), over mTLS. A call to this very instance is one of
	// them: the transparent proxy's rules take the sidecar's connection to
	// its own address into its inbound listener.
	for _, svc := range s.Services() {
		chains := 0
		for _, g := range s.directGroups(svc) {
			if fc := s.directChain(svc, g, taken); fc != nil {
				l.FilterChains = append(l.FilterChains, fc)
				chains++
			}
		}
		if chains > 0 {
			clusters = append(clusters, s.directCluster(svc))
		}
	}
	slices.SortFunc(clusters, func(a, b types.Resource) int {
		return strings.Compare(cache.GetResourceName(a), cache.GetResourceName(b))
	})
	return l, slices.Clip(clusters)
}

// transparentInbound is the listener on 0.0.0.0:port with use_original_dst
// that a sidecar's redirected inbound connections arrive at: a filter
// chain per inbound, taking the connections to the Dataplane's address at
// the inbound's port, each the inbound's own chain (mTLS, RBAC, the
// application). With the inbound's port equal to its service port, the
// application itself binds that port: nothing else does.
//
// Without passthrough (only the inbounds' ports are redirected) there is
// no default chain: a connection headed anywhere else (an application's
// own port of an inbound, redirected so that the application is reached
// only through its inbound) is refused. With it (every port is redirected,
// api.MetadataInboundPassthrough), the default chain passes what no chain
// takes through to where it was headed (InboundPassthroughCluster), as
// Istio's and Kuma's inbound passthrough do: a port no inbound names (a
// metrics port) still reaches the application, through the sidecar. The
// ports of the inbounds and their applications then get a chain with no
// filters, which closes the connection, for any address the inbounds'
// chains do not take: passed through, they would reach the application
// around its inbound.
func (s *MeshState) transparentInbound(dp *api.Dataplane, port uint32, mtls, passthrough bool) *listener.Listener {
	l := &listener.Listener{
		Name:           InboundListener,
		Address:        SocketAddress("0.0.0.0", port),
		UseOriginalDst: wrapperspb.Bool(true),
	}
	var prefixes []*core.CidrRange
	if addr, err := netip.ParseAddr(dp.Networking.Address); err == nil { // else a DNS name: any address
		addr = addr.Unmap()
		prefixes = []*core.CidrRange{{AddressPrefix: addr.String(), PrefixLen: wrapperspb.UInt32(uint32(addr.BitLen()))}}
	}
	for _, in := range dp.Networking.Inbound {
		name := inboundName(dp, in)
		chain := inboundChain(s, in, name, localCluster(in), mtls)
		chain.Name = name
		chain.FilterChainMatch = &listener.FilterChainMatch{DestinationPort: wrapperspb.UInt32(uint32(in.Port)), PrefixRanges: prefixes}
		l.FilterChains = append(l.FilterChains, chain)
	}
	if !passthrough {
		return l
	}
	var own []int
	for _, in := range dp.Networking.Inbound {
		// An inbound's chain without prefixes takes its port at every
		// address already (a second chain of the same match would be
		// refused).
		if prefixes != nil {
			own = append(own, in.Port)
		}
		own = append(own, in.AppPort())
	}
	slices.Sort(own)
	for _, p := range slices.Compact(own) {
		if prefixes == nil && slices.ContainsFunc(dp.Networking.Inbound, func(in api.Inbound) bool { return in.Port == p }) {
			continue
		}
		l.FilterChains = append(l.FilterChains, &listener.FilterChain{
			Name:             fmt.Sprintf("inbound:closed:%d", p),
			FilterChainMatch: &listener.FilterChainMatch{DestinationPort: wrapperspb.UInt32(uint32(p))},
		})
	}
	// A neighbour's packet addressed to loopback is REDIRECTed here like
	// any other (nat PREROUTING runs before the martian check): never
	// pass it through to the host's loopback services.
	l.FilterChains = append(l.FilterChains, &listener.FilterChain{
		Name: "inbound:closed:loopback",
		FilterChainMatch: &listener.FilterChainMatch{PrefixRanges: []*core.CidrRange{
			{AddressPrefix: "127.0.0.0", PrefixLen: wrapperspb.UInt32(8)}, {AddressPrefix: "::1", PrefixLen: wrapperspb.UInt32(128)}}},
	})
	l.DefaultFilterChain = &listener.FilterChain{Name: InboundPassthroughCluster, Filters: []*listener.Filter{
		TCPProxy(InboundPassthroughCluster, []Subset{{Tags: map[string]string{api.TagService: InboundPassthroughCluster}, Weight: 1}})}}
	return l
}

// inboundPassthroughCluster connects to where a connection ursa:inbound
// passes through was headed, from PassthroughSource; like the outbound
// passthrough, with no circuit breaker of the mesh's.
func inboundPassthroughCluster() *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 InboundPassthroughCluster,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST},
		LbPolicy:             cluster.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(5 * time.Second),
		UpstreamBindConfig:   &core.BindConfig{SourceAddress: &core.SocketAddress{Address: PassthroughSource, PortSpecifier: &core.SocketAddress_PortValue{PortValue: 0}}},
		CircuitBreakers:      unlimited(),
	}
}

// unlimited are circuit breaker thresholds that never trip: what a
// passthrough carries is the application's own, which no breaker of the
// mesh caps (Envoy's default would at 1024 connections), as Istio does for
// its passthrough clusters.
func unlimited() *cluster.CircuitBreakers {
	return &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
		MaxConnections: wrapperspb.UInt32(math.MaxUint32), MaxPendingRequests: wrapperspb.UInt32(math.MaxUint32),
		MaxRequests: wrapperspb.UInt32(math.MaxUint32), MaxRetries: wrapperspb.UInt32(math.MaxUint32),
	}}}
}
