package xds

import (
	"maps"
	"testing"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
)

func TestFailoverPriorities(t *testing.T) {
	ing := func(zone string) *api.ZoneIngress { return &api.ZoneIngress{Zone: zone} }
	fo := func(name string, spec api.FailoverSpec) *api.Failover {
		spec.Destination = map[string]string{api.TagService: "billing"}
		return &api.Failover{Meta: api.Meta{Type: "Failover", Mesh: "default", Name: name}, Spec: spec}
	}
	drain := func(name string, zones ...string) *api.Failover {
		return &api.Failover{Meta: api.Meta{Type: "Failover", Mesh: "default", Name: name},
			Spec: api.FailoverSpec{Destination: map[string]string{api.TagService: "*"}, Drained: zones}}
	}
	cases := []struct {
		name      string
		failovers []*api.Failover
		pinned    string
		want      map[string]uint32
	}{
		{"default: own zone, then the rest", nil, "",
			map[string]uint32{"z1": 0, "z2": 1, "z3": 1}},
		{"ordered", []*api.Failover{fo("f", api.FailoverSpec{LocalityAware: true, Order: []string{"z3", "z2"}})}, "",
			map[string]uint32{"z1": 0, "z3": 1, "z2": 2}},
		{"not locality-aware: own zone with the rest", []*api.Failover{fo("f", api.FailoverSpec{Order: []string{"z3"}})}, "",
			map[string]uint32{"z3": 0, "z1": 1, "z2": 1}},
		{"only listed", []*api.Failover{fo("f", api.FailoverSpec{Order: []string{"z3"}, OnlyListed: true})}, "",
			map[string]uint32{"z3": 0}},
		{"pinned zone first, then the order", []*api.Failover{fo("f", api.FailoverSpec{LocalityAware: true, Order: []string{"z3", "z2"}})}, "z2",
			map[string]uint32{"z2": 0, "z1": 1, "z3": 2}},
		{"pinned without a Failover", nil, "z3",
			map[string]uint32{"z3": 0, "z1": 1, "z2": 2}},
		{"drained goes last, the user's order kept", []*api.Failover{
			fo("f", api.FailoverSpec{LocalityAware: true, Order: []string{"z3", "z2"}}), drain("a-drain", "z3")}, "",
			map[string]uint32{"z1": 0, "z2": 1, "z3": 2}},
		{"drained pinned zone goes last", []*api.Failover{drain("d", "z2")}, "z2",
			map[string]uint32{"z1": 0, "z3": 1, "z2": 2}},
		{"drains add up, own zone included", []*api.Failover{drain("d1", "z1"), drain("d2", "z2")}, "",
			map[string]uint32{"z3": 0, "z1": 1, "z2": 1}},
		{"a drain does not bring back an unlisted zone", []*api.Failover{
			fo("f", api.FailoverSpec{Order: []string{"z3"}, OnlyListed: true}), drain("d", "z2")}, "",
			map[string]uint32{"z3": 0}},
		{"the more specific ordering wins", []*api.Failover{
			fo("b", api.FailoverSpec{Order: []string{"z2"}}),
			{Meta: api.Meta{Name: "a"}, Spec: api.FailoverSpec{Destination: map[string]string{api.TagService: "*"}, Order: []string{"z3"}}}}, "",
			map[string]uint32{"z2": 0, "z1": 1, "z3": 1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := NewMeshState(&catalog.MeshCatalog{Zone: "z1", Ingresses: []*api.ZoneIngress{ing("z2"), ing("z3")}, Failovers: c.failovers})
			got := s.failoverFor("billing").priorities(s, c.pinned)
			if !maps.Equal(got, c.want) {
				t.Fatalf("priorities = %v, want %v", got, c.want)
			}
		})
	}
}

// TestLoadAssignmentRenumbers checks that zones without endpoints leave no
// gap in the priorities, and that a zone the plan leaves out is dropped.
func TestLoadAssignmentRenumbers(t *testing.T) {
	eps := []Endpoint{{Address: "a", Port: 1, Weight: 1, Zone: "z3"}, {Address: "b", Port: 1, Weight: 2, Zone: "z1"}, {Address: "c", Port: 1, Weight: 1, Zone: "z4"}}
	cla := LoadAssignment("c", eps, map[string]uint32{"z2": 0, "z1": 1, "z3": 2})
	got := map[string]uint32{}
	for _, l := range cla.Endpoints {
		got[l.Locality.Zone] = l.Priority
	}
	if want := map[string]uint32{"z1": 0, "z3": 1}; !maps.Equal(got, want) {
		t.Fatalf("priorities = %v, want %v", got, want)
	}
}
