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
	commonfault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
)

// proxylessPolicy is what the policies of a (client, destination service)
// pair say, of what grpc-go honours.
type proxylessPolicy struct {
	timeout *api.Timeout
	retry   *api.Retry
	fault   *api.FaultInjection
	breaker *api.CircuitBreaker
}

// proxylessPolicies picks, for calls from a client whose inbounds carry
// the tag sets sources to service, the policy of each type that applies.
func (s *MeshState) proxylessPolicies(sources []map[string]string, service string) proxylessPolicy {
	var p proxylessPolicy
	p.timeout, _ = s.pickPolicy("Timeout", sources, service).(*api.Timeout)
	p.retry, _ = s.pickPolicy("Retry", sources, service).(*api.Retry)
	p.fault, _ = s.pickPolicy("FaultInjection", sources, service).(*api.FaultInjection)
	p.breaker, _ = s.pickPolicy("CircuitBreaker", sources, service).(*api.CircuitBreaker)
	return p
}

// pickPolicy returns, of the mesh's policies of a type, the one that
// applies to calls from a proxy whose inbounds carry the tag sets sources
// to service; nil for none. A policy applies when one of its sources
// matches one of the tag sets and one of its destinations the service;
// of those, the most specific wins: the most tags in the matching source
// and destination selectors, then the fewest "*", then the name, lowest
// first (the contract's rule, which the API's refusal of ties makes
// total).
func (s *MeshState) pickPolicy(typ string, sources []map[string]string, service string) api.Policy {
	dst := map[string]string{api.TagService: service}
	var best api.Policy
	var bestTags, bestStars int
	for _, p := range s.Policies[typ] {
		srcs, dsts := p.Selectors()
		st, ss, ok := bestSelector(srcs, sources)
		if !ok {
			continue
		}
		dt, ds, ok := bestSelector(dsts, []map[string]string{dst})
		if !ok {
			continue
		}
		tags, stars := st+dt, ss+ds
		if best == nil || tags > bestTags || (tags == bestTags && (stars < bestStars ||
			(stars == bestStars && p.GetMeta().Name < best.GetMeta().Name))) {
			best, bestTags, bestStars = p, tags, stars
		}
	}
	return best
}

// bestSelector returns the tag and "*" counts of the most specific of
// selectors that matches one of the tag sets; ok is false when none does.
func bestSelector(selectors []api.Selector, sets []map[string]string) (tags, stars int, ok bool) {
	for _, sel := range selectors {
		if !slices.ContainsFunc(sets, func(t map[string]string) bool { return catalog.Matches(sel.Match, t) }) {
			continue
		}
		n, st := len(sel.Match), len(sel.Match)-specificity(sel.Match)
		if !ok || n > tags || (n == tags && st < stars) {
			tags, stars, ok = n, st, true
		}
	}
	return tags, stars, ok
}

// proxylessRoutes is a service's route configuration for grpc-go, and the
// subsets its routes send to: the TrafficRoute's http rules in order, then
// the default route (the route's split).
func (s *MeshState) proxylessRoutes(svc string, pol proxylessPolicy) (*route.RouteConfiguration, []Subset) {
	tr := s.routeFor(svc)
	var routes []*route.Route
	var used []Subset
	add := func(name string, m *route.RouteMatch, subsets []Subset, modify *api.HTTPModify) {
		r := &route.Route{Name: name, Match: m,
			Action: &route.Route_Route{Route: proxylessAction(subsets, pol)}}
		setHeaderChanges(r, modify)
		routes = append(routes, r)
		used = append(used, subsets...)
	}
	defaultName := "default"
	if tr != nil {
		defaultName = tr.Name + "/default"
		for i, rule := range tr.Spec.HTTP {
			m, ok := proxylessMatch(rule.Match)
			if !ok {
				continue // a method other than POST: never a gRPC call
			}
			subsets := s.Subsets(svc)
			if len(rule.Split) > 0 {
				subsets = splitSubsets(svc, rule.Split)
			}
			if len(subsets) == 0 {
				continue // every weight 0: the API refuses it; nothing to send to
			}
			add(fmt.Sprintf("%s/%d", tr.Name, i), m, subsets, rule.Modify)
		}
	}
	add(defaultName, &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}, s.Subsets(svc), nil)
	return &route.RouteConfiguration{Name: svc, VirtualHosts: []*route.VirtualHost{{
		Name:    svc,
		Domains: []string{"*"},
		Routes:  routes,
	}}}, used
}

