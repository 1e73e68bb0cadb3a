package proxy

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/xds"
	"github.com/ursamesh/ursa/pkg/xds/xdstest"
)

// workload issues, from signer, the identity of a workload of service with
// tags (name, value, …), as a key pair.
func workload(t *testing.T, signer *mtls.Signer, mesh, service string, tags ...string) *tls.Certificate {
	t.Helper()
	sub := mtls.Subject{Mesh: mesh, Services: []string{service}, Tags: []mtls.Tag{{Name: api.TagService, Value: service}}}
	for i := 0; i < len(tags); i += 2 {
		sub.Tags = append(sub.Tags, mtls.Tag{Name: tags[i], Value: tags[i+1]})
	}
	id, err := signer.Issue(sub, nil, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(id.CertPEM, id.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &pair
}

func testSigner(t *testing.T, mesh string) (*mtls.Signer, *x509.CertPool) {
	t.Helper()
	ca, err := mtls.NewCA(mesh, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	s, err := mtls.SignerFromMeshCA(ca)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(ca.CertPEM))
	return s, roots
}

// TestGeneratedTagPermissions: the sidecar generator's inbound for
// billing-1 (testdata mtls-tags: sources {version: v1}, {web, version: *},
// DENY {zone: zone-2}), run by the proxy on loopback, admits over real mTLS
// exactly the callers whose certificates carry every tag of an allowed
// source and none of a denied one.
func TestGeneratedTagPermissions(t *testing.T) {
	rs := xdstest.Inputs(t, "../xds/testdata/sidecar/mtls-tags.input.yaml")
	state := xds.NewState(catalog.FromResources("zone-1", rs), nil)
	billing := state.Mesh("default").Registered["billing-1"]
	res, err := xds.Sidecar(state, xds.Proxy{Kind: xds.KindSidecar, Dataplane: billing})
	if err != nil {
		t.Fatal(err)
	}
	cfg := translateGenerated(t, res)
	if web := cfg.Clusters["web"]; len(web.ServerSANs) != 1 || !web.ServerSANs[0]("spiffe://default/web") || web.ServerSANs[0]("spiffe://default/billing") {
		t.Fatalf("cluster web checks %v of its upstream", web.WantSANs)
	}

	signer, roots := testSigner(t, "default")
	other, _ := testSigner(t, "other")
	inbound := cfg.Listeners["inbound:10.0.0.7:10011"]
	inbound.Addr = anyPort
	cfg.Listeners = map[string]*Listener{inbound.Name: inbound}
	cfg.Clusters = map[string]*Cluster{"localhost:8080": {Name: "localhost:8080", ConnectTimeout: time.Second, Overprovisioning: 140,
		Endpoints: []Endpoint{{Addr: echoServer(t, "billing"), Weight: 1}}}}
	cfg.Identity, cfg.Roots = workload(t, signer, "default", "billing", "version", "v2"), roots
	p := newProxy(t)
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	addr := boundAddr(t, p, inbound.Name)
	call := func(cert *tls.Certificate) error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, &tls.Config{Certificates: []tls.Certificate{*cert},
			RootCAs: roots, InsecureSkipVerify: true})
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintln(c, "hi")
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if line != "billing hi\n" {
			return fmt.Errorf("answer %q", line)
		}
		return nil
	}
	for _, tc := range []struct {
		name   string
		cert   *tls.Certificate
		admits bool
	}{
		{"web v1", workload(t, signer, "default", "web", "version", "v1", api.TagZone, "zone-1"), true},
		{"admin v1 (the v1 source names no service)", workload(t, signer, "default", "admin", "version", "v1"), true},
		{"web v3 (web at any version)", workload(t, signer, "default", "web", "version", "v3"), true},
		{"admin v2", workload(t, signer, "default", "admin", "version", "v2"), false},
		{"web without a version", workload(t, signer, "default", "web"), false},
		{"web v1 from zone-2 (denied)", workload(t, signer, "default", "web", "version", "v1", api.TagZone, "zone-2"), false},
		{"web v1 of another mesh's CA", workload(t, other, "default", "web", "version", "v1"), false},
	} {
		if err := call(tc.cert); (err == nil) != tc.admits {
			t.Errorf("%s: admitted %v (%v), want %v", tc.name, err == nil, err, tc.admits)
		}
	}
}

