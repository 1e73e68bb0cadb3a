package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gatedApp is an HTTP application that answers /probe at once and holds
// every other request until the test opens its gate, counting those it
// holds.
type gatedApp struct {
	addr    string
	holding atomic.Int32
	gate    chan struct{}
	once    sync.Once
}

func startGatedApp(t *testing.T) *gatedApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &gatedApp{addr: ln.Addr().String(), gate: make(chan struct{})}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/probe" {
			a.holding.Add(1)
			<-a.gate
		}
		io.WriteString(w, "served")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { a.open(); srv.Close() })
	return a
}

func (a *gatedApp) open() { a.once.Do(func() { close(a.gate) }) }

// TestL7CircuitBreaker: a CircuitBreaker with max_requests 2 in front of
// a backend that holds its requests: of 10 concurrent calls through web's
// sidecar, 2 reach the backend and the other 8 are refused at once, 503
// overflow (UO in web's access log), while those 2 are still held — they
// do not queue — and web's sidecar counts the overflows on /metrics; the
// 2 are served when the backend answers.
func TestL7CircuitBreaker(t *testing.T) {
	zone := startCP(t, "zone", "--zone", "zone-1")
	dir := t.TempDir()
	logPath := filepath.Join(dir, "access.log")
	ctl(t, zone.api, fmt.Sprintf(openMTLSMesh+`type: CircuitBreaker
mesh: default
name: billing-breaker
spec:
  sources: [{match: {ursa.io/service: '*'}}]
  destinations: [{match: {ursa.io/service: billing}}]
  thresholds: {maxRequests: 2, maxPendingRequests: 1}
---
type: TrafficLog
mesh: default
name: web-log
spec:
  sources: [{match: {ursa.io/service: web}}]
  destinations: [{match: {ursa.io/service: billing}}]
  backend: {file: {path: %q}}
  format: '%%REQ(:PATH)%% %%RESPONSE_CODE%% %%RESPONSE_FLAGS%%'
`, logPath), "apply", "-f", "-")
	app := startGatedApp(t)
	startSidecar(t, zone, dir, "billing-1", "billing", "ursa.io/protocol: http", app.addr)
	out := freeAddr(t)
	web := startSidecar(t, zone, dir, "web-1", "web", "ursa.io/protocol: http", freeAddr(t),
		fmt.Sprintf("{port: %s, tags: {ursa.io/service: billing}}", port(out)))
	client := &http.Client{Timeout: 30 * time.Second}
	eventually(t, "billing's route through web's sidecar", func() bool {
		resp, err := client.Get("http://" + out + "/probe")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == 200 && string(body) == "served"
	})

	type result struct {
		status int
		body   string
		err    error
	}
	const calls = 10
	results := make(chan result, calls)
	for range calls {
		go func() {
			resp, err := client.Get("http://" + out + "/work")
			if err != nil {
				results <- result{err: err}
				return
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			results <- result{status: resp.StatusCode, body: string(body)}
		}()
	}
	for i := range calls - 2 {
		r := <-results
		if r.err != nil || r.status != http.StatusServiceUnavailable || !strings.Contains(r.body, "overflow") {
			t.Fatalf("refused call %d: %d %q %v, want 503 overflow", i, r.status, r.body, r.err)
		}
	}
	if held := app.holding.Load(); held > 2 {
		t.Fatalf("the backend got %d calls, want at most max_requests 2", held)
	}
	// Every refusal came while the backend still held the calls it got.
	if got := web.metric(t, "ursa_dp_circuit_breaker_open_total", `cluster="billing`, `kind="requests"`); got != calls-2 {
		t.Fatalf("web's sidecar counted %v overflows, want %d", got, calls-2)
	}
	eventually(t, "web's access log saying UO for each refusal", func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Count(string(b), "/work 503 UO\n") == calls-2
	})
	eventually(t, "two calls held by the backend", func() bool { return app.holding.Load() == 2 })
	app.open()
	for range 2 {
		if r := <-results; r.err != nil || r.status != http.StatusOK || r.body != "served" {
			t.Fatalf("an admitted call: %d %q %v", r.status, r.body, r.err)
		}
	}
}

// healthApp is an HTTP application that says its zone, and answers its
// health check path with a status the test sets.
type healthApp struct {
	addr   string
	status atomic.Int32
	srv    *http.Server
}

func startHealthApp(t *testing.T, addr, zone string) *healthApp {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	a := &healthApp{addr: ln.Addr().String()}
	a.status.Store(200)
	a.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			w.WriteHeader(int(a.status.Load()))
			return
		}
		io.WriteString(w, zone)
	})}
	go a.srv.Serve(ln)
	t.Cleanup(func() { a.srv.Close() })
	return a
}

// billingHealth checks billing's instances over HTTP, often.
const billingHealth = `type: HealthCheck
mesh: default
name: billing-health
spec:
  sources: [{match: {ursa.io/service: '*'}}]
  destinations: [{match: {ursa.io/service: billing}}]
  interval: 300ms
  timeout: 1s
  unhealthyThreshold: 2
  healthyThreshold: 2
  http: {path: /healthz, expectedStatuses: [200]}
`

