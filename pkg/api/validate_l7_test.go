package api

import (
	"strings"
	"testing"
	"time"
)

// TestL7Refusals: every bad L7 document is refused with the field named.
func TestL7Refusals(t *testing.T) {
	const route = `type: TrafficRoute
mesh: default
name: r
spec:
  destination: {ursa.io/service: billing}
  split: [{weight: 1}]
`
	const pol = `mesh: default
name: p
spec:
  sources: [{match: {ursa.io/service: '*'}}]
  destinations: [{match: {ursa.io/service: billing}}]
`
	for _, c := range []struct{ doc, field, want string }{
		{route + "  http: [{match: {path: {regex: 'a(b'}}}]\n", "spec.http[0].match.path.regex", "does not compile"},
		{route + "  http: [{match: {headers: {x-v: {regex: '[z-a]'}}}}]\n", "spec.http[0].match.headers[x-v].regex", "does not compile"},
		{route + "  http: [{match: {path: {exact: /a, prefix: /b}}}]\n", "spec.http[0].match.path", "exactly one"},
		{route + "  http: [{match: {path: {prefix: api}}}]\n", "spec.http[0].match.path", "must start with /"},
		{route + "  http: [{match: {method: get}}]\n", "spec.http[0].match.method", "not one of"},
		{route + "  http: [{match: {}}]\n", "spec.http[0].match", "must match on"},
		{route + "  http: [{match: {headers: {':path': {exact: /}}}}]\n", "spec.http[0].match.headers[:path]", "pseudo-headers"},
		{route + "  http: [{match: {method: GET}, split: [{weight: 101}]}]\n", "spec.http[0].split[0].weight", "between 0 and 100"},
		{route + "  http: [{match: {method: GET}, modify: {requestHeaders: {set: {host: x}}}}]\n", "spec.http[0].modify.requestHeaders.set[host]", "cannot be changed"},
		{route + "  http: [{match: {path: {prefix: /a/}}, modify: {path: {replacePrefix: b/}}}]\n", "spec.http[0].modify.path.replacePrefix", "must start with /"},
		{route + "  http: [{match: {path: {prefix: /a/}}, modify: {path: {replacePrefix: '/b?x=1'}}}]\n", "spec.http[0].modify.path.replacePrefix", "not a path"},
		{route + "  http: [{match: {path: {prefix: /a/}}, modify: {path: {replacePrefix: '/b c'}}}]\n", "spec.http[0].modify.path.replacePrefix", "not a path"},
		{route + "  http: [{match: {path: {prefix: /a/}}, modify: {path: {replacePrefix: '/b%zz'}}}]\n", "spec.http[0].modify.path.replacePrefix", "not a path"},
		{route + "  http: [{match: {path: {prefix: /a/}}, modify: {path: {replacePrefix: '/ü/'}}}]\n", "spec.http[0].modify.path.replacePrefix", "not a path"},
		{route + "  http: [{match: {path: {prefix: /a/}}, modify: {path: {replacePrefix: '/a{b}/'}}}]\n", "spec.http[0].modify.path.replacePrefix", "not a path"},
		{route + "  http: [{match: {path: {regex: '/a/.*'}}, modify: {path: {replacePrefix: /b/}}}]\n", "spec.http[0].modify.path", "prefix or exact"},
		{route + "  http: [{match: {method: GET}, modify: {path: {replacePrefix: /b/}}}]\n", "spec.http[0].modify.path", "prefix or exact"},
		{route + "  http: [{match: {method: GET}, modify: {host: 'a b'}}]\n", "spec.http[0].modify.host", "not a host"},
		{"type: Timeout\n" + pol + "  connectTimeout: 0s\n", "spec.connectTimeout", "greater than 0"},
		{"type: Timeout\n" + pol + "  http: {requestTimeout: -300ms}\n", "spec.http.requestTimeout", "greater than 0"},
		{"type: Timeout\n" + pol, "spec", "must set"},
		{"type: Retry\n" + pol + "  http: {numRetries: -1}\n", "spec.http.numRetries", "between 0 and 50"},
		{"type: Retry\n" + pol + "  http: {retryOn: [5xx, sometimes]}\n", "spec.http.retryOn[1]", "not one of"},
		{"type: Retry\n" + pol + "  http: {backOff: {base: 1s, max: 10ms}}\n", "spec.http.backOff.max", "less than base"},
		{"type: Retry\n" + pol + "  http: {perTryTimeout: 0s}\n", "spec.http.perTryTimeout", "greater than 0"},
		{"type: CircuitBreaker\n" + pol + "  thresholds: {maxRequests: -1}\n", "spec.thresholds.maxRequests", "between 0"},
		{"type: CircuitBreaker\n" + pol + "  outlierDetection: {maxEjectionPercent: 101}\n", "spec.outlierDetection.maxEjectionPercent", "between 0 and 100"},
		{"type: CircuitBreaker\n" + pol + "  outlierDetection: {failurePercentage: {threshold: 120}}\n", "spec.outlierDetection.failurePercentage.threshold", "between 0 and 100"},
		{"type: CircuitBreaker\n" + pol + "  outlierDetection: {successRate: {standardDeviationFactor: -1}}\n", "spec.outlierDetection.successRate.standardDeviationFactor", "between 0.001 and 1000"},
		{"type: CircuitBreaker\n" + pol + "  outlierDetection: {successRate: {standardDeviationFactor: 0.0001}}\n", "spec.outlierDetection.successRate.standardDeviationFactor", "between 0.001 and 1000"},
		{"type: CircuitBreaker\n" + pol + "  outlierDetection: {successRate: {minimumHosts: -1}}\n", "spec.outlierDetection.successRate.minimumHosts", "between 0"},
		{"type: HealthCheck\n" + pol + "  interval: 0s\n", "spec.interval", "greater than 0"},
		{"type: HealthCheck\n" + pol + "  http: {path: healthz}\n", "spec.http.path", "must start with /"},
		{"type: HealthCheck\n" + pol + "  healthyPanicThreshold: 101\n", "spec.healthyPanicThreshold", "between 0 and 100"},
		{"type: FaultInjection\n" + pol + "  abort: {percentage: 150, httpStatus: 503}\n", "spec.abort.percentage", "between 0 and 100"},
		{"type: FaultInjection\n" + pol + "  delay: {percentage: 10}\n", "spec.delay.value", "required"},
		{"type: TrafficLog\n" + pol + "  backend: {stdout: true, file: {path: /a}}\n", "spec.backend", "exactly one"},
		{"type: TrafficLog\n" + pol + "  backend: {tcp: {address: collector}}\n", "spec.backend.tcp.address", "host:port"},
		{"type: TrafficLog\n" + pol + "  backend: {stdout: true}\n  format: '%START_TIME% %NOPE%'\n", "spec.format", "%NOPE%"},
		{"type: TrafficLog\n" + pol + "  backend: {stdout: true}\n  format: '%REQ% x'\n", "spec.format", "needs a header name"},
		{"type: TrafficLog\n" + pol + "  backend: {stdout: true}\n  format: '%DURATION'\n", "spec.format", "not closed"},
		{"type: TrafficTrace\n" + pol + "  backend: {}\n", "spec.backend", "exactly one"},
		{"type: TrafficTrace\n" + pol + "  backend: {zipkin: {address: 'z:99999'}}\n", "spec.backend.zipkin.address", "port"},
		{"type: TrafficTrace\n" + pol + "  backend: {zipkin: {address: 'z:9411'}}\n  sampling: -1\n", "spec.sampling", "between 0 and 100"},
	} {
		_, errs := DecodeAll([]byte(c.doc))
		if len(errs) != 1 {
			t.Errorf("%s: want one error, got %v", c.doc, errs)
			continue
		}
		msg := errs[0].Error()
		if !strings.Contains(msg, c.field+": ") || !strings.Contains(msg, c.want) {
			t.Errorf("%s: error %q does not name %s with %q", c.doc, msg, c.field, c.want)
		}
	}
}

