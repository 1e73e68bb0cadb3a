package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	previoushosts "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/xds"
)

// The helpers here build, by hand, the Envoy resources l7contract §2 says
// the CP sends for an HTTP-family service, so that the tests run the
// proxy on the same shapes.

// hcmFilter is a chain's HTTP connection manager network filter.
func hcmFilter(h *hcm.HttpConnectionManager) *listener.Filter {
	return &listener.Filter{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listener.Filter_TypedConfig{TypedConfig: xds.MustAny(h)}}
}

func routerFilter() *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: "envoy.filters.http.router", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: xds.MustAny(&routerv3.Router{})}}
}

func faultHTTPFilter(f *faultv3.HTTPFault) *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: "envoy.filters.http.fault", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: xds.MustAny(f)}}
}

func rbacHTTPFilter(allowed ...string) *hcm.HttpFilter {
	var principals []*rbacconfig.Principal
	for _, a := range allowed {
		principals = append(principals, &rbacconfig.Principal{Identifier: &rbacconfig.Principal_Authenticated_{
			Authenticated: &rbacconfig.Principal_Authenticated{PrincipalName: exactMatcher(a)}}})
	}
	policies := map[string]*rbacconfig.Policy{}
	if len(principals) > 0 { // none allowed: no policy (one without principals is not valid)
		policies["allowed"] = &rbacconfig.Policy{Permissions: []*rbacconfig.Permission{{Rule: &rbacconfig.Permission_Any{Any: true}}}, Principals: principals}
	}
	r := &rbachttp.RBAC{Rules: &rbacconfig.RBAC{Action: rbacconfig.RBAC_ALLOW, Policies: policies}}
	return &hcm.HttpFilter{Name: "envoy.filters.http.rbac", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: xds.MustAny(r)}}
}

// outboundHTTPListener is outbound:<addr> with an HCM taking its routes
// from RDS name.
func outboundHTTPListener(name, rds string, filters ...*hcm.HttpFilter) *listener.Listener {
	h := &hcm.HttpConnectionManager{StatPrefix: name, CodecType: hcm.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{RouteConfigName: rds,
			ConfigSource: &core.ConfigSource{ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}}}},
		HttpFilters: append(filters, routerFilter()), ServerHeaderTransformation: hcm.HttpConnectionManager_PASS_THROUGH,
		StreamIdleTimeout: durationpb.New(0), UpgradeConfigs: websocketUpgrades()}
	return &listener.Listener{Name: name, Address: socket("127.0.0.1", 0), FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{hcmFilter(h)}}}}
}

// websocketUpgrades is the upgrade_configs of the CP's sidecar HCMs.
func websocketUpgrades() []*hcm.HttpConnectionManager_UpgradeConfig {
	return []*hcm.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}}
}

// withHCM is l with its HTTP connection manager changed by change.
func withHCM(t testing.TB, l *listener.Listener, change func(*hcm.HttpConnectionManager)) *listener.Listener {
	t.Helper()
	f := l.FilterChains[0].Filters[0]
	h := &hcm.HttpConnectionManager{}
	if err := f.GetTypedConfig().UnmarshalTo(h); err != nil {
		t.Fatal(err)
	}
	change(h)
	f.ConfigType = &listener.Filter_TypedConfig{TypedConfig: xds.MustAny(h)}
	return l
}

// inboundHTTPListener is inbound:<addr> for service: mTLS, then an HCM
// with the inline route to its local cluster and RBAC admitting allowed.
func inboundHTTPListener(name, service, local string, allowed ...string) *listener.Listener {
	h := &hcm.HttpConnectionManager{StatPrefix: name, CodecType: hcm.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{Name: "inbound:" + service,
			VirtualHosts: []*route.VirtualHost{{Name: service, Domains: []string{"*"}, Routes: []*route.Route{{Name: "inbound",
				Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
				Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: local}, Timeout: durationpb.New(0)}}}}}}}},
		HttpFilters: []*hcm.HttpFilter{rbacHTTPFilter(allowed...), routerFilter()}, ServerHeaderTransformation: hcm.HttpConnectionManager_PASS_THROUGH,
		StreamIdleTimeout: durationpb.New(0), UpgradeConfigs: websocketUpgrades()}
	down := &tlsv3.DownstreamTlsContext{RequireClientCertificate: wrapperspb.Bool(true)}
	return &listener.Listener{Name: name, Address: socket("127.0.0.1", 0), FilterChains: []*listener.FilterChain{{
		TransportSocket: &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: xds.MustAny(down)}},
		Filters:         []*listener.Filter{hcmFilter(h)}}}}
}

func protocolOptions(h2 bool) map[string]*anypb.Any {
	o := &upstreamhttp.HttpProtocolOptions{UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{
			HttpProtocolOptions: &core.Http1ProtocolOptions{}}}}}
	if h2 {
		o.GetExplicitHttpConfig().ProtocolConfig = &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}}
	}
	return map[string]*anypb.Any{httpProtocolOptionsKey: xds.MustAny(o)}
}