// routeConfig is a service's route configuration with no TrafficRoute and
// no policy: one default route to subsets.
func routeConfig(svc string, subsets []Subset) *route.RouteConfiguration {
	return &route.RouteConfiguration{Name: svc, VirtualHosts: []*route.VirtualHost{{Name: svc, Domains: []string{"*"},
		Routes: []*route.Route{{Name: "default", Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			Action: &route.Route_Route{Route: proxylessAction(subsets, proxylessPolicy{})}}}}}}
}

// splitSubsets are the subsets of an http rule's split, as Subsets makes
// them of a route's.
func splitSubsets(svc string, split []api.Split) []Subset {
	var out []Subset
	for _, sp := range split {
		if sp.Weight <= 0 {
			continue
		}
		tags := maps.Clone(sp.Tags)
		if tags == nil {
			tags = map[string]string{}
		}
		tags[api.TagService] = svc
		out = append(out, Subset{Tags: tags, Weight: uint32(sp.Weight)})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].ClusterName() < out[j].ClusterName() })
	return out
}

// proxylessMatch is an http rule's match for grpc-go. Every gRPC call is a
// POST, which grpc-go does not see as a header: a rule for POST matches
// whatever the method, a rule for another method never matches (ok is
// false: the route is left out).
func proxylessMatch(m api.HTTPMatch) (*route.RouteMatch, bool) {
	if m.Method != "" && !strings.EqualFold(m.Method, "POST") {
		return nil, false
	}
	out := &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}
	if p := m.Path; p != nil {
		switch {
		case p.Exact != "":
			out.PathSpecifier = &route.RouteMatch_Path{Path: p.Exact}
		case p.Prefix != "":
			out.PathSpecifier = &route.RouteMatch_Prefix{Prefix: p.Prefix}
		case p.Regex != "":
			out.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: p.Regex}}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(m.Headers)) {
		out.Headers = append(out.Headers, headerMatcher(name, m.Headers[name]))
	}
	return out, true
}

// headerMatcher matches a header (gRPC metadata) by one of exact, prefix,
// regex or presence. Header names are matched in lower case, as gRPC
// metadata keys are.
func headerMatcher(name string, sm api.StringMatch) *route.HeaderMatcher {
	h := &route.HeaderMatcher{Name: strings.ToLower(name)}
	var s *matcher.StringMatcher
	switch {
	case sm.Present:
		h.HeaderMatchSpecifier = &route.HeaderMatcher_PresentMatch{PresentMatch: true}
		return h
	case sm.Prefix != "":
		s = &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: sm.Prefix}}
	case sm.Regex != "":
		s = &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: sm.Regex}}}
	default:
		s = &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: sm.Exact}}
	}
	h.HeaderMatchSpecifier = &route.HeaderMatcher_StringMatch{StringMatch: s}
	return h
}

// proxylessAction sends to subsets with the pair's timeout and retries.
// The request timeout is the route's max_stream_duration, which grpc-go
// applies as a deadline (gRFC A31; it reads no route timeout), and also
// its timeout for Envoy's sake (0, none, without a Timeout: a gRPC call
// has its own deadline). The Retry's grpc block is its retry policy
// (gRFC A44: grpc-go retries the gRPC status codes of retry_on, at most
// 4 times, and ignores per_try_timeout).
func proxylessAction(subsets []Subset, pol proxylessPolicy) *route.RouteAction {
	a := &route.RouteAction{Timeout: durationpb.New(0)}
	if len(subsets) == 1 {
		a.ClusterSpecifier = &route.RouteAction_Cluster{Cluster: subsets[0].ClusterName()}
	} else {
		wc := &route.WeightedCluster{}
		for _, sub := range subsets {
			wc.Clusters = append(wc.Clusters, &route.WeightedCluster_ClusterWeight{Name: sub.ClusterName(), Weight: wrapperspb.UInt32(sub.Weight)})
		}
		a.ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: wc}
	}
	if t := pol.timeout; t != nil && t.Spec.HTTP != nil {
		if d := t.Spec.HTTP.RequestTimeout.D(); d > 0 {
			a.Timeout = durationpb.New(d)
			a.MaxStreamDuration = &route.RouteAction_MaxStreamDuration{MaxStreamDuration: durationpb.New(d)}
		}
		if d := t.Spec.HTTP.IdleTimeout.D(); d > 0 {
			a.IdleTimeout = durationpb.New(d)
		}
	}
	if r := pol.retry; r != nil && r.Spec.GRPC != nil {
		a.RetryPolicy = grpcRetryPolicy(r.Spec.GRPC, pol.timeout)
	}
	return a
}