// TestUpstreamIdentityChecked: a sidecar's cluster for billing refuses,
// logs and counts an upstream whose certificate chains to the mesh CA but
// names web, and connects to one that names billing, also through a
// zone's intermediate CA.
func TestUpstreamIdentityChecked(t *testing.T) {
	signer, roots := testSigner(t, "default")
	server := func(cert *tls.Certificate) string {
		ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{*cert}, ClientAuth: tls.RequireAnyClientCert})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { c.(*tls.Conn).Handshake(); c.Write([]byte("up\n")); c.Close() }()
			}
		}()
		return ln.Addr().String()
	}
	reg := prometheus.NewRegistry()
	p, err := New(zaptest.NewLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	exact, _ := compileMatcher(exactMatcher("spiffe://default/billing"))
	cluster := func(addr string) *Cluster {
		return &Cluster{Name: "billing", TLS: true, SNI: "billing-x.default.ursa", ConnectTimeout: time.Second, Overprovisioning: 140,
			ServerSANs: []stringMatch{exact}, WantSANs: []string{"spiffe://default/billing"}, Endpoints: []Endpoint{{Addr: addr, Weight: 1}}}
	}
	cfg := &Config{Identity: workload(t, signer, "default", "web"), Roots: roots}

	_, err = p.connect(cfg, cluster(server(workload(t, signer, "default", "web"))), 3)
	var wrong *wrongPeerError
	if !errors.As(err, &wrong) || !strings.Contains(err.Error(), "spiffe://default/web") {
		t.Fatalf("an upstream naming web, for billing: %v", err)
	}
	if got := counterValue(t, reg, "ursa_dp_upstream_tls_failures_total", "wrong_identity"); got != 1 {
		t.Fatalf("wrong_identity counted %v times, want 1", got)
	}

	up, err := p.connect(cfg, cluster(server(workload(t, signer, "default", "billing"))), 3)
	if err != nil {
		t.Fatalf("billing's own upstream: %v", err)
	}
	up.Close()

	// A zone's intermediate CA: the upstream presents its chain.
	inter := intermediate(t, signer)
	up, err = p.connect(cfg, cluster(server(workload(t, inter, "default", "billing"))), 3)
	if err != nil {
		t.Fatalf("billing issued by an intermediate: %v", err)
	}
	up.Close()
}

func exactMatcher(s string) *matcher.StringMatcher {
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: s}}
}

// intermediate is a CA signed by parent, as a zone's: it issues with its
// own certificate in the chain.
func intermediate(t *testing.T, parent *mtls.Signer) *mtls.Signer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "zone-1"}, NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(time.Hour), KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent.Cert, &key.PublicKey, parent.Key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &mtls.Signer{Cert: cert, Key: key, ChainPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func counterValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// TestIdentityFromCSR: an identity secret without a key is paired with the
// key the proxy made, and refused when it certifies any other key or when
// the proxy made none; one with a key is used as it is.
func TestIdentityFromCSR(t *testing.T) {
	signer, _ := testSigner(t, "default")
	key, csr, err := mtls.NewKeyAndCSR("default.web-1")
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := mtls.ParseCSR(csr)
	sub := mtls.Subject{Mesh: "default", Services: []string{"web"}}
	mine, _ := signer.Issue(sub, pub, time.Hour, time.Now())
	theirs, _ := signer.Issue(sub, nil, time.Hour, time.Now())
	secret := func(id mtls.Identity) []*tlsv3.Secret { return []*tlsv3.Secret{xds.IdentitySecret(id)} }

	cfg, err := translate(nil, nil, nil, secret(mine), key)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Identity.PrivateKey != key {
		t.Fatal("the identity is not paired with the proxy's own key")
	}
	chainOnly := theirs
	chainOnly.KeyPEM = nil
	if _, err := translate(nil, nil, nil, secret(chainOnly), key); err == nil || !strings.Contains(err.Error(), "not for this proxy's key") {
		t.Fatalf("a chain for another key: %v", err)
	}
	if _, err := translate(nil, nil, nil, secret(mine), nil); err == nil || !strings.Contains(err.Error(), "made none") {
		t.Fatalf("a chain without a key, and no key of its own: %v", err)
	}
	if cfg, err := translate(nil, nil, nil, secret(theirs), key); err != nil || cfg.Identity == nil {
		t.Fatalf("an identity with its key: %v", err)
	}
}

// TestUnsupportedSANCheckIsRefused: a SAN check the proxy cannot enforce is
// NACKed, not ignored.
func TestUnsupportedSANCheckIsRefused(t *testing.T) {
	up := &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
		CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{DefaultValidationContext: &tlsv3.CertificateValidationContext{
			MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{SanType: tlsv3.SubjectAltNameMatcher_DNS, Matcher: exactMatcher("billing")}}},
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: "mesh-ca"}}}}}
	c := &cluster.Cluster{Name: "billing", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		TransportSocket: &core.TransportSocket{Name: "tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: xds.MustAny(up)}}}
	if _, err := translate(nil, []*cluster.Cluster{c}, nil, nil, nil); err == nil || !strings.Contains(err.Error(), "only URI") {
		t.Fatalf("a DNS SAN check: %v", err)
	}
}

// resourcesOf is a generator's resources of type typ, as T.
func resourcesOf[T types.Resource](res xds.Resources, typ resource.Type) []T {
	out := make([]T, 0, len(res[typ]))
	for _, r := range res[typ] {
		out = append(out, r.(T))
	}
	return out
}

// translateGenerated translates the listeners and clusters a generator
// made, as the proxy would receive them (no endpoints, secrets or
// revocations), failing the test when the proxy refuses them.
func translateGenerated(t *testing.T, res xds.Resources) *Config {
	t.Helper()
	cfg, err := translate(resourcesOf[*listener.Listener](res, resource.ListenerType), resourcesOf[*cluster.Cluster](res, resource.ClusterType), nil, nil, nil)
	if err != nil {
		t.Fatalf("the built-in proxy refuses the generated configuration: %v", err)
	}
	return cfg
}