// staticHTTPCluster is a plain cluster of fixed endpoints.
func staticHTTPCluster(name string, h2 bool, addrs ...string) *cluster.Cluster {
	return &cluster.Cluster{Name: name, ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		TypedExtensionProtocolOptions: protocolOptions(h2), LoadAssignment: assignment(name, addrs...)}
}

// mtlsHTTPCluster is an outbound cluster: EDS endpoints, mTLS to the
// service's identity.
func mtlsHTTPCluster(name, service string, h2 bool) *cluster.Cluster {
	up := &tlsv3.UpstreamTlsContext{Sni: service + ".default.ursa", CommonTlsContext: &tlsv3.CommonTlsContext{ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
		CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{DefaultValidationContext: &tlsv3.CertificateValidationContext{
			MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: exactMatcher("spiffe://default/" + service)}}},
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: "mesh-ca"}}}}}
	return &cluster.Cluster{Name: name, ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:              &cluster.Cluster_EdsClusterConfig{ServiceName: name},
		TypedExtensionProtocolOptions: protocolOptions(h2),
		TransportSocket:               &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: xds.MustAny(up)}}}
}

func assignment(name string, addrs ...string) *endpoint.ClusterLoadAssignment {
	var eps []*endpoint.LbEndpoint
	for _, a := range addrs {
		host, port, _ := net.SplitHostPort(a)
		var p uint32
		fmt.Sscan(port, &p)
		eps = append(eps, &endpoint.LbEndpoint{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: socket(host, p)}}})
	}
	return &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{{Locality: &core.Locality{Zone: "zone-1"}, LbEndpoints: eps}}}
}

// routeTo is a route to weighted clusters ("name" alone: one cluster).
func routeTo(name string, match *route.RouteMatch, action *route.RouteAction) *route.Route {
	if match == nil {
		match = &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}
	}
	return &route.Route{Name: name, Match: match, Action: &route.Route_Route{Route: action}}
}

// previousHosts is the retry host predicate the CP gives every retry
// policy: a retry goes to an endpoint not yet tried.
func previousHosts() []*route.RetryPolicy_RetryHostPredicate {
	return []*route.RetryPolicy_RetryHostPredicate{{Name: previousHostsName,
		ConfigType: &route.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: xds.MustAny(&previoushosts.PreviousHostsPredicate{})}}}
}

func toCluster(c string) *route.RouteAction {
	return &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: c}}
}

func routeConfig(name string, routes ...*route.Route) *route.RouteConfiguration {
	return &route.RouteConfiguration{Name: name, VirtualHosts: []*route.VirtualHost{{Name: strings.TrimPrefix(name, "outbound:"), Domains: []string{"*"}, Routes: routes}}}
}

// backend is an HTTP server (HTTP/1.1 and h2c) whose handler says its name
// in x-backend and echoes the request's headers back as x-echo-<name>.
func backend(t testing.TB, name string, h http.HandlerFunc) string {
	t.Helper()
	return serveH1H2(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("x-backend", name)
		w.Header().Set("x-proto", r.Proto)
		for k, v := range r.Header {
			w.Header()["X-Echo-"+k] = v
		}
		if h != nil {
			h(w, r)
			return
		}
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%s %s %s", name, r.Method, r.URL.Path)
	})
}

// serveH1H2 serves h over HTTP/1.1 and h2c on a loopback port: its
// address.
func serveH1H2(t testing.TB, h http.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// sidecars is a caller's sidecar (web) and a server's (billing), each a
// Proxy with its mesh identity.
type sidecars struct {
	client, server *Proxy
	roots          *x509.CertPool
	web, billing   *tls.Certificate
}

func newSidecars(t *testing.T) *sidecars {
	now := time.Now()
	ca, roots, pairOf := testCA(t, now)
	web, _ := mtls.Issue(ca, "web", time.Hour, now)
	billing, _ := mtls.Issue(ca, "billing", time.Hour, now)
	return &sidecars{client: newProxy(t), server: newProxy(t), roots: roots, web: pairOf(web), billing: pairOf(billing)}
}

// apply translates resources for p and applies them with identity.
func apply(t testing.TB, p *Proxy, id *tls.Certificate, roots *x509.CertPool, listeners []*listener.Listener, clusters []*cluster.Cluster,
	cla []*endpoint.ClusterLoadAssignment, routes ...*route.RouteConfiguration) {
	t.Helper()
	cfg, err := translate(listeners, clusters, cla, nil, nil, routes...)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Identity, cfg.Roots = id, roots
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
}

// h2cClient speaks h2c with prior knowledge; h1Client HTTP/1.1.
func h2cClient() *http.Client {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Protocols: &protos}}
}

func h1Client() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
}

func get(t *testing.T, c *http.Client, url string, headers ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}
