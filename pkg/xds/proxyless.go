package xds

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/api"
)

// Proxyless generates, for a gRPC application that speaks xDS itself
// (grpc-go's xds:/// resolver and xds.NewGRPCServer), what grpc-go reads:
//
//   - per service an api_listener named after it (the target of
//     xds:///<service>) whose HCM has the fault filter when a
//     FaultInjection selects the pair, then the router;
//   - a route configuration named after the service: the TrafficRoute's
//     http rules (path and header matches, weighted clusters), then the
//     default route, each with the Timeout as max_stream_duration and the
//     Retry's grpc block as a retry policy (gRFCs A28, A31, A44, A33);
//   - an EDS cluster per subset, reporting load to this CP (LRS), with, in
//     an mTLS mesh, an UpstreamTlsContext whose certificates come from the
//     application's certificate provider (api.ProxylessCertProvider, gRFC
//     A29), that accepts only the service's SPIFFE ID, and that sets the
//     subset's SNI so that another zone's ingress can route it;
//   - load assignments with this zone's instances and, in an mTLS mesh,
//     other zones' ingresses at the priorities Failover gives them, as for
//     sidecars;
//   - per inbound of its own Dataplane, the listener a gRPC xDS server
//     asks for (ProxylessServerListenerName, gRFC A36): mTLS requiring a
//     client certificate, and the HTTP RBAC filter (gRFC A41) from the
//     TrafficPermissions.
//
// The routes come from RouteConfig, as a sidecar's of a grpc service do
// (proxylessRoutes adapts them to grpc-go), and the policies of each
// (client, service) pair from pairPoliciesFor. What it generates for a
// client depends on the mesh and on which policies its inbounds' tags
// select (sourcePolicies): clients that agree on those share one set of
// resources, built once per MeshState.
func Proxyless(state *State, p Proxy) (Resources, error) {
	dp := p.Dataplane
	if dp == nil {
		return nil, fmt.Errorf("proxyless: no Dataplane")
	}
	s := state.Mesh(dp.Mesh)
	if s == nil {
		return nil, fmt.Errorf("proxyless %s: mesh %q does not exist in this zone", dp.Name, dp.Mesh)
	}
	// Clients whose tags the same policies select, as specifically, share
	// one set of resources.
	key := sourcePolicies(s, dp)
	shared := memo(s, "proxyless|"+key, func() Resources { return s.proxylessShared(key, sourceTags(s, dp)) })
	out := Resources{}
	out.Merge(shared)
	var own []types.Resource
	for i, in := range dp.Networking.Inbound {
		// A server bound to a wildcard address (net.Listen(":9000"), as
		// Istio's proxyless servers may be) asks for the listener of that
		// address, and serves only one whose address is it.
		for _, host := range []string{dp.Networking.Address, "0.0.0.0", "::"} {
			build := func() *listener.Listener { return s.proxylessServerListener(dp, in, host) }
			if dp.Version != 0 { // a stored Dataplane: its version and creation time name its content
				key := fmt.Sprintf("proxyless-server|%s|%d|%d|%d|%s", dp.Name, dp.Version, dp.CreationTime.UnixNano(), i, host)
				own = append(own, memoPolicy(s, key, build))
			} else {
				own = append(own, build())
			}
		}
	}
	out[resource.ListenerType] = mergeByName(own, out[resource.ListenerType])
	return out, nil
}

// proxylessShared is what the proxyless clients of a key (sourcePolicies)
// share: the listeners, routes and clusters, which depend only on what the
// PolicyHash covers and are kept while it stays the same (so a change of
// endpoints rebuilds the load assignments alone), and this MeshState's
// load assignments of the clusters.
func (s *MeshState) proxylessShared(key string, sources []map[string]string) Resources {
	p := memoPolicy(s, "proxyless-policy|"+key, func() proxylessPolicyPart { return s.buildProxyless(sources) })
	mtls := s.Mesh.MTLSEnabled()
	out := Resources{}
	for typ, list := range p.res {
		out[typ] = slices.Clip(list)
	}
	for _, sub := range p.subsets {
		out.Add(resource.EndpointType, memo(s, fmt.Sprintf("proxyless-cla|%s|%t", sub.ClusterName(), mtls), func() *endpoint.ClusterLoadAssignment {
			return s.proxylessLoadAssignment(sub, mtls)
		}))
	}
	return out
}

// proxylessPolicyPart is the part of proxyless clients' resources that
// depends only on what the PolicyHash covers, and the subsets whose load
// assignments go with it, by cluster name.
type proxylessPolicyPart struct {
	res     Resources
	subsets []Subset
}

