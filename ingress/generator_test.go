package ingress

import (
	"flag"
	"maps"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/xds"
	"github.com/ursamesh/ursa/pkg/xds/xdstest"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// catalogFrom reads a multi-document YAML of resources into zone-1's
// catalogue.
func catalogFrom(t *testing.T, file string) *catalog.Catalog {
	t.Helper()
	return catalog.FromResources("zone-1", xdstest.Inputs(t, file))
}

// TestGolden runs the ingress generator on each case under testdata; the
// case's first ZoneIngress is this zone's own. Every generated resource must
// pass Validate.
func TestGolden(t *testing.T) {
	inputs, _ := filepath.Glob("testdata/*.input.yaml")
	if len(inputs) == 0 {
		t.Fatal("no test cases")
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".input.yaml")
		t.Run(name, func(t *testing.T) {
			cat := catalogFrom(t, in)
			if len(cat.Ingresses) == 0 {
				t.Fatal("the case has no ZoneIngress of zone-1")
			}
			r, err := Generate(xds.NewState(cat, nil), xds.Proxy{Kind: xds.KindIngress, Ingress: cat.Ingresses[0].ZoneIngress})
			if err != nil {
				t.Fatal(err)
			}
			if err := xds.Validate(r); err != nil {
				t.Fatalf("generated resources do not validate: %v", err)
			}
			xdstest.Golden(t, strings.TrimSuffix(in, ".input.yaml")+".golden.yaml", xdstest.Render(t, r), *update)
		})
	}
}

// TestOffers: the ingress offers the online local instances grouped by tags
// with their zone, and nothing once its own proxy is offline.
func TestOffers(t *testing.T) {
	cat := catalogFrom(t, "testdata/split.input.yaml")
	offers := Offers(cat)
	if len(offers) != 3 || offers[0].Instances != 1 || offers[0].Tags[api.TagZone] != "zone-1" || offers[0].Port != 8080 {
		t.Fatalf("offers: %+v", offers)
	}
	ing := cat.Ingresses[0]
	next := Offered(ing, offers)
	if next == nil || len(next.AvailableServices) != 3 {
		t.Fatalf("an online ingress with no offers yet: %+v", next)
	}
	if again := Offered(catalog.LocalIngress{ZoneIngress: next, Online: true}, offers); again != nil {
		t.Fatalf("offers already written are written again: %+v", again)
	}
	if off := Offered(catalog.LocalIngress{ZoneIngress: next, Online: false}, offers); off == nil || len(off.AvailableServices) != 0 {
		t.Fatalf("an offline ingress still offers: %+v", off)
	}
}

// TestOffersPort: every offer of a service carries its port here, the app
// port of its first registered instance by Dataplane name, even where
// instances listen on other ports; an instance without servicePort offers
// its inbound port.
func TestOffersPort(t *testing.T) {
	dp := func(name, service string, port, servicePort int, version string) *api.Dataplane {
		return &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: name, Version: 1},
			Networking: api.DataplaneNetworking{Address: "10.0.0.1", Inbound: []api.Inbound{{Port: port, ServicePort: servicePort,
				Tags: map[string]string{api.TagService: service, "version": version}}}}}
	}
	cat := catalog.FromResources("zone-1", []api.Resource{
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default", Version: 1}, MTLS: &api.MeshMTLS{Enabled: true}},
		dp("billing-b", "billing", 10012, 9090, "v2"),
		dp("billing-a", "billing", 10011, 8080, "v1"),
		dp("web-1", "web", 10013, 0, "v1"),
	})
	got := map[string]int{}
	for _, o := range Offers(cat) {
		got[o.Tags[api.TagService]+"/"+o.Tags["version"]] = o.Port
	}
	want := map[string]int{"billing/v1": 8080, "billing/v2": 8080, "web/v1": 10013}
	if !maps.Equal(got, want) {
		t.Fatalf("offered ports %v, want %v", got, want)
	}
	// Computed twice, the offers are the same (the offers loop writes the
	// ingress only when they change).
	if a, b := Offers(cat), Offers(cat); !reflect.DeepEqual(a, b) {
		t.Fatalf("offers differ between two runs: %+v, %+v", a, b)
	}
}