// TestL7HealthCheckFailover: two zones, billing in each, web in zone-1
// calling billing over HTTP through its sidecar, with an HTTP HealthCheck.
// Calls stay in zone-1 while its instance passes its checks; when it
// starts answering 500 on the check path, web's sidecar marks it unhealthy
// and calls fail over to zone-2 through its ingress; when it passes again
// they come back; when the instance stops, they fail over again. When
// both fail their checks, calls go to both (panic), unless the
// HealthCheck turns panic off.
func TestL7HealthCheckFailover(t *testing.T) {
	m := startZones(t, "zone-1", "zone-2")
	global, dir := m.global, m.dir
	zones := map[string]*cp{"zone-1": m.zones["zone-1"].cp, "zone-2": m.zones["zone-2"].cp}
	ctl(t, global.api, openMTLSMesh+billingHealth, "apply", "-f", "-")
	for name, z := range zones {
		eventually(t, "the mesh in "+name, func() bool { return z.has(t, "/meshes/default") })
	}
	ingress := func(zone string) {
		listen := freeAddr(t)
		file := filepath.Join(dir, zone+"-ingress.yaml")
		os.WriteFile(file, []byte(fmt.Sprintf("type: ZoneIngress\nname: ingress\nzone: %s\nnetworking: {address: 127.0.0.1, port: %s, advertisedAddress: 127.0.0.1, advertisedPort: %s}\n",
			zone, port(listen), port(listen))), 0o600)
		start(t, "ursa-dp", append(append([]string{"ingress"}, zones[zone].ingressFlags(t, zone)...), "--zone-ingress-file", file, "--admin-addr", freeAddr(t))...)
	}
	ingress("zone-1")
	ingress("zone-2")
	local := startHealthApp(t, "127.0.0.1:0", "zone-1")
	startSidecar(t, zones["zone-1"], dir, "billing-1", "billing", "ursa.io/protocol: http", local.addr)
	remote := startHealthApp(t, "127.0.0.1:0", "zone-2")
	startSidecar(t, zones["zone-2"], dir, "billing-2", "billing", "ursa.io/protocol: http", remote.addr)
	out := freeAddr(t)
	web := startSidecar(t, zones["zone-1"], dir, "web-1", "web", "ursa.io/protocol: http", freeAddr(t),
		fmt.Sprintf("{port: %s, tags: {ursa.io/service: billing}}", port(out)))
	eventually(t, "zone-2's ingress offering billing in zone-1", func() bool {
		_, body := zones["zone-1"].get(t, "/zone-ingresses/zone-2.ingress")
		return strings.Contains(body, `"instances":1`)
	})

	client := &http.Client{Timeout: 5 * time.Second}
	call := func() string {
		resp, err := client.Get("http://" + out + "/where")
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return fmt.Sprintf("%d %s", resp.StatusCode, body)
		}
		return string(body)
	}
	// all is whether the next 20 calls are all answered by zone.
	all := func(zone string) error {
		for i := range 20 {
			if got := call(); got != zone {
				return fmt.Errorf("call %d answered %q, want %s", i, got, zone)
			}
		}
		return nil
	}
	stays := func(zone, what string) {
		t.Helper()
		eventually(t, "calls answered by "+zone+" "+what, func() bool { return call() == zone })
		if err := all(zone); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	// Until their first checks pass, both instances count as unhealthy,
	// so calls go to both zones in panic: wait for the checks first.
	bothHealthy := func() {
		t.Helper()
		eventually(t, "web's sidecar to see both instances healthy", func() bool {
			call() // the gauge is of the last pick
			return web.metric(t, "ursa_dp_endpoints_healthy", `cluster="billing"`) == 2
		})
	}
	bothHealthy()
	stays("zone-1", "while its instance is healthy")
	// zone-2's instance is reachable through its ingress, and checked
	// there: it must pass too, or the failover would have nowhere to go.
	local.status.Store(500)
	stays("zone-2", "once zone-1's instance fails its health check")
	if got := web.metric(t, "ursa_dp_health_check_failures_total", `cluster="billing`); got < 1 {
		t.Fatalf("web's sidecar counted %v failed checks", got)
	}
	local.status.Store(200)
	stays("zone-1", "once zone-1's instance passes again")
	local.srv.Close()
	stays("zone-2", "once zone-1's instance stops")
	local = startHealthApp(t, local.addr, "zone-1")
	stays("zone-1", "once zone-1's instance is back")

	// Both instances failing their checks: no zone can take the traffic,
	// so each is in panic (Envoy's default threshold, 50 %) and calls go
	// to both, healthy or not, rather than failing.
	bothHealthy()
	local.status.Store(500)
	remote.status.Store(500)
	eventually(t, "web's sidecar to see both instances unhealthy", func() bool {
		call() // the gauge is of the last pick
		return web.metric(t, "ursa_dp_endpoints_healthy", `cluster="billing"`) == 0
	})
	eventually(t, "calls answered by both zones in panic", func() bool {
		seen := map[string]bool{}
		for range 40 {
			seen[call()] = true
		}
		return len(seen) == 2 && seen["zone-1"] && seen["zone-2"]
	})
	if got := web.metric(t, "ursa_dp_lb_healthy_panic_total", `cluster="billing`); got < 1 {
		t.Fatalf("web's sidecar counted %v picks in panic", got)
	}
	// A panic threshold of 0 turns panic off: no healthy instance, 503.
	ctl(t, global.api, billingHealth+"  healthyPanicThreshold: 0\n", "apply", "-f", "-")
	eventually(t, "503 with panic off", func() bool {
		for range 20 {
			if got := call(); !strings.HasPrefix(got, "503 no healthy upstream") {
				return false
			}
		}
		return true
	})
}
