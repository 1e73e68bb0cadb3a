package xds

import (
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/ursamesh/ursa/pkg/mtls"
)

// Secrets generates the SDS secrets a sidecar's TLS contexts refer to: its
// workload identity and the mesh's root certificate (never a CA's key).
func Secrets(id mtls.Identity, rootPEM string) Resources {
	out := Resources{}
	out.Add(resource.SecretType, IdentitySecret(id))
	out.Add(resource.SecretType, TrustSecret(rootPEM, ""))
	return out
}

// IdentitySecret is the SDS secret "identity": the certificate chain (leaf
// first, then the issuing CA's chain) and, when the control plane made the
// key, the key. A proxy that sent a CSR gets the chain alone and pairs it
// with the key it holds.
func IdentitySecret(id mtls.Identity) *tlsv3.Secret {
	tc := &tlsv3.TlsCertificate{CertificateChain: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: id.CertPEM}}}
	if len(id.KeyPEM) > 0 {
		tc.PrivateKey = &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: id.KeyPEM}}
	}
	return &tlsv3.Secret{Name: SecretIdentity, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: tc}}
}

// TrustSecret is the SDS secret "mesh-ca": the validation context that
// trusts the mesh's root certificate and, when crlPEM is given, refuses
// what its revocation lists revoke (the root's and every zone
// intermediate's: Envoy wants one from every CA of a chain).
func TrustSecret(rootPEM, crlPEM string) *tlsv3.Secret {
	vc := &tlsv3.CertificateValidationContext{TrustedCa: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: []byte(rootPEM)}}}
	if crlPEM != "" {
		vc.Crl = &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: []byte(crlPEM)}}
	}
	return &tlsv3.Secret{Name: SecretMeshCA, Type: &tlsv3.Secret_ValidationContext{ValidationContext: vc}}
}