func TestDurationText(t *testing.T) {
	_, errs := DecodeAll([]byte("type: Timeout\nmesh: m\nname: t\nspec:\n  sources: [{match: {a: b}}]\n  destinations: [{match: {a: b}}]\n  connectTimeout: 300\n"))
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "a duration is a string") {
		t.Fatalf("a bare number: %v", errs)
	}
	rs, errs := DecodeAll([]byte("type: Timeout\nmesh: m\nname: t\nspec:\n  sources: [{match: {a: b}}]\n  destinations: [{match: {a: b}}]\n  connectTimeout: 1m30s\n"))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	to := rs[0].(*Timeout)
	if to.Spec.ConnectTimeout.D() != 90*time.Second {
		t.Fatalf("decoded %s", to.Spec.ConnectTimeout.D())
	}
	if !strings.Contains(string(Content(to)), `"connectTimeout":"1m30s"`) {
		t.Fatalf("encoded %s", Content(to))
	}
}

func TestConflicts(t *testing.T) {
	mk := func(name string, src ...string) *Retry {
		r := &Retry{Meta: Meta{Type: "Retry", Mesh: "m", Name: name}}
		for _, s := range src {
			r.Spec.Sources = append(r.Spec.Sources, Selector{Match: map[string]string{TagService: s}})
		}
		r.Spec.Destinations = []Selector{{Match: map[string]string{TagService: "billing"}}}
		return r
	}
	if !Conflicts(mk("a", "web", "shop"), mk("b", "shop", "web")) {
		t.Error("the same selectors in another order do not conflict")
	}
	if Conflicts(mk("a", "web"), mk("b", "web", "shop")) || Conflicts(mk("a", "web"), mk("a", "web")) {
		t.Error("different selectors, or the same policy, conflict")
	}
}
