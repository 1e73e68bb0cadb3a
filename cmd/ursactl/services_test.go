package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/client"
)

// servicesFake is a global's view: billing in zone-1 (through its
// dataplane copy, no ingress there) and zone-2 (through its ingress), and
// the ServiceInsights zone-1 and zone-2 sent.
func servicesFake(t *testing.T) string {
	t.Helper()
	fake, url := startFake(t)
	now := time.Now()
	fake.Add(
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}},
		&api.ZoneIngress{Meta: api.Meta{Type: "ZoneIngress", Name: "zone-2.ingress"}, Zone: "zone-2",
			AvailableServices: []api.AvailableService{{Mesh: "default", Instances: 2, Tags: map[string]string{api.TagService: "billing"}}}},
		&api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: "zone-1.billing-1", Labels: map[string]string{api.LabelZone: "zone-1"}},
			Networking: api.DataplaneNetworking{Address: "10.0.0.7", Inbound: []api.Inbound{{Port: 1, Tags: map[string]string{api.TagService: "billing"}}}}},
		&api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: "zone-2.billing-9", Labels: map[string]string{api.LabelZone: "zone-2"}},
			Networking: api.DataplaneNetworking{Address: "10.0.0.9", Inbound: []api.Inbound{{Port: 1, Tags: map[string]string{api.TagService: "billing"}}}}},
		&api.ServiceInsight{Meta: api.Meta{Type: "ServiceInsight", Mesh: "default", Name: "zone-1.billing", ModificationTime: now.Add(-3 * time.Second)},
			Zone: "zone-1", Service: "billing", Traffic: map[string]api.ZoneTraffic{
				"zone-1": {Connections: 100, PerSecond: 30}, "zone-2": {Connections: 900, Errors: 2, PerSecond: 10}}},
		&api.ServiceInsight{Meta: api.Meta{Type: "ServiceInsight", Mesh: "default", Name: "zone-2.billing", ModificationTime: now.Add(-time.Hour)},
			Zone: "zone-2", Service: "billing", Traffic: map[string]api.ZoneTraffic{"zone-2": {Connections: 5}}},
		&api.ServiceInsight{Meta: api.Meta{Type: "ServiceInsight", Mesh: "default", Name: "zone-1.web"}, Zone: "zone-1", Service: "web"},
	)
	return url
}

func TestInspectServicesJSON(t *testing.T) {
	url := servicesFake(t)
	res := ursactl(t, nil, "", "--api-server", url, "inspect", "services", "billing", "-m", "default", "-o", "json")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	var out struct {
		Items []client.ServiceView `json:"items"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &out); err != nil {
		t.Fatalf("%v in %s", err, res.stdout)
	}
	if len(out.Items) != 1 {
		t.Fatalf("items %+v, want billing only", out.Items)
	}
	v := out.Items[0]
	if v.Instances["zone-1"] != 1 || v.Instances["zone-2"] != 2 || len(v.Instances) != 2 {
		t.Fatalf("instances %v: want zone-1's dataplane and zone-2's ingress count (not its dataplane copy too)", v.Instances)
	}
	if len(v.Callers) != 2 || v.Callers[0].Zone != "zone-1" || v.Callers[1].Zone != "zone-2" {
		t.Fatalf("callers %+v", v.Callers)
	}
	c := v.Callers[0]
	if c.PerSecond != 40 || c.Connections != 1000 || c.Errors != 2 || c.AgeSeconds < 2 || c.AgeSeconds > 60 {
		t.Fatalf("zone-1's callers %+v", c)
	}
	if len(c.To) != 2 || c.To[0].Share != 75 || c.To[1].Share != 25 {
		t.Fatalf("zone-1's destinations %+v, want 75%% zone-1 and 25%% zone-2", c.To)
	}
	if s := v.Callers[1].String(); s != "idle" {
		t.Fatalf("zone-2's callers, no rate: %q", s)
	}
}

func TestInspectServicesTable(t *testing.T) {
	url := servicesFake(t)
	res := ursactl(t, nil, "", "--api-server", url, "inspect", "services")
	if res.code != 0 {
		t.Fatalf("exit %d: %s", res.code, res.stderr)
	}
	for _, re := range []string{
		`MESH\s+SERVICE\s+INSTANCES\s+CALLERS IN\s+TRAFFIC NOW\s+RATE\s+CONNECTIONS\s+ERRORS\s+UPDATED`,
		`default\s+billing\s+zone-1:1,zone-2:2\s+zone-1\s+zone-1 75%, zone-2 25%\s+40.0/s\s+1000\s+2\s+3s ago`,
		`\n\s+zone-2\s+idle\s+0.0/s\s+5\s+0\s+1h ago`,
		`default\s+web\s+-\s+zone-1\s+idle`,
	} {
		if !regexp.MustCompile(re).MatchString(res.stdout) {
			t.Errorf("table does not match %s:\n%s", re, res.stdout)
		}
	}
	if res := ursactl(t, nil, "", "--api-server", url, "inspect", "services", "nothing"); res.code == 0 || !strings.Contains(res.stderr, `service "nothing"`) {
		t.Fatalf("an unknown service: exit %d, %s", res.code, res.stderr)
	}
}
