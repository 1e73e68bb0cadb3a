package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ursamesh/ursa/test/grafana"
)

// scrape reads a CP's /metrics: each metric's labels, and each series'
// value by its text form (name{label="value",…}, labels sorted).
func scrape(t *testing.T, c *cp) (labels map[string][]string, values map[string]float64) {
	t.Helper()
	resp, err := c.client().Get(c.api + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	labels, values = map[string][]string{}, map[string]float64{}
	for name, f := range families {
		have := []string{}
		for _, m := range f.GetMetric() {
			var pairs []string
			for _, l := range m.GetLabel() {
				if !slices.Contains(have, l.GetName()) {
					have = append(have, l.GetName())
				}
				pairs = append(pairs, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			key := name
			if len(pairs) > 0 {
				key += "{" + strings.Join(pairs, ",") + "}"
			}
			values[key] = valueOf(m)
		}
		labels[name] = have
	}
	return labels, values
}

func valueOf(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount())
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	}
	return 0
}

// TestControlPlaneMetricsAndDashboard: a global and a federated zone with a
// sidecar export what an operator watches (the zone's proxies by kind, its
// leader and its streams to the global, configurations generated, the
// zones the global has), with the values of that moment; and every query
// of deploy/grafana/ursa-control-plane.json names a metric one of the two
// serves on /metrics, with labels it has.
func TestControlPlaneMetricsAndDashboard(t *testing.T) {
	global := startCP(t, "global", "--store", "memory")
	dir := t.TempDir()
	ca := filepath.Join(dir, "kds-ca.pem")
	_, pem := global.get(t, "/kds/ca.pem")
	os.WriteFile(ca, []byte(pem), 0o600)
	token := filepath.Join(dir, "zone-1.token")
	os.WriteFile(token, []byte(ctl(t, global.api, "", "generate", "zone-token", "--zone", "zone-1")), 0o600)
	zone := startCP(t, "zone", "--zone", "zone-1", "--global-kds-address", "grpcs://"+global.kds, "--global-kds-ca-file", ca,
		"--zone-token-file", token, "--store", "memory", "--vip-cidr", "127.240.0.0/16")
	ctl(t, global.api, "type: Mesh\nname: default\n", "apply", "-f", "-")
	eventually(t, "the mesh in the zone", func() bool { return zone.has(t, "/meshes/default") })

	file := filepath.Join(dir, "billing.yaml")
	os.WriteFile(file, []byte(fmt.Sprintf("type: Dataplane\nmesh: default\nname: billing-1\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - {port: %s, servicePort: %s, tags: {ursa.io/service: billing}}\n",
		port(freeAddr(t)), port(freeAddr(t)))), 0o600)
	admin := freeAddr(t)
	p := start(t, "ursa-dp", append(append([]string{"run"}, zone.sidecarFlags(t, "default", "billing")...), "--dataplane-file", file, "--admin-addr", admin)...)
	waitReady(t, "http://"+admin+"/ready", p)
	eventually(t, "billing.mesh at the zone's DNS", func() bool { return strings.HasPrefix(dig(t, zone.dns, "billing.mesh", "+short"), "127.240.") })

	want := map[*cp]map[string]float64{
		global: {`ursa_kds_zones_connected`: 1},
		zone: {
			`ursa_xds_proxies{kind="sidecar"}`: 1, `ursa_xds_proxies{kind="ingress"}`: 0, `ursa_xds_proxies{kind="proxyless"}`: 0,
			`ursa_leader`: 1, `ursa_kds_global_connected`: 1,
		},
	}
	for c, series := range want {
		eventually(t, fmt.Sprintf("%s's metrics at %v", c.args[0], series), func() bool {
			_, values := scrape(t, c)
			for k, v := range series {
				if got, ok := values[k]; !ok || got != v {
					t.Logf("%s: %s = %v (there: %v)", c.args[0], k, got, ok)
					return false
				}
			}
			return true
		})
	}
	_, zv := scrape(t, zone)
	if zv[`ursa_xds_generated_total`] < 1 || zv[`ursa_xds_generation_duration_seconds`] < 1 {
		t.Fatalf("the sidecar's configuration was not counted: %v generated in %v rounds", zv[`ursa_xds_generated_total`], zv[`ursa_xds_generation_duration_seconds`])
	}
	if zv[`ursa_xds_nacks_total{type_url="type.googleapis.com/envoy.config.listener.v3.Listener"}`] != 0 {
		t.Fatal("the sidecar NACKed its listeners")
	}
	_, gv := scrape(t, global)
	if gv[`ursa_kds_zone_violations_total{zone="zone-1"}`] != 0 || gv[`ursa_kds_responses_total{direction="global_to_zone",result="sent",type="Mesh"}`] < 1 {
		t.Fatalf("the global's KDS counters: violations %v, meshes sent %v", gv[`ursa_kds_zone_violations_total{zone="zone-1"}`],
			gv[`ursa_kds_responses_total{direction="global_to_zone",result="sent",type="Mesh"}`])
	}

	dash, err := grafana.Read("../../deploy/grafana/ursa-control-plane.json")
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string][]string{}
	for _, c := range []*cp{global, zone} {
		labels, _ := scrape(t, c)
		for name, ls := range labels {
			for _, l := range ls {
				if !slices.Contains(exported[name], l) {
					exported[name] = append(exported[name], l)
				}
			}
			if _, ok := exported[name]; !ok {
				exported[name] = []string{}
			}
		}
	}
	problems, used := dash.Check(exported, "instance", "job")
	for _, p := range problems {
		t.Error(p)
	}
	for _, m := range []string{"ursa_xds_proxies", "ursa_leader", "ursa_kds_global_connected", "ursa_xds_generation_duration_seconds",
		"ursa_xds_nacks_total", "ursa_xds_refused_total", "ursa_kds_zones_connected", "ursa_kds_responses_total",
		"ursa_api_requests_total", "ursa_store_operation_duration_seconds", "ursa_dns_queries_total"} {
		if !used[m] {
			t.Errorf("no panel shows %s", m)
		}
	}
}
