package zone

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"sync"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/proxy"
	"github.com/ursamesh/ursa/pkg/xds"
)

// sdsOut records every secret each proxy was last published with.
type sdsOut struct {
	mu   sync.Mutex
	last map[string]map[string]*tlsv3.Secret
}

func (o *sdsOut) SetResourcesFor(_ context.Context, n xds.Node, r xds.Resources) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.last[n.ID] = map[string]*tlsv3.Secret{}
	for _, s := range r[resource.SecretType] {
		s := s.(*tlsv3.Secret)
		o.last[n.ID][s.Name] = s
	}
	return nil
}

func (o *sdsOut) secret(node, name string) *tlsv3.Secret {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.last[node][name]
}

// chainOf is the certificates of a proxy's identity secret, leaf first.
func chainOf(t *testing.T, s *tlsv3.Secret) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	rest := s.GetTlsCertificate().GetCertificateChain().GetInlineBytes()
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// verifies reports whether chain verifies against a proxy's trust secret:
// the root it trusts and the revocation lists it enforces, as the built-in
// proxy does.
func verifies(t *testing.T, chain []*x509.Certificate, trust *tlsv3.Secret) error {
	t.Helper()
	vc := trust.GetValidationContext()
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AppendCertsFromPEM(vc.GetTrustedCa().GetInlineBytes())
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	chains, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return err
	}
	revoked, err := proxy.ParseRevocations(vc.GetCrl().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	return revoked.Check(chains[0], time.Now())
}

// TestZoneIntermediateSigns: with the root's key absent (as in every
// federated zone), a zone issues its proxies' certificates from its own
// intermediate only, and each proxy trusts the root with every zone's
// revocation list; a leaf from zone-1 verifies at zone-2's trust and the
// other way round, and not once zone-2's intermediate is revoked. A change
// of the lists alone changes trust, not certificates; a new intermediate
// re-issues them.
func TestZoneIntermediateSigns(t *testing.T) {
	now := time.Now()
	root, err := mtls.NewCA("default", now)
	if err != nil {
		t.Fatal(err)
	}
	puts, _, _, err := mtls.Timing{}.Plan(root, nil, map[string]bool{"zone-1": true, "zone-2": true}, now)
	if err != nil {
		t.Fatal(err)
	}
	redact, _ := api.Lookup("MeshCA")
	keyless := func(r api.Resource, version int64) *api.MeshCA {
		c := redact.Redact(r).(*api.MeshCA)
		c.Version = version
		return c
	}
	cas := map[string]*api.ZoneCA{}
	for _, p := range puts[1:] {
		cas[p.GetMeta().Name] = p.(*api.ZoneCA)
		cas[p.GetMeta().Name].Version = 1
	}
	mesh := &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default", Version: 1}, MTLS: &api.MeshMTLS{Enabled: true}}
	zones := map[string]*Generation{}
	out := &sdsOut{last: map[string]map[string]*tlsv3.Secret{}}
	step := func(zone string, rs ...api.Resource) {
		t.Helper()
		g := zones[zone]
		if g == nil {
			g = NewGeneration(GenerationDeps{Out: out, CertTTL: time.Hour, Log: zaptest.NewLogger(t)})
			zones[zone] = g
		}
		g.state = xds.NewState(catalog.FromResources(zone, append([]api.Resource{mesh}, rs...)), g.state)
		g.generate(context.Background(), g.state, []xds.Node{{ID: "default." + zone, Kind: xds.KindSidecar, Since: now}}, now)
	}
	ca := keyless(puts[0], 1)
	// Without its intermediate, and without the root's key, a zone issues
	// nothing.
	step("zone-1", ca, dp("default", "zone-1", "billing", 1))
	if out.secret("default.zone-1", xds.SecretIdentity) != nil {
		t.Fatal("a zone without its intermediate issued an identity")
	}
	// Each zone has its own (and, were it sent another's, uses its own).
	step("zone-1", ca, cas["zone-1"], cas["zone-2"], dp("default", "zone-1", "billing", 1))
	step("zone-2", ca, cas["zone-2"], dp("default", "zone-2", "web", 1))
	c1, c2 := chainOf(t, out.secret("default.zone-1", xds.SecretIdentity)), chainOf(t, out.secret("default.zone-2", xds.SecretIdentity))
	for zone, c := range map[string][]*x509.Certificate{"zone-1": c1, "zone-2": c2} {
		if len(c) != 2 || c[1].Subject.CommonName != "ursa mesh default zone "+zone {
			t.Fatalf("%s's proxy presents %d certificates, not its leaf and its zone's intermediate", zone, len(c))
		}
	}
	trust1, trust2 := out.secret("default.zone-1", xds.SecretMeshCA), out.secret("default.zone-2", xds.SecretMeshCA)
	if n := strings.Count(string(trust1.GetValidationContext().GetCrl().GetInlineBytes()), "BEGIN X509 CRL"); n != 5 {
		t.Fatalf("the trust secret carries %d revocation lists, want the root's and both zones' two intermediates'", n)
	}
	if err := verifies(t, c1, trust2); err != nil {
		t.Fatalf("zone-1's leaf at zone-2: %v", err)
	}
	if err := verifies(t, c2, trust1); err != nil {
		t.Fatalf("zone-2's leaf at zone-1: %v", err)
	}

	// zone-2 disabled at the global: zone-1 receives the new lists; its
	// proxy keeps its certificate and trusts zone-2's no more.
	revoked, _, _, err := mtls.Timing{}.Plan(puts[0].(*api.MeshCA), cas, map[string]bool{"zone-1": true}, now)
	if err != nil {
		t.Fatal(err)
	}
	step("zone-1", keyless(revoked[0], 2), cas["zone-1"], dp("default", "zone-1", "billing", 1))
	if c := chainOf(t, out.secret("default.zone-1", xds.SecretIdentity)); !c[0].Equal(c1[0]) {
		t.Fatal("a change of the revocation lists re-issued a certificate")
	}
	if err := verifies(t, c2, out.secret("default.zone-1", xds.SecretMeshCA)); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("zone-2's leaf at zone-1 after its revocation: %v", err)
	}

	// A new intermediate for zone-1: its proxy's certificate is re-issued.
	rotated, recs, err := mtls.NewZoneCA(puts[0].(*api.MeshCA), "zone-1", now)
	if err != nil {
		t.Fatal(err)
	}
	rotated.Version = 2
	withRec := keyless(revoked[0], 3)
	withRec.Intermediates = append(withRec.Intermediates, recs...)
	step("zone-1", withRec, rotated, dp("default", "zone-1", "billing", 1))
	if c := chainOf(t, out.secret("default.zone-1", xds.SecretIdentity)); c[0].Equal(c1[0]) || c[1].SerialNumber.Text(16) != recs[0].Serial {
		t.Fatal("a new intermediate did not re-issue the zone's certificate from it")
	}
}
