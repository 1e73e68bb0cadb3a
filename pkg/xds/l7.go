// The L7 side of a sidecar (l7contract §2): HTTP connection managers on
// the outbound and inbound of HTTP-family services, their filters, access
// logs and tracing, and the collectors' clusters.

package xds

import (
	"math"
	"net"
	"net/netip"
	"strconv"
	"time"

	accesslog "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	trace "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	filelog "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	fluentd "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/fluentd/v3"
	streamlog "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	faultcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	fault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	httprbac "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ursamesh/ursa/pkg/api"
)

// Names of the L7 extensions the CP emits.
const (
	FaultFilter       = "envoy.filters.http.fault"
	HTTPRBACFilter    = "envoy.filters.http.rbac"
	RouterFilter      = "envoy.filters.http.router"
	FileAccessLog     = "envoy.access_loggers.file"
	StdoutAccessLog   = "envoy.access_loggers.stdout"
	FluentdAccessLog  = "envoy.access_loggers.fluentd"
	OpenTelemetry     = "envoy.tracers.opentelemetry"
	Zipkin            = "envoy.tracers.zipkin"
	ZipkinSpansPath   = "/api/v2/spans"
	FluentdTag        = "ursa"
	InboundRouteName  = "inbound"
	httpProtocolsName = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// DefaultAccessLogFormat is Envoy's default access log format, which a
// TrafficLog that sets none gets (without the final newline).
const DefaultAccessLogFormat = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" ` +
	`%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% ` +
	`"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"`

// AccessLogCluster names the static cluster of a TCP log collector.
func AccessLogCluster(address string) string { return "access-log:" + address }

// TracingCluster names the static cluster of a tracing collector.
func TracingCluster(address string) string { return "tracing:" + address }

// serverHeader is what a sidecar's HTTP connection managers do to a
// response's Server header: leave the application's (Envoy's default
// would write "envoy" over it, hiding what answered).
const serverHeader = hcm.HttpConnectionManager_PASS_THROUGH

// upgrades is what a sidecar's HTTP connection managers let a request
// upgrade to: WebSocket, as Kuma's and Istio's sidecars do. Envoy answers
// 403 to an upgrade its HCM does not list.
func upgrades() []*hcm.HttpConnectionManager_UpgradeConfig {
	return []*hcm.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}}
}

// http1Options is how a sidecar's HTTP connection managers take HTTP/1:
// HTTP/1.0 requests too. Envoy answers them 426 unless told otherwise,
// which breaks callers that still speak it (nginx's proxy_pass does by
// default, ApacheBench always); a mesh should not be where they stop
// working. One without a Host still gets 400, as from Envoy.
func http1Options() *core.Http1ProtocolOptions {
	return &core.Http1ProtocolOptions{AcceptHttp_10: true}
}

// outboundFilters are the network filters of an outbound listener or of
// ursa:outbound's chain (statPrefix its name) to a service: a tcp_proxy
// to its default split for a TCP service, an HTTP connection manager
// fetching OutboundRouteName over RDS for an HTTP-family one. self is the
// calling proxy's service, which its spans name.
func outboundFilters(statPrefix, service, protocol string, subsets []Subset, pp pairPolicies, self string) []*listener.Filter {
	if !api.IsHTTP(protocol) {
		return []*listener.Filter{tcpProxyWithLog(statPrefix, subsets, pp.log, pp.tcpIdleTimeout())}
	}
	m := &hcm.HttpConnectionManager{
		StatPrefix: statPrefix,
		CodecType:  hcm.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{ConfigSource: ads(),
			RouteConfigName: OutboundRouteName(service)}},
		AccessLog:                  accessLogs(pp.log, statPrefix),
		Tracing:                    tracing(pp.trace, self),
		ServerHeaderTransformation: serverHeader,
		StreamIdleTimeout:          durationpb.New(0), // idle limits are the Timeout policy's (route idle_timeout)
		UpgradeConfigs:             upgrades(),
		HttpProtocolOptions:        http1Options(),
	}
	if f := faultFilter(pp.fault); f != nil {
		m.HttpFilters = append(m.HttpFilters, f)
	}
	m.HttpFilters = append(m.HttpFilters, routerFilter())
	return []*listener.Filter{hcmFilter(m)}
}

