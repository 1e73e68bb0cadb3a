package zone

import (
	"context"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/xds"
)

// TestAutomaticRenewalIssuesFromAPublishedIntermediate: two thirds into
// the life of a zone's CA, whose next intermediate was signed with it, the
// zone goes on issuing from an intermediate whose records every zone
// already holds (the renewal publishes a new next one first), so zone-2,
// holding the mesh root as it was before the renewal, still verifies what
// zone-1 issues; the README's promise that no peer is asked to verify a
// certificate whose issuer's list it does not hold yet.
func TestAutomaticRenewalIssuesFromAPublishedIntermediate(t *testing.T) {
	t0 := time.Now().Add(-mtls.IntermediateTTL * 2 / 3).Add(-time.Hour) // the zone CAs were made 8 months ago
	root, err := mtls.NewCA("default", t0)
	if err != nil {
		t.Fatal(err)
	}
	zones := map[string]bool{"zone-1": true, "zone-2": true}
	puts, _, _, err := mtls.Timing{}.Plan(root, nil, zones, t0)
	if err != nil {
		t.Fatal(err)
	}
	before := puts[0].(*api.MeshCA)
	cas := map[string]*api.ZoneCA{}
	for _, p := range puts[1:] {
		cas[p.GetMeta().Name] = p.(*api.ZoneCA)
		cas[p.GetMeta().Name].Version = 1
	}
	// Now: the authority's hourly pass renews zone-1's (and zone-2's) CA.
	now := time.Now()
	renewed, _, what, err := mtls.Timing{}.Plan(before, map[string]*api.ZoneCA{"zone-1": cas["zone-1"]}, map[string]bool{"zone-1": true}, now)
	if err != nil || len(renewed) != 2 {
		t.Fatalf("renewal: %d puts, %v", len(renewed), err)
	}
	t.Logf("authority: %q", what)
	after, newCA := renewed[0].(*api.MeshCA), renewed[1].(*api.ZoneCA)

	redact, _ := api.Lookup("MeshCA")
	keyless := func(c *api.MeshCA, v int64) *api.MeshCA {
		k := redact.Redact(c).(*api.MeshCA)
		k.Version = v
		return k
	}
	mesh := &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default", Version: 1}, MTLS: &api.MeshMTLS{Enabled: true}}
	out := &sdsOut{last: map[string]map[string]*tlsv3.Secret{}}
	gen := func(zone string, rs ...api.Resource) {
		g := NewGeneration(GenerationDeps{Out: out, CertTTL: time.Hour, Log: zaptest.NewLogger(t)})
		g.state = xds.NewState(catalog.FromResources(zone, append([]api.Resource{mesh}, rs...)), nil)
		g.generate(context.Background(), g.state, []xds.Node{{ID: "default." + zone, Kind: xds.KindSidecar, Since: now}}, now)
	}
	// zone-2 holds the root as it was before the renewal.
	gen("zone-2", keyless(before, 1), cas["zone-2"], dp("default", "zone-2", "web", 1))
	// zone-1 has its renewed CA (and the new root) and re-issues.
	gen("zone-1", keyless(after, 2), newCA, dp("default", "zone-1", "billing", 1))

	leaf1 := chainOf(t, out.secret("default.zone-1", xds.SecretIdentity))
	trust2 := out.secret("default.zone-2", xds.SecretMeshCA)
	if err := verifies(t, leaf1, trust2); err != nil {
		t.Errorf("zone-1's certificate after the automatic renewal is refused by zone-2, which holds the lists published before it: %v", err)
	}
	// What was published before: was the intermediate that now issues among it?
	published := map[string]bool{}
	for _, in := range before.Intermediates {
		published[in.Serial] = true
	}
	if s := leaf1[1].SerialNumber.Text(16); !published[s] {
		t.Errorf("zone-1 now issues from intermediate %s, which was never published before it issued (published: %v)", s, strings.Join(keys(published), ","))
	}
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