func (s *MeshState) buildProxyless(sources []map[string]string) proxylessPolicyPart {
	out := Resources{}
	mtls := s.Mesh.MTLSEnabled()
	clusters := map[string]Subset{}
	for _, svc := range s.Services() {
		subsets := s.Subsets(svc)
		if len(subsets) == 0 {
			continue
		}
		pp := s.pairPoliciesFor(sources, svc)
		out.Add(resource.ListenerType, proxylessListener(svc, pp.fault))
		rc, used := s.proxylessRoutes(svc, pp)
		out.Add(resource.RouteType, rc)
		for _, sub := range used {
			clusters[sub.ClusterName()] = sub
		}
	}
	var subsets []Subset
	for _, name := range slices.Sorted(maps.Keys(clusters)) {
		sub := clusters[name]
		pp := s.pairPoliciesFor(sources, sub.Tags[api.TagService])
		out.Add(resource.ClusterType, s.proxylessCluster(sub, pp.breaker, mtls))
		subsets = append(subsets, sub)
	}
	for _, list := range out {
		slices.SortFunc(list, func(a, b types.Resource) int {
			return strings.Compare(cache.GetResourceName(a), cache.GetResourceName(b))
		})
	}
	return proxylessPolicyPart{res: out, subsets: subsets}
}

// proxylessCluster is a subset's EDS cluster for grpc-go: it reports load
// to this CP (LRS), and in an mTLS mesh originates mTLS through the
// application's certificate provider. Of a CircuitBreaker, grpc-go honours
// max_requests (gRFC A32) and, of outlier detection, the success-rate and
// failure-percentage detections (gRFC A50; it ignores consecutive
// failures).
func (s *MeshState) proxylessCluster(sub Subset, breaker *api.CircuitBreaker, mtls bool) *cluster.Cluster {
	name := sub.ClusterName()
	c := EDSCluster(name)
	c.LrsServer = &core.ConfigSource{ResourceApiVersion: core.ApiVersion_V3, ConfigSourceSpecifier: &core.ConfigSource_Self{Self: &core.SelfConfigSource{}}}
	if mtls {
		c.TransportSocket = proxylessUpstreamTLS(s.Mesh.Name, sub)
	}
	if breaker != nil && breaker.Spec.Thresholds != nil && breaker.Spec.Thresholds.MaxRequests > 0 {
		t := breaker.Spec.Thresholds
		c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
			Priority:    core.RoutingPriority_DEFAULT,
			MaxRequests: wrapperspb.UInt32(uint32(t.MaxRequests)),
		}}}
	}
	if breaker != nil && breaker.Spec.Outlier != nil {
		c.OutlierDetection = outlierDetection(breaker.Spec.Outlier)
	}
	return c
}

// proxylessLoadAssignment is a subset's endpoints for grpc-go. In an mTLS
// mesh, other zones' instances are reached through their zones' ingresses,
// which route by the SNI the cluster sets, at the priorities Failover gives
// them (as for sidecars; grpc-go moves to the next priority when a
// priority has no endpoint it can connect to, and ignores the
// overprovisioning factor). Without mTLS an ingress cannot route a
// connection (there is no SNI), so only this zone's instances are used: a
// subset pinned to another zone (a TrafficRoute's zone split) gets this
// zone's, as a sidecar's does, not none.
func (s *MeshState) proxylessLoadAssignment(sub Subset, mtls bool) *endpoint.ClusterLoadAssignment {
	name := sub.ClusterName()
	if !mtls {
		return LoadAssignment(name, s.Endpoints(sub.AnyZone(), true), nil)
	}
	plan := s.failoverFor(sub.Tags[api.TagService])
	cla := LoadAssignment(name, s.Endpoints(sub.AnyZone(), false), plan.priorities(s, sub.pinnedZone()))
	if f := plan.overprovisioning(); f > 0 {
		cla.Policy = &endpoint.ClusterLoadAssignment_Policy{OverprovisioningFactor: wrapperspb.UInt32(f)}
	}
	return cla
}

// apiListener is a service's api_listener without a fault filter.
func apiListener(svc string) *listener.Listener { return proxylessListener(svc, nil) }

// proxylessListener is the listener grpc-go's resolver asks for
// xds:///<svc>: its HCM names the route configuration <svc>, and has the
// fault filter (when a FaultInjection selects the pair), then the router.
func proxylessListener(svc string, fault *api.FaultInjection) *listener.Listener {
	var filters []*hcm.HttpFilter
	if f := faultFilter(fault); f != nil {
		filters = append(filters, f)
	}
	filters = append(filters, routerFilter())
	manager := &hcm.HttpConnectionManager{
		StatPrefix:     svc,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{RouteConfigName: svc, ConfigSource: ads()}},
		HttpFilters:    filters,
	}
	return &listener.Listener{Name: svc, ApiListener: &listener.ApiListener{ApiListener: MustAny(manager)}}
}
