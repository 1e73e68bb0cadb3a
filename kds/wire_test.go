package kds

import (
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ursamesh/ursa/pkg/api"
)

func TestEntryRoundTrip(t *testing.T) {
	r := &api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: "m", Name: "r", Version: 7,
		Labels: map[string]string{"team": "a", api.LabelOrigin: api.OriginGlobal}},
		Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: "s"}, Split: []api.Split{{Weight: 1}}}}
	e, err := NewEntry(WireName(api.KeyOf(r)), r, "")
	if err != nil {
		t.Fatal(err)
	}
	d, _ := api.Lookup("TrafficRoute")
	got, err := Decode(d, e.Wire)
	if err != nil {
		t.Fatal(err)
	}
	if got.GetMeta().Labels[api.LabelOrigin] != "" || got.GetMeta().Version != 0 || got.GetMeta().Labels["team"] != "a" {
		t.Fatalf("decoded meta %+v: the wire form must drop server-set fields and origin labels", got.GetMeta())
	}
	if Version(got) != e.Version || Version(r) != e.Version {
		t.Fatalf("versions differ: entry %s, decoded %s, original %s", e.Version, Version(got), Version(r))
	}
}

// FuzzDecode feeds arbitrary payloads, as a zone or a forged global could
// send them: Decode returns a resource or an error, never panics.
func FuzzDecode(f *testing.F) {
	r := &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "m"}}
	e, _ := NewEntry("m", r, "")
	f.Add("Mesh", "m", e.Wire.GetResource().GetValue())
	f.Add("TrafficRoute", "m/r", []byte{0x0a, 0x02, 'h', 'i'})
	f.Add("Dataplane", "a/b", []byte{})
	f.Fuzz(func(t *testing.T, typ, name string, value []byte) {
		d, ok := api.Lookup(typ)
		if !ok {
			return
		}
		Decode(d, &discovery.Resource{Name: name, Resource: &anypb.Any{TypeUrl: resourceURL, Value: value}})
		KeyOfWireName(d, name)
	})
}
