package api

// Keys of an xDS node's metadata, shared by the data plane that sets them
// and the control plane that reads them.
const (
	// MetadataDataplane carries the Dataplane a proxy presents (YAML or
	// JSON), which the zone registers when it connects.
	MetadataDataplane = "ursa.io/dataplane"
	// MetadataZoneIngress carries the ZoneIngress an ingress presents.
	MetadataZoneIngress = "ursa.io/zone-ingress"
	// MetadataIngress is "true" on a zone ingress; its node id is its
	// ZoneIngress's name.
	MetadataIngress = "ursa.io/ingress"
	// MetadataProxyless is "true" on a proxyless gRPC client.
	MetadataProxyless = "ursa.io/proxyless"
	// MetadataToken carries a proxy's dataplane token, for a client that
	// cannot send it as "authorization: Bearer" call credentials (a
	// proxyless gRPC client without gRFC A97's jwt_token_file).
	MetadataToken = "ursa.io/token"
	// MetadataCSR carries, from a proxy that makes its own key, a
	// certificate request for it (PEM): the CP signs that key, and sends
	// the certificate without a key.
	MetadataCSR = "ursa.io/csr"
	// MetadataTransparentProxy is, on a sidecar whose namespace redirects
	// its outbound TCP to it, the port it is redirected to (decimal): the
	// CP sends it an original-destination listener there.
	MetadataTransparentProxy = "ursa.io/transparent-proxy"
	// MetadataTransparentInbound is, on a sidecar whose namespace also
	// redirects inbound TCP to its Dataplane's inbound ports, the port it
	// is redirected to (decimal): the CP sends it one original-destination
	// listener there instead of a listener per inbound.
	MetadataTransparentInbound = "ursa.io/transparent-proxy-inbound"
	// MetadataInboundPassthrough is "true" on a sidecar whose namespace
	// redirects inbound TCP to every port (ursa-dp run
	// --redirect-all-inbound), not only to its Dataplane's: the CP's
	// inbound listener then passes a port no inbound takes through to the
	// application, from 127.0.0.6, and closes the application's own ports
	// of the inbounds to any other destination. A sidecar without it is
	// sent neither (an older proxy could not apply them).
	MetadataInboundPassthrough = "ursa.io/inbound-passthrough"
	// MetadataDNSAddress is the IP:port on which a sidecar asks to answer
	// .mesh names (ursa-dp run --dns-addr): the CP sends it a UDP DNS
	// listener there. Without it, no DNS listener.
	MetadataDNSAddress = "ursa.io/dns-address"
)
