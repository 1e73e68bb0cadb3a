package xds

import (
	"errors"
	"fmt"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
)

// validator is implemented by every Envoy message.
type validator interface{ ValidateAll() error }

// Validate checks a proxy's resources before they are published: every one
// passes ValidateAll, and beyond what ValidateAll sees, every resource is
// named, names are unique per type, and every reference resolves — a
// listener's route configuration, a route's clusters, an EDS cluster's
// load assignment. Snapshot.Consistent() cannot be used: it ignores
// api_listeners. (*Server).SetResources does the same check, remembering
// what it found about each resource.
func Validate(r Resources) error {
	var errs []error
	names := map[resource.Type]map[string]bool{}
	var refs []reference
	for typ, list := range r {
		names[typ] = make(map[string]bool, len(list))
		for _, res := range list {
			c := checkResource(typ, res)
			errs = append(errs, c.errs...)
			refs = append(refs, c.refs...)
			name := cache.GetResourceName(res)
			if names[typ][name] {
				errs = append(errs, fmt.Errorf("%s %q twice", shortType(typ), name))
			}
			names[typ][name] = true
		}
	}
	for _, ref := range refs {
		if !names[ref.typ][ref.name] {
			errs = append(errs, fmt.Errorf("%s refers to %s %q, which is not there", ref.from, shortType(ref.typ), ref.name))
		}
	}
	return errors.Join(errs...)
}

// resourceCheck is what validation learns from one resource alone: what is
// wrong with it, and what it refers to.
type resourceCheck struct {
	errs []error
	refs []reference
}

// reference is a resource that another (from) needs.
type reference struct {
	typ  resource.Type
	name string
	from string
}

// checkResource checks one resource by itself: ValidateAll, a name, and
// the shape of its listeners; it lists the resources it refers to.
func checkResource(typ resource.Type, res types.Resource) resourceCheck {
	var c resourceCheck
	fail := func(err error) { c.errs = append(c.errs, err) }
	need := func(typ resource.Type, name, from string) {
		c.refs = append(c.refs, reference{typ: typ, name: name, from: from})
	}
	if v, ok := res.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			fail(fmt.Errorf("%s %q: %w", shortType(typ), cache.GetResourceName(res), err))
		}
	}
	if cache.GetResourceName(res) == "" {
		fail(fmt.Errorf("%s without a name", shortType(typ)))
	}
	switch res := res.(type) {
	case *listener.Listener:
		checkListener(res, fail, need)
	case *route.RouteConfiguration:
		checkRouteConfig(res, fmt.Sprintf("route configuration %q", res.Name), fail, need)
	case *cluster.Cluster:
		if res.GetType() == cluster.Cluster_EDS {
			name := res.GetEdsClusterConfig().GetServiceName()
			if name == "" {
				name = res.Name
			}
			need(resource.EndpointType, name, fmt.Sprintf("cluster %q", res.Name))
		}
	}
	return c
}

func checkListener(l *listener.Listener, fail func(error), need func(typ resource.Type, name, from string)) {
	from := fmt.Sprintf("listener %q", l.Name)
	if l.GetApiListener() == nil && l.GetAddress() == nil {
		fail(fmt.Errorf("listener %q has neither an address nor an api_listener", l.Name))
	}
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			if m := (&hcm.HttpConnectionManager{}); f.GetTypedConfig() != nil && f.GetTypedConfig().MessageIs(m) {
				if err := f.GetTypedConfig().UnmarshalTo(m); err != nil {
					fail(fmt.Errorf("listener %q: http_connection_manager: %w", l.Name, err))
					continue
				}
				checkHCM(m, from, fail, need)
				continue
			}
			tp := &tcp.TcpProxy{}
			if f.GetTypedConfig() == nil || !f.GetTypedConfig().MessageIs(tp) {
				continue
			}
			if err := f.GetTypedConfig().UnmarshalTo(tp); err != nil {
				fail(fmt.Errorf("listener %q: tcp_proxy: %w", l.Name, err))
				continue
			}
			if name := tp.GetCluster(); name != "" {
				need(resource.ClusterType, name, from)
			}
			checkTCPProxyLogs(tp, from, fail, need)
			for _, wc := range tp.GetWeightedClusters().GetClusters() {
				if wc.GetName() == "" {
					fail(fmt.Errorf("%s: a weighted cluster without a name", from))
					continue
				}
				need(resource.ClusterType, wc.GetName(), from)
			}
		}
	}
	checkChainMatches(l, fail)
	if al := l.GetApiListener().GetApiListener(); al != nil {
		m := &hcm.HttpConnectionManager{}
		if err := al.UnmarshalTo(m); err != nil {
			fail(fmt.Errorf("listener %q: api_listener: %w", l.Name, err))
			return
		}
		if len(m.GetHttpFilters()) == 0 {
			fail(fmt.Errorf("listener %q: no HTTP filters (grpc-go needs the router)", l.Name))
		}
		if rds := m.GetRds(); rds != nil {
			need(resource.RouteType, rds.GetRouteConfigName(), from)
		}
	}
}

// checkChainMatches fails a listener two of whose filter chains match some
// connection alike, which Envoy refuses ("multiple filter chains with the
// same matching rules"): the same destination port and prefix range (or
// neither), server name and the rest of the match.
func checkChainMatches(l *listener.Listener, fail func(error)) {
	chains := l.GetFilterChains()
	if len(chains) < 2 {
		return
	}
	seen := map[string]int{}
	for i, fc := range chains {
		m := fc.GetFilterChainMatch()
		rest := &listener.FilterChainMatch{}
		if m != nil {
			rest = proto.Clone(m).(*listener.FilterChainMatch)
		}
		rest.PrefixRanges, rest.ServerNames = nil, nil
		b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(rest)
		prefixes := []string{"*"}
		if len(m.GetPrefixRanges()) > 0 {
			prefixes = prefixes[:0]
			for _, r := range m.GetPrefixRanges() {
				prefixes = append(prefixes, fmt.Sprintf("%s/%d", r.GetAddressPrefix(), r.GetPrefixLen().GetValue()))
			}
		}
		names := m.GetServerNames()
		if len(names) == 0 {
			names = []string{"*"}
		}
		for _, p := range prefixes {
			for _, n := range names {
				key := fmt.Sprintf("%x|%s|%s", b, p, n)
				if j, dup := seen[key]; dup && j != i {
					fail(fmt.Errorf("listener %q: filter chains %d and %d both match destination %s (port %d, server name %s)", l.Name, j, i, p, m.GetDestinationPort().GetValue(), n))
					return
				}
				seen[key] = i
			}
		}
	}
}

func shortType(t resource.Type) string {
	switch t {
	case resource.ListenerType:
		return "listener"
	case resource.RouteType:
		return "route configuration"
	case resource.ClusterType:
		return "cluster"
	case resource.EndpointType:
		return "load assignment"
	case resource.SecretType:
		return "secret"
	}
	return t
}
