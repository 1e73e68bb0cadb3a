package test

import (
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/proxy"
	"github.com/ursamesh/ursa/test/grafana"
)

// descRecorder is a prometheus.Registerer that keeps what each collector
// describes: the metric names and labels a proxy exports, whether or not
// a series has been made yet.
type descRecorder struct{ labels map[string][]string }

var (
	descName   = regexp.MustCompile(`fqName: "([^"]+)"`)
	descLabels = regexp.MustCompile(`variableLabels: \{([^}]*)\}\}$`)
)

func (r *descRecorder) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 16)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		s := d.String()
		name := descName.FindStringSubmatch(s)
		if name == nil {
			continue
		}
		var labels []string
		if m := descLabels.FindStringSubmatch(s); m != nil && m[1] != "" {
			for _, l := range strings.Split(m[1], ",") {
				labels = append(labels, strings.TrimSuffix(strings.TrimPrefix(l, "c("), ")"))
			}
		}
		r.labels[name[1]] = labels
	}
	return nil
}

func (r *descRecorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		r.Register(c)
	}
}

func (r *descRecorder) Unregister(prometheus.Collector) bool { return true }

// TestGrafanaDashboardNamesRealMetrics: every query of
// deploy/grafana/ursa-dataplane.json names a metric the built-in proxy
// registers, with labels it has; the dashboard shows what l7contract §3
// promises (requests by code, latency per route and upstream zone,
// retries, breaker opens, ejections, health check failures).
func TestGrafanaDashboardNamesRealMetrics(t *testing.T) {
	dash, err := grafana.Read("../deploy/grafana/ursa-dataplane.json")
	if err != nil {
		t.Fatal(err)
	}
	rec := &descRecorder{labels: map[string][]string{}}
	if _, err := proxy.New(zap.NewNop(), rec); err != nil {
		t.Fatal(err)
	}
	if len(rec.labels) == 0 {
		t.Fatal("the proxy registered no metric")
	}
	problems, used := dash.Check(rec.labels)
	for _, p := range problems {
		t.Error(p)
	}
	for _, m := range []string{"ursa_dp_http_requests_total", "ursa_dp_http_request_duration_seconds", "ursa_dp_http_retries_total",
		"ursa_dp_circuit_breaker_open_total", "ursa_dp_outlier_ejections_total", "ursa_dp_health_check_failures_total"} {
		if !used[m] {
			t.Errorf("no panel shows %s", m)
		}
	}
}
