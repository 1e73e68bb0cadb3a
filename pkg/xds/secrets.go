package xds

import (
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/ursamesh/ursa/pkg/mtls"
)

// Secrets generates the SDS secrets a sidecar's TLS contexts refer to: its
// workload identity and its mesh's CA certificate (never the CA's key).
func Secrets(id mtls.Identity, caCertPEM string) Resources {
	out := Resources{}
	out.Add(resource.SecretType, &tlsv3.Secret{Name: SecretIdentity, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: id.CertPEM}},
		PrivateKey:       &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: id.KeyPEM}},
	}}})
	out.Add(resource.SecretType, &tlsv3.Secret{Name: SecretMeshCA, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: []byte(caCertPEM)}},
	}}})
	return out
}
