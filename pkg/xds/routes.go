package xds

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	previoushosts "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/api"
)

// DefaultRequestTimeout bounds a request to an http or http2 service when
// no Timeout sets one (Envoy's default); grpc services have none.
const DefaultRequestTimeout = 15 * time.Second

const (
	// previousHostsPredicate is Envoy's retry host predicate that turns
	// a retry away from the instances already tried.
	previousHostsPredicate = "envoy.retry_host_predicates.previous_hosts"
	// retryHostSelections is how many times Envoy draws again for a retry
	// that drew an instance already tried: Istio's 5. With Envoy's default,
	// 1, a retry between two instances lands back on the one that failed
	// one time in four.
	retryHostSelections = 5
)

// Default retry conditions when a Retry names none.
const (
	defaultHTTPRetryOn = "5xx,reset,connect-failure,refused-stream"
	defaultGRPCRetryOn = "cancelled,deadline-exceeded,internal,resource-exhausted,unavailable"
)

// OutboundRouteName names a sidecar's route configuration of a
// destination service, which its outbound HCMs fetch over RDS.
func OutboundRouteName(service string) string { return "outbound:" + service }

// RouteOptions are what the route configuration of one destination
// service is made of.
type RouteOptions struct {
	// Name is the RouteConfiguration's: OutboundRouteName(service) for a
	// sidecar, the service itself for a proxyless gRPC client (the name
	// its api_listener's RDS asks for).
	Name     string
	Service  string
	Protocol string // the service's (MeshState.Protocol)
	// Route is the service's TrafficRoute (MeshState.RouteFor), nil for
	// none; Timeout and Retry the policies of the (caller, service) pair
	// (policyFor), nil for none.
	Route   *api.TrafficRoute
	Timeout *api.Timeout
	Retry   *api.Retry
}

// RouteConfig builds the route configuration of a destination service
// (l7contract §2): one virtual host named after the service for every
// domain, the TrafficRoute's http rules in order, then the default route
// (prefix "/") to its split. Each route goes to the per-subset clusters
// (Subset.ClusterName; RouteSubsets lists them all, for the caller to
// make), has its request timeout always set (the Timeout's, else 15 s for
// http and http2 and none for grpc), the Timeout's idle timeout, and the
// Retry's policy for the protocol (grpc's for grpc services, http's
// otherwise).
//
// A proxyless gRPC client calls it with Name set to the service and
// Protocol grpc, like a sidecar, and uses the result as its route
// configuration; grpc-go reads a route's timeout from max_stream_duration,
// not from timeout, so the caller copies Timeout there (grpc-go ignores
// the path, Host and header rewrites, and retries only on gRPC status
// conditions).
func RouteConfig(o RouteOptions) *route.RouteConfiguration {
	var routes []*route.Route
	prefix := "default"
	if o.Route != nil {
		prefix = o.Route.Name
		if api.IsHTTP(o.Protocol) {
			for i, r := range o.Route.Spec.HTTP {
				split := r.Split
				if len(split) == 0 {
					split = o.Route.Spec.Split
				}
				rt := &route.Route{
					Name:   fmt.Sprintf("%s/%d", o.Route.Name, i),
					Match:  routeMatch(r.Match),
					Action: &route.Route_Route{Route: o.action(splitSubsets(o.Service, split))},
				}
				modify(rt, r.Modify)
				routes = append(routes, rt)
			}
		}
		prefix += "/default"
	}
	routes = append(routes, &route.Route{
		Name:   prefix,
		Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
		Action: &route.Route_Route{Route: o.action(defaultSubsets(o.Service, o.Route))},
	})
	return &route.RouteConfiguration{Name: o.Name, VirtualHosts: []*route.VirtualHost{{
		Name:    o.Service,
		Domains: []string{"*"},
		Routes:  routes,
	}}}
}

