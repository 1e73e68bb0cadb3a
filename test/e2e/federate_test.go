package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStandaloneZoneJoinsGlobal: a zone that ran standalone on PostgreSQL,
// with a mesh, mTLS and traffic between two sidecars, is federated as
// Kuma's guide does it: its meshes and policies copied to a new global
// (ursactl get -o yaml into ursactl apply), then the zone CP restarted with
// the global's address on the same store. The global's copies replace what
// the zone made (they were refused as conflicting, forever, and the zone
// kept its own mesh CA, which no other zone trusts), no NACK is counted,
// traffic flows again under the global's CA, and a policy the global does
// not have can be deleted in the zone, where nothing else would remove it.
func TestStandaloneZoneJoinsGlobal(t *testing.T) {
	dsn, err := cluster.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p := start(t, "ursa-cp", "migrate", "up", "--store", dsn); p.wait(t) != nil {
		t.Fatalf("migrate: %s", p.out.String())
	}
	zone := startCP(t, "zone", "--zone", "zone-1", "--store", dsn, "--vip-cidr", "127.236.0.0/16")
	const legacy = `type: TrafficRoute
mesh: default
name: legacy
spec:
  destination: {ursa.io/service: nothing}
  split: [{weight: 100}]
`
	ctl(t, zone.api, openMTLSMesh+legacy, "apply", "-f", "-")
	dir := t.TempDir()
	toBilling := freeAddr(t)
	startSidecar(t, zone, dir, "billing-1", "billing", "version: v1", echo(t, "billing-1"))
	startSidecar(t, zone, dir, "web-1", "web", "version: v1", echo(t, "web-1"),
		fmt.Sprintf("{address: 127.0.0.1, port: %s, tags: {ursa.io/service: billing}}", port(toBilling)))
	reaches := func() bool {
		answer, err := call(toBilling, "hi")
		return err == nil && answer == "billing-1: hi"
	}
	eventually(t, "web's calls to reach billing in the standalone zone", reaches)

	global := startCP(t, "global")
	// Everything but the legacy route: the global will not send it.
	var copied []string
	for _, doc := range strings.Split(ctl(t, zone.api, "", "export"), "---\n") {
		if !strings.Contains(doc, "name: legacy") {
			copied = append(copied, doc)
		}
	}
	if out := ctl(t, global.api, strings.Join(copied, "---\n"), "apply", "-f", "-"); strings.Count(out, "created") != 2 {
		t.Fatalf("copying the zone's mesh and permission to the global: %s", out)
	}
	token := filepath.Join(dir, "zone-1.token")
	os.WriteFile(token, []byte(ctl(t, global.api, "", "generate", "zone-token", "--zone", "zone-1")), 0o600)
	_, pemCA := global.get(t, "/kds/ca.pem")
	ca := filepath.Join(dir, "kds-ca.pem")
	os.WriteFile(ca, []byte(pemCA), 0o600)

	zone.proc.stop(t)
	zone.args = append(zone.args, "--global-kds-address", "grpcs://"+global.kds, "--global-kds-ca-file", ca, "--zone-token-file", token)
	zone.restart(t)
	for _, path := range []string{"/meshes/default", "/meshes/default/traffic-permissions/everyone"} {
		eventually(t, path+" in the zone to be the global's", func() bool {
			_, body := zone.get(t, path)
			return strings.Contains(body, `"ursa.io/origin":"global"`)
		})
	}
	eventually(t, "the zone online at the global", func() bool {
		_, body := global.get(t, "/zone-insights/zone-1")
		return strings.Contains(body, `"connected":true`)
	})
	if out := ctl(t, global.api, "", "inspect", "zones"); !strings.Contains(out, "zone-1") || nacks(out, "zone-1") != "0" {
		t.Fatalf("inspect zones at the global:\n%s\nzone log:\n%s", out, zone.out.String())
	}
	eventually(t, "web's calls to reach billing under the global's CA", reaches)
	if out, errOut, err := ctlResult(zone.api, "", "delete", "traffic-route", "legacy"); err != nil {
		t.Fatalf("deleting the standalone days' route in the federated zone: %v %s %s", err, out, errOut)
	}
	if out, _, err := ctlResult(zone.api, "", "delete", "traffic-permission", "everyone"); err == nil {
		t.Fatalf("deleting the global's permission in the zone succeeded: %s", out)
	}
}

// nacks is the NACKS column of zone's row in ursactl inspect zones.
func nacks(table, zone string) string {
	lines := strings.Split(table, "\n")
	header := strings.Fields(lines[0])
	col := -1
	for i, h := range header {
		if h == "NACKS" {
			col = i
		}
	}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) > 0 && f[0] == zone && col >= 0 {
			// LAST SYNC is two words ("3s ago") in a one-word header pair.
			return f[len(f)-(len(header)-col)]
		}
	}
	return ""
}
