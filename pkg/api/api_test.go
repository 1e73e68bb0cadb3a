package api

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

func causes(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error %v is not a *ValidationError", err)
	}
	out := make([]string, len(ve.Causes))
	for i, c := range ve.Causes {
		out[i] = c.String()
	}
	return out
}

func TestValidateReportsEveryProblemWithItsPath(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{"valid route", `
type: TrafficRoute
mesh: default
name: billing-split
spec:
  destination: {ursa.io/service: billing}
  split:
  - {weight: 90, tags: {ursa.io/zone: zone-1}}
  - {weight: 10, tags: {ursa.io/zone: zone-2}}`, nil},
		{"route with two bad weights and no mesh", `
type: TrafficRoute
name: Billing
spec:
  destination: {version: v1}
  split:
  - {weight: 90}
  - {weight: 101}
  - {weight: -1}`, []string{
			`name: "Billing" is not valid: use lower-case letters, digits and '-', in dot-separated labels that start and end with a letter or digit`,
			"mesh: required for TrafficRoute",
			"spec.destination: must contain ursa.io/service",
			"spec.split[1].weight: must be between 0 and 100",
			"spec.split[2].weight: must be between 0 and 100",
		}},
		{"dataplane", `
type: Dataplane
mesh: default
name: billing-1
networking:
  address: "not an address!"
  inbound:
  - {port: 70000, servicePort: 8080, tags: {version: v2}}
  - {port: 10011, tags: {ursa.io/service: billing}}
  - {port: 10011, tags: {ursa.io/service: "bad value!"}}`, []string{
			"networking.address: must be an IP address or a DNS name",
			"networking.inbound[0].port: must be between 1 and 65535",
			"networking.inbound[0].tags: must contain ursa.io/service",
			"networking.inbound[2].port: 10011 is already used by networking.inbound[1]",
			"networking.inbound[2].tags[ursa.io/service]: must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
		}},
		{"app ports", `
type: Dataplane
mesh: default
name: ledger-1
networking:
  address: 10.0.0.7
  inbound:
  - {port: 10011, servicePort: 9000, tags: {ursa.io/service: ledger}}
  - {port: 10012, servicePort: 9000, tags: {ursa.io/service: audit}}
  - {port: 9001, tags: {ursa.io/service: admin}}
  - {port: 10013, servicePort: 9001, tags: {ursa.io/service: other}}`, []string{
			"networking.inbound[1].servicePort: 9000 is already the application port of networking.inbound[0]",
			"networking.inbound[3].servicePort: 9001 is already the application port of networking.inbound[2]",
		}},
		{"NUL", "type: TrafficLog\nmesh: default\nname: l\nlabels: {team: \"a\\0b\"}\nspec:\n  sources: [{match: {ursa.io/service: web}}]\n  destinations: [{match: {ursa.io/service: billing}}]\n  backend: {stdout: true}\n  format: \"%START_TIME%\\0\"", []string{
			"spec.format: must be one line (the proxy ends each line itself)",
			"labels.team: must not contain a NUL character",
			"spec.format: must not contain a NUL character",
		}},
		{"mesh name", `
type: Mesh
name: prod.eu`, []string{"name: a mesh name must be a single DNS-1123 label (no dots, at most 63 characters)"}},
		{"global type with mesh", `
type: Mesh
name: default
mesh: other`, []string{"mesh: must be empty: Mesh is not mesh-scoped"}},
		{"permission", `
type: TrafficPermission
mesh: default
name: p
spec:
  sources: []
  destinations: [{match: {}}]
  action: MAYBE`, []string{
			"spec.sources: must have at least one selector",
			"spec.destinations[0].match: must have at least one tag",
			`spec.action: must be ALLOW or DENY, not "MAYBE"`,
		}},
		{"failover", `
type: Failover
mesh: default
name: f
spec:
  destination: {ursa.io/service: billing}
  order: [zone-2, zone-2, Zone_3]
  threshold: 150`, []string{
			`spec.order[1]: zone "zone-2" is listed twice`,
			`spec.order[2]: "Zone_3" is not a valid zone name`,
			"spec.threshold: must be between 0 and 100",
		}},
		{"ingress", `
type: ZoneIngress
name: zone-2-ingress
zone: zone-2
networking: {address: 10.0.1.5, port: 10001, advertisedAddress: 203.0.113.7}
availableServices:
- {mesh: default, instances: 2, tags: {ursa.io/service: billing}}`, []string{
			"networking: advertisedAddress and advertisedPort must be set together",
		}},
		{"ingress offer ports", `
type: ZoneIngress
name: zone-2-ingress
zone: zone-2
networking: {address: 10.0.1.5, port: 10001}
availableServices:
- {mesh: default, instances: 2, port: 8080, tags: {ursa.io/service: billing}}
- {mesh: default, instances: 1, tags: {ursa.io/service: ledger}}
- {mesh: default, instances: 2, port: 65536, tags: {ursa.io/service: payments}}
- {mesh: default, instances: 2, port: -1, tags: {ursa.io/service: audit}}`, []string{
			"availableServices[2].port: must be between 1 and 65535",
			"availableServices[3].port: must be between 1 and 65535",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Decode([]byte(tt.doc))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			got := causes(t, Validate(r))
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("causes:\n got  %q\n want %q", got, tt.want)
			}
		})
	}
}

