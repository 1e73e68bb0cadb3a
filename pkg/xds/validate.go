package xds

import (
	"errors"
	"fmt"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// validator is implemented by every Envoy message.
type validator interface{ ValidateAll() error }

// Validate checks a proxy's resources before they are published: every one
// passes ValidateAll, and beyond what ValidateAll sees, every resource is
// named, names are unique per type, and every reference resolves — a
// listener's route configuration, a route's clusters, an EDS cluster's
// load assignment. Snapshot.Consistent() cannot be used: it ignores
// api_listeners.
func Validate(r Resources) error {
	var errs []error
	names := map[resource.Type]map[string]bool{}
	for typ, list := range r {
		names[typ] = map[string]bool{}
		for _, res := range list {
			if v, ok := res.(validator); ok {
				if err := v.ValidateAll(); err != nil {
					errs = append(errs, fmt.Errorf("%s %q: %w", shortType(typ), cache.GetResourceName(res), err))
				}
			}
			name := cache.GetResourceName(res)
			if name == "" {
				errs = append(errs, fmt.Errorf("%s without a name", shortType(typ)))
			}
			if names[typ][name] {
				errs = append(errs, fmt.Errorf("%s %q twice", shortType(typ), name))
			}
			names[typ][name] = true
		}
	}
	need := func(typ resource.Type, name, from string) {
		if !names[typ][name] {
			errs = append(errs, fmt.Errorf("%s refers to %s %q, which is not there", from, shortType(typ), name))
		}
	}
	for _, res := range r[resource.ListenerType] {
		l := res.(*listener.Listener)
		if l.GetApiListener() == nil && l.GetAddress() == nil {
			errs = append(errs, fmt.Errorf("listener %q has neither an address nor an api_listener", l.Name))
		}
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				tp := &tcp.TcpProxy{}
				if f.GetTypedConfig() == nil || !f.GetTypedConfig().MessageIs(tp) {
					continue
				}
				if err := f.GetTypedConfig().UnmarshalTo(tp); err != nil {
					errs = append(errs, fmt.Errorf("listener %q: tcp_proxy: %w", l.Name, err))
					continue
				}
				from := fmt.Sprintf("listener %q", l.Name)
				if c := tp.GetCluster(); c != "" {
					need(resource.ClusterType, c, from)
				}
				for _, wc := range tp.GetWeightedClusters().GetClusters() {
					if wc.GetName() == "" {
						errs = append(errs, fmt.Errorf("%s: a weighted cluster without a name", from))
						continue
					}
					need(resource.ClusterType, wc.GetName(), from)
				}
			}
		}
		if al := l.GetApiListener().GetApiListener(); al != nil {
			m := &hcm.HttpConnectionManager{}
			if err := al.UnmarshalTo(m); err != nil {
				errs = append(errs, fmt.Errorf("listener %q: api_listener: %w", l.Name, err))
				continue
			}
			if len(m.GetHttpFilters()) == 0 {
				errs = append(errs, fmt.Errorf("listener %q: no HTTP filters (grpc-go needs the router)", l.Name))
			}
			if rds := m.GetRds(); rds != nil {
				need(resource.RouteType, rds.GetRouteConfigName(), fmt.Sprintf("listener %q", l.Name))
			}
		}
	}
	for _, res := range r[resource.RouteType] {
		rc := res.(*route.RouteConfiguration)
		for _, vh := range rc.GetVirtualHosts() {
			for _, rt := range vh.GetRoutes() {
				from := fmt.Sprintf("route configuration %q", rc.Name)
				if c := rt.GetRoute().GetCluster(); c != "" {
					need(resource.ClusterType, c, from)
				}
				for _, wc := range rt.GetRoute().GetWeightedClusters().GetClusters() {
					if wc.GetName() == "" {
						errs = append(errs, fmt.Errorf("%s: a weighted cluster without a name", from))
						continue
					}
					need(resource.ClusterType, wc.GetName(), from)
				}
			}
		}
	}
	for _, res := range r[resource.ClusterType] {
		c := res.(*cluster.Cluster)
		if c.GetType() == cluster.Cluster_EDS {
			name := c.GetEdsClusterConfig().GetServiceName()
			if name == "" {
				name = c.Name
			}
			need(resource.EndpointType, name, fmt.Sprintf("cluster %q", c.Name))
		}
	}
	return errors.Join(errs...)
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
