package xds

import (
	"encoding/binary"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
)

// Protocol is how a service of the mesh speaks (catalog.Service.Protocol):
// tcp for a service the mesh does not know.
func (s *MeshState) Protocol(service string) string {
	if svc := s.Service(service); svc != nil && svc.Protocol != "" {
		return svc.Protocol
	}
	return api.ProtocolTCP
}

// policyFor returns the policy of a type (one of api.L7PolicyTypes) that
// applies to calls from the proxy of source to destService, nil (T's zero
// value) when none does. Of the policies whose sources match one of the
// proxy's inbound tag sets and whose destinations match the service, the
// most specific wins: the most tags in the matching source and destination
// selectors together, then the fewest "*" among them, then the lowest name.
// l7contract §1; proxyless clients use it as sidecars do.
func policyFor[T api.Policy](s *MeshState, typ string, source *api.Dataplane, destService string) T {
	var zero T
	p := bestPolicy(s.Policies[typ], sourceTags(s, source), map[string]string{api.TagService: destService})
	if p == nil {
		return zero
	}
	t, ok := p.(T)
	if !ok {
		return zero
	}
	return t
}

// sourceTags are the tag sets a proxy's sources are matched against: each
// inbound's tags, with ursa.io/zone set to this zone when the inbound does
// not say.
func sourceTags(s *MeshState, dp *api.Dataplane) []map[string]string {
	if dp == nil {
		return nil
	}
	out := make([]map[string]string, 0, len(dp.Networking.Inbound))
	for _, in := range dp.Networking.Inbound {
		tags := in.Tags
		if _, ok := tags[api.TagZone]; !ok {
			tags = make(map[string]string, len(in.Tags)+1)
			for k, v := range in.Tags {
				tags[k] = v
			}
			tags[api.TagZone] = s.Zone
		}
		out = append(out, tags)
	}
	return out
}

// score is how specific the selectors that matched a pair are.
type score struct {
	tags, stars int
}

func (a score) better(b score) bool {
	if a.tags != b.tags {
		return a.tags > b.tags
	}
	return a.stars < b.stars
}

// bestMatch returns the score of the most specific of selectors that
// matches one of tagSets. A proxy without inbounds (no tag sets) is
// matched only by a selector whose every value is "*" and names nothing
// but ursa.io/service (a selector of any caller).
func bestMatch(selectors []api.Selector, tagSets []map[string]string) (score, bool) {
	var best score
	found := false
	for _, sel := range selectors {
		ok := false
		if len(tagSets) == 0 {
			ok = anyCaller(sel.Match)
		}
		for _, tags := range tagSets {
			if catalog.Matches(sel.Match, tags) {
				ok = true
				break
			}
		}
		if !ok {
			continue
		}
		sc := score{tags: len(sel.Match), stars: len(sel.Match) - specificity(sel.Match)}
		if !found || sc.better(best) {
			best, found = sc, true
		}
	}
	return best, found
}

// anyCaller reports whether a selector selects every proxy of the mesh.
func anyCaller(match map[string]string) bool {
	for k, v := range match {
		if k != api.TagService || v != "*" {
			return false
		}
	}
	return true
}

// bestPolicy returns the most specific of policies (sorted by name) whose
// sources match one of sources and whose destinations match dest; nil
// when none does. nil sources (an inbound, whose callers are not known
// when its configuration is made) skip the sources: only the destinations
// decide.
func bestPolicy(policies []api.Policy, sources []map[string]string, dest map[string]string) api.Policy {
	var best api.Policy
	var bestScore score
	for _, p := range policies {
		srcSel, dstSel := p.Selectors()
		d, ok := bestMatch(dstSel, []map[string]string{dest})
		if !ok {
			continue
		}
		sc := d
		if sources != nil {
			src, ok := bestMatch(srcSel, sources)
			if !ok {
				continue
			}
			sc = score{tags: d.tags + src.tags, stars: d.stars + src.stars}
		}
		// Sorted by name: on a tie the first (the lowest name) stays.
		if best == nil || sc.better(bestScore) {
			best, bestScore = p, sc
		}
	}
	return best
}

// pairPolicies are the policies that apply to one (proxy, destination
// service) pair, nil where none does.
type pairPolicies struct {
	timeout *api.Timeout
	retry   *api.Retry
	breaker *api.CircuitBreaker
	health  *api.HealthCheck
	fault   *api.FaultInjection
	log     *api.TrafficLog
	trace   *api.TrafficTrace
}

// pairPoliciesFor finds the policies of every type of api.L7PolicyTypes
// for calls from a proxy with the given source tag sets to service;
// sources nil for an inbound of service.
func (s *MeshState) pairPoliciesFor(sources []map[string]string, service string) pairPolicies {
	dest := map[string]string{api.TagService: service}
	pick := func(typ string) api.Policy {
		if len(s.Policies[typ]) == 0 {
			return nil
		}
		return bestPolicy(s.Policies[typ], sources, dest)
	}
	var pp pairPolicies
	pp.timeout, _ = pick("Timeout").(*api.Timeout)
	pp.retry, _ = pick("Retry").(*api.Retry)
	pp.breaker, _ = pick("CircuitBreaker").(*api.CircuitBreaker)
	pp.health, _ = pick("HealthCheck").(*api.HealthCheck)
	pp.fault, _ = pick("FaultInjection").(*api.FaultInjection)
	pp.log, _ = pick("TrafficLog").(*api.TrafficLog)
	pp.trace, _ = pick("TrafficTrace").(*api.TrafficTrace)
	return pp
}

