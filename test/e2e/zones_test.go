package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/testutil"
)

// meshZones is a global and zones, each with a zone CP and an ingress, for
// tests and benchmarks that move traffic between zones. Everything runs as
// real processes on loopback; the global keeps its state in memory.
type meshZones struct {
	t      testing.TB
	dir    string
	global *cp
	kds    string // the global's KDS address
	zones  map[string]*zoneProcs
}

type zoneProcs struct {
	name     string
	cp       *cp
	xds, dns string
	ingress  *proc
	ingArgs  []string
}

// instance is a service instance: an app and its ursa-dp sidecar.
type instance struct {
	app     net.Listener
	sidecar *proc
	args    []string
	file    string // its Dataplane
	reply   string
}

func startZones(t testing.TB, names ...string) *meshZones {
	t.Helper()
	return startZonesWith(t, nil, names...)
}

// startZonesWith is startZones with the global started with globalArgs
// too (its store, say).
func startZonesWith(t testing.TB, globalArgs []string, names ...string) *meshZones {
	t.Helper()
	m := &meshZones{t: t, dir: t.TempDir(), zones: map[string]*zoneProcs{}}
	m.global = startCP(t, append([]string{"global"}, globalArgs...)...)
	m.kds = m.global.kds
	_, pemCA := m.global.get(t, "/kds/ca.pem")
	ca := filepath.Join(m.dir, "ca.pem")
	os.WriteFile(ca, []byte(pemCA), 0o600)
	for i, name := range names {
		token := filepath.Join(m.dir, name+".token")
		os.WriteFile(token, []byte(ctl(t, m.global.api, "", "generate", "zone-token", "--zone", name)), 0o600)
		z := &zoneProcs{name: name}
		z.cp = startCP(t, "zone", "--zone", name, "--global-kds-address", "grpcs://"+m.kds, "--global-kds-ca-file", ca,
			"--zone-token-file", token, "--vip-cidr", fmt.Sprintf("127.%d.0.0/16", 240+i))
		z.xds, z.dns = z.cp.xds, z.cp.dns
		m.zones[name] = z
	}
	return m
}

// openMTLSMesh is the Mesh default with mTLS on and a TrafficPermission
// letting every service call every other: where most tests' resources
// begin (more YAML documents may follow it).
const openMTLSMesh = `type: Mesh
name: default
mtls: {enabled: true}
---
type: TrafficPermission
mesh: default
name: everyone
spec:
  sources: [{match: {ursa.io/service: '*'}}]
  destinations: [{match: {ursa.io/service: '*'}}]
---
`

// startBillingAcrossZones is the disaster-recovery setup: three zones with
// an ingress each, mTLS with everyone allowed, billing (answering with its
// zone's name) twice in zone-2 and once in zone-3, and web's sidecar in
// zone-1. It returns once calls from zone-1 to billing's VIP succeed in a
// row, with the VIP and zone-2's billing instances. (Both zone-2 sidecars
// want web's VIP listener on this one host: the second is refused that
// listener, as Envoy would be, and runs the rest.)
func startBillingAcrossZones(t testing.TB) (*meshZones, string, []*instance) {
	t.Helper()
	m := startZones(t, "zone-1", "zone-2", "zone-3")
	ctl(t, m.global.api, openMTLSMesh, "apply", "-f", "-")
	for name, z := range m.zones {
		eventually(t, "the mesh in "+name, func() bool { return z.cp.has(t, "/meshes/default") })
	}
	for _, z := range []string{"zone-1", "zone-2", "zone-3"} {
		m.startIngress(z)
	}
	billing2 := []*instance{
		m.startInstance("zone-2", "billing-2a", "billing", "zone-2"),
		m.startInstance("zone-2", "billing-2b", "billing", "zone-2"),
	}
	m.startInstance("zone-3", "billing-3", "billing", "zone-3")
	m.startInstance("zone-1", "web-1", "web", "web", "--log-level", "debug")
	z1 := m.zones["zone-1"]
	var vip string
	eventually(t, "billing.mesh in zone-1", func() bool {
		vip = dig(t, z1.dns, "billing.mesh", "+short")
		return strings.HasPrefix(vip, "127.240.")
	})
	// The mesh has converged once calls succeed in a row (both zones
	// offered); failures before that are start-up.
	for _, want := range []string{`"zone-2.ingress"`, `"zone-3.ingress"`} {
		eventually(t, want+" offering billing in zone-1", func() bool {
			_, body := z1.cp.get(t, "/zone-ingresses")
			i := strings.Index(body, want)
			return i >= 0 && strings.Contains(body[i:], `"ursa.io/service":"billing"`)
		})
	}
	eventually(t, "calls to succeed", func() bool {
		for range 20 {
			if _, err := call(vip+":80", "hi"); err != nil {
				return false
			}
		}
		return true
	})
	return m, vip, billing2
}

