package xds

import (
	"maps"
	"slices"
	"strings"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ursamesh/ursa/pkg/api"
)

// proxylessRoutes is a service's route configuration for a proxyless
// client, and the subsets its routes send to: RouteConfig's, for a gRPC
// caller whatever the service declares (a proxyless client's calls are
// gRPC), adapted to what grpc-go reads (gRFCs A28, A31, A44):
//
//   - the request timeout is copied to max_stream_duration, which grpc-go
//     applies as the call's deadline (it reads no route timeout);
//   - every gRPC call is a POST, which grpc-go does not see as a header: a
//     rule for POST loses its :method matcher, a rule for another method
//     can never match a gRPC call and is left out;
//   - grpc-go retries the gRPC status codes of retry_on only (at most 4
//     times), ignores per_try_timeout, and applies no header rewrites.
func (s *MeshState) proxylessRoutes(svc string, pp pairPolicies) (*route.RouteConfiguration, []Subset) {
	rc := RouteConfig(RouteOptions{Name: svc, Service: svc, Protocol: api.ProtocolGRPC, Route: s.routeFor(svc),
		Timeout: pp.timeout, Retry: pp.retry})
	vh := rc.VirtualHosts[0]
	vh.Routes = slices.DeleteFunc(vh.Routes, func(r *route.Route) bool {
		keep := true
		r.Match.Headers = slices.DeleteFunc(r.Match.Headers, func(h *route.HeaderMatcher) bool {
			if h.Name != ":method" {
				return false
			}
			keep = strings.EqualFold(h.GetStringMatch().GetExact(), "POST")
			return true
		})
		return !keep
	})
	byName := map[string]Subset{}
	for _, sub := range s.RoutedSubsets(svc) {
		byName[sub.ClusterName()] = sub
	}
	used := map[string]Subset{}
	for _, r := range vh.Routes {
		a := r.GetRoute()
		if d := a.GetTimeout().AsDuration(); d > 0 {
			a.MaxStreamDuration = &route.RouteAction_MaxStreamDuration{MaxStreamDuration: durationpb.New(d)}
		}
		if rp := a.GetRetryPolicy(); rp != nil && rp.GetNumRetries() != nil && rp.GetNumRetries().GetValue() == 0 {
			// A per-try timeout without retries: grpc-go refuses
			// num_retries 0 (it must be ≥ 1) and reads no per-try
			// timeout anyway.
			a.RetryPolicy = nil
		}
		if name := a.GetCluster(); name != "" {
			used[name] = byName[name]
		}
		for _, wc := range a.GetWeightedClusters().GetClusters() {
			used[wc.GetName()] = byName[wc.GetName()]
		}
	}
	out := make([]Subset, 0, len(used))
	for _, name := range slices.Sorted(maps.Keys(used)) {
		out = append(out, used[name])
	}
	return rc, out
}

// routeConfig is a service's route configuration for a gRPC caller with
// no TrafficRoute and no policy: one default route to subsets.
func routeConfig(svc string, subsets []Subset) *route.RouteConfiguration {
	return &route.RouteConfiguration{Name: svc, VirtualHosts: []*route.VirtualHost{{Name: svc, Domains: []string{"*"},
		Routes: []*route.Route{{Name: "default", Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			Action: &route.Route_Route{Route: RouteOptions{Service: svc, Protocol: api.ProtocolGRPC}.action(subsets)}}}}}}
}

// RoutedSubsets are every subset a service's TrafficRoute sends to: its
// split's (Subsets) and its http rules' splits', by cluster name, whatever
// the service's protocol (a proxyless gRPC client applies http rules to
// any service; RouteSubsets, a sidecar's, to HTTP-family services only).
// A zone ingress offers each of them to other zones, by its SNI.
func (s *MeshState) RoutedSubsets(svc string) []Subset {
	return memo(s, "routed-subsets|"+svc, func() []Subset {
		byName := map[string]Subset{}
		for _, sub := range s.Subsets(svc) {
			byName[sub.ClusterName()] = sub
		}
		if tr := s.routeFor(svc); tr != nil {
			for _, rule := range tr.Spec.HTTP {
				for _, sub := range splitSubsets(svc, rule.Split) {
					if _, ok := byName[sub.ClusterName()]; !ok {
						byName[sub.ClusterName()] = sub
					}
				}
			}
		}
		out := make([]Subset, 0, len(byName))
		for _, name := range slices.Sorted(maps.Keys(byName)) {
			out = append(out, byName[name])
		}
		return slices.Clip(out)
	})
}
