// Package xdstest holds what generator tests share: golden files of
// generated Envoy resources, rendered as YAML.
package xdstest

import (
	"bytes"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/ursamesh/ursa/pkg/api"
)

// Render writes resources as YAML, ordered by type and name, so that the
// golden files are stable and readable.
func Render(t testing.TB, r map[resource.Type][]types.Resource) []byte {
	t.Helper()
	var buf bytes.Buffer
	for _, typ := range []resource.Type{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType, resource.SecretType} {
		list := slices.Clone(r[typ])
		slices.SortStableFunc(list, func(a, b types.Resource) int {
			return strings.Compare(cache.GetResourceName(a), cache.GetResourceName(b))
		})
		for _, res := range list {
			j, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(res.(proto.Message))
			if err != nil {
				t.Fatal(err)
			}
			var compact bytes.Buffer
			json.Compact(&compact, j)
			y, err := yaml.JSONToYAML(compact.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			buf.WriteString("# " + label(typ) + "\n")
			buf.Write(y)
			buf.WriteString("---\n")
		}
	}
	return buf.Bytes()
}

// Golden compares got with the file, or rewrites it when update is set
// (the test's -update flag).
func Golden(t testing.TB, file string, got []byte, update bool) {
	t.Helper()
	if update {
		if err := os.WriteFile(file, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run go test with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from what was generated (go test with -update rewrites it):\n%s", file, got)
	}
}

// label names a type in a golden file.
func label(t resource.Type) string {
	switch t {
	case resource.ListenerType:
		return "listener"
	case resource.RouteType:
		return "route configuration"
	case resource.ClusterType:
		return "cluster"
	case resource.EndpointType:
		return "load assignment"
	case resource.SecretType:
		return "secret"
	}
	return t
}

// Inputs reads a generator case: a multi-document YAML of resources.
func Inputs(t testing.TB, file string) []api.Resource {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	rs, errs := api.DecodeAll(data)
	if len(errs) > 0 {
		t.Fatalf("%s: %v", file, errs)
	}
	return rs
}
