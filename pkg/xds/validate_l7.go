package xds

import (
	"fmt"
	"regexp"

	accesslog "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	trace "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	fluentd "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/fluentd/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// checkHCM checks an HTTP connection manager of a listener (from names
// it): that it ends with the router, and what it refers to — its RDS route
// configuration, or its inline one's clusters, its log collector's and
// tracer's clusters.
//
// ValidateAll does not look into an Any: the manager is checked here, with
// its HTTP filters', loggers' and tracer's configurations.
func checkHCM(m *hcm.HttpConnectionManager, from string, fail func(error), need func(typ resource.Type, name, from string)) {
	if err := m.ValidateAll(); err != nil {
		fail(fmt.Errorf("%s: http_connection_manager: %w", from, err))
	}
	for _, f := range m.GetHttpFilters() {
		validateAny(f.GetTypedConfig(), fmt.Sprintf("%s: HTTP filter %s", from, f.GetName()), fail)
	}
	for _, l := range m.GetAccessLog() {
		validateAny(l.GetTypedConfig(), fmt.Sprintf("%s: access log %s", from, l.GetName()), fail)
	}
	if p := m.GetTracing().GetProvider(); p != nil {
		validateAny(p.GetTypedConfig(), fmt.Sprintf("%s: tracer %s", from, p.GetName()), fail)
	}
	filters := m.GetHttpFilters()
	if len(filters) == 0 || filters[len(filters)-1].GetName() != RouterFilter {
		fail(fmt.Errorf("%s: the HTTP filters must end with %s", from, RouterFilter))
	}
	if rds := m.GetRds(); rds != nil {
		need(resource.RouteType, rds.GetRouteConfigName(), from)
	}
	if rc := m.GetRouteConfig(); rc != nil {
		checkRouteConfig(rc, fmt.Sprintf("%s: route configuration %q", from, rc.GetName()), fail, need)
	}
	checkAccessLogs(m.GetAccessLog(), from, fail, need)
	if p := m.GetTracing().GetProvider(); p != nil {
		switch {
		case p.GetTypedConfig().MessageIs(&trace.OpenTelemetryConfig{}):
			c := &trace.OpenTelemetryConfig{}
			if err := p.GetTypedConfig().UnmarshalTo(c); err != nil {
				fail(fmt.Errorf("%s: tracing: %w", from, err))
				return
			}
			need(resource.ClusterType, c.GetGrpcService().GetEnvoyGrpc().GetClusterName(), from)
		case p.GetTypedConfig().MessageIs(&trace.ZipkinConfig{}):
			c := &trace.ZipkinConfig{}
			if err := p.GetTypedConfig().UnmarshalTo(c); err != nil {
				fail(fmt.Errorf("%s: tracing: %w", from, err))
				return
			}
			need(resource.ClusterType, c.GetCollectorCluster(), from)
		default:
			fail(fmt.Errorf("%s: tracer %q is not one the CP emits", from, p.GetName()))
		}
	}
}

// validateAny runs ValidateAll on what an Any holds.
func validateAny(a *anypb.Any, from string, fail func(error)) {
	if a == nil {
		return
	}
	m, err := a.UnmarshalNew()
	if err != nil {
		fail(fmt.Errorf("%s: %w", from, err))
		return
	}
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			fail(fmt.Errorf("%s: %w", from, err))
		}
	}
}

// checkTCPProxyLogs checks a tcp_proxy's access logs.
func checkTCPProxyLogs(tp *tcp.TcpProxy, from string, fail func(error), need func(typ resource.Type, name, from string)) {
	if err := tp.ValidateAll(); err != nil {
		fail(fmt.Errorf("%s: tcp_proxy: %w", from, err))
	}
	for _, l := range tp.GetAccessLog() {
		validateAny(l.GetTypedConfig(), fmt.Sprintf("%s: access log %s", from, l.GetName()), fail)
	}
	checkAccessLogs(tp.GetAccessLog(), from, fail, need)
}

// checkAccessLogs needs the cluster of a fluentd logger.
func checkAccessLogs(logs []*accesslog.AccessLog, from string, fail func(error), need func(typ resource.Type, name, from string)) {
	for _, l := range logs {
		if tc := l.GetTypedConfig(); tc.MessageIs(&fluentd.FluentdAccessLogConfig{}) {
			c := &fluentd.FluentdAccessLogConfig{}
			if err := tc.UnmarshalTo(c); err != nil {
				fail(fmt.Errorf("%s: access log: %w", from, err))
				continue
			}
			need(resource.ClusterType, c.GetCluster(), from)
		}
	}
}

// checkRouteConfig checks what ValidateAll does not see in a route
// configuration: the clusters its routes go to (each weighted entry
// named), and that its regexes compile (RE2, as Envoy's safe_regex).
func checkRouteConfig(rc *route.RouteConfiguration, from string, fail func(error), need func(typ resource.Type, name, from string)) {
	for _, vh := range rc.GetVirtualHosts() {
		for _, rt := range vh.GetRoutes() {
			if name := rt.GetRoute().GetCluster(); name != "" {
				need(resource.ClusterType, name, from)
			}
			for _, wc := range rt.GetRoute().GetWeightedClusters().GetClusters() {
				if wc.GetName() == "" {
					fail(fmt.Errorf("%s: a weighted cluster without a name", from))
					continue
				}
				need(resource.ClusterType, wc.GetName(), from)
			}
		}
	}
	checkRegexes(rc, from, fail)
}

// checkRegexes compiles every RegexMatcher in m.
func checkRegexes(m proto.Message, from string, fail func(error)) {
	walkMessages(m.ProtoReflect(), func(msg protoreflect.Message) {
		rm, ok := msg.Interface().(*matcher.RegexMatcher)
		if !ok {
			return
		}
		if _, err := regexp.Compile(rm.GetRegex()); err != nil {
			fail(fmt.Errorf("%s: regex %q does not compile: %w", from, rm.GetRegex(), err))
		}
	})
}

// walkMessages calls visit on m and every message it holds, Anys
// excepted (their contents are checked where they are unpacked).
func walkMessages(m protoreflect.Message, visit func(protoreflect.Message)) {
	visit(m)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
			return true
		}
		switch {
		case fd.IsList():
			l := v.List()
			for i := range l.Len() {
				walkMessages(l.Get(i).Message(), visit)
			}
		case fd.IsMap():
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					walkMessages(mv.Message(), visit)
					return true
				})
			}
		default:
			walkMessages(v.Message(), visit)
		}
		return true
	})
}
