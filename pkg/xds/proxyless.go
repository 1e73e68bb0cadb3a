package xds

import (
	"fmt"
	"maps"
	"slices"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Resources is a proxy's configuration, by xDS type URL.
type Resources map[resource.Type][]types.Resource

func (r Resources) add(typ resource.Type, res types.Resource) { r[typ] = append(r[typ], res) }

// ads points a resource's dependencies at the stream it came on.
func ads() *core.ConfigSource {
	return &core.ConfigSource{ResourceApiVersion: core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(fmt.Sprintf("xds: pack %T: %v", m, err)) // only for our own well-formed messages
	}
	return a
}

// Proxyless generates, for a gRPC application that speaks xDS itself, the
// shape grpc-go's resolver consumes for xds:///<service>: per service an
// api_listener named after it, a route configuration with the service's
// TrafficRoute split, and an EDS cluster per subset. grpc-go cannot route
// through another zone's SNI ingress, so only this zone's endpoints are
// used.
func Proxyless(s *MeshState, _ Proxy) (Resources, error) {
	// Every proxyless client of a mesh gets the same resources: built once
	// per MeshState, the messages shared, the lists the caller's own.
	shared := memo(s, "proxyless", s.buildProxyless)
	out := Resources{}
	out.Merge(shared)
	return out, nil
}

func (s *MeshState) buildProxyless() Resources {
	out := Resources{}
	for _, svc := range s.services() {
		subsets := s.subsets(svc)
		if len(subsets) == 0 {
			continue
		}
		out.add(resource.ListenerType, apiListener(svc))
		out.add(resource.RouteType, routeConfig(svc, subsets))
		for _, sub := range subsets {
			name := sub.ClusterName()
			c := edsCluster(name)
			// grpc-go reports its calls per locality to this CP (LRS).
			c.LrsServer = &core.ConfigSource{ResourceApiVersion: core.ApiVersion_V3, ConfigSourceSpecifier: &core.ConfigSource_Self{Self: &core.SelfConfigSource{}}}
			out.add(resource.ClusterType, c)
			out.add(resource.EndpointType, loadAssignment(name, s.endpoints(sub, true), nil))
		}
	}
	return out
}

func apiListener(svc string) *listener.Listener {
	manager := &hcm.HttpConnectionManager{
		StatPrefix:     svc,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{RouteConfigName: svc, ConfigSource: ads()}},
		HttpFilters: []*hcm.HttpFilter{{Name: wellknown.Router,
			ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&router.Router{})}}},
	}
	return &listener.Listener{Name: svc, ApiListener: &listener.ApiListener{ApiListener: mustAny(manager)}}
}

func routeConfig(svc string, subsets []Subset) *route.RouteConfiguration {
	action := &route.RouteAction{}
	if len(subsets) == 1 {
		action.ClusterSpecifier = &route.RouteAction_Cluster{Cluster: subsets[0].ClusterName()}
	} else {
		wc := &route.WeightedCluster{}
		for _, sub := range subsets {
			wc.Clusters = append(wc.Clusters, &route.WeightedCluster_ClusterWeight{Name: sub.ClusterName(), Weight: wrapperspb.UInt32(sub.Weight)})
		}
		action.ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: wc}
	}
	return &route.RouteConfiguration{Name: svc, VirtualHosts: []*route.VirtualHost{{
		Name:    svc,
		Domains: []string{"*"},
		Routes: []*route.Route{{
			Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			Action: &route.Route_Route{Route: action},
		}},
	}}}
}

func edsCluster(name string) *cluster.Cluster {
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
func loadAssignment(name string, eps []Endpoint, priority map[string]uint32) *endpoint.ClusterLoadAssignment {
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
