package e2e

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"
)

// startHTTPInstance starts an HTTP instance of service in zone: handler
// behind an ursa-dp sidecar, its inbound tagged ursa.io/protocol: http and
// with tags (YAML flow entries, "version: v1"). It returns once the
// sidecar is ready.
func (m *meshZones) startHTTPInstance(zone, name, service, tags string, handler http.Handler) {
	m.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		m.t.Fatal(err)
	}
	srv := &http.Server{Handler: handler}
	go srv.Serve(ln)
	m.t.Cleanup(func() { srv.Close() })
	if tags != "" {
		tags = ", " + tags
	}
	file := filepath.Join(m.dir, name+".yaml")
	os.WriteFile(file, []byte(fmt.Sprintf("type: Dataplane\nmesh: default\nname: %s\nnetworking:\n  address: 127.0.0.1\n  inbound:\n"+
		"  - {port: %s, servicePort: %s, tags: {ursa.io/service: %s, ursa.io/protocol: http%s}}\n",
		name, port(freeAddr(m.t)), port(ln.Addr().String()), service, tags)), 0o600)
	admin := freeAddr(m.t)
	p := start(m.t, "ursa-dp", append(append([]string{"run"}, m.zones[zone].cp.sidecarFlags(m.t, "default", service)...),
		"--dataplane-file", file, "--admin-addr", admin)...)
	waitReady(m.t, "http://"+admin+"/ready", p)
}

// curl runs curl against url with headers ("name: value") and returns the
// body, the status and curl's time_total.
func curl(t testing.TB, url string, headers ...string) (body string, status int, took time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	args := []string{"-s", "-o", "-", "-w", "\n%{http_code} %{time_total}", "--max-time", "10"}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	out, err := exec.CommandContext(ctx, "curl", append(args, url)...).Output()
	if err != nil && len(out) == 0 {
		return "", 0, 0
	}
	text := string(out)
	i := strings.LastIndexByte(text, '\n')
	var secs float64
	fmt.Sscanf(text[i+1:], "%d %g", &status, &secs)
	return text[:i], status, time.Duration(secs * float64(time.Second))
}

