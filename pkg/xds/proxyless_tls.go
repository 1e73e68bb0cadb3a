package xds

import (
	"fmt"
	"net"
	"strconv"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
)

// The certificate names a proxyless application's TLS contexts ask its
// certificate provider (api.ProxylessCertProvider) for. `ursa-dp
// proxyless` writes a bootstrap whose provider is the file_watcher plugin
// over the files it keeps current, which ignores the names.
const (
	proxylessIdentityCert = SecretIdentity
	proxylessRootCert     = SecretMeshCA
)

// ProxylessServerListenerName is the listener an xDS gRPC server listening
// on addr:port asks for.
func ProxylessServerListenerName(addr string, port uint32) string {
	return fmt.Sprintf(api.ProxylessServerListenerTemplate, net.JoinHostPort(addr, strconv.Itoa(int(port))))
}

// proxylessCommonTLS takes the identity, and the mesh's root to verify the
// peer with, from the application's certificate provider.
func proxylessCommonTLS(vc *tlsv3.CertificateValidationContext) *tlsv3.CommonTlsContext {
	vc.CaCertificateProviderInstance = &tlsv3.CertificateProviderPluginInstance{InstanceName: api.ProxylessCertProvider, CertificateName: proxylessRootCert}
	return &tlsv3.CommonTlsContext{
		TlsCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: api.ProxylessCertProvider, CertificateName: proxylessIdentityCert},
		ValidationContextType:          &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc},
	}
}

// proxylessUpstreamTLS originates mTLS to an instance of sub's service and
// accepts only a server whose certificate names the service's SPIFFE ID
// (grpc-go matches match_subject_alt_names against the URI SANs). The SNI
// names the subset as a sidecar's does (catalog.SNI), so that another
// zone's ingress routes the connection; grpc-go sends it only when the
// application runs with GRPC_EXPERIMENTAL_XDS_SNI=true (gRFC A101, off by
// default in v1.85), without which only this zone's instances answer.
func proxylessUpstreamTLS(mesh string, sub Subset) *core.TransportSocket {
	vc := &tlsv3.CertificateValidationContext{MatchSubjectAltNames: []*matcher.StringMatcher{{
		MatchPattern: &matcher.StringMatcher_Exact{Exact: SpiffeID(mesh, sub.Tags[api.TagService])}}}}
	return &core.TransportSocket{Name: wellknown.TransportSocketTLS,
		ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: MustAny(&tlsv3.UpstreamTlsContext{
			CommonTlsContext: proxylessCommonTLS(vc),
			Sni:              catalog.SNI(mesh, sub.Tags),
		})}}
}

// proxylessServerListener is the listener of an xDS gRPC server at one of
// its Dataplane's inbounds (gRFC A36): every call goes to the server's
// own handlers (non-forwarding route); in an mTLS mesh it terminates mTLS,
// requiring a client certificate from the mesh, and the HTTP RBAC filter
// (gRFC A41) lets through the callers TrafficPermissions allow, by the URI
// SANs of their certificates, as a sidecar's inbound does. host is the
// address the server is bound to: the Dataplane's, or a wildcard.
func (s *MeshState) proxylessServerListener(dp *api.Dataplane, in api.Inbound, host string) *listener.Listener {
	name := ProxylessServerListenerName(host, uint32(in.Port))
	var filters []*hcm.HttpFilter
	chain := &listener.FilterChain{Name: "inbound"}
	if s.Mesh.MTLSEnabled() {
		chain.TransportSocket = &core.TransportSocket{Name: wellknown.TransportSocketTLS,
			ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: MustAny(&tlsv3.DownstreamTlsContext{
				CommonTlsContext:         proxylessCommonTLS(&tlsv3.CertificateValidationContext{}),
				RequireClientCertificate: wrapperspb.Bool(true),
			})}}
		filters = append(filters, &hcm.HttpFilter{Name: HTTPRBACFilter,
			ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: MustAny(&rbachttp.RBAC{Rules: rbacRules(s, in.Tags)})}})
	}
	filters = append(filters, routerFilter())
	svc := in.Tags[api.TagService]
	manager := &hcm.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{
			Name: "inbound:" + svc,
			VirtualHosts: []*route.VirtualHost{{Name: svc, Domains: []string{"*"}, Routes: []*route.Route{{
				Name:   "inbound",
				Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
				Action: &route.Route_NonForwardingAction{NonForwardingAction: &route.NonForwardingAction{}},
			}}}},
		}},
		HttpFilters: filters,
	}
	chain.Filters = []*listener.Filter{{Name: wellknown.HTTPConnectionManager,
		ConfigType: &listener.Filter_TypedConfig{TypedConfig: MustAny(manager)}}}
	return &listener.Listener{
		Name:         name,
		Address:      SocketAddress(host, uint32(in.Port)),
		FilterChains: []*listener.FilterChain{chain},
	}
}