// tcpProxyWithLog is TCPProxy, logging each connection when log is set,
// and closing connections idle for idle when it is not 0 (0 leaves the
// proxy's default: Envoy's, and the built-in proxy's, an hour).
func tcpProxyWithLog(statPrefix string, subsets []Subset, log *api.TrafficLog, idle time.Duration) *listener.Filter {
	f := TCPProxy(statPrefix, subsets)
	if log == nil && idle == 0 {
		return f
	}
	tp := &tcp.TcpProxy{}
	_ = f.GetTypedConfig().UnmarshalTo(tp) // ours, just packed
	tp.AccessLog = accessLogs(log, statPrefix)
	if idle > 0 {
		tp.IdleTimeout = durationpb.New(idle)
	}
	return &listener.Filter{Name: wellknown.TCPProxy, ConfigType: &listener.Filter_TypedConfig{TypedConfig: MustAny(tp)}}
}

// inboundHTTPFilter is the HTTP connection manager of an inbound of an
// HTTP-family service: one inline route to the application at local,
// without a timeout (the caller's sidecar bounds the request), behind the
// HTTP RBAC filter when the mesh has mTLS.
func inboundHTTPFilter(s *MeshState, in api.Inbound, statPrefix, local string, mtls bool, pp pairPolicies) *listener.Filter {
	service := in.Tags[api.TagService]
	m := &hcm.HttpConnectionManager{
		StatPrefix: statPrefix,
		CodecType:  hcm.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{
			Name: "inbound:" + service,
			VirtualHosts: []*route.VirtualHost{{Name: service, Domains: []string{"*"}, Routes: []*route.Route{{
				Name:  InboundRouteName,
				Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
				Action: &route.Route_Route{Route: &route.RouteAction{
					ClusterSpecifier: &route.RouteAction_Cluster{Cluster: local},
					Timeout:          durationpb.New(0),
				}},
			}}}},
		}},
		AccessLog:                  accessLogs(pp.log, statPrefix),
		Tracing:                    tracing(pp.trace, service),
		ServerHeaderTransformation: serverHeader,
		StreamIdleTimeout:          durationpb.New(0), // idle limits are the Timeout policy's (route idle_timeout)
		UpgradeConfigs:             upgrades(),
		HttpProtocolOptions:        http1Options(),
	}
	if mtls {
		m.HttpFilters = append(m.HttpFilters, &hcm.HttpFilter{Name: HTTPRBACFilter,
			ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: MustAny(&httprbac.RBAC{Rules: rbacRules(s, in.Tags)})}})
	}
	m.HttpFilters = append(m.HttpFilters, routerFilter())
	return hcmFilter(m)
}

func hcmFilter(m *hcm.HttpConnectionManager) *listener.Filter {
	return &listener.Filter{Name: wellknown.HTTPConnectionManager, ConfigType: &listener.Filter_TypedConfig{TypedConfig: MustAny(m)}}
}

// routerFilter is the router, last of every HCM's filters: one message,
// shared (never modified), packed once.
func routerFilter() *hcm.HttpFilter { return theRouter }

var theRouter = &hcm.HttpFilter{Name: RouterFilter, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: MustAny(&router.Router{})}}

// faultFilter delays and aborts what a FaultInjection says; nil without
// one.
func faultFilter(fi *api.FaultInjection) *hcm.HttpFilter {
	if fi == nil {
		return nil
	}
	f := &fault.HTTPFault{}
	if d := fi.Spec.Delay; d != nil {
		f.Delay = &faultcommon.FaultDelay{
			FaultDelaySecifier: &faultcommon.FaultDelay_FixedDelay{FixedDelay: durationpb.New(d.Value.D())},
			Percentage:         fraction(d.Percentage),
		}
	}
	if a := fi.Spec.Abort; a != nil {
		f.Abort = &fault.FaultAbort{
			ErrorType:  &fault.FaultAbort_HttpStatus{HttpStatus: uint32(a.HTTPStatus)},
			Percentage: fraction(a.Percentage),
		}
	}
	return &hcm.HttpFilter{Name: FaultFilter, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: MustAny(f)}}
}

// fraction is a percentage (0-100, with decimals) in millionths.
func fraction(percent float64) *typev3.FractionalPercent {
	return &typev3.FractionalPercent{Numerator: uint32(math.Round(percent * 10000)), Denominator: typev3.FractionalPercent_MILLION}
}