// TestL7 runs HTTP services across two zones behind sidecars, and curl
// through web's sidecar in zone-1: a TrafficRoute sends `x-canary: 1` to
// billing v2 (in zone-2, through its ingress) and the rest to v1 (in
// zone-1); a Retry brings a backend that fails half its calls with 503 to
// at least 99 % success; a Timeout of 300 ms answers a slow backend's
// calls with 504 within 300 ms ± 50 ms, while a WebSocket to it outlives
// that timeout. Bad L7 input (a regex that does
// not compile, a timeout of 0 or below) is refused with 400 naming the
// field.
func TestL7(t *testing.T) {
	m := startZones(t, "zone-1", "zone-2")
	ctl(t, m.global.api, openMTLSMesh+`type: TrafficRoute
mesh: default
name: billing-canary
spec:
  destination: {ursa.io/service: billing}
  split: [{weight: 100, tags: {version: v1}}]
  http:
  - match: {headers: {x-canary: {exact: "1"}}}
    split: [{weight: 100, tags: {version: v2}}]
---
type: Retry
mesh: default
name: flaky-retries
spec:
  sources: [{match: {ursa.io/service: '*'}}]
  destinations: [{match: {ursa.io/service: flaky}}]
  http:
    numRetries: 10
    retryOn: [5xx]
    backOff: {base: 5ms, max: 50ms}
---
type: Timeout
mesh: default
name: slow-timeout
spec:
  sources: [{match: {ursa.io/service: '*'}}]
  destinations: [{match: {ursa.io/service: slow}}]
  http: {requestTimeout: 300ms}
`, "apply", "-f", "-")
	for name, z := range m.zones {
		eventually(t, "the mesh in "+name, func() bool { return z.cp.has(t, "/meshes/default") })
	}
	m.startIngress("zone-1")
	m.startIngress("zone-2")
	says := func(what string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, what) })
	}
	m.startHTTPInstance("zone-1", "billing-v1", "billing", "version: v1", says("billing v1"))
	m.startHTTPInstance("zone-2", "billing-v2", "billing", "version: v2", says("billing v2"))
	m.startHTTPInstance("zone-1", "flaky-1", "flaky", "", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if rand.N(2) == 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, "flaky")
	}))
	echo := websocket.Handler(func(ws *websocket.Conn) { io.Copy(ws, ws) })
	m.startHTTPInstance("zone-1", "slow-1", "slow", "", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			echo.ServeHTTP(w, r)
			return
		}
		select {
		case <-r.Context().Done():
		case <-time.After(3 * time.Second):
		}
		fmt.Fprint(w, "slow")
	}))
	m.startHTTPInstance("zone-1", "web-1", "web", "", says("web"))
	z1 := m.zones["zone-1"]
	vip := func(service string) string {
		var v string
		eventually(t, service+".mesh in zone-1", func() bool {
			v = dig(t, z1.dns, service+".mesh", "+short")
			return strings.HasPrefix(v, "127.240.")
		})
		return "http://" + v + ":80/"
	}
	eventually(t, "zone-2's ingress offering billing in zone-1", func() bool {
		_, body := z1.cp.get(t, "/zone-ingresses/zone-2.ingress")
		return strings.Contains(body, `"instances":1`)
	})

	// The canary: x-canary: 1 to v2 in zone-2, anything else to v1.
	billing := vip("billing")
	eventually(t, "the canary route to billing v2 in zone-2", func() bool {
		body, status, _ := curl(t, billing, "x-canary: 1")
		return status == 200 && body == "billing v2"
	})
	for i := range 20 {
		if body, status, _ := curl(t, billing, "x-canary: 1"); status != 200 || body != "billing v2" {
			t.Fatalf("canary call %d: %d %q", i, status, body)
		}
		if body, status, _ := curl(t, billing, "x-canary: 0"); status != 200 || body != "billing v1" {
			t.Fatalf("call %d with x-canary: 0: %d %q", i, status, body)
		}
		if body, status, _ := curl(t, billing); status != 200 || body != "billing v1" {
			t.Fatalf("call %d without x-canary: %d %q", i, status, body)
		}
	}

	// Retries: half the calls fail upstream, at least 99 % succeed.
	flaky := vip("flaky")
	eventually(t, "flaky to answer", func() bool {
		_, status, _ := curl(t, flaky)
		return status == 200
	})
	ok := 0
	const calls = 200
	for range calls {
		if body, status, _ := curl(t, flaky); status == 200 && body == "flaky" {
			ok++
		}
	}
	t.Logf("with retries, %d of %d calls succeeded", ok, calls)
	if ok*100 < calls*99 {
		t.Fatalf("with retries, %d of %d calls to a backend failing half its calls succeeded; want at least 99 %%", ok, calls)
	}

	// The timeout: 504, at 300 ms ± 50 ms (curl's time_total, the median
	// of five calls).
	slow := vip("slow")
	eventually(t, "the slow service's timeout", func() bool {
		_, status, _ := curl(t, slow)
		return status == http.StatusGatewayTimeout
	})
	var statuses []int
	var took []time.Duration
	for range 5 {
		_, status, d := curl(t, slow)
		statuses, took = append(statuses, status), append(took, d)
	}
	slices.Sort(took)
	t.Logf("a slow backend behind a 300ms request timeout: statuses %v, curl time_total %v", statuses, took)
	if median := took[2]; slices.ContainsFunc(statuses, func(s int) bool { return s != http.StatusGatewayTimeout }) ||
		median < 250*time.Millisecond || median > 350*time.Millisecond {
		t.Fatalf("a slow backend behind a 300ms request timeout: statuses %v, times %v (median %s); want 504 within 300ms ± 50ms", statuses, took, median)
	}

	// A WebSocket to the same service outlives that timeout, which bounds
	// only the wait for the upgrade (as Envoy's): its messages cross
	// through both sidecars well after it.
	ws, err := websocket.Dial(strings.Replace(slow, "http://", "ws://", 1)+"chat", "", "http://web.mesh/")
	if err != nil {
		t.Fatalf("a WebSocket through the sidecars: %v", err)
	}
	defer ws.Close()
	for i := range 3 {
		time.Sleep(400 * time.Millisecond)
		msg := fmt.Sprintf("message %d, %d ms after the upgrade", i, 400*(i+1))
		ws.SetDeadline(time.Now().Add(5 * time.Second))
		var got string
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatalf("WebSocket send %d: %v", i, err)
		}
		if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
			t.Fatalf("WebSocket echo %d past the 300ms request timeout: %q, %v", i, got, err)
		}
	}

	// Bad input: 400 naming the field, nothing applied.
	for _, c := range []struct{ doc, want string }{
		{"type: TrafficRoute\nmesh: default\nname: bad-regex\nspec:\n  destination: {ursa.io/service: billing}\n  split: [{weight: 1, tags: {version: v1}}]\n" +
			"  http: [{match: {path: {regex: '(unclosed'}}, split: [{weight: 1, tags: {version: v2}}]}]\n", "spec.http[0].match.path.regex"},
		{"type: Timeout\nmesh: default\nname: zero\nspec:\n  sources: [{match: {ursa.io/service: web}}]\n  destinations: [{match: {ursa.io/service: billing}}]\n" +
			"  http: {requestTimeout: 0s}\n", "spec.http.requestTimeout"},
		{"type: Timeout\nmesh: default\nname: negative\nspec:\n  sources: [{match: {ursa.io/service: web}}]\n  destinations: [{match: {ursa.io/service: billing}}]\n" +
			"  connectTimeout: -1s\n", "spec.connectTimeout"},
	} {
		_, stderr, err := ctlResult(m.global.api, c.doc, "apply", "-f", "-")
		if err == nil || !strings.Contains(stderr, c.want) {
			t.Errorf("apply of %q: %v, stderr %q; want a refusal naming %s", c.doc, err, stderr, c.want)
		}
		kind, rest, _ := strings.Cut(strings.TrimPrefix(c.doc, "type: "), "\n")
		name := strings.TrimPrefix(strings.Split(rest, "\n")[1], "name: ")
		path := map[string]string{"TrafficRoute": "traffic-routes", "Timeout": "timeouts"}[kind]
		req, _ := http.NewRequest(http.MethodPut, m.global.api+"/meshes/default/"+path+"/"+name, strings.NewReader(c.doc))
		req.Header.Set("Content-Type", "application/yaml")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("PUT of %s %s: status %d, want 400", kind, name, resp.StatusCode)
		}
		if status, _ := m.global.get(t, "/meshes/default/"+path+"/"+name); status != http.StatusNotFound {
			t.Errorf("the refused %s %s was written (%s)", kind, name, strconv.Itoa(status))
		}
	}
}
