package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ursamesh/ursa/pkg/testutil"
)

// tap relays TCP connections from its address to target and records every
// byte that passes, both ways.
type tap struct {
	mu   sync.Mutex
	seen bytes.Buffer
	addr string
}

func startTap(t *testing.T, target string) *tap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	tp := &tap{addr: ln.Addr().String()}
	go testutil.ServeEach(ln, func(c net.Conn) {
		up, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer up.Close()
		rec := func(dst, src net.Conn) {
			buf := make([]byte, 32<<10)
			for {
				n, err := src.Read(buf)
				if n > 0 {
					tp.mu.Lock()
					tp.seen.Write(buf[:n])
					tp.mu.Unlock()
					dst.Write(buf[:n])
				}
				if err != nil {
					if cw, ok := dst.(*net.TCPConn); ok {
						cw.CloseWrite()
					}
					return
				}
			}
		}
		done := make(chan struct{})
		go func() { rec(up, c); close(done) }()
		rec(c, up)
		<-done
	})
	return tp
}

func (tp *tap) bytes() []byte {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return bytes.Clone(tp.seen.Bytes())
}

// TestCrossZoneTraffic: a global on PostgreSQL, zone-1 and zone-2 with an
// ingress each, billing only in zone-2 behind its sidecar, a client in
// zone-1 behind its sidecar. The client reaches billing.mesh (zone-1's VIP)
// on port 80 and on billing's port (from zone-2's offer), and the bytes
// travel client → sidecar → zone-2's ingress → billing's sidecar →
// billing; the ingress sees only TLS. A DENY written at the global refuses
// new connections; with billing also in zone-1, traffic stays in zone-1.
func TestCrossZoneTraffic(t *testing.T) {
	dsn, err := cluster.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p := start(t, "ursa-cp", "migrate", "up", "--store", dsn); p.wait(t) != nil {
		t.Fatalf("migrate: %s", p.out.String())
	}
	global := startCP(t, "global", "--store", dsn)
	kdsAddr := global.kds
	dir := t.TempDir()
	_, pemCA := global.get(t, "/kds/ca.pem")
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, []byte(pemCA), 0o600)
	type zone struct {
		cp       *cp
		xds, dns string
	}
	zones := map[string]*zone{}
	for i, name := range []string{"zone-1", "zone-2"} {
		token := filepath.Join(dir, name+".token")
		os.WriteFile(token, []byte(ctl(t, global.api, "", "generate", "zone-token", "--zone", name)), 0o600)
		z := &zone{}
		z.cp = startCP(t, "zone", "--zone", name, "--global-kds-address", "grpcs://"+kdsAddr, "--global-kds-ca-file", ca,
			"--zone-token-file", token, "--vip-cidr", fmt.Sprintf("127.%d.0.0/16", 240+i))
		z.xds, z.dns = z.cp.xds, z.cp.dns
		zones[name] = z
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
	for name, z := range zones {
		eventually(t, "the mesh in "+name, func() bool { return z.cp.has(t, "/meshes/default") })
	}
	dataplane := func(zoneName, name, service, app string) {
		file := filepath.Join(dir, name+".yaml")
		os.WriteFile(file, []byte(fmt.Sprintf("type: Dataplane\nmesh: default\nname: %s\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - {port: %s, servicePort: %s, tags: {ursa.io/service: %s}}\n",
			name, port(freeAddr(t)), port(app), service)), 0o600)
		admin := freeAddr(t)
		p := start(t, "ursa-dp", append(append([]string{"run"}, zones[zoneName].cp.sidecarFlags(t, "default", service)...), "--dataplane-file", file, "--admin-addr", admin)...)
		waitReady(t, "http://"+admin+"/ready", p)
	}
	ingress := func(zoneName string) *tap {
		listen := freeAddr(t)
		tp := startTap(t, listen)
		file := filepath.Join(dir, zoneName+"-ingress.yaml")
		os.WriteFile(file, []byte(fmt.Sprintf("type: ZoneIngress\nname: ingress\nzone: %s\nnetworking: {address: 127.0.0.1, port: %s, advertisedAddress: 127.0.0.1, advertisedPort: %s}\n",
			zoneName, port(listen), port(tp.addr))), 0o600)
		start(t, "ursa-dp", append(append([]string{"ingress"}, zones[zoneName].cp.ingressFlags(t, zoneName)...), "--zone-ingress-file", file, "--admin-addr", freeAddr(t))...)
		return tp
	}
	billingApp := echo(t, "billing in zone-2")
	dataplane("zone-2", "billing-2", "billing", billingApp)
	tap2 := ingress("zone-2")
	ingress("zone-1")
	dataplane("zone-1", "web-1", "web", freeAddr(t))
	dataplane("zone-2", "web-2", "web", freeAddr(t))

	z1 := zones["zone-1"]
	eventually(t, "zone-2's ingress offering billing in zone-1", func() bool {
		_, body := z1.cp.get(t, "/zone-ingresses/zone-2.ingress")
		return strings.Contains(body, `"instances":1`)
	})
	var vip string
	eventually(t, "billing.mesh in zone-1", func() bool {
		vip = dig(t, z1.dns, "billing.mesh", "+short")
		return strings.HasPrefix(vip, "127.240.")
	})
	var answer string
	eventually(t, "a call from zone-1 to billing in zone-2", func() bool {
		answer, err = call(vip+":80", "hello across zones")
		return err == nil
	})
	if answer != "billing in zone-2: hello across zones" {
		t.Fatalf("answer %q", answer)
	}
	seen := tap2.bytes()
	if len(seen) == 0 {
		t.Fatal("the call did not pass through zone-2's ingress")
	}
	if bytes.Contains(seen, []byte("hello across zones")) || bytes.Contains(seen, []byte("billing in zone-2")) {
		t.Fatal("zone-2's ingress saw plaintext")
	}
	// zone-2's offer carries billing's app port: zone-1 offers billing at
	// its VIP on that port too, as zone-2 does.
	eventually(t, "a call from zone-1 to billing in zone-2 on billing's port", func() bool {
		answer, err = call(vip+":"+port(billingApp), "on its port")
		return err == nil && answer == "billing in zone-2: on its port"
	})

	// billing starts in zone-1 too: new connections stay in zone-1.
	dataplane("zone-1", "billing-1", "billing", echo(t, "billing in zone-1"))
	eventually(t, "calls to prefer zone-1", func() bool {
		answer, err = call(vip+":80", "where")
		return err == nil && answer == "billing in zone-1: where"
	})
	for range 20 {
		if answer, err = call(vip+":80", "where"); err != nil || answer != "billing in zone-1: where" {
			t.Fatalf("with billing healthy in zone-1, a call went to %q (%v)", answer, err)
		}
	}

	// A client in zone-2 reaches billing there too.
	var vip2 string
	eventually(t, "billing.mesh in zone-2", func() bool {
		vip2 = dig(t, zones["zone-2"].dns, "billing.mesh", "+short")
		return strings.HasPrefix(vip2, "127.241.")
	})
	eventually(t, "a call within zone-2", func() bool {
		answer, err = call(vip2+":80", "local")
		return err == nil && answer == "billing in zone-2: local"
	})

	// A DENY at the global refuses new connections in both zones.
	ctl(t, global.api, `
type: TrafficPermission
mesh: default
name: no-web
spec:
  sources: [{match: {ursa.io/service: web}}]
  destinations: [{match: {ursa.io/service: billing}}]
  action: DENY
`, "apply", "-f", "-")
	for _, v := range []string{vip, vip2} {
		eventually(t, "the DENY to refuse new connections at "+v, func() bool {
			_, err := call(v+":80", "denied?")
			return err != nil
		})
	}
}
