package api

// What a proxyless gRPC application's bootstrap and the resources the CP
// sends it must agree on: `ursa-dp proxyless` writes the one, the zone CP
// generates the other.
const (
	// ProxylessCertProvider is the certificate provider instance (gRFC
	// A29) of a proxyless application's gRPC bootstrap whose files hold
	// its workload identity; the TLS contexts of its clusters and server
	// listeners name it.
	ProxylessCertProvider = "ursa"
	// ProxylessServerListenerTemplate is the bootstrap's
	// server_listener_resource_name_template: an xDS gRPC server listening
	// on IP:port asks for the listener of that name (gRFC A36).
	ProxylessServerListenerTemplate = "grpc/server?xds.resource.listening_address=%s"
)
