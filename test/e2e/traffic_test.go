package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/client"
)

// inspectBilling runs the real ursactl against server and returns billing's
// view and the callers in zone.
func inspectBilling(t *testing.T, server, zone string) (client.ServiceView, *client.CallerTraffic) {
	t.Helper()
	var out struct {
		Items []client.ServiceView `json:"items"`
	}
	stdout, stderr, err := ctlResult(server, "", "inspect", "services", "billing", "-m", "default", "-o", "json")
	if err != nil {
		return client.ServiceView{}, nil // not known yet
	}
	if err := json.Unmarshal([]byte(stdout), &out); err != nil || len(out.Items) != 1 {
		t.Fatalf("inspect services billing -o json: %v\n%s%s", err, stdout, stderr)
	}
	v := out.Items[0]
	for i := range v.Callers {
		if v.Callers[i].Zone == zone {
			return v, &v.Callers[i]
		}
	}
	return v, nil
}

// share is the percentage of the callers' current traffic going to zone.
func shareTo(c *client.CallerTraffic, zone string) float64 {
	if c == nil {
		return -1
	}
	for _, d := range c.To {
		if d.Zone == zone {
			return d.Share
		}
	}
	return 0
}

// poll checks cond every 250 ms (each check runs ursactl) for up to 20 s.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestServiceTrafficIsMeasured: with calls flowing from zone-1's client to
// billing, `ursactl inspect services billing` at the global shows, from the
// sidecars' own load reports (LRS → zone CP → ServiceInsight → KDS), the
// traffic going where it goes: all to zone-2 while billing runs only there,
// then all to zone-1 once billing starts in zone-1 too and the client's
// sidecar prefers it.
func TestServiceTrafficIsMeasured(t *testing.T) {
	global := startCP(t, "global")
	kdsAddr := global.kds
	dir := t.TempDir()
	_, pemCA := global.get(t, "/kds/ca.pem")
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, []byte(pemCA), 0o600)
	cps, dns := map[string]*cp{}, map[string]string{}
	for i, name := range []string{"zone-1", "zone-2"} {
		token := filepath.Join(dir, name+".token")
		os.WriteFile(token, []byte(ctl(t, global.api, "", "generate", "zone-token", "--zone", name)), 0o600)
		z := startCP(t, "zone", "--zone", name, "--global-kds-address", "grpcs://"+kdsAddr, "--global-kds-ca-file", ca,
			"--zone-token-file", token, "--vip-cidr", fmt.Sprintf("127.%d.0.0/16", 212+i))
		cps[name], dns[name] = z, z.dns
	}
	ctl(t, global.api, `
type: Mesh
name: default
mtls: {enabled: true}
---
type: TrafficPermission
mesh: default
name: web-to-billing
spec:
  sources: [{match: {ursa.io/service: web}}]
  destinations: [{match: {ursa.io/service: billing}}]
`, "apply", "-f", "-")
	dataplane := func(zone, name, service, app string) {
		file := filepath.Join(dir, name+".yaml")
		os.WriteFile(file, []byte(fmt.Sprintf("type: Dataplane\nmesh: default\nname: %s\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - {port: %s, servicePort: %s, tags: {ursa.io/service: %s}}\n",
			name, port(freeAddr(t)), port(app), service)), 0o600)
		admin := freeAddr(t)
		p := start(t, "ursa-dp", append(append([]string{"run"}, cps[zone].sidecarFlags(t, "default", service)...), "--dataplane-file", file, "--admin-addr", admin)...)
		waitReady(t, "http://"+admin+"/ready", p)
	}
	for _, zone := range []string{"zone-1", "zone-2"} {
		listen := freeAddr(t)
		file := filepath.Join(dir, zone+"-ingress.yaml")
		os.WriteFile(file, []byte(fmt.Sprintf("type: ZoneIngress\nname: ingress\nzone: %s\nnetworking: {address: 127.0.0.1, port: %s}\n", zone, port(listen))), 0o600)
		start(t, "ursa-dp", append(append([]string{"ingress"}, cps[zone].ingressFlags(t, zone)...), "--zone-ingress-file", file, "--admin-addr", freeAddr(t))...)
	}
	poll(t, "the mesh in both zones", func() bool {
		out, _, err := ctlResult(global.api, "", "inspect", "zones")
		return err == nil && strings.Count(out, "Online") == 2
	})
	dataplane("zone-2", "billing-2", "billing", echo(t, "zone-2"))
	dataplane("zone-1", "web-1", "web", freeAddr(t))

	var vip string
	poll(t, "billing.mesh in zone-1", func() bool {
		vip = dig(t, dns["zone-1"], "billing.mesh", "+short")
		return strings.HasPrefix(vip, "127.212.")
	})
	// A steady flow of calls from zone-1, one connection each.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			call(vip+":80", "hi")
			time.Sleep(20 * time.Millisecond)
		}
	})
	defer func() { cancel(); wg.Wait() }()

	var callers *client.CallerTraffic
	var view client.ServiceView
	poll(t, "zone-1's traffic to billing shown going to zone-2", func() bool {
		view, callers = inspectBilling(t, global.api, "zone-1")
		return shareTo(callers, "zone-2") == 100 && callers.PerSecond > 1
	})
	if view.Instances["zone-2"] != 1 || callers.Connections < 1 || callers.AgeSeconds > 10 {
		t.Fatalf("billing: %+v, zone-1's callers %+v", view, callers)
	}
	// billing starts in zone-1: the client's sidecar keeps its calls in
	// zone-1, and the view follows within seconds.
	dataplane("zone-1", "billing-1", "billing", echo(t, "zone-1"))
	poll(t, "zone-1's traffic to billing shown staying in zone-1", func() bool {
		view, callers = inspectBilling(t, global.api, "zone-1")
		return shareTo(callers, "zone-1") == 100 && shareTo(callers, "zone-2") == 0
	})
	if view.Instances["zone-1"] != 1 || view.Instances["zone-2"] != 1 {
		t.Fatalf("instances %v, want one in each zone", view.Instances)
	}
	if answer, err := call(vip+":80", "where"); err != nil || answer != "zone-1: where" {
		t.Fatalf("a call went to %q (%v), but the view says zone-1", answer, err)
	}
	table := ctl(t, global.api, "", "inspect", "services", "billing")
	if !strings.Contains(table, "zone-1 100%") {
		t.Fatalf("inspect services billing:\n%s", table)
	}
	t.Logf("inspect services billing:\n%s", table)
}
