package e2e

import (
	"context"
	"strings"
	"testing"
)

const resources = `
type: Mesh
name: default
mtls:
  enabled: true
labels:
  team: payments
---
type: Zone
name: zone-1
---
type: Zone
name: zone-2
enabled: false
---
type: TrafficRoute
mesh: default
name: billing-split
spec:
  destination: {ursa.io/service: billing}
  split:
  - weight: 90
    tags: {ursa.io/zone: zone-1}
  - weight: 10
    tags: {ursa.io/zone: zone-2}
---
type: TrafficPermission
mesh: default
name: web-to-billing
spec:
  sources: [{match: {ursa.io/service: web}}]
  destinations: [{match: {ursa.io/service: billing}}]
---
type: Failover
mesh: default
name: billing-locality
spec:
  destination: {ursa.io/service: billing}
  localityAware: true
  order: [zone-2]
  threshold: 50
---
type: Secret
mesh: default
name: token
data: c2VjcmV0
`

// TestGlobalOnPostgresSurvivesRestart starts the real ursa-cp on a real
// PostgreSQL, applies resources with the real ursactl, restarts the CP and
// reads every resource back unchanged.
func TestGlobalOnPostgresSurvivesRestart(t *testing.T) {
	dsn, err := cluster.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// An unmigrated database is refused with advice.
	addr := freeAddr(t)
	p := start(t, "ursa-cp", "global", "--store", dsn, "--api-addr", addr)
	if err := p.wait(t); err == nil || !strings.Contains(p.out.String(), "migrate up") {
		t.Fatalf("ursa-cp on an unmigrated database: %v\n%s", err, p.out.String())
	}
	if out := start(t, "ursa-cp", "migrate", "up", "--store", dsn); out.wait(t) != nil || !strings.Contains(out.out.String(), "applied 1") {
		t.Fatalf("migrate up: %s", out.out.String())
	}
	st := start(t, "ursa-cp", "migrate", "status", "--store", dsn)
	if st.wait(t) != nil || !strings.Contains(st.out.String(), "applied") || strings.Contains(st.out.String(), "pending") {
		t.Fatalf("migrate status: %s", st.out.String())
	}

	server := "http://" + addr
	cp := start(t, "ursa-cp", "global", "--store", dsn, "--api-addr", addr)
	waitReady(t, server+"/readyz", cp)
	out := ctl(t, server, resources, "apply", "-f", "-")
	if strings.Count(out, "created") != 7 {
		t.Fatalf("apply: %s", out)
	}
	words := []string{"meshes", "zones", "traffic-routes", "traffic-permissions", "failovers", "secrets"}
	before := map[string]string{}
	for _, w := range words {
		before[w] = ctl(t, server, "", "get", w, "-o", "yaml")
	}
	if !strings.Contains(before["traffic-routes"], "weight: 90") || !strings.Contains(before["secrets"], "c2VjcmV0") {
		t.Fatalf("unexpected listing:\n%s\n%s", before["traffic-routes"], before["secrets"])
	}

	cp.stop(t)
	cp = start(t, "ursa-cp", "global", "--store", dsn, "--api-addr", addr)
	waitReady(t, server+"/readyz", cp)
	for _, w := range words {
		if after := ctl(t, server, "", "get", w, "-o", "yaml"); after != before[w] {
			t.Errorf("%s changed across a restart:\nbefore:\n%s\nafter:\n%s", w, before[w], after)
		}
	}
	// Re-applying the same file changes versions but nothing else.
	out = ctl(t, server, resources, "apply", "-f", "-")
	if strings.Count(out, "updated") != 7 {
		t.Fatalf("re-apply: %s", out)
	}
	cp.stop(t)
}

// TestApplyIsAllOrNothing: one bad document and nothing is written.
func TestApplyIsAllOrNothing(t *testing.T) {
	addr := freeAddr(t)
	server := "http://" + addr
	cp := start(t, "ursa-cp", "global", "--api-addr", addr)
	waitReady(t, server+"/readyz", cp)
	bad := resources + "---\ntype: TrafficRoute\nmesh: default\nname: bad\nspec: {destination: {ursa.io/service: x}, split: [{weight: 101}]}\n"
	stdout, stderr, err := ctlResult(server, bad, "apply", "-f", "-")
	if err == nil || !strings.Contains(stderr, "spec.split[0].weight: must be between 0 and 100") {
		t.Fatalf("apply of a bad stream: %v\n%s\n%s", err, stdout, stderr)
	}
	if out, errOut, _ := ctlResult(server, "", "get", "meshes"); strings.Contains(out, "default") {
		t.Fatalf("a refused apply wrote a mesh: %s %s", out, errOut)
	}
	cp.stop(t)
}
