package zone

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"sync"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/xds"
)

// secretsOut records the identity each proxy was last published with.
type secretsOut struct {
	mu   sync.Mutex
	last map[string]*tlsv3.Secret
	n    int
}

func (o *secretsOut) SetResourcesFor(_ context.Context, n xds.Node, r xds.Resources) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.n++
	for _, s := range r[resource.SecretType] {
		if s := s.(*tlsv3.Secret); s.Name == xds.SecretIdentity {
			o.last[n.ID] = s
		}
	}
	return nil
}

func (o *secretsOut) published() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := o.n
	o.n = 0
	return n
}

func (o *secretsOut) leaf(t *testing.T, node string) (*x509.Certificate, *tlsv3.Secret) {
	t.Helper()
	o.mu.Lock()
	s := o.last[node]
	o.mu.Unlock()
	if s == nil {
		t.Fatalf("%s got no identity", node)
	}
	block, _ := pem.Decode(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return leaf, s
}

func sans(c *x509.Certificate) string { return fmt.Sprint(c.URIs) }

// TestIdentityPerInstance: every sidecar of an mTLS mesh gets its own key
// and certificate naming its service and tags; a proxy that sent a CSR
// gets its own key certified and no key back. An identity is re-issued
// when its tags, its signer or its proxy's key change, or by half its
// life, and not otherwise: a catalogue change or a Dataplane change that
// keeps the tags regenerates what it must with the same certificate.
func TestIdentityPerInstance(t *testing.T) {
	out := &secretsOut{last: map[string]*tlsv3.Secret{}}
	g := NewGeneration(GenerationDeps{Out: out, CertTTL: time.Hour, Log: zaptest.NewLogger(t)})
	now := time.Now()
	ca, _ := mtls.NewCA("default", now)
	ca.Version = 1
	key, csr, err := mtls.NewKeyAndCSR("default.web-1")
	if err != nil {
		t.Fatal(err)
	}
	nodes := []xds.Node{
		{ID: "default.billing-1", Kind: xds.KindSidecar, Since: now},
		{ID: "default.billing-2", Kind: xds.KindSidecar, Since: now},
		{ID: "default.web-1", Kind: xds.KindSidecar, Since: now, CSR: string(csr)},
	}
	billing := func(name string, version int64, tags ...string) *api.Dataplane {
		d := dp("default", name, "billing", version)
		for i := 0; i < len(tags); i += 2 {
			d.Networking.Inbound[0].Tags[tags[i]] = tags[i+1]
		}
		return d
	}
	mesh := &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default", Version: 1}, MTLS: &api.MeshMTLS{Enabled: true}}
	step := func(at time.Time, rs ...api.Resource) int {
		t.Helper()
		g.state = xds.NewState(catalog.FromResources("zone-1", append([]api.Resource{mesh}, rs...)), g.state)
		g.generate(context.Background(), g.state, nodes, at)
		return out.published()
	}
	b1, b2, web := billing("billing-1", 1, "version", "v1"), billing("billing-2", 1, "version", "v2"), dp("default", "web-1", "web", 1)
	if n := step(now, ca, b1, b2, web); n != 3 {
		t.Fatalf("published %d, want 3", n)
	}
	l1, s1 := out.leaf(t, "default.billing-1")
	l2, _ := out.leaf(t, "default.billing-2")
	lw, sw := out.leaf(t, "default.web-1")
	if l1.PublicKey.(*ecdsa.PublicKey).Equal(l2.PublicKey) {
		t.Fatal("two billing instances share a key")
	}
	if want := "[spiffe://default/billing ursa://ursa.io/service/billing ursa://version/v1]"; sans(l1) != want {
		t.Fatalf("billing-1 names %s, want %s", sans(l1), want)
	}
	if len(s1.GetTlsCertificate().GetPrivateKey().GetInlineBytes()) == 0 {
		t.Fatal("billing-1, without a CSR, got no key")
	}
	if !mtls.SameKey(lw, key) || len(sw.GetTlsCertificate().GetPrivateKey().GetInlineBytes()) != 0 {
		t.Fatal("web-1's CSR: its own key must be certified, and no key sent")
	}

	// Nothing changed: nothing published, nothing signed.
	if n := step(now, ca, b1, b2, web); n != 0 {
		t.Fatalf("an unchanged catalogue published %d", n)
	}
	// billing-2 moves (same tags): it and web (which reaches billing) are
	// regenerated, with the certificates they had.
	moved := billing("billing-2", 2, "version", "v2")
	moved.Networking.Address = "10.0.0.2"
	if n := step(now, ca, b1, moved, web); n != 2 {
		t.Fatalf("a move published %d, want 2", n)
	}
	if l, _ := out.leaf(t, "default.billing-2"); l.SerialNumber.Cmp(l2.SerialNumber) != 0 {
		t.Fatal("a Dataplane change that keeps its tags re-issued its certificate")
	}
	if l, _ := out.leaf(t, "default.web-1"); l.SerialNumber.Cmp(lw.SerialNumber) != 0 {
		t.Fatal("another instance's change re-issued web's certificate")
	}
	// billing-1's tags change: a new certificate naming them.
	retagged := billing("billing-1", 2, "version", "v3")
	if n := step(now, ca, retagged, moved, web); n != 2 {
		t.Fatalf("a tag change published %d, want 2 (billing-1, and web that reaches it)", n)
	}
	if l, _ := out.leaf(t, "default.billing-1"); l.SerialNumber.Cmp(l1.SerialNumber) == 0 || sans(l) != "[spiffe://default/billing ursa://ursa.io/service/billing ursa://version/v3]" {
		t.Fatalf("after a tag change billing-1 names %s (serial changed: %v)", sans(l), l.SerialNumber.Cmp(l1.SerialNumber) != 0)
	}
	// web restarts with a new key: its identity certifies the new key.
	key2, csr2, _ := mtls.NewKeyAndCSR("default.web-1")
	nodes[2].CSR = string(csr2)
	if n := step(now, ca, retagged, moved, web); n != 1 {
		t.Fatalf("a new CSR published %d, want 1", n)
	}
	if l, _ := out.leaf(t, "default.web-1"); !mtls.SameKey(l, key2) {
		t.Fatal("the new CSR's key is not certified")
	}
	// Half the lifetime later, every identity is renewed.
	before, _ := out.leaf(t, "default.billing-2")
	if n := step(now.Add(31*time.Minute), ca, retagged, moved, web); n != 3 {
		t.Fatalf("renewal published %d, want 3", n)
	}
	if l, _ := out.leaf(t, "default.billing-2"); l.SerialNumber.Cmp(before.SerialNumber) == 0 || !l.NotAfter.After(before.NotAfter) {
		t.Fatal("billing-2 was not renewed")
	}
	// A new CA: every identity is re-issued by it.
	ca2, _ := mtls.NewCA("default", now)
	ca2.Version = 2
	if n := step(now.Add(31*time.Minute), ca2, retagged, moved, web); n != 3 {
		t.Fatalf("a new CA published %d, want 3", n)
	}
	for _, n := range nodes {
		if l, _ := out.leaf(t, n.ID); l.CheckSignatureFrom(mustCert(t, ca2.CertPEM)) != nil {
			t.Fatalf("%s's certificate is not from the new CA", n.ID)
		}
	}
	// A proxy that goes is forgotten.
	g.generate(context.Background(), g.state, nodes[:1], now)
	if len(g.ids.byNode) != 1 {
		t.Fatalf("%d identities kept for 1 connected proxy", len(g.ids.byNode))
	}
}

func mustCert(t *testing.T, p string) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode([]byte(p))
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRenewalSpread: identities issued together (a zone's proxies all
// connecting after it restarted) are renewed spread over the tenth of
// their lifetime before its half, in rounds a renewalBatch apart at most,
// each renewing a batch, never one after its drawn time.
func TestRenewalSpread(t *testing.T) {
	const n, ttl = 1000, 24 * time.Hour
	now := time.Now()
	ca, err := mtls.NewCA("default", now)
	if err != nil {
		t.Fatal(err)
	}
	var rs []api.Resource
	rs = append(rs, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}, MTLS: &api.MeshMTLS{Enabled: true}}, ca)
	for i := range n {
		rs = append(rs, dp("default", fmt.Sprintf("web-%04d", i), "web", 1))
	}
	m := xds.NewState(catalog.FromResources("zone-1", rs), nil).Mesh("default")
	sign := signingFor(map[string]*signing{}, m)
	ids := newIdentities(ttl)
	var requests []identityRequest
	for name, d := range m.Registered {
		requests = append(requests, identityRequest{node: "default." + name, dp: d, sign: sign})
	}
	first, last := now.Add(ttl), now
	for _, r := range requests {
		cur, err := ids.issue(r, now)
		if err != nil {
			t.Fatal(err)
		}
		first, last = minTime(first, cur.renewAt), maxTime(last, cur.renewAt)
	}
	half, early := now.Add(ttl/2), now.Add(ttl*4/10)
	if first.Before(early) || last.After(half) {
		t.Fatalf("renewal times from %v to %v after issue, want within [40%%, 50%%] of %v", first.Sub(now), last.Sub(now), ttl)
	}
	if spread := last.Sub(first); spread < ttl/20 {
		t.Fatalf("renewal times spread over %v only, want most of %v", spread, ttl/10)
	}
	// Renewal rounds, as generation runs them: at nextRenewal, what is
	// not reusable is re-issued.
	rounds, renewed := 0, map[string]bool{}
	for len(renewed) < n {
		at := ids.nextRenewal()
		if at.After(half) {
			t.Fatalf("round %d at %v: past every identity's half life, %d renewed", rounds, at.Sub(now), len(renewed))
		}
		rounds++
		batch := 0
		for _, r := range requests {
			if renewed[r.node] {
				continue
			}
			ids.mu.Lock()
			due := ids.byNode[r.node].renewAt
			ids.mu.Unlock()
			if _, ok := ids.reusable(r, at); ok {
				continue
			}
			if at.After(due) {
				t.Fatalf("%s renewed at %v, after its time %v", r.node, at.Sub(now), due.Sub(now))
			}
			renewed[r.node] = true
			batch++
			ids.mu.Lock()
			ids.byNode[r.node].renewAt = now.Add(ttl) // renewed: out of this test's rounds
			ids.mu.Unlock()
		}
		if batch == 0 {
			t.Fatalf("round %d at %v renewed nothing", rounds, at.Sub(now))
		}
	}
	if maxRounds := int(ttl/10/ids.renewalBatch()) + 2; rounds < 10 || rounds > maxRounds {
		t.Fatalf("%d identities renewed in %d rounds, want them spread (at least 10) and batched (at most %d)", n, rounds, maxRounds)
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