// action routes to subsets with the pair's timeouts and retries.
func (o RouteOptions) action(subsets []Subset) *route.RouteAction {
	a := &route.RouteAction{}
	if len(subsets) == 1 {
		a.ClusterSpecifier = &route.RouteAction_Cluster{Cluster: subsets[0].ClusterName()}
	} else {
		wc := &route.WeightedCluster{}
		for _, sub := range subsets {
			wc.Clusters = append(wc.Clusters, &route.WeightedCluster_ClusterWeight{Name: sub.ClusterName(), Weight: wrapperspb.UInt32(sub.Weight)})
		}
		a.ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: wc}
	}
	var httpTimeouts *api.HTTPTimeouts
	if o.Timeout != nil {
		httpTimeouts = o.Timeout.Spec.HTTP
	}
	timeout := DefaultRequestTimeout
	if o.Protocol == api.ProtocolGRPC {
		timeout = 0
	}
	if httpTimeouts != nil && httpTimeouts.RequestTimeout != nil {
		timeout = httpTimeouts.RequestTimeout.D()
	}
	a.Timeout = durationpb.New(timeout)
	if httpTimeouts != nil && httpTimeouts.IdleTimeout != nil {
		a.IdleTimeout = durationpb.New(httpTimeouts.IdleTimeout.D())
	}
	a.RetryPolicy = o.retryPolicy(httpTimeouts)
	return a
}

// retryPolicy is the Retry's for the protocol; its per-try timeout, else
// the Timeout's. Without a Retry, a Timeout's per-try timeout still bounds
// the one try there is (no retries); without either, nil.
func (o RouteOptions) retryPolicy(httpTimeouts *api.HTTPTimeouts) *route.RetryPolicy {
	var r *api.HTTPRetry
	on := defaultHTTPRetryOn
	if o.Retry != nil {
		r = o.Retry.Spec.HTTP
		if o.Protocol == api.ProtocolGRPC {
			r, on = o.Retry.Spec.GRPC, defaultGRPCRetryOn
		}
	}
	if r == nil { // no Retry, or none for this protocol
		if httpTimeouts != nil && httpTimeouts.PerTryTimeout != nil {
			return &route.RetryPolicy{NumRetries: wrapperspb.UInt32(0), PerTryTimeout: durationpb.New(httpTimeouts.PerTryTimeout.D())}
		}
		return nil
	}
	if len(r.RetryOn) > 0 {
		on = strings.Join(r.RetryOn, ",")
	}
	n := r.NumRetries
	if n == 0 {
		n = 1
	}
	// A retry goes to an instance not yet tried, as Istio's and the
	// built-in proxy's do: without the predicate Envoy draws it from all
	// of them, so a retry may go back to the instance that just failed.
	p := &route.RetryPolicy{RetryOn: on, NumRetries: wrapperspb.UInt32(uint32(n)),
		RetryHostPredicate: []*route.RetryPolicy_RetryHostPredicate{{Name: previousHostsPredicate,
			ConfigType: &route.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: MustAny(&previoushosts.PreviousHostsPredicate{})}}},
		HostSelectionRetryMaxAttempts: retryHostSelections}
	switch {
	case r.PerTryTimeout != nil:
		p.PerTryTimeout = durationpb.New(r.PerTryTimeout.D())
	case httpTimeouts != nil && httpTimeouts.PerTryTimeout != nil:
		p.PerTryTimeout = durationpb.New(httpTimeouts.PerTryTimeout.D())
	}
	for _, c := range r.RetriableStatusCodes {
		p.RetriableStatusCodes = append(p.RetriableStatusCodes, uint32(c))
	}
	if b := r.BackOff; b != nil && (b.Base != nil || b.Max != nil) {
		base := api.DefaultRetryBackOffBase
		if b.Base != nil {
			base = b.Base.D()
		}
		p.RetryBackOff = &route.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(base)}
		if b.Max != nil {
			p.RetryBackOff.MaxInterval = durationpb.New(b.Max.D())
		}
	}
	return p
}

