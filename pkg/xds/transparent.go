package xds

import (
	"fmt"
	"net/netip"
	"strconv"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
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

// transparentResources are the listener on 0.0.0.0:port with
// use_original_dst that a transparent sidecar's redirected connections
// arrive at, and its passthrough cluster: a filter chain per outbound (a
// service's VIP at its port and at 80, an explicit outbound's address) to
// the outbound's clusters, and a default chain that passes every other
// connection through to where it was headed.
func (s *MeshState) transparentResources(dp *api.Dataplane, port uint32) (*listener.Listener, *cluster.Cluster) {
	l := &listener.Listener{
		Name:           TransparentListener,
		Address:        SocketAddress("0.0.0.0", port),
		UseOriginalDst: wrapperspb.Bool(true),
		DefaultFilterChain: &listener.FilterChain{Name: PassthroughCluster, Filters: []*listener.Filter{
			TCPProxy(PassthroughCluster, []Subset{{Tags: map[string]string{api.TagService: PassthroughCluster}, Weight: 1}})}},
	}
	for _, o := range s.outbounds(dp) {
		addr, err := netip.ParseAddr(o.addr)
		if err != nil || addr.IsLoopback() {
			continue // loopback is never redirected
		}
		subsets := s.Subsets(o.service)
		if len(subsets) == 0 {
			continue
		}
		name := fmt.Sprintf("outbound:%s:%d", o.addr, o.port)
		l.FilterChains = append(l.FilterChains, &listener.FilterChain{
			Name: name,
			FilterChainMatch: &listener.FilterChainMatch{
				DestinationPort: wrapperspb.UInt32(o.port),
				PrefixRanges:    []*core.CidrRange{{AddressPrefix: addr.String(), PrefixLen: wrapperspb.UInt32(uint32(addr.BitLen()))}},
			},
			Filters: []*listener.Filter{TCPProxy(name, subsets)},
		})
	}
	c := &cluster.Cluster{
		Name:                 PassthroughCluster,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST},
		LbPolicy:             cluster.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(5 * time.Second),
	}
	return l, c
}

// transparentInbound is the listener on 0.0.0.0:port with use_original_dst
// that a sidecar's redirected inbound connections arrive at: a filter
// chain per inbound, taking the connections to the Dataplane's address at
// the inbound's port, each the inbound's own chain (mTLS, RBAC, the
// application). No default chain: a connection headed anywhere else is
// refused. With the inbound's port equal to its service port, the
// application itself binds that port: nothing else does.
func (s *MeshState) transparentInbound(dp *api.Dataplane, port uint32, mtls bool) *listener.Listener {
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
	return l
}