// grpcRetryOn are the retry_on conditions grpc-go honours (gRPC status
// codes); the default when a Retry's grpc block names none.
var grpcRetryOn = []string{"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}

// grpcRetryPolicy is a Retry's grpc block as a route's retry policy.
func grpcRetryPolicy(r *api.HTTPRetry, timeout *api.Timeout) *route.RetryPolicy {
	on := r.RetryOn
	if len(on) == 0 {
		on = grpcRetryOn
	}
	n := r.NumRetries
	if n <= 0 {
		n = 1
	}
	p := &route.RetryPolicy{RetryOn: strings.Join(on, ","), NumRetries: wrapperspb.UInt32(uint32(n))}
	perTry := r.PerTryTimeout.D()
	if perTry == 0 && timeout != nil && timeout.Spec.HTTP != nil {
		perTry = timeout.Spec.HTTP.PerTryTimeout.D()
	}
	if perTry > 0 {
		p.PerTryTimeout = durationpb.New(perTry)
	}
	for _, c := range r.RetriableStatusCodes {
		p.RetriableStatusCodes = append(p.RetriableStatusCodes, uint32(c))
	}
	if b := r.BackOff; b != nil && (b.Base != nil || b.Max != nil) {
		base := b.Base.D()
		if base <= 0 {
			base = defaultRetryBase
		}
		p.RetryBackOff = &route.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(base)}
		if m := b.Max.D(); m > 0 {
			p.RetryBackOff.MaxInterval = durationpb.New(m)
		}
	}
	return p
}

// defaultRetryBase is Envoy's and grpc-go's back-off base.
const defaultRetryBase = 25 * time.Millisecond

// setHeaderChanges adds an http rule's header changes to its route (the
// contract's shape; grpc-go does not apply them).
func setHeaderChanges(r *route.Route, m *api.HTTPModify) {
	if m == nil {
		return
	}
	add := func(set map[string]string) []*core.HeaderValueOption {
		var out []*core.HeaderValueOption
		for _, k := range slices.Sorted(maps.Keys(set)) {
			out = append(out, &core.HeaderValueOption{Header: &core.HeaderValue{Key: strings.ToLower(k), Value: set[k]},
				AppendAction: core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD})
		}
		return out
	}
	if h := m.RequestHeaders; h != nil {
		r.RequestHeadersToAdd, r.RequestHeadersToRemove = add(h.Set), slices.Clone(h.Remove)
	}
	if h := m.ResponseHeaders; h != nil {
		r.ResponseHeadersToAdd, r.ResponseHeadersToRemove = add(h.Set), slices.Clone(h.Remove)
	}
}

// faultFilter is a FaultInjection as the HTTP fault filter (gRFC A33:
// grpc-go delays or fails that share of calls, an HTTP status becoming the
// gRPC status gRPC maps it to); nil for none.
func faultFilter(f *api.FaultInjection) *hcm.HttpFilter {
	if f == nil || (f.Spec.Delay == nil && f.Spec.Abort == nil) {
		return nil
	}
	cfg := &faultv3.HTTPFault{}
	if d := f.Spec.Delay; d != nil {
		cfg.Delay = &commonfault.FaultDelay{
			FaultDelaySecifier: &commonfault.FaultDelay_FixedDelay{FixedDelay: durationpb.New(d.Value.D())},
			Percentage:         percent(d.Percentage),
		}
	}
	if a := f.Spec.Abort; a != nil {
		cfg.Abort = &faultv3.FaultAbort{
			ErrorType:  &faultv3.FaultAbort_HttpStatus{HttpStatus: uint32(a.HTTPStatus)},
			Percentage: percent(a.Percentage),
		}
	}
	return &hcm.HttpFilter{Name: wellknown.Fault, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: MustAny(cfg)}}
}

// percent is a percentage (0–100, with fractions) as parts per million.
func percent(p float64) *typev3.FractionalPercent {
	n := uint32(min(max(p, 0), 100)*10000 + 0.5)
	return &typev3.FractionalPercent{Numerator: n, Denominator: typev3.FractionalPercent_MILLION}
}

// RoutedSubsets are every subset a service's TrafficRoute sends to: its
// split's (Subsets) and its http rules' splits', by cluster name. A zone
// ingress offers each of them to other zones (by its SNI).
func (s *MeshState) RoutedSubsets(svc string) []Subset {
	return memo(s, "routed-subsets|"+svc, func() []Subset {
		out := slices.Clone(s.Subsets(svc))
		if tr := s.routeFor(svc); tr != nil {
			for _, rule := range tr.Spec.HTTP {
				out = append(out, splitSubsets(svc, rule.Split)...)
			}
		}
		sort.SliceStable(out, func(i, j int) bool { return out[i].ClusterName() < out[j].ClusterName() })
		return slices.Clip(slices.CompactFunc(out, func(a, b Subset) bool { return a.ClusterName() == b.ClusterName() }))
	})
}
