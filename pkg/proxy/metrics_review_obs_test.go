package proxy

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestReviewObsLatencyBucketsCoverTheDefaultTimeout: the dashboard's p99
// by route is histogram_quantile over ursa_dp_http_request_duration_seconds.
// Its buckets stop at 10 s, below the default http.requestTimeout (15 s)
// that every http/http2 route gets: when more than 1% of a route's calls
// time out (504 at 15 s), histogram_quantile can only answer the highest
// finite bound, so p99 reads "10 s" — wrong exactly when it matters.
// Envoy's own histogram buckets go up to 3,600,000 ms.
func TestReviewObsLatencyBucketsCoverTheDefaultTimeout(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newHTTPMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	m.duration.WithLabelValues("outbound", "billing", "r", "zone-1").Observe(15)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ursa_dp_http_request_duration_seconds" {
			continue
		}
		b := mf.GetMetric()[0].GetHistogram().GetBucket()
		top := b[len(b)-1].GetUpperBound()
		if top < 15 {
			t.Fatalf("the highest finite latency bucket is %gs: a request that ran into the default 15s request timeout is only in +Inf, and p99 over it reads %gs", top, top)
		}
	}
}