// startIngress starts (or restarts, on the same address) a zone's ingress.
func (m *meshZones) startIngress(zone string) {
	m.t.Helper()
	z := m.zones[zone]
	if z.ingArgs == nil {
		listen := freeAddr(m.t)
		file := filepath.Join(m.dir, zone+"-ingress.yaml")
		os.WriteFile(file, []byte(fmt.Sprintf("type: ZoneIngress\nname: ingress\nzone: %s\nnetworking: {address: 127.0.0.1, port: %s, advertisedAddress: 127.0.0.1, advertisedPort: %s}\n",
			zone, port(listen), port(listen))), 0o600)
		admin := freeAddr(m.t)
		z.ingArgs = append(append([]string{"ingress"}, z.cp.ingressFlags(m.t, zone)...), "--zone-ingress-file", file, "--admin-addr", admin)
	}
	// Not waited for: an ingress is ready once its zone has something to
	// offer, which callers wait for.
	z.ingress = start(m.t, "ursa-dp", z.ingArgs...)
}

// startInstance starts an instance of service in zone: an app answering
// each line with "<reply>: <line>" behind a sidecar.
func (m *meshZones) startInstance(zone, name, service, reply string, flags ...string) *instance {
	m.t.Helper()
	file := filepath.Join(m.dir, name+".yaml")
	os.WriteFile(file, []byte(fmt.Sprintf("type: Dataplane\nmesh: default\nname: %s\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - {port: %s, servicePort: %s, tags: {ursa.io/service: %s}}\n",
		name, port(freeAddr(m.t)), port(freeAddr(m.t)), service)), 0o600)
	in := &instance{reply: reply, file: file, args: append(append(append([]string{"run"}, m.zones[zone].cp.sidecarFlags(m.t, "default", service)...),
		append([]string{"--dataplane-file", file}, flags...)...), "--admin-addr", freeAddr(m.t))}
	m.restart(in)
	return in
}

// restart brings a killed instance back, on the same ports.
func (m *meshZones) restart(in *instance) {
	m.t.Helper()
	data, err := os.ReadFile(in.file)
	if err != nil {
		m.t.Fatal(err)
	}
	in.app = serveLines(m.t, appAddr(string(data)), in.reply)
	in.sidecar = start(m.t, "ursa-dp", in.args...)
	waitReady(m.t, "http://"+in.args[len(in.args)-1]+"/ready", in.sidecar)
}

// kill kills an instance's sidecar (SIGKILL) and closes its app.
func (in *instance) kill() {
	in.sidecar.cmd.Process.Signal(syscall.SIGKILL)
	err := <-in.sidecar.done
	in.sidecar.done <- err
	in.app.Close()
}

// appAddr reads the servicePort of a Dataplane file written by
// startInstance.
func appAddr(dataplane string) string {
	_, rest, _ := strings.Cut(dataplane, "servicePort: ")
	p, _, _ := strings.Cut(rest, ",")
	return "127.0.0.1:" + p
}

// serveLines answers each line on addr with "<reply>: <line>".
func serveLines(t testing.TB, addr, reply string) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	for range 50 { // the port of a just-closed listener may take a moment
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go testutil.ServeEach(ln, func(c net.Conn) {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			fmt.Fprintf(c, "%s: %s\n", reply, sc.Text())
		}
	})
	return ln
}

// load calls addr over and over from a few workers, each call a new
// connection, and keeps every outcome.
type load struct {
	mu      sync.Mutex
	results []callResult
	stop    chan struct{}
	wg      sync.WaitGroup
}

type callResult struct {
	start, end time.Time
	answer     string // who answered: the reply before ": "
	err        error
}

func startLoad(addr string, workers int, pause time.Duration) *load {
	l := &load{stop: make(chan struct{})}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				start := time.Now()
				answer, err := call(addr, fmt.Sprintf("w%d-%d", w, i))
				who, _, _ := strings.Cut(answer, ":")
				l.mu.Lock()
				l.results = append(l.results, callResult{start: start, end: time.Now(), answer: who, err: err})
				l.mu.Unlock()
				time.Sleep(pause)
			}
		}()
	}
	return l
}

func (l *load) close() {
	close(l.stop)
	l.wg.Wait()
}

// since returns the outcomes of the calls started at or after t.
func (l *load) since(t time.Time) []callResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []callResult
	for _, r := range l.results {
		if !r.start.Before(t) {
			out = append(out, r)
		}
	}
	return out
}

// all returns every outcome so far.
func (l *load) all() []callResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]callResult(nil), l.results...)
}
