package xds

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/api"
)

// DirectCluster names the ORIGINAL_DST cluster through which a transparent
// sidecar reaches an instance of service that its application called by
// the instance's own address and port (not the service's VIP). Service
// names hold no ':', so it never clashes with a subset's cluster.
func DirectCluster(service string) string { return "direct:" + service }

// directGroup is the addresses at which a service's local instances listen
// on one inbound port: one filter chain of the transparent listener.
type directGroup struct {
	port  uint32
	addrs []netip.Addr // sorted, distinct
}

// directGroups returns, per port, the addresses at which a service's
// instances registered in this zone may be called directly by a
// transparent sidecar's application. Instances of other zones sit behind
// their zone's ingress and have no address here; loopback addresses are
// never redirected, and addresses that are not IPs (DNS names) cannot be
// matched, so both are left out. An instance whose proxy is offline keeps
// its place: its address is still its service's, and a connection to it
// fails as it would passed through; keeping it spares every transparent
// sidecar of the mesh a new listener each time a proxy restarts (the
// listener changes only when Dataplanes are registered or removed). An
// address:port that two services claim (two Dataplanes registered at one
// address with one inbound port) goes to the first service by name, in
// every sidecar of the mesh; one at a VIP of the mesh is left to the VIP's
// chain. Built once per MeshState.
func (s *MeshState) directGroups(service string) []directGroup {
	return memo(s, "direct-groups", s.buildDirectGroups)[service]
}

func (s *MeshState) buildDirectGroups() map[string][]directGroup {
	vips := map[netip.Addr]bool{}
	for _, vip := range s.VIPs {
		vips[vip.Unmap()] = true
	}
	owner := map[netip.AddrPort]string{}
	for _, dp := range s.Registered {
		addr, err := netip.ParseAddr(dp.Networking.Address)
		if err != nil {
			continue
		}
		addr = addr.Unmap()
		if addr.IsLoopback() || addr.IsUnspecified() || vips[addr] {
			continue
		}
		for _, in := range dp.Networking.Inbound {
			svc := in.Tags[api.TagService]
			if svc == "" || in.Port <= 0 || in.Port > 65535 {
				continue
			}
			ap := netip.AddrPortFrom(addr, uint16(in.Port))
			if cur, taken := owner[ap]; !taken || svc < cur {
				owner[ap] = svc
			}
		}
	}
	byService := map[string]map[uint32][]netip.Addr{}
	for ap, svc := range owner {
		if byService[svc] == nil {
			byService[svc] = map[uint32][]netip.Addr{}
		}
		byService[svc][uint32(ap.Port())] = append(byService[svc][uint32(ap.Port())], ap.Addr())
	}
	out := make(map[string][]directGroup, len(byService))
	for svc, byPort := range byService {
		for _, port := range slices.Sorted(maps.Keys(byPort)) {
			addrs := byPort[port]
			slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
			out[svc] = append(out[svc], directGroup{port: port, addrs: addrs})
		}
	}
	return out
}

// directChain is the transparent listener's filter chain for one group of
// a service: its instances' addresses at their port, to DirectCluster.
// taken, when not nil, lists address:ports another chain of the listener
// matches already; they are left out (an explicit outbound's address can
// be anything, and Envoy refuses two chains that match alike). The chain
// is shared when nothing is left out. Nil when nothing is left.
func (s *MeshState) directChain(service string, g directGroup, taken map[netip.AddrPort]bool) *listener.FilterChain {
	addrs := g.addrs
	if len(taken) > 0 && slices.ContainsFunc(addrs, func(a netip.Addr) bool { return taken[netip.AddrPortFrom(a, uint16(g.port))] }) {
		addrs = slices.DeleteFunc(slices.Clone(addrs), func(a netip.Addr) bool { return taken[netip.AddrPortFrom(a, uint16(g.port))] })
		if len(addrs) == 0 {
			return nil
		}
		return buildDirectChain(service, g.port, addrs)
	}
	return memo(s, fmt.Sprintf("direct-chain|%s|%d", service, g.port), func() *listener.FilterChain {
		return buildDirectChain(service, g.port, addrs)
	})
}

func buildDirectChain(service string, port uint32, addrs []netip.Addr) *listener.FilterChain {
	name := fmt.Sprintf("%s:%d", DirectCluster(service), port)
	m := &listener.FilterChainMatch{DestinationPort: wrapperspb.UInt32(port)}
	for _, a := range addrs {
		m.PrefixRanges = append(m.PrefixRanges, &core.CidrRange{AddressPrefix: a.String(), PrefixLen: wrapperspb.UInt32(uint32(a.BitLen()))})
	}
	return &listener.FilterChain{
		Name:             name,
		FilterChainMatch: m,
		Filters:          []*listener.Filter{TCPProxy(name, []Subset{{Tags: map[string]string{api.TagService: DirectCluster(service)}, Weight: 1}})},
	}
}

// directCluster connects to exactly where the application's connection was
// headed, an instance of service, with the mTLS (SNI, and the check that
// the server's certificate names the service) of the service's own
// clusters when the mesh has mTLS.
func (s *MeshState) directCluster(service string) *cluster.Cluster {
	return memoPolicy(s, "direct-cluster|"+service, func() *cluster.Cluster {
		c := &cluster.Cluster{
			Name:                 DirectCluster(service),
			ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST},
			LbPolicy:             cluster.Cluster_CLUSTER_PROVIDED,
			ConnectTimeout:       durationpb.New(5 * time.Second),
		}
		if s.Mesh.MTLSEnabled() {
			c.TransportSocket = upstreamTLS(s.Mesh.Name, Subset{Tags: map[string]string{api.TagService: service}, Weight: 1})
		}
		return c
	})
}
