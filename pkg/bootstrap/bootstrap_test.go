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
	for _, tt := range []struct {
		golden string
		o      Options
	}{
		// TLS to an IP address: the SAN matched is that IP, no SNI.
		{"bootstrap", Options{CPAddress: "127.0.0.1:5678", CACertFile: "/etc/ursa/xds-ca.pem"}},
		// TLS to a name: SNI and a DNS SAN.
		{"bootstrap-name", Options{CPAddress: "zone-cp.example:5678", CACertFile: "/etc/ursa/xds-ca.pem"}},
		{"bootstrap-plaintext", Options{CPAddress: "127.0.0.1:5678", Plaintext: true}},
	} {
		o := tt.o
		o.NodeID, o.Token, o.AdminAddress = "default.web-1", "TOKEN", "127.0.0.1:9901"
		o.Metadata = map[string]string{"ursa.io/dataplane": "type: Dataplane"}
		b, err := JSON(o)
		if err != nil {
			t.Fatal(err)
		}
		var compact bytes.Buffer
		json.Compact(&compact, b)
		y, err := yaml.JSONToYAML(compact.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		file := "testdata/" + tt.golden + ".golden.yaml"
		if *update {
			if err := os.WriteFile(file, y, 0o644); err != nil {
				t.Fatal(err)
			}
		} else if want, err := os.ReadFile(file); err != nil || !bytes.Equal(y, want) {
			t.Errorf("%s differs from what was generated (go test ./pkg/bootstrap -update rewrites it; %v):\n%s", file, err, y)
		}
	}
	if _, err := JSON(Options{NodeID: "x", CPAddress: "nope", AdminAddress: "127.0.0.1:1", Plaintext: true}); err == nil {
		t.Fatal("a bad control-plane address was accepted")
	}
	if _, err := JSON(Options{NodeID: "x", CPAddress: "127.0.0.1:5678", AdminAddress: "127.0.0.1:1"}); err == nil {
		t.Fatal("TLS without a CA file was accepted: Envoy would trust any server")
	}
}