func TestDecodeIsStrict(t *testing.T) {
	tests := []struct {
		doc, want string
	}{
		{"type: Mesh\nname: default\nmtls: {enabled: true, backend: x}", `unknown field "mtls.backend"`},
		{"type: Mesh\nname: a\nname: b", `already set`},
		{"type: Unicorn\nname: a", `type: unknown type "Unicorn"`},
		{"name: a", `type: required`},
		{"type: TrafficRoute\nmesh: m\nname: r\nspec: {split: [{weight: heavy}]}", `weight`},
		{"type: Mesh\nname: [unclosed", `yaml`},
		{`{"type":"Mesh","name":"default","extra":1}`, `unknown field "extra"`},
		{`{"type":"Mesh","NAME":"default","Mtls":{"Enabled":true}}`, `unknown field "Mtls", "NAME"`},
		{"type: TrafficRoute\nmesh: m\nname: r\nspec: {split: [{weight: 90, Weight: 5}]}", `unknown field "spec.split[0].Weight"`},
		{"type: TrafficRoute\nmesh: m\nname: r\nspec: {split: [{wieght: 1}], dest: {}}", `unknown field "spec.dest", "spec.split[0].wieght"`},
	}
	for _, tt := range tests {
		_, err := Decode([]byte(tt.doc))
		if err == nil || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Decode(%q) = %v, want ErrMalformed mentioning %q", tt.doc, err, tt.want)
		}
	}
}

func TestDecodeAllReportsEveryDocument(t *testing.T) {
	stream := `
type: Mesh
name: default
---
---
type: TrafficRoute
mesh: default
name: r
spec: {destination: {ursa.io/service: b}, split: [{weight: 500}]}
---
type: Zone
name: zone-1
bogus: true
`
	rs, errs := DecodeAll([]byte(stream))
	if len(rs) != 1 || len(errs) != 2 {
		t.Fatalf("got %d resources and errors %v; want 1 resource and 2 errors", len(rs), errs)
	}
	for i, want := range []string{"document 2 (line 6): invalid resource: spec.split[0].weight", `document 3 (line 11): malformed resource: unknown field "bogus"`} {
		if !strings.Contains(errs[i].Error(), want) {
			t.Errorf("errs[%d] = %v, want it to contain %q", i, errs[i], want)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	enabled := false
	in := []Resource{
		&Mesh{Meta: Meta{Type: "Mesh", Name: "default", Labels: map[string]string{"team": "core"}}, MTLS: &MeshMTLS{Enabled: true}},
		&Zone{Meta: Meta{Type: "Zone", Name: "zone-2"}, Enabled: &enabled},
		&Secret{Meta: Meta{Type: "Secret", Mesh: "default", Name: "ca"}, Data: []byte{0, 1, 2, 255}},
	}
	for _, r := range in {
		for _, enc := range []func(any) ([]byte, error){EncodeJSON, EncodeYAML} {
			b, err := enc(r)
			if err != nil {
				t.Fatal(err)
			}
			out, err := Decode(b)
			if err != nil {
				t.Fatalf("decode %s: %v", b, err)
			}
			if !reflect.DeepEqual(out, r) {
				t.Errorf("round trip of %s: got %+v", b, out)
			}
		}
	}
}

func TestRegistryIsConsistent(t *testing.T) {
	seen := map[string]bool{}
	for _, d := range Types() {
		r := d.New()
		if r == nil || seen[d.Plural] || seen[d.Type] {
			t.Errorf("descriptor %s: nil New or duplicate name", d.Type)
		}
		seen[d.Plural], seen[d.Type] = true, true
		if got, ok := LookupWord(strings.ToUpper(d.Singular)); !ok || got.Type != d.Type {
			t.Errorf("LookupWord(%s) = %v", d.Singular, got.Type)
		}
	}
}

// TestDesignShapes decodes the resource shapes of DESIGN.md §3, copied
// verbatim into testdata: the contract's documents must be valid as written.
func TestDesignShapes(t *testing.T) {
	data, err := os.ReadFile("testdata/design.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rs, errs := DecodeAll(data)
	if len(errs) > 0 {
		t.Fatalf("DESIGN.md shapes do not decode: %v", errs)
	}
	var types []string
	for _, r := range rs {
		types = append(types, r.GetMeta().Type)
	}
	want := "Mesh Dataplane ZoneIngress TrafficPermission TrafficRoute Failover Zone " +
		"TrafficRoute Timeout Retry CircuitBreaker HealthCheck FaultInjection TrafficLog TrafficTrace"
	if strings.Join(types, " ") != want {
		t.Fatalf("decoded %v, want %s", types, want)
	}
	ing := rs[2].(*ZoneIngress)
	if ing.Networking.AdvertisedAddress != "203.0.113.7" || ing.AvailableServices[0].Instances != 2 {
		t.Fatalf("zone ingress decoded as %+v", ing)
	}
}
