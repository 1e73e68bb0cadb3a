package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/testutil"
)

// The tracing tests' collector is Jaeger, built by test/jaeger/tools.sh
// into a cache folder (.ci/run does it and exports URSA_JAEGER_DIR). Like
// the Kubernetes rig, a test that needs it fails, naming the script, when
// it is missing; URSA_JAEGER=off skips it by choice.
const (
	jaegerDirEnv = "URSA_JAEGER_DIR"
	jaegerOffEnv = "URSA_JAEGER"
	jaegerScript = "../jaeger/tools.sh"
)

// jaeger is a running Jaeger all-in-one with in-memory storage.
type jaeger struct {
	// otlp is its OTLP/gRPC receiver, zipkin its Zipkin one, query its
	// HTTP query API.
	otlp, zipkin, query string
}

func jaegerBinary(t *testing.T) string {
	t.Helper()
	if os.Getenv(jaegerOffEnv) == "off" {
		t.Skipf("the tracing rig is off by choice (%s=off)", jaegerOffEnv)
	}
	dir := os.Getenv(jaegerDirEnv)
	if dir == "" {
		out, err := exec.Command("bash", jaegerScript, "--dir").Output()
		if err != nil {
			t.Fatalf("%s --dir: %v", jaegerScript, err)
		}
		dir = strings.TrimSpace(string(out))
	}
	bin := filepath.Join(dir, "jaeger")
	if fi, err := os.Stat(bin); err != nil || fi.Mode()&0o111 == 0 {
		t.Fatalf("no jaeger in %s: build it once with test/jaeger/tools.sh (about 3 min on a fresh machine, then cached), "+
			"point %s at a folder holding it, or set %s=off to skip the tracing tests", dir, jaegerDirEnv, jaegerOffEnv)
	}
	return bin
}

// startJaeger runs Jaeger on loopback ports of its own until the test ends.
func startJaeger(t *testing.T) *jaeger {
	t.Helper()
	bin := jaegerBinary(t)
	j := &jaeger{otlp: freeAddr(t), zipkin: freeAddr(t), query: freeAddr(t)}
	cfg := fmt.Sprintf(`service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp, zipkin]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics: {level: none}
    traces: {level: none}
    logs: {level: warn}
extensions:
  jaeger_query:
    storage: {traces: mem}
    http: {endpoint: "%s"}
    grpc: {endpoint: "%s"}
  jaeger_storage:
    backends:
      mem:
        memory: {max_traces: 10000}
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "%s"}
  zipkin: {endpoint: "%s"}
processors:
  batch: {timeout: 100ms}
exporters:
  jaeger_storage_exporter: {trace_storage: mem}
`, j.query, freeAddr(t), j.otlp, j.zipkin)
	file := filepath.Join(t.TempDir(), "jaeger.yaml")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p := launch(t, "jaeger", exec.Command(bin, "--config", "file:"+file))
	waitReady(t, "http://"+j.query+"/api/services", p)
	return j
}

