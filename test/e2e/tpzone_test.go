package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// tpZone is zone-1's CP on one host of a set, as the tests of the
// transparent proxy use it: listening on every address of its host (API
// :5681, xDS :5678), its API reached from that host's loopback, where
// tokenless callers are admins.
type tpZone struct {
	*cp
	h    *hosts
	host string
	dir  string // the test's files: tokens, Dataplanes
}

// startTPZone starts the zone on host with extra args, applies meshes (a
// YAML stream with Mesh default) and waits until the zone has the mesh.
// It fails the test when iptables-save, which the transparent proxy needs,
// is missing.
func startTPZone(t *testing.T, h *hosts, host, meshes string, args ...string) *tpZone {
	t.Helper()
	if _, err := exec.LookPath("iptables-save"); err != nil {
		t.Fatalf("iptables-save not found: run deploy/deps.sh (%v)", err)
	}
	z := &tpZone{h: h, host: host, dir: t.TempDir()}
	z.cp = h.startCP(t, host, append([]string{"zone", "--zone", "zone-1", "--api-addr", ":5681", "--xds-addr", ":5678"}, args...)...)
	z.ctl(t, meshes, "apply", "-f", "-")
	eventually(t, "the mesh in the zone", func() bool {
		_, _, err := h.ctl(t, host, nil, "http://127.0.0.1:5681", "", "get", "mesh", "default")
		return err == nil
	})
	return z
}

// ctl runs ursactl against the zone on its host and returns its output.
func (z *tpZone) ctl(t testing.TB, stdin string, args ...string) string {
	t.Helper()
	out, stderr, err := z.h.ctl(t, z.host, nil, "http://127.0.0.1:5681", stdin, args...)
	if err != nil {
		t.Fatalf("ursactl %s: %v %s", strings.Join(args, " "), err, stderr)
	}
	return out
}

// write writes a file of the test and returns its path.
func (z *tpZone) write(t testing.TB, name, content string) string {
	t.Helper()
	path := filepath.Join(z.dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// sidecarArgs are the `ursa-dp run` arguments of Dataplane name, an
// instance of service at host's address with one inbound (port, its app
// at appPort), reaching this zone with a dataplane token for service, its
// admin at 127.0.0.1:9901; extra flags follow.
func (z *tpZone) sidecarArgs(t testing.TB, host, name, service string, port, appPort int, extra ...string) []string {
	t.Helper()
	token := z.ctl(t, "", "generate", "dataplane-token", "--mesh", "default", "--service", service)
	dp := fmt.Sprintf("type: Dataplane\nmesh: default\nname: %s\nnetworking:\n  address: %s\n  inbound:\n  - {port: %d, servicePort: %d, tags: {ursa.io/service: %s}}\n",
		name, z.h.addr(host), port, appPort, service)
	return append([]string{"run", "--cp-address", "grpcs://" + z.xds, "--ca-cert-file", z.xdsCAFile(t),
		"--token-file", z.write(t, name+".token", token), "--dataplane-file", z.write(t, name+".yaml", dp),
		"--admin-addr", "127.0.0.1:9901"}, extra...)
}

// startSidecar runs ursa-dp on host with args and waits until it is ready
// (its admin at 127.0.0.1:9901).
func (z *tpZone) startSidecar(t testing.TB, host string, args []string) *proc {
	t.Helper()
	p := z.h.start(t, host, "ursa-dp", args...)
	waitReadyVia(t, z.h.client(t, host), "http://127.0.0.1:9901/ready", p)
	return p
}

// setResolvConf writes the resolv.conf that programs run on host read
// (/etc/netns/NS/resolv.conf, which ip netns exec mounts over
// /etc/resolv.conf); newHosts removes it with the namespace.
func (h *hosts) setResolvConf(t testing.TB, host, text string) {
	t.Helper()
	dir := filepath.Join("/etc/netns", h.namespace(t, host))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// vip waits until the zone has given service a VIP in mesh default, and
// returns it.
func (z *tpZone) vip(t testing.TB, service string) string {
	t.Helper()
	onCP := z.h.client(t, z.host) // the zone's API answers plain HTTP from its own host only
	var vip string
	eventually(t, service+"'s VIP", func() bool {
		resp, err := onCP.Get("http://127.0.0.1:5681/meshes/default/virtual-ips")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var list struct {
			Items []struct {
				Entries map[string]struct{ IP string } `json:"entries"`
			} `json:"items"`
		}
		if json.NewDecoder(resp.Body).Decode(&list) != nil || len(list.Items) == 0 {
			return false
		}
		vip = list.Items[0].Entries[service].IP
		return vip != ""
	})
	return vip
}
