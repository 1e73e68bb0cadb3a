// The Envoy builders every generator shares (sidecar, proxyless, and the
// zone ingress in package ingress).

package xds

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	tcp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Resources is a proxy's configuration, by xDS type URL.
type Resources map[resource.Type][]types.Resource

// Add appends res to its type's resources.
func (r Resources) Add(typ resource.Type, res types.Resource) { r[typ] = append(r[typ], res) }

// ads points a resource's dependencies at the stream it came on.
func ads() *core.ConfigSource {
	return &core.ConfigSource{ResourceApiVersion: core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}}
}

// MustAny packs one of our own messages in an Any; it cannot fail for them.
func MustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(fmt.Sprintf("xds: pack %T: %v", m, err)) // only for our own well-formed messages
	}
	return a
}

// EDSCluster is a cluster whose endpoints come over ADS (EDS), round robin.
func EDSCluster(name string) *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: ads(), ServiceName: name},
		LbPolicy:             cluster.Cluster_ROUND_ROBIN,
		ConnectTimeout:       durationpb.New(5 * time.Second),
	}
}

// loadAssignment groups endpoints by zone into localities. priority gives
// each zone's priority: nil puts every zone at 0; otherwise a zone it does
// not name is left out, and the priorities of the zones that remain are
// renumbered without gaps (Envoy and grpc-go require that).
func LoadAssignment(name string, eps []Endpoint, priority map[string]uint32) *endpoint.ClusterLoadAssignment {
	cla := &endpoint.ClusterLoadAssignment{ClusterName: name}
	byZone := map[string]*endpoint.LocalityLbEndpoints{}
	var order []string
	for _, e := range eps {
		loc, ok := byZone[e.Zone]
		if !ok {
			if _, named := priority[e.Zone]; priority != nil && !named {
				continue
			}
			loc = &endpoint.LocalityLbEndpoints{Locality: &core.Locality{Zone: e.Zone}, Priority: priority[e.Zone],
				LoadBalancingWeight: wrapperspb.UInt32(0)}
			byZone[e.Zone] = loc
			order = append(order, e.Zone)
		}
		loc.LoadBalancingWeight.Value += e.Weight
		loc.LbEndpoints = append(loc.LbEndpoints, &endpoint.LbEndpoint{
			HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: &core.Address{
				Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
					Address: e.Address, PortSpecifier: &core.SocketAddress_PortValue{PortValue: e.Port}}}}}},
			LoadBalancingWeight: wrapperspb.UInt32(e.Weight),
		})
	}
	used := map[uint32]bool{}
	for _, z := range order {
		used[byZone[z].Priority] = true
	}
	renumber := map[uint32]uint32{}
	for i, p := range slices.Sorted(maps.Keys(used)) {
		renumber[p] = uint32(i)
	}
	for _, z := range order {
		byZone[z].Priority = renumber[byZone[z].Priority]
		cla.Endpoints = append(cla.Endpoints, byZone[z])
	}
	return cla
}

// TCPProxy is a tcp_proxy filter to a subset, or a weighted split over subsets.
func TCPProxy(statPrefix string, subsets []Subset) *listener.Filter {
	// A connection that cannot reach one instance tries others, up to
	// three in all (Envoy's default is one).
	tp := &tcp.TcpProxy{StatPrefix: statPrefix, MaxConnectAttempts: wrapperspb.UInt32(tcpConnectAttempts)}
	if len(subsets) == 1 {
		tp.ClusterSpecifier = &tcp.TcpProxy_Cluster{Cluster: subsets[0].ClusterName()}
	} else {
		wc := &tcp.TcpProxy_WeightedCluster{}
		for _, sub := range subsets {
			wc.Clusters = append(wc.Clusters, &tcp.TcpProxy_WeightedCluster_ClusterWeight{Name: sub.ClusterName(), Weight: sub.Weight})
		}
		tp.ClusterSpecifier = &tcp.TcpProxy_WeightedClusters{WeightedClusters: wc}
	}
	return &listener.Filter{Name: wellknown.TCPProxy, ConfigType: &listener.Filter_TypedConfig{TypedConfig: MustAny(tp)}}
}

// tcpConnectAttempts is a TCP connection's tries of instances.
const tcpConnectAttempts = 3

// SocketAddress is a TCP socket address.
func SocketAddress(addr string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: addr, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port}}}}
}

// StaticCluster is a cluster of one fixed address (a sidecar's application).
func StaticCluster(name, addr string, port uint32) *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(5 * time.Second),
		LoadAssignment: &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{{
			LbEndpoints: []*endpoint.LbEndpoint{{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: SocketAddress(addr, port)}}}},
		}}},
	}
}

// Merge adds every resource of other to r.
func (r Resources) Merge(other Resources) {
	for typ, list := range other {
		if len(r[typ]) == 0 {
			r[typ] = slices.Clip(list) // shared: appending to it copies
			continue
		}
		r[typ] = append(r[typ], list...)
	}
}

// mergeByName returns own and shared (sorted by name) as one list sorted by
// name; own is sorted first. Both are left as they are.
func mergeByName(own, shared []types.Resource) []types.Resource {
	if len(own) == 0 {
		return slices.Clip(shared) // appending to it copies
	}
	byName := func(a, b types.Resource) int {
		return strings.Compare(cache.GetResourceName(a), cache.GetResourceName(b))
	}
	slices.SortFunc(own, byName)
	out := make([]types.Resource, 0, len(own)+len(shared))
	i, j := 0, 0
	for i < len(own) && j < len(shared) {
		if byName(own[i], shared[j]) <= 0 {
			out = append(out, own[i])
			i++
		} else {
			out = append(out, shared[j])
			j++
		}
	}
	out = append(out, own[i:]...)
	return append(out, shared[j:]...)
}