// jaegerSpan is a span as Jaeger's query API returns it.
type jaegerSpan struct {
	TraceID       string `json:"traceID"`
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	References    []struct {
		RefType string `json:"refType"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	ProcessID string `json:"processID"`
	Tags      []struct {
		Key   string `json:"key"`
		Value any    `json:"value"`
	} `json:"tags"`
}

func (s jaegerSpan) tag(key string) string {
	for _, t := range s.Tags {
		if t.Key == key {
			return fmt.Sprint(t.Value)
		}
	}
	return ""
}

type jaegerTrace struct {
	TraceID   string       `json:"traceID"`
	Spans     []jaegerSpan `json:"spans"`
	Processes map[string]struct {
		ServiceName string `json:"serviceName"`
	} `json:"processes"`
}

// traces reads back the traces that have spans of service.
func (j *jaeger) traces(t *testing.T, service string) []jaegerTrace {
	t.Helper()
	resp, err := http.Get("http://" + j.query + "/api/traces?limit=100&lookback=1h&service=" + service)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var out struct {
		Data []jaegerTrace `json:"data"`
	}
	if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&out) != nil {
		return nil
	}
	return out.Data
}

// tracedApp is an HTTP application that answers "<name> <path>" and keeps
// the trace context of each request it got.
type tracedApp struct {
	addr string
	mu   sync.Mutex
	seen []seenContext
}

// seenContext is the span a request named as its parent: in its
// traceparent, and in its B3 headers.
type seenContext struct{ w3c, b3 spanRef }

type spanRef struct {
	trace, span string
	sampled     bool
}

// in is whether r names the server span of its trace in spans (trace ID
// without leading zeros → span ID), sampled.
func (r spanRef) in(spans map[string]string) bool {
	return r.sampled && r.span != "" && spans[strings.TrimLeft(r.trace, "0")] == r.span
}

func startTracedApp(t *testing.T, name string) *tracedApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &tracedApp{addr: ln.Addr().String()}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		c := seenContext{b3: spanRef{r.Header.Get("x-b3-traceid"), r.Header.Get("x-b3-spanid"), r.Header.Get("x-b3-sampled") == "1"}}
		if p := strings.Split(r.Header.Get("traceparent"), "-"); len(p) == 4 {
			c.w3c = spanRef{p[1], p[2], p[3] == "01"}
		}
		a.mu.Lock()
		a.seen = append(a.seen, c)
		a.mu.Unlock()
		fmt.Fprintf(w, "%s %s", name, r.URL.Path)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return a
}

func (a *tracedApp) contexts() []seenContext {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]seenContext(nil), a.seen...)
}

// l7obsMesh is a zone with billing (HTTP, its app a tracedApp) and db
// (TCP, a line echo) behind sidecars, and web's sidecar with explicit
// outbounds to both, under policies (YAML after the Mesh and a
// TrafficPermission for all).
type l7obsMesh struct {
	app             *tracedApp
	billing         *meshSidecar
	toBilling, toDB string
}

func startL7obsMesh(t *testing.T, policies string) *l7obsMesh {
	t.Helper()
	zone := startCP(t, "zone", "--zone", "zone-1")
	ctl(t, zone.api, openMTLSMesh+policies, "apply", "-f", "-")
	dir := t.TempDir()
	m := &l7obsMesh{app: startTracedApp(t, "billing"), toBilling: freeAddr(t), toDB: freeAddr(t)}
	m.billing = startSidecar(t, zone, dir, "billing-1", "billing", "ursa.io/protocol: http", m.app.addr)
	startSidecar(t, zone, dir, "db-1", "db", "ursa.io/protocol: tcp", echo(t, "db"))
	startSidecar(t, zone, dir, "web-1", "web", "ursa.io/protocol: http", freeAddr(t),
		fmt.Sprintf("{port: %s, tags: {ursa.io/service: billing}}", port(m.toBilling)),
		fmt.Sprintf("{port: %s, tags: {ursa.io/service: db}}", port(m.toDB)))
	eventually(t, "a request through both sidecars", func() bool { return m.get("/warmup") })
	return m
}

// get sends GET path (with x-canary: 1) through web's sidecar to billing
// and reports whether billing's app answered it.
func (m *l7obsMesh) get(path string) bool {
	return m.getWith(path, nil)
}

// getWith is get with the headers h too.
func (m *l7obsMesh) getWith(path string, h http.Header) bool {
	req, _ := http.NewRequest(http.MethodGet, "http://"+m.toBilling+path, nil)
	for k, v := range h {
		req.Header[k] = v
	}
	req.Header.Set("x-canary", "1")
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode == 200 && string(body) == "billing "+path
}

// checkTwoHopTraces finds in Jaeger the n traces of the requests to
// /orders/*: web's client span, and billing's server span its child, whose
// traceparent billing's app got (and with b3, its B3 headers too).
func checkTwoHopTraces(t *testing.T, j *jaeger, m *l7obsMesh, n int, b3 bool) {
	t.Helper()
	var traces []jaegerTrace
	eventually(t, "the requests' traces in Jaeger", func() bool {
		traces = nil
		for _, tr := range j.traces(t, "web") {
			if len(tr.Spans) == 2 && strings.Contains(tr.Spans[0].tag("url.path")+tr.Spans[1].tag("url.path"), "/orders/") {
				traces = append(traces, tr)
			}
		}
		return len(traces) == n
	})
	serverSpans := map[string]string{} // trace ID → billing's span ID
	for _, tr := range traces {
		var c, s *jaegerSpan
		for i := range tr.Spans {
			sp := &tr.Spans[i]
			switch svc := tr.Processes[sp.ProcessID].ServiceName; {
			case svc == "web" && sp.tag("span.kind") == "client":
				c = sp
			case svc == "billing" && sp.tag("span.kind") == "server":
				s = sp
			}
		}
		if c == nil || s == nil {
			t.Fatalf("trace %s: want web's client span and billing's server span, got %+v", tr.TraceID, tr)
		}
		if len(s.References) != 1 || s.References[0].RefType != "CHILD_OF" || s.References[0].SpanID != c.SpanID {
			t.Fatalf("trace %s: billing's span %s refers to %+v, want CHILD_OF web's %s", tr.TraceID, s.SpanID, s.References, c.SpanID)
		}
		if len(c.References) != 0 {
			t.Fatalf("trace %s: web's span has a parent, but the client sent no traceparent", tr.TraceID)
		}
		if c.OperationName != "billing default" || s.OperationName != "billing inbound" || c.tag("http.response.status_code") != "200" ||
			c.tag("ursa.zone") != "zone-1" || c.tag("http.request.method") != "GET" {
			t.Fatalf("trace %s: spans %q and %q, client tags %+v", tr.TraceID, c.OperationName, s.OperationName, c.Tags)
		}
		serverSpans[strings.TrimLeft(tr.TraceID, "0")] = s.SpanID
	}
	seen := m.app.contexts()
	for _, kind := range []string{"traceparent", "B3 headers"} {
		if kind == "B3 headers" && !b3 {
			continue
		}
		matched := 0
		for _, c := range seen {
			if ref := map[string]spanRef{"traceparent": c.w3c, "B3 headers": c.b3}[kind]; ref.in(serverSpans) {
				matched++
			}
		}
		if matched != n {
			t.Fatalf("%d of %d requests reached billing with its server span's %s; it saw %+v", matched, n, kind, seen)
		}
	}
}

// TestL7AccessLogsAndTraces: with real ursa-dp sidecars, a client's HTTP
// requests through web's sidecar to billing's write access log lines in
// the format a TrafficLog sets — to a file on the caller's side, and to a
// Fluent Forward collector on billing's — and, with a TrafficTrace to a
// real Jaeger over OTLP, make a client span (web's sidecar) and a server
// span (billing's), its child, which Jaeger's query API gives back as one
// trace; billing's application gets the server span's traceparent. A TCP
// service's connections are logged too, their HTTP fields "-".
func TestL7AccessLogsAndTraces(t *testing.T) {
	j := startJaeger(t)
	fluent := testutil.StartFluentCollector(t, "127.0.0.1:0")
	dir := t.TempDir()
	logPath, tcpLogPath := filepath.Join(dir, "access.log"), filepath.Join(dir, "tcp.log")
	// a-web-file wins web's outbound (its sources name web); on billing's
	// inbound, where only destinations count, b-billing-fluent's two tags
	// win.
	m := startL7obsMesh(t, fmt.Sprintf(`
type: TrafficLog
mesh: default
name: a-web-file
spec:
  sources: [{match: {ursa.io/service: web}}]
  destinations: [{match: {ursa.io/service: billing}}]
  backend: {file: {path: %q}}
  format: 'web-side %%REQ(:METHOD)%% %%REQ(:PATH)%% %%RESPONSE_CODE%% %%ROUTE_NAME%% %%REQ(X-CANARY)%% %%UPSTREAM_HOST%% %%REQ(X-REQUEST-ID)%%'
---
type: TrafficLog
mesh: default
name: b-billing-fluent
spec:
  sources: [{match: {ursa.io/service: '*'}}]
  destinations: [{match: {ursa.io/service: billing, ursa.io/zone: zone-1}}]
  backend: {tcp: {address: %q}}
  format: 'billing-side %%REQ(:PATH)%% %%RESPONSE_CODE%% %%ROUTE_NAME%% %%REQ(X-REQUEST-ID)%%'
---
type: TrafficLog
mesh: default
name: c-db-file
spec:
  sources: [{match: {ursa.io/service: web}}]
  destinations: [{match: {ursa.io/service: db}}]
  backend: {file: {path: %q}}
  format: 'db %%BYTES_RECEIVED%% %%BYTES_SENT%% %%REQ(:PATH)%% %%RESPONSE_CODE%% %%PROTOCOL%% %%UPSTREAM_CLUSTER%%'
---
type: TrafficTrace
mesh: default
name: traces
spec:
  sources: [{match: {ursa.io/service: '*'}}]
  destinations: [{match: {ursa.io/service: billing}}]
  backend: {openTelemetry: {address: %q}}
  sampling: 100
`, logPath, fluent.Addr, tcpLogPath, j.otlp))
	const n = 5
	for i := range n {
		if !m.get(fmt.Sprintf("/orders/%d", i)) {
			t.Fatalf("request %d failed", i)
		}
	}
	if got, err := call(m.toDB, "hello"); err != nil || got != "db: hello" {
		t.Fatalf("through the sidecars to db: %q %v", got, err)
	}

	// The file: one line per request of web's, in the set format, with
	// the X-Request-Id web's sidecar gave the request: a random UUID whose
	// version digit says "traced" (9), as Envoy's marks a request its
	// tracing samples.
	const uuid = `([0-9a-f]{8}-[0-9a-f]{4}-9[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})`
	line := regexp.MustCompile(`^web-side GET /orders/(\d) 200 default 1 ` + regexp.QuoteMeta(m.billing.inbound) + ` ` + uuid + `$`)
	webIDs := map[string]string{} // path → request ID
	eventually(t, "web's access log lines in the file", func() bool {
		b, _ := os.ReadFile(logPath)
		clear(webIDs)
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if s := line.FindStringSubmatch(l); s != nil {
				webIDs[s[1]] = s[2]
			}
		}
		return len(webIDs) == n
	})
	// The Fluent collector: billing's inbound lines, tagged ursa, with the
	// same request IDs: billing's sidecar kept what web's sent.
	record := regexp.MustCompile(`^billing-side /orders/(\d) 200 inbound ` + uuid + `$`)
	billingIDs := map[string]string{}
	eventually(t, "billing's access log records at the Fluent collector", func() bool {
		clear(billingIDs)
		for _, r := range fluent.Records() {
			if msg, _ := r.Record["message"].(string); r.Tag == "ursa" {
				if s := record.FindStringSubmatch(msg); s != nil {
					billingIDs[s[1]] = s[2]
				}
			}
		}
		return len(billingIDs) == n
	})
	distinct := map[string]bool{}
	for path, id := range webIDs {
		distinct[id] = true
		if billingIDs[path] != id {
			t.Errorf("/orders/%s: X-Request-Id %s on web's side, %s on billing's", path, id, billingIDs[path])
		}
	}
	if len(distinct) != n {
		t.Errorf("%d request IDs for %d requests: %v", len(distinct), n, webIDs)
	}
	// The TCP connection's lines, web's and db's (inbounds take the
	// policies that select their service, whoever calls): "hello\n" in,
	// "db: hello\n" out.
	tcpLine := regexp.MustCompile(`^db 6 10 - - - \S+$`)
	var tcpLog []byte
	defer func() {
		if t.Failed() {
			t.Logf("%s: %q", tcpLogPath, tcpLog)
		}
	}()
	eventually(t, "db's connection in its access log", func() bool {
		tcpLog, _ = os.ReadFile(tcpLogPath)
		lines := strings.Split(strings.TrimSuffix(string(tcpLog), "\n"), "\n")
		return len(lines) == 2 && tcpLine.MatchString(lines[0]) && tcpLine.MatchString(lines[1])
	})
	checkTwoHopTraces(t, j, m, n, false)
}

// TestL7TracesToZipkin: a TrafficTrace with a Zipkin backend sends the
// same two spans, as Zipkin JSON v2, to Jaeger's Zipkin receiver; the
// sidecars propagate B3 beside W3C, as Envoy's Zipkin tracer does with the
// CP's USE_B3_WITH_W3C_PROPAGATION. A caller instrumented with B3 (Zipkin's
// own libraries) stays in its trace: web's span is a child of its span.
func TestL7TracesToZipkin(t *testing.T) {
	j := startJaeger(t)
	m := startL7obsMesh(t, fmt.Sprintf(`
type: TrafficTrace
mesh: default
name: traces
spec:
  sources: [{match: {ursa.io/service: '*'}}]
  destinations: [{match: {ursa.io/service: billing}}]
  backend: {zipkin: {address: %q}}
`, j.zipkin))
	const n = 3
	for i := range n {
		if !m.get(fmt.Sprintf("/orders/%d", i)) {
			t.Fatalf("request %d failed", i)
		}
	}
	checkTwoHopTraces(t, j, m, n, true)

	const callerTrace, callerSpan = "5af7651916cd43dd8448eb211c80319c", "e7ad6b7169203331"
	if !m.getWith("/b3", http.Header{"X-B3-Traceid": {callerTrace}, "X-B3-Spanid": {callerSpan}, "X-B3-Sampled": {"1"}}) {
		t.Fatal("the request with a B3 context failed")
	}
	var web *jaegerSpan
	eventually(t, "the B3 caller's trace in Jaeger", func() bool {
		for _, tr := range j.traces(t, "web") {
			if strings.TrimLeft(tr.TraceID, "0") != callerTrace {
				continue
			}
			for i := range tr.Spans {
				if sp := &tr.Spans[i]; tr.Processes[sp.ProcessID].ServiceName == "web" {
					web = sp
				}
			}
		}
		return web != nil
	})
	if len(web.References) != 1 || web.References[0].SpanID != callerSpan {
		t.Fatalf("web's span in the B3 caller's trace refers to %+v, want its caller's span %s", web.References, callerSpan)
	}
}
