// Package grafana reads the Grafana dashboards of deploy/grafana for the
// tests that hold them to the metrics Ursa exports.
package grafana

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
)

// Dashboard is what the tests read of a dashboard.
type Dashboard struct {
	Title string
	UID   string
	// Exprs are its panels' queries and its template variables'
	// definitions.
	Exprs []string
}

type panel struct {
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

// Read reads the dashboard at path.
func Read(path string) (*Dashboard, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var dash struct {
		Title      string  `json:"title"`
		UID        string  `json:"uid"`
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		return nil, fmt.Errorf("%s is not JSON: %w", path, err)
	}
	if dash.Title == "" || dash.UID == "" {
		return nil, fmt.Errorf("%s has no title or uid", path)
	}
	d := &Dashboard{Title: dash.Title, UID: dash.UID}
	var walk func([]panel) error
	walk = func(ps []panel) error {
		for _, p := range ps {
			for _, tg := range p.Targets {
				if tg.Expr == "" {
					return fmt.Errorf("%s: panel %q has a target without an expression", path, p.Title)
				}
				d.Exprs = append(d.Exprs, tg.Expr)
			}
			if err := walk(p.Panels); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(dash.Panels); err != nil {
		return nil, err
	}
	for _, v := range dash.Templating.List {
		if v.Definition != "" {
			d.Exprs = append(d.Exprs, v.Definition)
		}
	}
	return d, nil
}

var (
	metricRef  = regexp.MustCompile(`\b(ursa_[a-z0-9_]+)(\{([^}]*)\})?`)
	matcherRef = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)`)
	byRef      = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
)

// Check holds the dashboard's queries to metrics (a metric's name → its
// labels): every ursa_ metric a query names is one of them (a histogram's
// _bucket, _sum and _count series too), and every label it matches or
// groups by is one of the metric's, "le" of a histogram's, or one of
// targetLabels (those Prometheus adds: instance, job). It returns what is
// wrong, and the metrics the queries use.
func (d *Dashboard) Check(metrics map[string][]string, targetLabels ...string) (problems []string, used map[string]bool) {
	used = map[string]bool{}
	for _, e := range d.Exprs {
		refs := metricRef.FindAllStringSubmatch(e, -1)
		if len(refs) == 0 {
			problems = append(problems, fmt.Sprintf("%q names no ursa metric", e))
			continue
		}
		labels := slices.Clone(targetLabels)
		for _, m := range refs {
			base, ok := metricOf(metrics, m[1])
			if !ok {
				problems = append(problems, fmt.Sprintf("%q: no metric %s is exported", e, m[1]))
				continue
			}
			used[base] = true
			have := slices.Concat(metrics[base], []string{"le"}, targetLabels)
			for _, mm := range matcherRef.FindAllStringSubmatch(m[3], -1) {
				if !slices.Contains(have, mm[1]) {
					problems = append(problems, fmt.Sprintf("%q: %s has no label %q (it has %v)", e, base, mm[1], metrics[base]))
				}
			}
			labels = append(labels, have...)
		}
		for _, by := range byRef.FindAllStringSubmatch(e, -1) {
			for _, l := range strings.Split(by[1], ",") {
				if l = strings.TrimSpace(l); l != "" && !slices.Contains(labels, l) {
					problems = append(problems, fmt.Sprintf("%q groups by %q, which none of its metrics has", e, l))
				}
			}
		}
	}
	return problems, used
}

// metricOf is the metric a series name belongs to: the name itself, or a
// histogram's whose _bucket, _sum or _count series it is.
func metricOf(metrics map[string][]string, name string) (string, bool) {
	if _, ok := metrics[name]; ok {
		return name, true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if b, ok := strings.CutSuffix(name, suffix); ok {
			if _, ok := metrics[b]; ok {
				return b, true
			}
		}
	}
	return "", false
}
