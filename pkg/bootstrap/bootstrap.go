// Package bootstrap writes the Envoy bootstrap `ursa-dp run --proxy envoy` starts
// Envoy with: the zone CP as its ADS server, the node id and metadata the
// proxy presents.
package bootstrap

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Options describe the Envoy a sidecar runs.
type Options struct {
	NodeID string
	// Metadata goes in the node's metadata (the Dataplane it presents).
	Metadata map[string]string
	// CPAddress is host:port of the zone CP's xDS server.
	CPAddress string
	// Plaintext dials the zone CP without TLS (an insecure grpc:// address).
	Plaintext bool
	// CACertFile is the PEM file of the CA the zone CP's certificate must
	// chain to (the CP's /xds/ca.pem, or the system's bundle); required
	// unless Plaintext. The certificate must also name CPAddress's host.
	CACertFile string
	Token      string
	// AdminAddress is host:port of Envoy's admin interface.
	AdminAddress string
}

// JSON returns the JSON bootstrap that points Envoy at the zone CP over
// ADS. It passes ValidateAll.
func JSON(o Options) ([]byte, error) {
	cpHost, cpPort, err := splitPort(o.CPAddress)
	if err != nil {
		return nil, fmt.Errorf("control plane address: %w", err)
	}
	adminHost, adminPort, err := splitPort(o.AdminAddress)
	if err != nil {
		return nil, fmt.Errorf("admin address: %w", err)
	}
	md := map[string]any{}
	for k, v := range o.Metadata {
		md[k] = v
	}
	meta, err := structpb.NewStruct(md)
	if err != nil {
		return nil, err
	}
	grpcService := &core.GrpcService{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: "ursa-cp"}}}
	if o.Token != "" {
		grpcService.InitialMetadata = []*core.HeaderValue{{Key: "authorization", Value: "Bearer " + o.Token}}
	}
	cp := &cluster.Cluster{
		Name:                 "ursa-cp",
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STRICT_DNS},
		ConnectTimeout:       durationpb.New(5 * time.Second),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(&httpopts.HttpProtocolOptions{
			UpstreamProtocolOptions: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}}}}})},
		LoadAssignment: &endpoint.ClusterLoadAssignment{ClusterName: "ursa-cp", Endpoints: []*endpoint.LocalityLbEndpoints{{
			LbEndpoints: []*endpoint.LbEndpoint{{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: socketAddress(cpHost, cpPort)}}}},
		}}},
	}
	if !o.Plaintext {
		if o.CACertFile == "" {
			return nil, errors.New("envoy bootstrap: a CA file is required to verify the control plane over TLS")
		}
		cp.TransportSocket = &core.TransportSocket{Name: "envoy.transport_sockets.tls",
			ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(upstreamTLS(cpHost, o.CACertFile))}}
	}
	b := &bootstrap.Bootstrap{
		Node:  &core.Node{Id: o.NodeID, Cluster: o.NodeID, Metadata: meta},
		Admin: &bootstrap.Admin{Address: socketAddress(adminHost, adminPort)},
		DynamicResources: &bootstrap.Bootstrap_DynamicResources{
			AdsConfig: &core.ApiConfigSource{ApiType: core.ApiConfigSource_GRPC, TransportApiVersion: core.ApiVersion_V3,
				GrpcServices: []*core.GrpcService{grpcService}},
			LdsConfig: ads(),
			CdsConfig: ads(),
		},
		StaticResources: &bootstrap.Bootstrap_StaticResources{Clusters: []*cluster.Cluster{cp}},
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("envoy bootstrap: %w", err)
	}
	return protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(b)
}

// upstreamTLS verifies the control plane: its chain against caFile, and a
// SAN against host (Envoy checks only the chain unless told which name to
// expect). ALPN h2, which a gRPC server requires. SNI is sent for a name:
// TLS has no SNI for an IP address (RFC 6066).
func upstreamTLS(host, caFile string) *tlsv3.UpstreamTlsContext {
	san := &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_DNS,
		Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: host}}}
	sni := host
	if ip := net.ParseIP(host); ip != nil {
		san.SanType, sni = tlsv3.SubjectAltNameMatcher_IP_ADDRESS, ""
	}
	return &tlsv3.UpstreamTlsContext{
		Sni: sni,
		CommonTlsContext: &tlsv3.CommonTlsContext{
			AlpnProtocols: []string{"h2"},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa:                 &core.DataSource{Specifier: &core.DataSource_Filename{Filename: caFile}},
				MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{san},
			}},
		},
	}
}

// SystemCAFile returns the first of the usual system CA bundles that
// exists: Envoy, unlike Go, has no default trust store.
func SystemCAFile() (string, error) {
	for _, f := range []string{
		"/etc/ssl/certs/ca-certificates.crt",                // Debian, Ubuntu, Alpine
		"/etc/pki/tls/certs/ca-bundle.crt",                  // Fedora, RHEL 6
		"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // RHEL 7+
		"/etc/ssl/ca-bundle.pem",                            // openSUSE
		"/etc/ssl/cert.pem",                                 // Alpine, macOS
	} {
		if _, err := os.Stat(f); err == nil {
			return f, nil
		}
	}
	return "", errors.New("no system CA bundle found; give --ca-cert-file")
}

func splitPort(hostport string) (string, uint32, error) {
	host, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", p, err)
	}
	return host, uint32(n), nil
}

func socketAddress(addr string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: addr, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port}}}}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(fmt.Sprintf("bootstrap: pack %T: %v", m, err)) // only for our own well-formed messages
	}
	return a
}

// ads points a resource's dependencies at the ADS stream.
func ads() *core.ConfigSource {
	return &core.ConfigSource{ResourceApiVersion: core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}}
}