// outboundPolicies are pairPoliciesFor a destination service speaking
// protocol: a TCP service takes no FaultInjection or TrafficTrace (they
// are HTTP's), so that they do not tell its resources apart.
func (s *MeshState) outboundPolicies(sources []map[string]string, service, protocol string) pairPolicies {
	pp := s.pairPoliciesFor(sources, service)
	if !api.IsHTTP(protocol) {
		pp.trace, pp.fault = nil, nil
	}
	return pp
}

// inboundPolicies are the TrafficLog and TrafficTrace that select an
// inbound's tags as their destination, whoever the callers.
func (s *MeshState) inboundPolicies(tags map[string]string) pairPolicies {
	dest := tags
	if _, ok := tags[api.TagZone]; !ok {
		dest = make(map[string]string, len(tags)+1)
		for k, v := range tags {
			dest[k] = v
		}
		dest[api.TagZone] = s.Zone
	}
	var pp pairPolicies
	if p := bestPolicy(s.Policies["TrafficLog"], nil, dest); p != nil {
		pp.log, _ = p.(*api.TrafficLog)
	}
	if p := bestPolicy(s.Policies["TrafficTrace"], nil, dest); p != nil {
		pp.trace, _ = p.(*api.TrafficTrace)
	}
	return pp
}

// names of the policies, for memo keys: what the policies' contents are is
// in the PolicyHash, which the memo tables follow.
func policyName[T api.Policy](p T, isNil bool) string {
	if isNil {
		return "-"
	}
	return p.GetMeta().Name
}

// routeKey names what a route configuration depends on besides its
// service and protocol.
func (pp pairPolicies) routeKey() string {
	return policyName(pp.timeout, pp.timeout == nil) + "," + policyName(pp.retry, pp.retry == nil)
}

// clusterKey names what a cluster depends on besides its subset and
// protocol.
func (pp pairPolicies) clusterKey() string {
	return strings.Join([]string{policyName(pp.timeout, pp.timeout == nil), policyName(pp.retry, pp.retry == nil),
		policyName(pp.breaker, pp.breaker == nil), policyName(pp.health, pp.health == nil)}, ",")
}

// listenerKey names what an outbound listener (or filter chain) depends on
// besides its service, protocol and address: a TCP service's tcp_proxy
// carries the Timeout's idle timeout.
func (pp pairPolicies) listenerKey() string {
	return strings.Join([]string{policyName(pp.fault, pp.fault == nil), policyName(pp.log, pp.log == nil),
		policyName(pp.trace, pp.trace == nil), policyName(pp.timeout, pp.timeout == nil)}, ",")
}

// sourcePolicies is what a sidecar's outbound side depends on of its
// dataplane's tags: which policies' sources match them, and how
// specifically (by their places in the mesh's lists, which the PolicyHash
// fixes). Sidecars that agree on it (and on the rest of outboundKey) share
// their outbound resources. It is computed for every sidecar generated,
// so it is kept cheap: no names, no formatting.
func sourcePolicies(s *MeshState, dp *api.Dataplane) string {
	any := false
	for _, typ := range api.L7PolicyTypes() {
		any = any || len(s.Policies[typ]) > 0
	}
	if !any {
		return ""
	}
	// Dataplanes mostly repeat a few tag sets: matched once per set.
	var key []byte
	for _, in := range dp.Networking.Inbound {
		key = appendTags(key, in.Tags)
		key = append(key, '|')
	}
	return memoPolicy(s, "source-policies|"+string(key), func() string { return matchSources(s, sourceTags(s, dp)) })
}

// appendTags appends tags, sorted by name, unambiguously.
func appendTags(b []byte, tags map[string]string) []byte {
	names := make([]string, 0, len(tags))
	for k := range tags {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		b = strconv.AppendQuote(b, k)
		b = strconv.AppendQuote(b, tags[k])
	}
	return b
}

func matchSources(s *MeshState, tags []map[string]string) string {
	var buf []byte
	for t, typ := range api.L7PolicyTypes() {
		for i, p := range s.Policies[typ] {
			src, _ := p.Selectors()
			if sc, ok := bestMatch(src, tags); ok {
				buf = append(buf, byte(t))
				buf = binary.AppendUvarint(buf, uint64(i))
				buf = binary.AppendUvarint(buf, uint64(sc.tags))
				buf = binary.AppendUvarint(buf, uint64(sc.stars))
			}
		}
	}
	return string(buf)
}

// tcpIdleTimeout is the Timeout's TCP idle timeout; 0 when it sets none
// (the proxy's default applies: an hour).
func (pp pairPolicies) tcpIdleTimeout() time.Duration {
	if pp.timeout == nil || pp.timeout.Spec.TCP == nil {
		return 0
	}
	return pp.timeout.Spec.TCP.IdleTimeout.D()
}