// routeMatch matches what an http rule's match sets: the path, the method
// (as the :method header) and the headers, in the order of their names.
func routeMatch(m api.HTTPMatch) *route.RouteMatch {
	rm := &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}
	if p := m.Path; p != nil {
		switch {
		case p.Exact != "":
			rm.PathSpecifier = &route.RouteMatch_Path{Path: p.Exact}
		case p.Prefix != "":
			rm.PathSpecifier = &route.RouteMatch_Prefix{Prefix: p.Prefix}
		case p.Regex != "":
			rm.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: p.Regex}}
		}
	}
	if m.Method != "" {
		rm.Headers = append(rm.Headers, &route.HeaderMatcher{Name: ":method",
			HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{
				MatchPattern: &matcher.StringMatcher_Exact{Exact: m.Method}}}})
	}
	for _, name := range slices.Sorted(maps.Keys(m.Headers)) {
		hm := &route.HeaderMatcher{Name: strings.ToLower(name)}
		v := m.Headers[name]
		var sm *matcher.StringMatcher
		switch {
		case v.Present:
			hm.HeaderMatchSpecifier = &route.HeaderMatcher_PresentMatch{PresentMatch: true}
		case v.Regex != "":
			sm = &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: v.Regex}}}
		case v.Prefix != "":
			sm = &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: v.Prefix}}
		default:
			sm = &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: v.Exact}}
		}
		if sm != nil {
			hm.HeaderMatchSpecifier = &route.HeaderMatcher_StringMatch{StringMatch: sm}
		}
		rm.Headers = append(rm.Headers, hm)
	}
	return rm
}

// modify sets a route's rewrites: of the path (what the route's match
// matched), the Host, and headers (set replaces any value).
func modify(rt *route.Route, m *api.HTTPModify) {
	if m == nil {
		return
	}
	a := rt.GetRoute()
	if m.Path != nil {
		a.PrefixRewrite = m.Path.ReplacePrefix
	}
	if m.Host != "" {
		a.HostRewriteSpecifier = &route.RouteAction_HostRewriteLiteral{HostRewriteLiteral: m.Host}
	}
	set := func(h *api.HeaderModify) []*core.HeaderValueOption {
		if h == nil {
			return nil
		}
		var out []*core.HeaderValueOption
		for _, k := range slices.Sorted(maps.Keys(h.Set)) {
			out = append(out, &core.HeaderValueOption{Header: &core.HeaderValue{Key: strings.ToLower(k), Value: h.Set[k]},
				AppendAction: core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD})
		}
		return out
	}
	remove := func(h *api.HeaderModify) []string {
		if h == nil {
			return nil
		}
		out := make([]string, 0, len(h.Remove))
		for _, k := range h.Remove {
			out = append(out, strings.ToLower(k))
		}
		return out
	}
	rt.RequestHeadersToAdd, rt.RequestHeadersToRemove = set(m.RequestHeaders), remove(m.RequestHeaders)
	rt.ResponseHeadersToAdd, rt.ResponseHeadersToRemove = set(m.ResponseHeaders), remove(m.ResponseHeaders)
}

// splitSubsets turns a split of a service into its subsets, by cluster
// name; zero weights are dropped.
func splitSubsets(service string, split []api.Split) []Subset {
	var out []Subset
	for _, sp := range split {
		if sp.Weight <= 0 {
			continue
		}
		tags := maps.Clone(sp.Tags)
		if tags == nil {
			tags = map[string]string{}
		}
		tags[api.TagService] = service
		out = append(out, Subset{Tags: tags, Weight: uint32(sp.Weight)})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].ClusterName() < out[j].ClusterName() })
	return out
}

// defaultSubsets is how a service's traffic splits when no http rule
// matches: per its TrafficRoute's split, or all to the whole service.
func defaultSubsets(service string, r *api.TrafficRoute) []Subset {
	if r == nil {
		return []Subset{{Tags: map[string]string{api.TagService: service}, Weight: 100}}
	}
	return splitSubsets(service, r.Spec.Split)
}

// RouteFor returns a service's TrafficRoute, nil when none selects it.
func (s *MeshState) RouteFor(service string) *api.TrafficRoute { return s.routeFor(service) }

// RouteSubsets lists every subset a service's routes go to, by cluster
// name: the default split's (Subsets), and for an HTTP-family service
// each http rule's too. Built once per MeshState: callers must not
// modify it.
func (s *MeshState) RouteSubsets(service string) []Subset {
	return memo(s, "route-subsets|"+service, func() []Subset {
		subsets := s.Subsets(service)
		r := s.routeFor(service)
		if r == nil || len(r.Spec.HTTP) == 0 || !api.IsHTTP(s.Protocol(service)) {
			return subsets
		}
		byName := map[string]Subset{}
		for _, sub := range subsets {
			byName[sub.ClusterName()] = sub
		}
		for _, rule := range r.Spec.HTTP {
			for _, sub := range splitSubsets(service, rule.Split) {
				if _, ok := byName[sub.ClusterName()]; !ok {
					byName[sub.ClusterName()] = sub
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
