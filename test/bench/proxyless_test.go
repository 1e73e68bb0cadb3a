package bench

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/xds"
)

// proxylessL7 are the L7 policies of BenchmarkProxylessGenerate: every
// route gets a header rule to v2, and every pair a Timeout, a Retry (grpc)
// and, for one service in ten, a FaultInjection.
func proxylessL7(services int) []api.Resource {
	var out []api.Resource
	for s := range services {
		svc := svcName(s)
		r := versionRoute(svc, 90)
		r.Spec.HTTP = []api.HTTPRoute{{Match: api.HTTPMatch{Headers: map[string]api.StringMatch{"x-canary": {Exact: "1"}}},
			Split: []api.Split{{Weight: 100, Tags: map[string]string{"version": "v2"}}}}}
		out = append(out, r)
		if s%10 == 0 {
			out = append(out, &api.FaultInjection{Meta: api.Meta{Type: "FaultInjection", Mesh: xdsMesh, Name: "fault-" + svc},
				Spec: api.FaultInjectionSpec{Sources: []api.Selector{{Match: map[string]string{api.TagService: "*"}}},
					Destinations: []api.Selector{{Match: map[string]string{api.TagService: svc}}},
					Abort:        &api.FaultAbort{Percentage: 1, HTTPStatus: 503}}})
		}
	}
	all := []api.Selector{{Match: map[string]string{api.TagService: "*"}}}
	return append(out,
		&api.Timeout{Meta: api.Meta{Type: "Timeout", Mesh: xdsMesh, Name: "all"},
			Spec: api.TimeoutSpec{Sources: all, Destinations: all, HTTP: &api.HTTPTimeouts{RequestTimeout: api.Dur(time.Second)}}},
		&api.Retry{Meta: api.Meta{Type: "Retry", Mesh: xdsMesh, Name: "all"},
			Spec: api.RetrySpec{Sources: all, Destinations: all, GRPC: &api.HTTPRetry{NumRetries: 2, RetryOn: []string{"unavailable"}}}})
}

// BenchmarkProxylessGenerate measures a proxyless gRPC client's
// configuration with L7 routes and policies in a 1,000-dataplane mTLS mesh
// of 50 services: a mesh's one-off build of what its proxyless clients
// share (mesh: a fresh MeshState per iteration), its rebuild after a change
// of endpoints (endpoints: the next MeshState keeps the listeners, routes
// and clusters), what each further client costs (client: its server
// listener and the shared lists), and
// SetResources' validation and hashing of it, unchanged (validate+hash).
func BenchmarkProxylessGenerate(b *testing.B) {
	f := newXDSMesh(b, xdsServices, xdsPerService)
	// The fixture's resources, every service's route with its header rule
	// instead of the fixture's plain splits, and the policies.
	var kept []api.Resource
	for _, r := range f.state.resources() {
		if _, ok := r.(*api.TrafficRoute); !ok {
			kept = append(kept, r)
		}
	}
	kept = append(kept, proxylessL7(xdsServices)...)
	cat := catalog.FromResources(xdsZone, kept)
	client := f.state.Dataplanes[0]
	p := xds.Proxy{Kind: xds.KindProxyless, Dataplane: client}
	b.Run("mesh", func(b *testing.B) {
		b.ReportAllocs()
		var res xds.Resources
		for b.Loop() {
			var err error
			if res, err = xds.Proxyless(xds.NewState(cat, nil), p); err != nil {
				b.Fatal(err)
			}
		}
		size, count := resourceBytes(res)
		b.ReportMetric(float64(size), "config-B")
		b.ReportMetric(float64(count["RouteConfiguration"]), "route-configs")
		b.ReportMetric(float64(count["Cluster"]), "clusters")
	})
	// An instance more of a service: the same policies, other endpoints.
	extra := *f.state.Dataplanes[1]
	extra.Name, extra.Networking.Address = "extra", "10.9.9.9"
	cats := [2]*catalog.Catalog{cat, catalog.FromResources(xdsZone, append(kept, &extra))}
	b.Run("endpoints", func(b *testing.B) {
		b.ReportAllocs()
		state := xds.NewState(cat, nil)
		if _, err := xds.Proxyless(state, p); err != nil {
			b.Fatal(err)
		}
		i := 0
		for b.Loop() {
			i++
			state = xds.NewState(cats[i%2], state)
			if _, err := xds.Proxyless(state, p); err != nil {
				b.Fatal(err)
			}
		}
	})
	state := xds.NewState(cat, nil)
	if _, err := xds.Proxyless(state, p); err != nil {
		b.Fatal(err)
	}
	b.Run("client", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := xds.Proxyless(state, p); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("validate+hash", func(b *testing.B) {
		srv, err := xds.NewServer(zap.NewNop(), prometheus.NewRegistry())
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		res, _ := xds.Proxyless(state, p)
		if err := srv.SetResources(ctx, fmt.Sprintf("%s.%s", xdsMesh, client.Name), res); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			res, _ := xds.Proxyless(state, p)
			if err := srv.SetResources(ctx, fmt.Sprintf("%s.%s", xdsMesh, client.Name), res); err != nil {
				b.Fatal(err)
			}
		}
	})
}
