package main

import (
	"strings"
	"testing"

	"github.com/ursamesh/ursa/pkg/api"
)

// TestExportAppliesElsewhere: export prints what the global owns without
// what its control plane keeps for itself, and another control plane's
// apply takes it whole (get -o yaml carries versions, which make apply's
// writes conditional: "not found" on a control plane that lacks them).
func TestExportAppliesElsewhere(t *testing.T) {
	fake, url := seeded(t)
	fake.Add(&api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: "default", Name: "synced", Version: 2,
		Labels: map[string]string{api.LabelOrigin: api.OriginGlobal, "team": "pay"}},
		Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: "pay"}, Split: []api.Split{{Weight: 100}}}})
	env := map[string]string{"URSA_API_SERVER": url}
	r := ursactl(t, env, "", "export")
	if r.code != 0 {
		t.Fatalf("export: %d %s", r.code, r.stderr)
	}
	for _, absent := range []string{"\nversion:", "creationTime", "modificationTime", "ursa.io/origin", "Dataplane", "ZoneIngress"} {
		if strings.Contains(r.stdout, absent) {
			t.Errorf("export printed %q:\n%s", absent, r.stdout)
		}
	}
	for _, present := range []string{"name: default", "name: other", "name: zone-1", "name: billing-split", "name: web", "team: pay"} {
		if !strings.Contains(r.stdout, present) {
			t.Errorf("export lacks %q:\n%s", present, r.stdout)
		}
	}
	if !strings.HasPrefix(r.stdout, "type: Mesh") {
		t.Errorf("export does not begin with the meshes:\n%s", r.stdout)
	}
	_, other := startFake(t)
	a := ursactl(t, map[string]string{"URSA_API_SERVER": other}, r.stdout, "apply", "-f", "-")
	if a.code != 0 || strings.Count(a.stdout, "created") != 6 {
		t.Fatalf("apply of the export elsewhere: %d\n%s\n%s", a.code, a.stdout, a.stderr)
	}
}

// TestExportNothing: a control plane with nothing to export prints no
// document and succeeds.
func TestExportNothing(t *testing.T) {
	_, url := startFake(t)
	if r := ursactl(t, map[string]string{"URSA_API_SERVER": url}, "", "export"); r.code != 0 || r.stdout != "" {
		t.Fatalf("export of nothing: %d %q %q", r.code, r.stdout, r.stderr)
	}
}
