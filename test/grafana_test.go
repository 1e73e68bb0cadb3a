package test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/proxy"
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

// panel is the part of a Grafana panel the test reads.
type panel struct {
	Title   string   `json:"title"`
	Panels  []panel  `json:"panels"`
	Targets []target `json:"targets"`
}

type target struct {
	Expr string `json:"expr"`
}

var (
	metricRef  = regexp.MustCompile(`\b(ursa_[a-z0-9_]+)(\{([^}]*)\})?`)
	matcherRef = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)`)
	byRef      = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
)

// TestGrafanaDashboardNamesRealMetrics: every query of
// deploy/grafana/ursa-dataplane.json names a metric the built-in proxy
// registers, with labels it has; the dashboard shows what l7contract §3
// promises (requests by code, latency per route and upstream zone,
// retries, breaker opens, ejections, health check failures).
func TestGrafanaDashboardNamesRealMetrics(t *testing.T) {
	b, err := os.ReadFile("../deploy/grafana/ursa-dataplane.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title      string  `json:"title"`
		UID        string  `json:"uid"`
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	if dash.Title == "" || dash.UID == "" {
		t.Fatal("the dashboard has no title or uid")
	}
	rec := &descRecorder{labels: map[string][]string{}}
	if _, err := proxy.New(zap.NewNop(), rec); err != nil {
		t.Fatal(err)
	}
	if len(rec.labels) == 0 {
		t.Fatal("the proxy registered no metric")
	}

	var exprs []string
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				if tg.Expr == "" {
					t.Errorf("panel %q has a target without an expression", p.Title)
				}
				exprs = append(exprs, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	for _, v := range dash.Templating.List {
		if v.Definition != "" {
			exprs = append(exprs, v.Definition)
		}
	}

	used := map[string]bool{}
	for _, e := range exprs {
		refs := metricRef.FindAllStringSubmatch(e, -1)
		if len(refs) == 0 {
			t.Errorf("%q names no ursa metric", e)
			continue
		}
		var labels []string
		for _, m := range refs {
			name := m[1]
			base := name
			if _, ok := rec.labels[name]; !ok {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if b, ok := strings.CutSuffix(name, suffix); ok {
						if _, ok := rec.labels[b]; ok {
							base = b
						}
					}
				}
			}
			have, ok := rec.labels[base]
			if !ok {
				t.Errorf("%q: the proxy exports no metric %s", e, name)
				continue
			}
			used[base] = true
			have = append(append([]string(nil), have...), "le")
			for _, mm := range matcherRef.FindAllStringSubmatch(m[3], -1) {
				if !slices.Contains(have, mm[1]) {
					t.Errorf("%q: %s has no label %q (it has %v)", e, base, mm[1], have[:len(have)-1])
				}
			}
			labels = append(labels, have...)
		}
		for _, by := range byRef.FindAllStringSubmatch(e, -1) {
			for _, l := range strings.Split(by[1], ",") {
				if l = strings.TrimSpace(l); l != "" && !slices.Contains(labels, l) {
					t.Errorf("%q groups by %q, which none of its metrics has", e, l)
				}
			}
		}
	}
	for _, m := range []string{"ursa_dp_http_requests_total", "ursa_dp_http_request_duration_seconds", "ursa_dp_http_retries_total",
		"ursa_dp_circuit_breaker_open_total", "ursa_dp_outlier_ejections_total", "ursa_dp_health_check_failures_total"} {
		if !used[m] {
			t.Errorf("no panel shows %s", m)
		}
	}
}
