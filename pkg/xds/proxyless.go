package xds

import (
	"fmt"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Proxyless generates, for a gRPC application that speaks xDS itself, the
// shape grpc-go's resolver consumes for xds:///<service>: per service an
// api_listener named after it, a route configuration with the service's
// TrafficRoute split, and an EDS cluster per subset. grpc-go cannot route
// through another zone's SNI ingress, so only this zone's endpoints are
// used.
func Proxyless(state *State, p Proxy) (Resources, error) {
	if p.Dataplane == nil {
		return nil, fmt.Errorf("proxyless: no Dataplane")
	}
	s := state.Mesh(p.Dataplane.Mesh)
	if s == nil {
		return nil, fmt.Errorf("proxyless %s: mesh %q does not exist in this zone", p.Dataplane.Name, p.Dataplane.Mesh)
	}
	// Every proxyless client of a mesh gets the same resources: built once
	// per MeshState, the messages shared, the lists the caller's own.
	shared := memo(s, "proxyless", s.buildProxyless)
	out := Resources{}
	out.Merge(shared)
	return out, nil
}

func (s *MeshState) buildProxyless() Resources {
	out := Resources{}
	for _, svc := range s.Services() {
		subsets := s.Subsets(svc)
		if len(subsets) == 0 {
			continue
		}
		out.Add(resource.ListenerType, apiListener(svc))
		out.Add(resource.RouteType, routeConfig(svc, subsets))
		for _, sub := range subsets {
			name := sub.ClusterName()
			c := EDSCluster(name)
			// grpc-go reports its calls per locality to this CP (LRS).
			c.LrsServer = &core.ConfigSource{ResourceApiVersion: core.ApiVersion_V3, ConfigSourceSpecifier: &core.ConfigSource_Self{Self: &core.SelfConfigSource{}}}
			out.Add(resource.ClusterType, c)
			out.Add(resource.EndpointType, LoadAssignment(name, s.Endpoints(sub, true), nil))
		}
	}
	return out
}

func apiListener(svc string) *listener.Listener {
	manager := &hcm.HttpConnectionManager{
		StatPrefix:     svc,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{RouteConfigName: svc, ConfigSource: ads()}},
		HttpFilters: []*hcm.HttpFilter{{Name: wellknown.Router,
			ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: MustAny(&router.Router{})}}},
	}
	return &listener.Listener{Name: svc, ApiListener: &listener.ApiListener{ApiListener: MustAny(manager)}}
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
