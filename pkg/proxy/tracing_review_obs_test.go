package proxy

import (
	"net/http"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// TestReviewObsLocalRepliesAreTraced: Envoy's HCM starts the request's
// span when it has decoded the headers (ActiveStream::decodeHeaders →
// traceRequest), before its filters run, so a request answered by the
// proxy itself — no route (404, NR), a fault abort (FI), RBAC's 403 — is
// traced like any other, with its status and flags. The built-in proxy
// starts the span only in the router (exchange.prepare): such requests
// leave no span at all.
func TestReviewObsLocalRepliesAreTraced(t *testing.T) {
	sc := newSidecars(t)
	spans := startSpanStore(t)
	sc.client.obs.spans.Batch = 20 * time.Millisecond
	app := backend(t, "v1", nil)
	abort := &faultv3.HTTPFault{Abort: &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: 503},
		Percentage: &typev3.FractionalPercent{Numerator: 100}}}
	outbound := withObs(t, outboundHTTPListener("outbound:billing", "outbound:billing", faultHTTPFilter(abort)), nil,
		otelTracing(t, "tracing:collector", "web", 100))
	apply(t, sc.client, sc.web, sc.roots, []*listener.Listener{outbound},
		[]*cluster.Cluster{staticHTTPCluster("billing-v1", false, app), collectorCluster("tracing:collector", spans.addr)},
		[]*endpoint.ClusterLoadAssignment{assignment("billing-v1", app)},
		routeConfig("outbound:billing", routeTo("billing-route/default",
			&route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/api"}}, toCluster("billing-v1"))))

	base := "http://" + boundAddr(t, sc.client, "outbound:billing")
	if resp, _ := get(t, h1Client(), base+"/api/x"); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("fault abort: %d", resp.StatusCode)
	}
	if resp, _ := get(t, h1Client(), base+"/elsewhere"); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("no route: %d", resp.StatusCode)
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) && len(spans.byKind(tracepb.Span_SPAN_KIND_CLIENT)) < 2 {
		time.Sleep(20 * time.Millisecond)
	}
	if n := len(spans.byKind(tracepb.Span_SPAN_KIND_CLIENT)); n != 2 {
		t.Fatalf("%d client spans at the collector for a fault-aborted (503 FI) and an unrouted (404 NR) request, want 2 (Envoy traces local replies)", n)
	}
}
