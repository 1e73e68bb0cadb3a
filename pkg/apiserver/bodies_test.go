package apiserver

import (
	"net/http"
	"strings"
	"testing"

	"github.com/ursamesh/ursa/pkg/store"
)

// a JSON body with a key twice is refused, as the same body in YAML
// is and as api.Decode's contract says ("a duplicate key … is an error");
// it must not silently keep the last value.
func TestJSONDuplicateKeyRefused(t *testing.T) {
	srv := newServer(t, store.NewMemory(0), ModeGlobal)
	u := srv.URL
	do(t, "PUT", u+"/meshes/default", `type: Mesh`)
	yamlBody := "type: TrafficRoute\nspec: {destination: {ursa.io/service: billing}, split: [{weight: 90}]}\nspec: {destination: {ursa.io/service: billing}, split: [{weight: 50}]}\n"
	if r := do(t, "PUT", u+"/meshes/default/traffic-routes/r", yamlBody); r.code != 400 {
		t.Fatalf("YAML with spec twice: %d %s", r.code, r.body)
	}
	jsonBody := `{"type":"TrafficRoute","spec":{"destination":{"ursa.io/service":"billing"},"split":[{"weight":90}]},` +
		`"spec":{"destination":{"ursa.io/service":"billing"},"split":[{"weight":50}]}}`
	r := do(t, "PUT", u+"/meshes/default/traffic-routes/r", jsonBody)
	if r.code != 400 || !strings.Contains(r.body, "spec") {
		t.Errorf("JSON with spec twice: %d %s; want 400 naming the duplicate key spec", r.code, r.body)
	}
	if g := do(t, "GET", u+"/meshes/default/traffic-routes/r", ""); g.code != 404 {
		t.Errorf("the refused body was written: %d %s", g.code, g.body)
	}
}

// a body of one good document followed by a broken one is refused
// as "several documents" is; the broken rest must not be silently dropped.
func TestBrokenSecondDocumentRefused(t *testing.T) {
	srv := newServer(t, store.NewMemory(0), ModeGlobal)
	u := srv.URL
	do(t, "PUT", u+"/meshes/default", `type: Mesh`)
	for _, tail := range []string{
		"---\ntype: TrafficRoute\nname: r2\nspec: {destination: {ursa.io/service: billing}, split: [{weight: 10}]\n", // a missing }
		"---\n: : :\n",
		"...\nname: other\n",
	} {
		r := do(t, "PUT", u+"/meshes/default/traffic-routes/r", route+tail)
		if r.code != 400 {
			t.Errorf("body with %q after the document: %d %s; want 400 (malformed: more than one document)", tail, r.code, r.body)
		}
	}
	if g := do(t, "GET", u+"/meshes/default/traffic-routes/r", ""); g.code != 404 {
		t.Errorf("a refused body was written: %d %s", g.code, g.body)
	}
}

// a method a path does not serve is 405 with Allow (RFC 9110
// §15.5.6; Kubernetes and Kuma's API server answer 405), not 404 "no such
// path" for a path that exists.
func TestWrongMethodIs405(t *testing.T) {
	srv := newServer(t, store.NewMemory(0), ModeGlobal)
	u := srv.URL
	do(t, "PUT", u+"/meshes/default", `type: Mesh`)
	do(t, "PUT", u+"/meshes/default/traffic-routes/r", route)
	for _, c := range []struct{ method, path string }{
		{"POST", "/meshes/default/traffic-routes/r"},
		{"PATCH", "/meshes/default/traffic-routes/r"},
		{"POST", "/meshes"},
		{"DELETE", "/meshes/default/traffic-routes"},
	} {
		r := do(t, c.method, u+c.path, route)
		if r.code != http.StatusMethodNotAllowed || r.header.Get("Allow") == "" {
			t.Errorf("%s %s: %d Allow=%q %s; want 405 with Allow", c.method, c.path, r.code, r.header.Get("Allow"), strings.TrimSpace(r.body))
		}
	}
}
