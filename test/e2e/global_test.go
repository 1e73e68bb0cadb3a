package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// psql runs one query through the real psql client and returns its rows.
func psql(t *testing.T, dsn, query string) string {
	t.Helper()
	out, err := exec.Command("psql", dsn, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", query).CombinedOutput()
	if err != nil {
		t.Fatalf("psql %q: %v\n%s", query, err, out)
	}
	return strings.TrimSpace(string(out))
}

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
	p := start(t, "ursa-cp", "global", "--store", dsn, "--api-addr", addr, "--api-tls-addr", freeAddr(t), "--kds-addr", freeAddr(t))
	if err := p.wait(t); err == nil || !strings.Contains(p.out.String(), "migrate up") {
		t.Fatalf("ursa-cp on an unmigrated database: %v\n%s", err, p.out.String())
	}
	if out := start(t, "ursa-cp", "migrate", "up", "--store", dsn); out.wait(t) != nil || !strings.Contains(out.out.String(), "applied 1 ") || !strings.Contains(out.out.String(), "applied 2 ") {
		t.Fatalf("migrate up: %s", out.out.String())
	}
	st := start(t, "ursa-cp", "migrate", "status", "--store", dsn)
	if st.wait(t) != nil || !strings.Contains(st.out.String(), "applied") || strings.Contains(st.out.String(), "pending") {
		t.Fatalf("migrate status: %s", st.out.String())
	}

	server := "http://" + addr
	kdsAddr, tlsAddr := freeAddr(t), freeAddr(t)
	cp := start(t, "ursa-cp", "global", "--store", dsn, "--api-addr", addr, "--api-tls-addr", tlsAddr, "--kds-addr", kdsAddr)
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
	// psql, an independent client, sees the rows and the change log.
	rows := psql(t, dsn, `SELECT type || '/' || mesh || '/' || name || ' v' || version FROM ursa_resources WHERE type NOT IN ('GlobalSecret', 'MeshCA', 'ZoneCA', 'UserTokenPublicKey') ORDER BY 1`)
	wantRows := "Failover/default/billing-locality v1\nMesh//default v1\nSecret/default/token v1\nTrafficPermission/default/web-to-billing v1\n" +
		"TrafficRoute/default/billing-split v1\nZone//zone-1 v1\nZone//zone-2 v1"
	if rows != wantRows {
		t.Fatalf("psql sees:\n%s\nwant:\n%s", rows, wantRows)
	}
	// The mesh turned mTLS on: the global made its CA, then the enabled
	// zone's intermediate (the disabled one gets none).
	eventually(t, "the mesh CA and zone-1's", func() bool {
		return psql(t, dsn, `SELECT string_agg(type || '/' || name, ',' ORDER BY type) FROM ursa_resources WHERE type IN ('MeshCA', 'ZoneCA')`) == "MeshCA/ca,ZoneCA/zone-1"
	})
	// Seven resources, the global's four own secrets (the zone-token and
	// user-token signing keys, the KDS and the API TLS CAs), the user-token
	// key's public half, the mesh CA, and zone-1's intermediate with the
	// CA's record of it: fifteen changes, gapless.
	eventually(t, "fifteen changes, gapless", func() bool {
		return psql(t, dsn, `SELECT count(*) || ' ' || min(revision) || ' ' || max(revision) FROM ursa_changes`) == "15 1 15"
	})

	cp.stop(t)
	cp = start(t, "ursa-cp", "global", "--store", dsn, "--api-addr", addr, "--api-tls-addr", tlsAddr, "--kds-addr", kdsAddr)
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
	cp := start(t, "ursa-cp", "global", "--api-addr", addr, "--api-tls-addr", freeAddr(t), "--kds-addr", freeAddr(t))
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

// TestConfigPrecedence: flag > env > file > default, with the real binary.
func TestConfigPrecedence(t *testing.T) {
	fileAddr, envAddr, flagAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	file := t.TempDir() + "/cp.yaml"
	if err := os.WriteFile(file, []byte("api:\n  addr: "+fileAddr+"\nlog:\n  level: debug\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"file", nil, nil, fileAddr},
		{"env beats file", []string{"URSA_API_ADDR=" + envAddr}, nil, envAddr},
		{"flag beats env", []string{"URSA_API_ADDR=" + envAddr}, []string{"--api-addr", flagAddr}, flagAddr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp := startEnv(t, tc.env, "ursa-cp", append([]string{"global", "--config", file, "--api-tls-addr", freeAddr(t), "--kds-addr", freeAddr(t)}, tc.args...)...)
			waitReady(t, "http://"+tc.want+"/readyz", cp)
			cp.stop(t)
			if !strings.Contains(cp.out.String(), `"level":"debug"`) {
				t.Errorf("log.level from the file was not applied")
			}
		})
	}
	bad := startEnv(t, []string{"URSA_API_BODY_LIMIT=lots"}, "ursa-cp", "global")
	if err := bad.wait(t); err == nil || !strings.Contains(bad.out.String(), "URSA_API_BODY_LIMIT") {
		t.Fatalf("a bad env value must stop the CP with its name: %v %s", err, bad.out.String())
	}
}
