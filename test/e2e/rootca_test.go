package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// rootPublishDelay is the global's --mtls-ca-publish-delay in these tests:
// each step of a root's rotation waits this long for the last one to have
// reached every zone and proxy (an hour by default).
const rootPublishDelay = 2 * time.Second

// rootStatus is the global's GET /meshes/default/ca.
func rootStatus(t *testing.T, c *cp) api.MeshRootStatus {
	t.Helper()
	code, body := c.get(t, "/meshes/default/ca")
	var s api.MeshRootStatus
	if code != 200 || json.Unmarshal([]byte(body), &s) != nil {
		t.Fatalf("GET /meshes/default/ca: %d %s", code, body)
	}
	return s
}

// TestMeshRootRotation: a global (on PostgreSQL) and two zones, billing in
// zone-2 and web in zone-1 over mTLS, the global's publishing time
// shortened to rootPublishDelay. `ursactl mesh rotate-root` replaces the
// mesh's root: ca-status walks through its phases to stable with the new
// root; calls from zone-1 to billing, made without a pause through the
// whole rotation, never fail, and a connection made before it keeps
// flowing; billing ends up presenting an intermediate of the new root. A
// certificate the old root signed is admitted by web's sidecar while the
// rotation runs and refused once the old root retired. A second rotation
// while one runs, and one of an unknown mesh, fail naming the problem.
func TestMeshRootRotation(t *testing.T) {
	globalDB := newDatabase(t)
	m := &meshZones{t: t, dir: t.TempDir(), zones: map[string]*zoneProcs{}}
	m.global = startCP(t, "global", "--store", globalDB, "--mtls-ca-publish-delay", rootPublishDelay.String())
	m.kds = m.global.kds
	_, kdsCA := m.global.get(t, "/kds/ca.pem")
	caFile := filepath.Join(m.dir, "ca.pem")
	os.WriteFile(caFile, []byte(kdsCA), 0o600)
	for i, name := range []string{"zone-1", "zone-2"} {
		token := filepath.Join(m.dir, name+".token")
		os.WriteFile(token, []byte(ctl(t, m.global.api, "", "generate", "zone-token", "--zone", name)), 0o600)
		z := &zoneProcs{name: name}
		z.cp = startCP(t, "zone", "--zone", name, "--global-kds-address", "grpcs://"+m.kds, "--global-kds-ca-file", caFile,
			"--zone-token-file", token, "--vip-cidr", fmt.Sprintf("127.%d.0.0/16", 253+i)) // VIPs no other test binds
		z.xds, z.dns = z.cp.xds, z.cp.dns
		m.zones[name] = z
	}
	ctl(t, m.global.api, openMTLSMesh, "apply", "-f", "-")
	for name, z := range m.zones {
		eventually(t, "the mesh in "+name, func() bool { return z.cp.has(t, "/meshes/default") })
	}
	m.startIngress("zone-1")
	m.startIngress("zone-2")
	billing := m.startInstance("zone-2", "billing-2", "billing", "billing in zone-2")
	web := m.startInstance("zone-1", "web-1", "web", "web")
	var vip string
	eventually(t, "billing.mesh in zone-1", func() bool {
		vip = dig(t, m.zones["zone-1"].dns, "billing.mesh", "+short")
		return strings.HasPrefix(vip, "127.253.")
	})
	eventually(t, "calls from zone-1 to billing in zone-2 in a row", func() bool {
		for range 10 {
			if answer, err := call(vip+":80", "hi"); err != nil || answer != "billing in zone-2: hi" {
				return false
			}
		}
		return true
	})
	before := rootStatus(t, m.global)
	if before.Phase != api.RootPhaseStable || before.Next != nil || len(before.Zones) != 2 {
		t.Fatalf("status before the rotation: %+v", before)
	}

	// A certificate the old root signs (its key is at the global only): a
	// caller web's sidecar admits while the old root is trusted.
	oldRoot := &api.MeshCA{Meta: api.Meta{Type: "MeshCA", Mesh: "default", Name: mtls.CAName},
		CertPEM: psql(t, globalDB, `SELECT document->>'certPEM' FROM ursa_resources WHERE type = 'MeshCA'`) + "\n",
		KeyPEM:  psql(t, globalDB, `SELECT document->>'keyPEM' FROM ursa_resources WHERE type = 'MeshCA'`) + "\n"}
	if parsePEM(t, oldRoot.CertPEM).SerialNumber.Text(16) != before.Root.Serial {
		t.Fatal("the global's stored root is not the one its status shows")
	}
	oldID, err := mtls.Issue(oldRoot, "billing", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	oldPair, err := tls.X509KeyPair(oldID.CertPEM, oldID.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	callWebAsOldRoot := func() error {
		c, err := tls.Dial("tcp", web.inbound(t), &tls.Config{Certificates: []tls.Certificate{oldPair}, InsecureSkipVerify: true})
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintln(c, "signed by the old root")
		_, err = bufio.NewReader(c).ReadString('\n')
		return err
	}
	if err := callWebAsOldRoot(); err != nil {
		t.Fatalf("web's sidecar refuses a certificate of the mesh's root before any rotation: %v", err)
	}

	held, err := net.DialTimeout("tcp", vip+":80", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	heldR := bufio.NewReader(held)
	echoOn := func(msg string) {
		t.Helper()
		held.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintln(held, msg)
		if got, err := heldR.ReadString('\n'); err != nil || got != "billing in zone-2: "+msg+"\n" {
			t.Fatalf("the held connection, %s: %q %v", msg, got, err)
		}
	}
	echoOn("before the rotation")

	l := startLoad(vip+":80", 4, 5*time.Millisecond)
	out := ctl(t, m.global.api, "", "mesh", "rotate-root", "default")
	if !strings.Contains(out, "mesh default: next root CA published") || !strings.Contains(out, before.Root.Serial) {
		t.Fatalf("rotate-root said %q", out)
	}
	started := rootStatus(t, m.global)
	if started.Next == nil || started.Root.Serial != before.Root.Serial || !strings.Contains(out, started.Next.Serial) {
		t.Fatalf("status after rotate-root: %+v", started)
	}
	if _, errOut, err := ctlResult(m.global.api, "", "mesh", "rotate-root", "default"); err == nil || !strings.Contains(errOut, "already being rotated") {
		t.Fatalf("a second rotate-root while one runs: %v %q", err, errOut)
	}
	if _, errOut, err := ctlResult(m.global.api, "", "mesh", "rotate-root", "nope"); err == nil || !strings.Contains(errOut, "no such mesh") {
		t.Fatalf("rotate-root of an unknown mesh: %v %q", err, errOut)
	}
	if s := rootStatus(t, m.global); s.Next == nil || s.Next.Serial != started.Next.Serial {
		t.Fatalf("a refused rotation changed the next root: %+v", s)
	}
	if err := callWebAsOldRoot(); err != nil {
		t.Fatalf("web's sidecar refuses a certificate of the old root while the rotation runs: %v", err)
	}

	// The phases, as ca-status shows them, until the old root retires.
	seen := map[string]bool{}
	testutil.Until(t, 60*time.Second, "the rotation to end", func() bool {
		st := ctl(t, m.global.api, "", "mesh", "ca-status", "default")
		for _, p := range []string{api.RootPhasePublishing, api.RootPhaseSwitching, api.RootPhaseRetiring, api.RootPhaseStable} {
			if strings.Contains(st, "default   "+p) {
				seen[p] = true
			}
		}
		return seen[api.RootPhaseStable] && strings.Contains(st, started.Next.Serial+" (until")
	})
	t.Logf("phases seen: %v", seen)
	if !seen[api.RootPhasePublishing] || !seen[api.RootPhaseRetiring] {
		t.Fatalf("ca-status never showed the publishing and retiring phases: %v", seen)
	}
	after := rootStatus(t, m.global)
	if after.Root.Serial != started.Next.Serial || after.Next != nil {
		t.Fatalf("status after the rotation: %+v", after)
	}
	newRoot := x509.NewCertPool()
	newRoot.AddCert(parsePEM(t, after.Root.CertPEM))
	eventually(t, "billing to present a chain to the new root", func() bool {
		chain := presentedChain(t, billing.inbound(t))
		if len(chain) != 2 {
			return false
		}
		inter := x509.NewCertPool()
		inter.AddCert(chain[1])
		_, err := chain[0].Verify(x509.VerifyOptions{Roots: newRoot, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		return err == nil
	})
	eventually(t, "web's sidecar to refuse a certificate of the retired root", func() bool { return callWebAsOldRoot() != nil })
	// More calls under the new root alone, then the verdict.
	retired := time.Now()
	eventually(t, "50 more calls under the new root alone", func() bool { return len(l.since(retired)) >= 50 })
	l.close()
	all := l.all()
	for _, r := range all {
		if r.err != nil {
			t.Fatalf("a call during the root's rotation failed (%d calls): %v", len(all), r.err)
		}
	}
	if len(all) < 100 {
		t.Fatalf("only %d calls across the rotation", len(all))
	}
	t.Logf("%d calls across the rotation, none failed", len(all))
	echoOn("after the rotation")
	for i := range 10 {
		if answer, err := call(vip+":80", "again"); err != nil || answer != "billing in zone-2: again" {
			t.Fatalf("call %d after the rotation: %q %v", i, answer, err)
		}
	}
	// The new root's key is at the global alone, as the old one's was.
	if got := psql(t, globalDB, `SELECT coalesce(document->>'nextKeyPEM', '') FROM ursa_resources WHERE type = 'MeshCA'`); got != "" {
		t.Fatalf("a retired rotation left a next key: %.40q", got)
	}
}

// TestStandaloneMeshRootRotation: a standalone zone is its own global: its
// root rotates the same way, asked of the zone's API, and calls between
// two sidecars in it never fail through the rotation.
func TestStandaloneMeshRootRotation(t *testing.T) {
	m := &meshZones{t: t, dir: t.TempDir(), zones: map[string]*zoneProcs{}}
	z := &zoneProcs{name: "zone-1"}
	z.cp = startCP(t, "zone", "--zone", "zone-1", "--vip-cidr", "127.252.0.0/16", "--mtls-ca-publish-delay", rootPublishDelay.String())
	z.xds, z.dns = z.cp.xds, z.cp.dns
	m.zones["zone-1"] = z
	ctl(t, z.cp.api, openMTLSMesh, "apply", "-f", "-")
	billing := m.startInstance("zone-1", "billing-1", "billing", "billing")
	m.startInstance("zone-1", "web-1", "web", "web")
	var vip string
	eventually(t, "billing.mesh", func() bool {
		vip = dig(t, z.dns, "billing.mesh", "+short")
		return strings.HasPrefix(vip, "127.252.")
	})
	eventually(t, "calls to billing in a row", func() bool {
		for range 10 {
			if answer, err := call(vip+":80", "hi"); err != nil || answer != "billing: hi" {
				return false
			}
		}
		return true
	})
	l := startLoad(vip+":80", 4, 5*time.Millisecond)
	out := ctl(t, z.cp.api, "", "mesh", "rotate-root", "default")
	started := rootStatus(t, z.cp)
	if started.Next == nil || !strings.Contains(out, started.Next.Serial) {
		t.Fatalf("rotate-root said %q; status %+v", out, started)
	}
	testutil.Until(t, 60*time.Second, "the rotation to end", func() bool {
		s := rootStatus(t, z.cp)
		return s.Phase == api.RootPhaseStable && s.Root.Serial == started.Next.Serial
	})
	newRoot := x509.NewCertPool()
	newRoot.AddCert(parsePEM(t, started.Next.CertPEM))
	eventually(t, "billing to present a chain to the new root", func() bool {
		chain := presentedChain(t, billing.inbound(t))
		if len(chain) != 2 {
			return false
		}
		inter := x509.NewCertPool()
		inter.AddCert(chain[1])
		_, err := chain[0].Verify(x509.VerifyOptions{Roots: newRoot, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		return err == nil
	})
	retired := time.Now()
	eventually(t, "50 more calls under the new root alone", func() bool { return len(l.since(retired)) >= 50 })
	l.close()
	all := l.all()
	for _, r := range all {
		if r.err != nil {
			t.Fatalf("a call during the root's rotation failed (%d calls): %v", len(all), r.err)
		}
	}
	t.Logf("%d calls across the rotation, none failed", len(all))
}

// TestProxylessMeshRootRotation: proxyless gRPC applications (grpc-go
// with xDS credentials, their certificates and trust on disk by ursa-dp
// proxyless) in a standalone zone through a root's rotation, each step
// longer than grpc-go's file watcher's refresh (10 s): the trust file
// holds both roots while the rotation runs and the new one alone after
// it; a new client connection, made every half second, is never refused,
// and a client on one long-lived connection never fails a call.
func TestProxylessMeshRootRotation(t *testing.T) {
	const delay = 12 * time.Second
	m := &meshZones{t: t, dir: t.TempDir(), zones: map[string]*zoneProcs{}}
	z := &zoneProcs{name: "zone-1"}
	z.cp = startCP(t, "zone", "--zone", "zone-1", "--vip-cidr", "127.252.0.0/16", "--mtls-ca-publish-delay", delay.String())
	z.xds, z.dns = z.cp.xds, z.cp.dns
	m.zones["zone-1"] = z
	ctl(t, z.cp.api, openMTLSMesh, "apply", "-f", "-")
	m.startProxylessServer("zone-1", "billing-1", "billing", "v1")
	web := m.startProxylessAgent("zone-1", "web-1", "web", "v1")
	held := web.dial(t, "billing")
	eventually(t, "a call to billing", func() bool { _, _, err := unary(held); return err == nil })
	roots := func() int {
		b, err := os.ReadFile(filepath.Join(web.dir, "ca.pem"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), "BEGIN CERTIFICATE")
	}
	if n := roots(); n != 1 {
		t.Fatalf("web trusts %d certificates before the rotation, want the root", n)
	}

	stop := make(chan struct{})
	heldErr := make(chan error, 1)
	go func() { // calls on one connection, without a pause
		defer close(heldErr)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, _, err := unary(held); err != nil {
				heldErr <- err
				return
			}
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
	}()
	ctl(t, z.cp.api, "", "mesh", "rotate-root", "default")
	started := rootStatus(t, z.cp)
	if started.Next == nil {
		t.Fatalf("status after rotate-root: %+v", started)
	}
	eventually(t, "web to trust both roots", func() bool { return roots() == 2 })
	fresh, phases := 0, map[string]bool{}
	testutil.Until(t, 5*delay, "the rotation to end", func() bool {
		c := web.dial(t, "billing")
		if _, _, err := unary(c); err != nil {
			t.Fatalf("a new connection to billing during the rotation (phase %v) failed: %v", phases, err)
		}
		fresh++
		s := rootStatus(t, z.cp)
		phases[s.Phase] = true
		return s.Phase == api.RootPhaseStable && s.Root.Serial == started.Next.Serial
	})
	eventually(t, "web to trust the new root alone", func() bool { return roots() == 1 })
	b, _ := os.ReadFile(filepath.Join(web.dir, "ca.pem"))
	if parsePEM(t, string(b)).SerialNumber.Text(16) != started.Next.Serial {
		t.Fatal("web's trust after the rotation is not the new root")
	}
	// New connections after grpc-go's next refresh, under the new root alone.
	deadline := time.Now().Add(11 * time.Second)
	for time.Now().Before(deadline) {
		if _, _, err := unary(web.dial(t, "billing")); err != nil {
			t.Fatalf("a new connection after the rotation failed: %v", err)
		}
		fresh++
		time.Sleep(500 * time.Millisecond)
	}
	close(stop)
	if err := <-heldErr; err != nil {
		t.Fatalf("a call on the long-lived connection failed: %v", err)
	}
	t.Logf("phases seen %v; %d new connections, none refused", phases, fresh)
}

// TestMeshRootRotationWaitsForAZoneAway: a global and one connected zone,
// and a second zone enabled that never connects. `rotate-root` publishes
// the next root and both zones' next intermediates are signed with it, but
// the connected zone does not switch to its intermediate, nor does the old
// root retire, while the other is away: its sidecars would refuse the
// certificates they bring. Disabling the absent zone lets the rotation end.
func TestMeshRootRotationWaitsForAZoneAway(t *testing.T) {
	dir := t.TempDir()
	global := startCP(t, "global", "--store", newDatabase(t), "--mtls-ca-publish-delay", rootPublishDelay.String())
	_, kdsCA := global.get(t, "/kds/ca.pem")
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, []byte(kdsCA), 0o600)
	token := filepath.Join(dir, "zone-1.token")
	os.WriteFile(token, []byte(ctl(t, global.api, "", "generate", "zone-token", "--zone", "zone-1")), 0o600)
	zone1 := startCP(t, "zone", "--zone", "zone-1", "--global-kds-address", "grpcs://"+global.kds, "--global-kds-ca-file", caFile,
		"--zone-token-file", token, "--vip-cidr", "127.252.0.0/16")
	ctl(t, global.api, openMTLSMesh+"---\ntype: Zone\nname: zone-away\n", "apply", "-f", "-")
	eventually(t, "the mesh in zone-1", func() bool { return zone1.has(t, "/meshes/default") })
	eventually(t, "both zones' CAs, zone-1 online", func() bool {
		s := rootStatus(t, global)
		return len(s.Zones) == 2 && strings.Contains(ctl(t, global.api, "", "inspect", "zones"), "Online")
	})

	ctl(t, global.api, "", "mesh", "rotate-root", "default")
	eventually(t, "the next root's intermediates signed (switching)", func() bool { return rootStatus(t, global).Phase == api.RootPhaseSwitching })
	// Long enough for zone-1 to have switched, and the old root retired,
	// were zone-away not waited for.
	deadline := time.Now().Add(5 * rootPublishDelay)
	for time.Now().Before(deadline) {
		s := rootStatus(t, global)
		for _, z := range s.Zones {
			if z.OnNext {
				t.Fatalf("%s issues under the next root while zone-away is away: %+v", z.Zone, s)
			}
		}
		if s.Phase != api.RootPhaseSwitching || len(s.Away) != 1 || s.Away[0] != "zone-away" {
			t.Fatalf("phase %s, away %v while zone-away is away", s.Phase, s.Away)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out := ctl(t, global.api, "", "mesh", "ca-status"); !strings.Contains(out, "waiting for zone-away to be online and up to date (or disabled)") {
		t.Fatalf("ca-status does not say what the rotation waits for:\n%s", out)
	}

	ctl(t, global.api, "type: Zone\nname: zone-away\nenabled: false\n", "apply", "-f", "-")
	testutil.Until(t, 30*time.Second, "the rotation's end once zone-away is disabled", func() bool {
		s := rootStatus(t, global)
		return s.Phase == api.RootPhaseStable && len(s.Zones) == 1 && s.Zones[0].Zone == "zone-1"
	})
}