// accessLogs are a TrafficLog's loggers; nil without one.
func accessLogs(l *api.TrafficLog, statPrefix string) []*accesslog.AccessLog {
	if l == nil {
		return nil
	}
	format := l.Spec.Format
	if format == "" {
		format = DefaultAccessLogFormat
	}
	text := &core.SubstitutionFormatString{Format: &core.SubstitutionFormatString_TextFormatSource{
		TextFormatSource: &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: format + "\n"}}}}
	var name string
	var cfg *accesslog.AccessLog_TypedConfig
	switch b := l.Spec.Backend; {
	case b.File != nil:
		name = FileAccessLog
		cfg = &accesslog.AccessLog_TypedConfig{TypedConfig: MustAny(&filelog.FileAccessLog{Path: b.File.Path,
			AccessLogFormat: &filelog.FileAccessLog_LogFormat{LogFormat: text}})}
	case b.TCP != nil:
		name = FluentdAccessLog
		cfg = &accesslog.AccessLog_TypedConfig{TypedConfig: MustAny(&fluentd.FluentdAccessLogConfig{
			Cluster:    AccessLogCluster(b.TCP.Address),
			Tag:        FluentdTag,
			StatPrefix: statPrefix,
			Record:     &structpb.Struct{Fields: map[string]*structpb.Value{"message": structpb.NewStringValue(format)}},
		})}
	default: // stdout (validation allows nothing else)
		name = StdoutAccessLog
		cfg = &accesslog.AccessLog_TypedConfig{TypedConfig: MustAny(&streamlog.StdoutAccessLog{
			AccessLogFormat: &streamlog.StdoutAccessLog_LogFormat{LogFormat: text}})}
	}
	return []*accesslog.AccessLog{{Name: name, ConfigType: cfg}}
}

// tracing is a TrafficTrace's tracer, spans naming service; nil without
// one.
func tracing(t *api.TrafficTrace, service string) *hcm.HttpConnectionManager_Tracing {
	if t == nil {
		return nil
	}
	sampling := 100.0
	if t.Spec.Sampling != nil {
		sampling = *t.Spec.Sampling
	}
	out := &hcm.HttpConnectionManager_Tracing{RandomSampling: &typev3.Percent{Value: sampling}}
	if c := t.Spec.Backend.OpenTelemetry; c != nil {
		out.Provider = &trace.Tracing_Http{Name: OpenTelemetry, ConfigType: &trace.Tracing_Http_TypedConfig{TypedConfig: MustAny(&trace.OpenTelemetryConfig{
			GrpcService: &core.GrpcService{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{
				ClusterName: TracingCluster(c.Address)}}},
			ServiceName: service,
		})}}
	} else if c := t.Spec.Backend.Zipkin; c != nil {
		out.Provider = &trace.Tracing_Http{Name: Zipkin, ConfigType: &trace.Tracing_Http_TypedConfig{TypedConfig: MustAny(&trace.ZipkinConfig{
			CollectorCluster:         TracingCluster(c.Address),
			CollectorEndpoint:        ZipkinSpansPath,
			CollectorEndpointVersion: trace.ZipkinConfig_HTTP_JSON,
			TraceId_128Bit:           true,
			// B3 first, W3C where a caller sent no B3; both go on: an
			// application instrumented either way stays in its trace.
			TraceContextOption: trace.ZipkinConfig_USE_B3_WITH_W3C_PROPAGATION,
		})}}
	}
	return out
}

// collectorClusters are the clusters the policies' collectors are reached
// through: a TCP log collector's, a tracing collector's (HTTP/2 for OTLP
// gRPC), by name. Zipkin's takes HTTP/1.1, the default.
func collectorClusters(pp pairPolicies, into map[string]*cluster.Cluster) {
	if l := pp.log; l != nil && l.Spec.Backend.TCP != nil {
		name := AccessLogCluster(l.Spec.Backend.TCP.Address)
		if into[name] == nil {
			into[name] = collectorCluster(name, l.Spec.Backend.TCP.Address, "")
		}
	}
	if t := pp.trace; t != nil {
		if c := t.Spec.Backend.OpenTelemetry; c != nil && into[TracingCluster(c.Address)] == nil {
			into[TracingCluster(c.Address)] = collectorCluster(TracingCluster(c.Address), c.Address, api.ProtocolHTTP2)
		} else if c := t.Spec.Backend.Zipkin; c != nil && into[TracingCluster(c.Address)] == nil {
			into[TracingCluster(c.Address)] = collectorCluster(TracingCluster(c.Address), c.Address, "")
		}
	}
}

// collectorCluster reaches a collector at address (host:port, checked by
// the API): a STATIC cluster at an IP, STRICT_DNS at a name (a STATIC
// cluster must have an IP). protocol, when set, gives it HTTP protocol
// options.
func collectorCluster(name, address, protocol string) *cluster.Cluster {
	host, portText, _ := net.SplitHostPort(address)
	port, _ := strconv.ParseUint(portText, 10, 16)
	c := StaticCluster(name, host, uint32(port))
	if _, err := netip.ParseAddr(host); err != nil {
		c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_STRICT_DNS}
	}
	if protocol != "" {
		setHTTPProtocol(c, protocol, nil)
	}
	return c
}
