package crd_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/api/crd"
)

func privateExamples() []api.Resource {
	return []api.Resource{
		&api.Secret{Meta: api.Meta{Type: "Secret", Mesh: "default", Name: "s", Labels: map[string]string{"a": "b"}}, Data: []byte{0, 255}},
		&api.GlobalSecret{Meta: api.Meta{Type: "GlobalSecret", Name: "zone-token-key"}, Data: []byte("k")},
		&api.MeshCA{Meta: api.Meta{Type: "MeshCA", Mesh: "default", Name: "ca"}, CertPEM: "c", Intermediates: []api.Intermediate{{Zone: "z", Serial: "1"}}},
		&api.ZoneCA{Meta: api.Meta{Type: "ZoneCA", Mesh: "m.with.dots", Name: "zone-1"}, CertPEM: "c", KeyPEM: "k"},
	}
}

// TestSecretRoundTrip: every private type comes back from its Secret form
// as it went in, under a name valid on Kubernetes that differs per mesh.
func TestSecretRoundTrip(t *testing.T) {
	for _, r := range privateExamples() {
		obj, err := crd.ToSecret(r, "ns")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(obj)
		var back crd.Object
		_ = json.Unmarshal(b, &back)
		got, err := crd.FromSecret(back)
		if err != nil || !api.SameContent(got, r) {
			t.Fatalf("%s: round trip = %v, %v", api.KeyOf(r), got, err)
		}
	}
	d, _ := api.Lookup("MeshCA")
	if a, b := crd.SecretName(d, "a", "ca"), crd.SecretName(d, "b", "ca"); a == b || !strings.HasPrefix(a, "mesh-ca.ca.") {
		t.Fatalf("mesh CA names %q, %q", a, b)
	}
	if n := crd.SecretName(d, strings.Repeat("m", 253), strings.Repeat("n", 253)); len(n) > 253 {
		t.Fatalf("long name %d characters", len(n))
	}
	if _, err := crd.ToSecret(&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "m"}}, "ns"); err == nil {
		t.Fatal("ToSecret of a Mesh succeeded")
	}
}

// TestSecretTooLarge: a resource whose Secret data would pass the API
// server's limit is refused by the conversion, naming the limit, the size
// and the field that holds most; at the limit it converts.
func TestSecretTooLarge(t *testing.T) {
	at := &api.Secret{Meta: api.Meta{Type: "Secret", Mesh: "default", Name: "s"}, Data: make([]byte, crd.MaxSecretData)}
	if _, err := crd.ToSecret(at, "ns"); err != nil {
		t.Fatalf("a Secret of exactly %d bytes: %v", crd.MaxSecretData, err)
	}
	ca := &api.MeshCA{Meta: api.Meta{Type: "MeshCA", Mesh: "default", Name: "ca"}, CertPEM: strings.Repeat("c", 1000),
		Intermediates: []api.Intermediate{{Zone: "z", Serial: "1", CRLPEM: strings.Repeat("l", crd.MaxSecretData)}}}
	_, err := crd.ToSecret(ca, "ns")
	if !errors.Is(err, crd.ErrTooLarge) || !strings.Contains(err.Error(), "MeshCA/default/ca") ||
		!strings.Contains(err.Error(), "intermediates") || !strings.Contains(err.Error(), "1048576") {
		t.Fatalf("ToSecret of a mesh CA over the limit = %v", err)
	}
}

// FuzzFromSecret: a Secret in the namespace can be anything a user with
// RBAC writes; reading it is a resource or an error, never a crash, and a
// resource read goes back to a Secret.
func FuzzFromSecret(f *testing.F) {
	for _, r := range privateExamples() {
		obj, err := crd.ToSecret(r, "ns")
		if err != nil {
			f.Fatal(err)
		}
		b, _ := json.Marshal(obj)
		f.Add(b)
	}
	f.Add([]byte(`{"type":"ursa.io/mesh-ca","metadata":{"annotations":{"ursa.io/name":"x","ursa.io/mesh":"m"}},"data":{"intermediates":"W3t9XQ==","certPEM":7}}`))
	f.Add([]byte(`{"type":"ursa.io/secret","metadata":{"annotations":{"ursa.io/name":"x"},"labels":{"a":1}},"data":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var obj crd.Object
		if json.Unmarshal(data, &obj) != nil {
			return
		}
		r, err := crd.FromSecret(obj)
		if err != nil {
			return
		}
		if _, err := crd.ToSecret(r, "ns"); err != nil {
			t.Fatalf("ToSecret of what FromSecret returned: %v", err)
		}
	})
}
