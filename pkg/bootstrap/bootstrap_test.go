package bootstrap

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"testing"

	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func TestBootstrapGolden(t *testing.T) {
	b, err := JSON(Options{NodeID: "default.web-1", CPAddress: "127.0.0.1:5678", Token: "TOKEN",
		AdminAddress: "127.0.0.1:9901", Metadata: map[string]string{"ursa.io/dataplane": "type: Dataplane"}})
	if err != nil {
		t.Fatal(err)
	}
	var compact bytes.Buffer
	json.Compact(&compact, b)
	y, err := yaml.JSONToYAML(compact.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	const file = "testdata/bootstrap.golden.yaml"
	if *update {
		if err := os.WriteFile(file, y, 0o644); err != nil {
			t.Fatal(err)
		}
	} else if want, err := os.ReadFile(file); err != nil || !bytes.Equal(y, want) {
		t.Errorf("%s differs from what was generated (go test ./pkg/bootstrap -update rewrites it; %v):\n%s", file, err, y)
	}
	if _, err := JSON(Options{NodeID: "x", CPAddress: "nope", AdminAddress: "127.0.0.1:1"}); err == nil {
		t.Fatal("a bad control-plane address was accepted")
	}
}
