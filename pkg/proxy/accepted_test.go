package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/xds"
)

// "Accepted by the API ⇒ works in the data plane": a standalone zone CP's
// real REST API on 127.0.0.1 over the memory store takes a mesh, two HTTP
// services and a resource; then every sidecar of the mesh is generated
// from what the store holds, checked with xds.Validate (ValidateAll and
// references) and translated by the built-in proxy. A resource the API
// accepts must pass both; one they would refuse, the API refuses (400,
// naming its field), so that no proxy is left on an old configuration.

const acceptMesh = `type: Mesh
name: default
`

var acceptDataplanes = map[string]string{
	"web-1": `type: Dataplane
networking:
  address: 127.0.0.5
  inbound: [{port: 10010, servicePort: 8000, tags: {ursa.io/service: web, ursa.io/protocol: http}}]
`,
	"billing-1": `type: Dataplane
networking:
  address: 127.0.0.7
  inbound: [{port: 10011, servicePort: 8080, tags: {ursa.io/service: billing, ursa.io/protocol: http, version: v1}}]
`,
}

type acceptCP struct {
	url   string
	store store.Store
}

func newAcceptCP(t *testing.T) *acceptCP {
	t.Helper()
	st := store.NewMemory(0)
	h, err := apiserver.New(apiserver.Deps{Store: st, Log: zaptest.NewLogger(t), Mode: apiserver.ModeStandalone, Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h) // 127.0.0.1
	t.Cleanup(srv.Close)
	cp := &acceptCP{url: srv.URL, store: st}
	cp.mustPut(t, "/meshes/default", acceptMesh)
	for name, body := range acceptDataplanes {
		cp.mustPut(t, "/meshes/default/dataplanes/"+name, body)
	}
	// The zone CP's VIP allocator writes these (a system type).
	vips := &api.VirtualIPs{Meta: api.Meta{Type: "VirtualIPs", Mesh: "default", Name: "vips"},
		Entries: map[string]api.VirtualIP{"web": {IP: "240.0.0.2"}, "billing": {IP: "240.0.0.1"}}}
	if _, err := st.Create(context.Background(), vips); err != nil {
		t.Fatal(err)
	}
	return cp
}

func (cp *acceptCP) put(t *testing.T, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("PUT", cp.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (cp *acceptCP) mustPut(t *testing.T, path, body string) {
	t.Helper()
	if code, b := cp.put(t, path, body); code/100 != 2 {
		t.Fatalf("PUT %s: %d %s", path, code, b)
	}
}

// dataPlane generates every sidecar of the mesh from the store and returns
// what xds.Validate or the built-in proxy refuse, per sidecar.
func (cp *acceptCP) dataPlane(t *testing.T) error { return cp.dataPlaneN(t, 2) }

func (cp *acceptCP) dataPlaneN(t *testing.T, want int) error {
	t.Helper()
	var all []api.Resource
	for _, d := range api.Types() {
		res, err := cp.store.List(context.Background(), store.ListOptions{Type: d.Type})
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, res.Items...)
	}
	state := xds.NewState(catalog.FromResources("zone-1", all), nil)
	var errs []error
	n := 0
	for _, m := range state.Meshes() {
		for _, dp := range m.Registered {
			n++
			res, err := xds.Sidecar(state, xds.Proxy{Kind: xds.KindSidecar, Dataplane: dp})
			if err != nil {
				errs = append(errs, fmt.Errorf("generate %s: %w", dp.Name, err))
				continue
			}
			if err := xds.Validate(res); err != nil {
				errs = append(errs, fmt.Errorf("xds.Validate (ValidateAll) refuses %s's resources: %w", dp.Name, err))
			}
			if _, err := translate(resourcesOf[*listener.Listener](res, resource.ListenerType), resourcesOf[*cluster.Cluster](res, resource.ClusterType),
				resourcesOf[*endpoint.ClusterLoadAssignment](res, resource.EndpointType), nil, nil,
				resourcesOf[*route.RouteConfiguration](res, resource.RouteType)...); err != nil {
				errs = append(errs, fmt.Errorf("the built-in proxy NACKs %s's configuration: %w", dp.Name, err))
			}
		}
	}
	if n != want {
		t.Fatalf("%d sidecars generated, want %d", n, want)
	}
	return errors.Join(errs...)
}

// checkAcceptedWorks PUTs body, which the API must accept, and the data
// plane take what it becomes.
func checkAcceptedWorks(t *testing.T, path, body string) {
	t.Helper()
	cp := newAcceptCP(t)
	if err := cp.dataPlane(t); err != nil {
		t.Fatalf("the baseline mesh already fails: %v", err)
	}
	code, b := cp.put(t, path, body)
	if code/100 != 2 {
		t.Fatalf("refused: %d %s", code, b)
	}
	if err := cp.dataPlaneN(t, 2); err != nil {
		t.Errorf("the API accepted PUT %s (%d), but the data plane cannot take it:\n%v", path, code, err)
	}
}

// checkRefused PUTs body, which the data plane could not take: the API
// refuses it with 400 naming field, and the data plane is as it was.
func checkRefused(t *testing.T, path, body, field string) {
	t.Helper()
	cp := newAcceptCP(t)
	code, b := cp.put(t, path, body)
	if code != http.StatusBadRequest || !strings.Contains(b, `"field":"`+field+`"`) {
		t.Fatalf("PUT %s: %d %s; want 400 naming %s", path, code, b, field)
	}
	if err := cp.dataPlane(t); err != nil {
		t.Fatalf("after the refusal: %v", err)
	}
}

const acceptPair = "  sources: [{match: {ursa.io/service: web}}]\n  destinations: [{match: {ursa.io/service: billing}}]\n"

// A Retry whose backOff sets only max, below the default base (25 ms):
// Envoy and the built-in proxy refuse a max below the base.
func TestRetryBackOffMaxBelowDefaultBase(t *testing.T) {
	checkRefused(t, "/meshes/default/retries/r", "type: Retry\nspec:\n"+acceptPair+
		"  http: {numRetries: 3, backOff: {max: 10ms}}\n", "spec.http.backOff.max")
}

// A HealthCheck path that starts with / but is no request path: a control
// character (JSON carries one), a bad %-escape, a tab.
func TestHealthCheckPathNotARequestPath(t *testing.T) {
	for _, path := range []string{"/healthz\u0001", "/health%zz", "/a\tb"} {
		t.Run(path, func(t *testing.T) {
			p, _ := json.Marshal(path) // "\u0001", "\t" as JSON escapes
			checkRefused(t, "/meshes/default/health-checks/h",
				`{"type":"HealthCheck","spec":{"sources":[{"match":{"ursa.io/service":"web"}}],"destinations":[{"match":{"ursa.io/service":"billing"}}],`+
					`"http":{"path":`+string(p)+`}}}`, "spec.http.path")
		})
	}
}

// A header value set by a TrafficRoute longer than Envoy's HeaderValue
// allows (16 KiB); well within the API's 2 MiB body limit.
func TestRouteHeaderValueTooLong(t *testing.T) {
	checkRefused(t, "/meshes/default/traffic-routes/r", "type: TrafficRoute\nspec:\n"+
		"  destination: {ursa.io/service: billing}\n  split: [{weight: 100, tags: {version: v1}}]\n"+
		"  http:\n  - match: {path: {prefix: /api}}\n    modify: {requestHeaders: {set: {x-big: "+strings.Repeat("a", 17000)+"}}}\n",
		"spec.http[0].modify.requestHeaders.set[x-big]")
}

// Two inbounds of one Dataplane whose applications listen on one port (the
// same servicePort, or a servicePort equal to another inbound's port when
// that one has none): the generator would emit the local cluster
// localhost:PORT twice, and the whole sidecar's snapshot be refused.
func TestInboundsSharingAppPort(t *testing.T) {
	for _, c := range []struct{ name, inbound string }{
		{"same service, two inbound ports", "[{port: 10012, servicePort: 9000, tags: {ursa.io/service: ledger}}, {port: 10013, servicePort: 9000, tags: {ursa.io/service: ledger, version: v2}}]"},
		{"two services, one app port", "[{port: 10012, servicePort: 9000, tags: {ursa.io/service: ledger}}, {port: 10013, servicePort: 9000, tags: {ursa.io/service: audit}}]"},
		{"servicePort is another inbound's port", "[{port: 10012, tags: {ursa.io/service: ledger}}, {port: 10013, servicePort: 10012, tags: {ursa.io/service: audit}}]"},
	} {
		t.Run(c.name, func(t *testing.T) {
			checkRefused(t, "/meshes/default/dataplanes/ledger-1",
				"type: Dataplane\nnetworking:\n  address: 127.0.0.9\n  inbound: "+c.inbound+"\n", "networking.inbound[1].servicePort")
		})
	}
}

// Durations over a year in a HealthCheck (interval, timeout) or a
// CircuitBreaker's outlier detection (interval, baseEjectionTime): the
// built-in proxy runs none of these timers past a year.
func TestDurationsOverAYear(t *testing.T) {
	for _, c := range []struct{ name, path, body, field string }{
		{"health check timeout", "/meshes/default/health-checks/h", "type: HealthCheck\nspec:\n" + acceptPair + "  interval: 10s\n  timeout: 9000h\n", "spec.timeout"},
		{"health check interval", "/meshes/default/health-checks/h", "type: HealthCheck\nspec:\n" + acceptPair + "  interval: 9000h\n", "spec.interval"},
		{"outlier base ejection time", "/meshes/default/circuit-breakers/c", "type: CircuitBreaker\nspec:\n" + acceptPair +
			"  outlierDetection: {consecutive5xx: 3, baseEjectionTime: 9000h}\n", "spec.outlierDetection.baseEjectionTime"},
	} {
		t.Run(c.name, func(t *testing.T) { checkRefused(t, c.path, c.body, c.field) })
	}
}

// TestAcceptedPoliciesWork: edges that the API, the generator and the
// built-in proxy agree on.
func TestAcceptedPoliciesWork(t *testing.T) {
	route := func(rule string) string {
		return "type: TrafficRoute\nspec:\n  destination: {ursa.io/service: billing}\n  split: [{weight: 100, tags: {version: v1}}]\n  http:\n" + rule
	}
	for _, c := range []struct{ name, path, body string }{
		{"exact path with space", "/meshes/default/traffic-routes/r", route("  - match: {path: {exact: '/a b'}}\n")},
		{"prefix path with a bad escape", "/meshes/default/traffic-routes/r", route("  - match: {path: {prefix: '/a%zz'}}\n")},
		{"header regex that matches empty", "/meshes/default/traffic-routes/r", route("  - match: {headers: {x-a: {regex: 'a*'}}}\n")},
		{"header present", "/meshes/default/traffic-routes/r", route("  - match: {headers: {x-b: {present: true}}}\n")},
		{"regex with a counted repeat", "/meshes/default/traffic-routes/r", route("  - match: {path: {regex: '/a{1000}'}}\n")},
		{"host with port", "/meshes/default/traffic-routes/r", route("  - match: {path: {prefix: /a}}\n    modify: {host: 'billing:8080'}\n")},
		{"host IPv6", "/meshes/default/traffic-routes/r", route("  - match: {path: {prefix: /a}}\n    modify: {host: '[::1]:80'}\n")},
		{"set an x-envoy header", "/meshes/default/traffic-routes/r", route("  - match: {path: {prefix: /a}}\n    modify: {requestHeaders: {set: {x-envoy-retry-on: 5xx}}}\n")},
		{"remove hop-by-hop headers", "/meshes/default/traffic-routes/r", route("  - match: {path: {prefix: /a}}\n    modify: {requestHeaders: {remove: [content-length, transfer-encoding, connection]}}\n")},
		{"split to tags no instance has", "/meshes/default/traffic-routes/r", route("  - match: {path: {prefix: /a}}\n    split: [{weight: 100, tags: {version: v9}}]\n")},
		{"method CONNECT", "/meshes/default/traffic-routes/r", route("  - match: {method: CONNECT}\n")},
		{"timeouts of 1ns", "/meshes/default/timeouts/t", "type: Timeout\nspec:\n" + acceptPair + "  connectTimeout: 1ns\n  http: {requestTimeout: 1ns, idleTimeout: 1ns, perTryTimeout: 1ns}\n  tcp: {idleTimeout: 1ns}\n"},
		{"timeouts of 228 years", "/meshes/default/timeouts/t", "type: Timeout\nspec:\n" + acceptPair + "  connectTimeout: 2000000h\n  http: {requestTimeout: 2000000h, idleTimeout: 2000000h, perTryTimeout: 2000000h}\n  tcp: {idleTimeout: 2000000h}\n"},
		{"retry at its bounds", "/meshes/default/retries/r", "type: Retry\nspec:\n" + acceptPair + "  http: {numRetries: 50, perTryTimeout: 2000000h, backOff: {base: 2000000h}, budget: {percent: 0, minConcurrency: 1048576}}\n"},
		{"retry status codes 100 and 599", "/meshes/default/retries/r", "type: Retry\nspec:\n" + acceptPair + "  http: {retryOn: [retriable-status-codes], retriableStatusCodes: [100, 599]}\n"},
		{"retry grpc and http", "/meshes/default/retries/r", "type: Retry\nspec:\n" + acceptPair + "  grpc: {retryOn: [cancelled]}\n  http: {retryOn: [gateway-error, retriable-4xx, refused-stream]}\n"},
		{"outlier detection zeros", "/meshes/default/circuit-breakers/c", "type: CircuitBreaker\nspec:\n" + acceptPair + "  outlierDetection: {consecutive5xx: 0, maxEjectionPercent: 0}\n"},
		{"panic threshold 0.0001", "/meshes/default/health-checks/h", "type: HealthCheck\nspec:\n" + acceptPair + "  healthyPanicThreshold: 0.0001\n"},
		{"fault bounds", "/meshes/default/fault-injections/f", "type: FaultInjection\nspec:\n" + acceptPair + "  delay: {percentage: 0.00001, value: 2000000h}\n  abort: {percentage: 100, httpStatus: 599}\n"},
		{"log to /", "/meshes/default/traffic-logs/l", "type: TrafficLog\nspec:\n" + acceptPair + "  backend: {file: {path: /}}\n"},
		{"log over TCP to IPv6", "/meshes/default/traffic-logs/l", "type: TrafficLog\nspec:\n" + acceptPair + "  backend: {tcp: {address: '[::1]:24224'}}\n  format: '%START_TIME% %REQ(:PATH):10% %RESP(X)%'\n"},
		{"trace to zipkin by name", "/meshes/default/traffic-traces/tr", "type: TrafficTrace\nspec:\n" + acceptPair + "  backend: {zipkin: {address: 'Zipkin.Example:9411'}}\n  sampling: 0.00001\n"},
		{"deny all", "/meshes/default/traffic-permissions/p", "type: TrafficPermission\nspec:\n  sources: [{match: {ursa.io/service: '*', version: '*'}}]\n  destinations: [{match: {ursa.io/service: '*'}}]\n  action: DENY\n"},
		{"failover only listed", "/meshes/default/failovers/f", "type: Failover\nspec:\n  destination: {ursa.io/service: billing}\n  order: [zone-1, zone-2]\n  drained: [zone-1]\n  onlyListed: true\n  threshold: 0\n"},
		{"route to every service", "/meshes/default/traffic-routes/w", "type: TrafficRoute\nspec:\n  destination: {ursa.io/service: '*'}\n  split: [{weight: 100, tags: {version: v1}}]\n"},
	} {
		t.Run(c.name, func(t *testing.T) { checkAcceptedWorks(t, c.path, c.body) })
	}
}
