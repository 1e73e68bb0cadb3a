package crd_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/api/crd"
)

const crdDir = "../../../deploy/crds"

// committedDirs are the folders the generator writes, relative to the
// repository root: kubectl's and the Helm chart's copies must not drift.
var committedDirs = []string{"deploy/crds", "deploy/helm/ursa/crds"}

// TestCommittedYAML fails when deploy/crds/ or the Helm chart's crds/ differs
// from what the generator makes now.
func TestCommittedYAML(t *testing.T) {
	want, err := crd.Files(docs(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range committedDirs {
		fix := "regenerate with `go generate ./pkg/api/crd` (or `make crds`) and commit " + dir + "/"
		path := filepath.Join("../../..", dir)
		have, err := filepath.Glob(filepath.Join(path, crd.Group+"_*.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range have {
			if _, ok := want[filepath.Base(f)]; !ok {
				t.Errorf("%s/%s is not generated any more: %s", dir, filepath.Base(f), fix)
			}
		}
		for name, b := range want {
			got, err := os.ReadFile(filepath.Join(path, name))
			if err != nil {
				t.Errorf("%s/%s: %v: %s", dir, name, err, fix)
				continue
			}
			if !bytes.Equal(got, b) {
				t.Errorf("%s/%s differs from the generator's: %s", dir, name, fix)
			}
		}
	}
}

func docs(t *testing.T) crd.Docs {
	t.Helper()
	d, err := crd.DocsOf("..")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestEveryTypePlaced keeps a type added to the registry from going without
// a decision on where it lives on Kubernetes.
func TestEveryTypePlaced(t *testing.T) {
	defs, err := crd.Definitions(nil)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, d := range defs {
		kinds[d.Spec.Names.Kind] = true
	}
	for _, d := range api.Types() {
		p, ok := crd.PlacementOf(d.Type)
		switch {
		case !ok:
			t.Errorf("%s has no placement", d.Type)
		case p.Kind == crd.CustomResource && !kinds[d.Type]:
			t.Errorf("%s is placed as a custom resource but has no CRD", d.Type)
		case p.Kind == crd.CoreSecret && !d.Hidden && d.Type != "Secret":
			t.Errorf("%s is a core Secret but not hidden", d.Type)
		}
		if d.Hidden {
			if p.Kind != crd.CoreSecret {
				t.Errorf("%s holds private material but is not a core Secret", d.Type)
			}
		}
	}
	if !kinds["Mesh"] || defs[0].Spec.Scope != "Cluster" {
		t.Errorf("Mesh is not the first CRD, cluster-scoped")
	}
	for _, d := range defs[1:] {
		if d.Spec.Scope != "Namespaced" {
			t.Errorf("%s is %s, want Namespaced", d.Spec.Names.Kind, d.Spec.Scope)
		}
	}
}

// TestSchemas checks what the generator derives from the Go types.
func TestSchemas(t *testing.T) {
	files, err := crd.Files(docs(t))
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range files {
		if bytes.Contains(b, []byte("x-kubernetes-preserve-unknown-fields")) {
			t.Errorf("%s: preserves unknown fields, but no Ursa type is free-form", name)
		}
	}
	for _, tt := range []struct{ file, want string }{
		{"ursa.io_meshes.yaml", "scope: Cluster"},
		{"ursa.io_meshes.yaml", "description: Enabled turns on the built-in CA"},
		{"ursa.io_dataplaneinsights.yaml", "description: Acked is the last configuration version"},
		{"ursa.io_trafficpermissions.yaml", "- ALLOW\n"},
		{"ursa.io_trafficpermissions.yaml", "- mesh\n"},
		{"ursa.io_dataplaneinsights.yaml", "format: date-time"},
		{"ursa.io_zoneinsights.yaml", "format: int64"},
		{"ursa.io_serviceinsights.yaml", "format: double"},
		{"ursa.io_dataplanes.yaml", "selectableFields:\n    - jsonPath: .mesh"},
		{"ursa.io_dataplanes.yaml", "maximum: 65535"},
		{"ursa.io_dataplanes.yaml", "categories:\n    - ursa"},
		{"ursa.io_virtualips.yaml", "entries:\n                additionalProperties:\n                  properties:"},
	} {
		if !strings.Contains(string(files[tt.file]), tt.want) {
			t.Errorf("%s does not contain %q", tt.file, tt.want)
		}
	}
	for name, b := range files {
		if bytes.Contains(b, []byte("subresources")) {
			t.Errorf("%s has a subresource: an insight's write would take two (create, then status)", name)
		}
	}
}

// examples returns one resource of every custom-resource type: the design
// document's, and the system-written types built here.
func examples(t testing.TB) []api.Resource {
	t.Helper()
	data, err := os.ReadFile("../testdata/design.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rs, errs := api.DecodeAll(data)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM, err := api.EncodeEd25519PublicKeyPEM(pub)
	if err != nil {
		t.Fatal(err)
	}
	since := time.Date(2026, 12, 5, 19, 0, 0, 123456789, time.UTC)
	meta := func(typ, mesh, name string) api.Meta {
		return api.Meta{Type: typ, Mesh: mesh, Name: name, Labels: map[string]string{"ursa.io/zone": "zone-1"}}
	}
	status := api.ProxyStatus{
		Connected: true, Instance: "zone-1-cp-0", ConnectedSince: since, Nacks: 2,
		Acked:    map[string]string{"type.googleapis.com/envoy.config.cluster.v3.Cluster": "v7"},
		LastNack: "bad route", LastNackType: "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
	}
	rs = append(rs,
		&api.DataplaneInsight{Meta: meta("DataplaneInsight", "default", "billing-1"), ProxyStatus: status},
		&api.ZoneIngressInsight{Meta: meta("ZoneIngressInsight", "", "zone-2-ingress"), ProxyStatus: api.ProxyStatus{DisconnectedAt: since}},
		&api.ZoneInsight{Meta: meta("ZoneInsight", "", "zone-2"), Connected: true, ConnectedSince: since, GlobalInstance: "global-0",
			CPVersion: "v0.9.0", RevisionBehind: 3, Heartbeat: since.Add(time.Second), Stalls: 1,
			Sync: map[string]api.TypeSyncStat{"Dataplane": {ResponsesSent: 9, ResponsesAcked: 8, ResponsesNacked: 1, LastNackReason: "x", LastAckTime: since}}},
		&api.ServiceInsight{Meta: meta("ServiceInsight", "default", "billing"), Zone: "zone-1", Service: "billing",
			Traffic: map[string]api.ZoneTraffic{"zone-2": {Connections: 1 << 40, Errors: 3, PerSecond: 12.5}}},
		&api.VirtualIPs{Meta: meta("VirtualIPs", "default", "zone-1"), Entries: map[string]api.VirtualIP{
			"billing": {IP: "240.0.0.1"}, "web": {IP: "240.0.0.2", ReleasedAt: since}}},
		&api.UserTokenPublicKey{Meta: meta("UserTokenPublicKey", "", "user-token-signing-key.1"), PublicKeyPEM: pubPEM},
		&api.UserTokenRevocation{Meta: meta("UserTokenRevocation", "", api.RevocationName("abc")), ID: "abc", User: "ada", ExpiresAt: since},
		&api.TokenRevocation{Meta: meta("TokenRevocation", "", api.RevocationName("abd")), ID: "abd", Token: api.TokenKindDataplane, Subject: "mesh default, service web", ExpiresAt: since},
	)
	for _, r := range rs {
		if err := api.Validate(r); err != nil {
			t.Fatalf("%s: %v", api.KeyOf(r), err)
		}
	}
	var types []string
	for _, r := range rs {
		types = append(types, r.GetMeta().Type)
	}
	for _, d := range api.Types() {
		if p, _ := crd.PlacementOf(d.Type); p.Kind == crd.CustomResource && !slices.Contains(types, d.Type) {
			t.Fatalf("no example of %s", d.Type)
		}
	}
	return rs
}

func TestRoundTrip(t *testing.T) {
	for _, r := range examples(t) {
		obj, err := crd.ToObject(r, "ursa-system")
		if err != nil {
			t.Fatal(err)
		}
		back, err := crd.FromObject(obj)
		if err != nil {
			t.Fatalf("%s: %v", api.KeyOf(r), err)
		}
		if !api.SameContent(r, back) {
			t.Errorf("%s came back as\n%s\nnot\n%s", api.KeyOf(r), api.Content(back), api.Content(r))
		}
	}
}

func TestObjectShape(t *testing.T) {
	tp := &api.TrafficPermission{Meta: api.Meta{Type: "TrafficPermission", Mesh: "default", Name: "p"},
		Spec: api.TrafficPermissionSpec{Sources: []api.Selector{{Match: map[string]string{"a": "b"}}}}}
	obj, err := crd.ToObject(tp, "ns")
	if err != nil {
		t.Fatal(err)
	}
	spec := obj["spec"].(map[string]any)
	if obj["mesh"] != "default" || spec["sources"] == nil || obj["metadata"].(map[string]any)["namespace"] != "ns" {
		t.Errorf("policy object %v: want mesh at the top, the policy's spec as spec", obj)
	}
	if _, ok := spec["destinations"]; ok {
		t.Errorf("a nil list is kept as null: %v", spec)
	}
	m, err := crd.ToObject(&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}, "ns")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m["mesh"]; ok || m["metadata"].(map[string]any)["namespace"] != nil {
		t.Errorf("Mesh object %v has a mesh or a namespace", m)
	}
	if _, err := crd.ToObject(&api.Secret{Meta: api.Meta{Type: "Secret", Mesh: "m", Name: "s"}, Data: []byte("x")}, "ns"); err == nil {
		t.Error("a Secret became a custom resource")
	}
}

func TestFromObjectRefuses(t *testing.T) {
	for _, tt := range []struct {
		obj  crd.Object
		want string
	}{
		{crd.Object{"apiVersion": "v1", "kind": "Mesh"}, "apiVersion"},
		{crd.Object{"apiVersion": crd.APIVersion, "kind": "Secret"}, `"Secret" is not`},
		{crd.Object{"apiVersion": crd.APIVersion, "kind": "Mesh", "metadata": map[string]any{"name": "m"},
			"spec": map[string]any{"mtls": map[string]any{"enabld": true}}}, `unknown field "mtls.enabld"`},
		{crd.Object{"apiVersion": crd.APIVersion, "kind": "Mesh", "metadata": map[string]any{"name": "m"},
			"spec": map[string]any{"name": "other"}}, "unknown field spec.name"},
		{crd.Object{"apiVersion": crd.APIVersion, "kind": "Dataplane", "metadata": map[string]any{"name": "d"},
			"spec": map[string]any{"networking": map[string]any{"address": 7}}}, "networking.address"},
		{crd.Object{"apiVersion": crd.APIVersion, "kind": "Dataplane", "metadata": map[string]any{"name": "d"},
			"spec": "x"}, "spec is not an object"},
	} {
		_, err := crd.FromObject(tt.obj)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("FromObject(%v) = %v, want an error containing %q", tt.obj, err, tt.want)
		}
	}
}

// FuzzFromObject feeds FromObject objects as the API server could return
// them after a user's edit: it must refuse or return a resource whose object
// form comes back the same, never crash.
func FuzzFromObject(f *testing.F) {
	for _, r := range examples(f) {
		obj, err := crd.ToObject(r, "ns")
		if err != nil {
			f.Fatal(err)
		}
		b, err := json.Marshal(obj)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"apiVersion":"ursa.io/v1alpha1","kind":"Mesh","metadata":{"name":7},"spec":[]}`))
	f.Add([]byte(`{"apiVersion":"ursa.io/v1alpha1","kind":"TrafficRoute","metadata":{"labels":{"a":1}},"spec":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var obj crd.Object
		if json.Unmarshal(data, &obj) != nil {
			return
		}
		r, err := crd.FromObject(obj)
		if err != nil {
			return
		}
		again, err := crd.ToObject(r, "ns")
		if err != nil {
			t.Fatalf("ToObject of what FromObject returned: %v", err)
		}
		back, err := crd.FromObject(again)
		if err != nil {
			t.Fatalf("FromObject of ToObject's object: %v", err)
		}
		if !api.SameContent(r, back) {
			t.Fatalf("round trip changed %s", api.KeyOf(r))
		}
	})
}
