package proxy

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// NewKey makes the proxy's own ECDSA P-256 key, which never leaves it, and
// a certificate request for it (PEM) to send in its node metadata: the
// control plane certifies that key with the identity it decides.
func NewKey(nodeID string) (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("make a key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: nodeID}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("make a CSR: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// identityOf is the certificate an SDS TlsCertificate secret gives the
// proxy. One that carries its private key (the CP made the key, as for
// Envoy) is used as it is. One that carries the chain alone certifies the
// key this proxy made and sent a CSR for: it is paired with key, and
// refused when its leaf is for any other key.
func identityOf(tc *tlsv3.TlsCertificate, key crypto.Signer) (*tls.Certificate, error) {
	chain := tc.GetCertificateChain().GetInlineBytes()
	if k := tc.GetPrivateKey().GetInlineBytes(); len(k) > 0 {
		pair, err := tls.X509KeyPair(chain, k)
		if err != nil {
			return nil, err
		}
		return &pair, nil
	}
	if key == nil {
		return nil, errors.New("it carries no private key, and this proxy made none")
	}
	var cert tls.Certificate
	for rest := chain; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type == "CERTIFICATE" {
			cert.Certificate = append(cert.Certificate, block.Bytes)
		}
	}
	if len(cert.Certificate) == 0 {
		return nil, errors.New("no certificate in its chain")
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, err
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(leaf.PublicKey) {
		return nil, errors.New("its certificate is not for this proxy's key")
	}
	cert.PrivateKey, cert.Leaf = key, leaf
	return &cert, nil
}

// stringMatch is a compiled Envoy StringMatcher.
type stringMatch func(string) bool

// compileMatcher compiles the StringMatchers the control plane uses in
// principals and SAN checks: exact, prefix, suffix, contains and
// safe_regex (matching the whole string, as Envoy's does), without
// ignore_case.
func compileMatcher(m *matcher.StringMatcher) (stringMatch, error) {
	if m.GetIgnoreCase() {
		return nil, errors.New("string matcher ignore_case is not supported")
	}
	switch p := m.GetMatchPattern().(type) {
	case *matcher.StringMatcher_Exact:
		return func(s string) bool { return s == p.Exact }, nil
	case *matcher.StringMatcher_Prefix:
		return func(s string) bool { return strings.HasPrefix(s, p.Prefix) }, nil
	case *matcher.StringMatcher_Suffix:
		return func(s string) bool { return strings.HasSuffix(s, p.Suffix) }, nil
	case *matcher.StringMatcher_Contains:
		return func(s string) bool { return strings.Contains(s, p.Contains) }, nil
	case *matcher.StringMatcher_SafeRegex:
		re, err := regexp.Compile(`^(?:` + p.SafeRegex.GetRegex() + `)$`)
		if err != nil {
			return nil, fmt.Errorf("string matcher regex: %w", err)
		}
		return re.MatchString, nil
	}
	return nil, fmt.Errorf("string matcher %v is not supported", m)
}

// serverSANs compiles an upstream TLS context's SAN check: the URI
// matchers of its combined validation context's default context (the
// server must present a URI SAN one of them matches), and the SDS names
// of the CA. Nothing else of a validation context is supported.
func serverSANs(common *tlsv3.CommonTlsContext) (match []stringMatch, want []string, err error) {
	combined := common.GetCombinedValidationContext()
	if combined == nil {
		return nil, nil, nil
	}
	for _, m := range combined.GetDefaultValidationContext().GetMatchTypedSubjectAltNames() {
		if m.GetSanType() != tlsv3.SubjectAltNameMatcher_URI {
			return nil, nil, fmt.Errorf("subject alt name type %s is not supported: only URI", m.GetSanType())
		}
		f, err := compileMatcher(m.GetMatcher())
		if err != nil {
			return nil, nil, err
		}
		match, want = append(match, f), append(want, m.GetMatcher().String())
	}
	return match, want, nil
}

// wrongPeerError is an upstream whose certificate chains to the mesh CA
// but names none of the identities the cluster expects: another workload
// than the one the caller meant to reach.
type wrongPeerError struct {
	want []string
	got  []string
}

func (e *wrongPeerError) Error() string {
	return fmt.Sprintf("upstream certificate names %q, not the expected %s", e.got, strings.Join(e.want, " or "))
}

// verifyServer checks an upstream's chain (leaf, then the issuer's chain)
// against roots and the revocation lists and, when the cluster expects
// identities, that the leaf names one of them in a URI SAN.
func verifyServer(raw [][]byte, roots *x509.CertPool, revoked *Revocations, c *Cluster) error {
	if len(raw) == 0 {
		return errors.New("no server certificate")
	}
	leaf, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return err
	}
	inter := x509.NewCertPool()
	for _, der := range raw[1:] {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return err
		}
		inter.AddCert(cert)
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err != nil {
		return err
	}
	if err := checkChains(revoked, chains, time.Now()); err != nil {
		return err
	}
	if len(c.ServerSANs) == 0 {
		return nil
	}
	uris := uriSANs(leaf)
	for _, m := range c.ServerSANs {
		if slices.ContainsFunc(uris, m) {
			return nil
		}
	}
	return &wrongPeerError{want: c.WantSANs, got: uris}
}

// uriSANs are a certificate's URI SANs, as strings.
func uriSANs(c *x509.Certificate) []string {
	out := make([]string, len(c.URIs))
	for i, u := range c.URIs {
		out[i] = u.String()
	}
	return out
}

// rbacRules is a compiled network RBAC filter with the ALLOW action: a
// caller is admitted when any principal of any policy matches the URI
// SANs of its certificate. No policy admits nobody.
type rbacRules struct {
	principals []principal
}

// principal is a compiled RBAC principal, over a caller's URI SANs.
type principal func(uris []string) bool

// allows evaluates the rules for a caller; nil rules (no RBAC filter)
// admit everyone.
func (r *rbacRules) allows(uris []string) bool {
	if r == nil {
		return true
	}
	for _, p := range r.principals {
		if p(uris) {
			return true
		}
	}
	return false
}

// compileRBAC compiles an RBAC policy set, or says what of it the proxy
// cannot evaluate, so that it is NACKed rather than fail connections.
func compileRBAC(rules *rbacconfig.RBAC) (*rbacRules, error) {
	if rules.GetAction() != rbacconfig.RBAC_ALLOW {
		return nil, fmt.Errorf("rbac action %s is not supported", rules.GetAction())
	}
	out := &rbacRules{}
	for _, name := range slices.Sorted(maps.Keys(rules.GetPolicies())) {
		p := rules.GetPolicies()[name]
		for _, perm := range p.GetPermissions() {
			if !perm.GetAny() {
				return nil, fmt.Errorf("rbac policy %q: only the permission any is supported", name)
			}
		}
		for _, pr := range p.GetPrincipals() {
			f, err := compilePrincipal(pr)
			if err != nil {
				return nil, fmt.Errorf("rbac policy %q: %w", name, err)
			}
			out.principals = append(out.principals, f)
		}
	}
	return out, nil
}

// compilePrincipal compiles a principal as Envoy evaluates it on a TLS
// connection: authenticated matches when any URI SAN of the peer's
// certificate matches its principal_name (any authenticated peer when it
// has none).
func compilePrincipal(p *rbacconfig.Principal) (principal, error) {
	switch v := p.GetIdentifier().(type) {
	case *rbacconfig.Principal_Any:
		return func([]string) bool { return v.Any }, nil
	case *rbacconfig.Principal_Authenticated_:
		if v.Authenticated.GetPrincipalName() == nil {
			return func([]string) bool { return true }, nil
		}
		m, err := compileMatcher(v.Authenticated.GetPrincipalName())
		if err != nil {
			return nil, err
		}
		return func(uris []string) bool { return slices.ContainsFunc(uris, m) }, nil
	case *rbacconfig.Principal_AndIds, *rbacconfig.Principal_OrIds:
		set, and := p.GetAndIds(), true
		if set == nil {
			set, and = p.GetOrIds(), false
		}
		subs := make([]principal, 0, len(set.GetIds()))
		for _, id := range set.GetIds() {
			f, err := compilePrincipal(id)
			if err != nil {
				return nil, err
			}
			subs = append(subs, f)
		}
		return func(uris []string) bool {
			for _, f := range subs {
				if f(uris) != and {
					return !and
				}
			}
			return and
		}, nil
	case *rbacconfig.Principal_NotId:
		f, err := compilePrincipal(v.NotId)
		if err != nil {
			return nil, err
		}
		return func(uris []string) bool { return !f(uris) }, nil
	}
	return nil, fmt.Errorf("principal %T is not supported", p.GetIdentifier())
}
