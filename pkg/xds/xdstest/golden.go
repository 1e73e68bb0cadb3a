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

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
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

// Parse reads back what Render wrote: a golden file's resources, by type,
// for a consumer of them (the built-in proxy's tests) to take as they
// would come over xDS.
func Parse(t testing.TB, golden []byte) map[resource.Type][]types.Resource {
	t.Helper()
	out := map[resource.Type][]types.Resource{}
	for doc := range strings.SplitSeq(string(golden), "---\n") {
		head, body, ok := strings.Cut(doc, "\n")
		if !ok || !strings.HasPrefix(head, "# ") {
			continue
		}
		var typ resource.Type
		var m proto.Message
		for _, c := range []struct {
			typ resource.Type
			new func() proto.Message
		}{
			{resource.ListenerType, func() proto.Message { return &listener.Listener{} }},
			{resource.RouteType, func() proto.Message { return &route.RouteConfiguration{} }},
			{resource.ClusterType, func() proto.Message { return &cluster.Cluster{} }},
			{resource.EndpointType, func() proto.Message { return &endpoint.ClusterLoadAssignment{} }},
			{resource.SecretType, func() proto.Message { return &tlsv3.Secret{} }},
		} {
			if label(c.typ) == strings.TrimPrefix(head, "# ") {
				typ, m = c.typ, c.new()
			}
		}
		if m == nil {
			t.Fatalf("a golden document of type %q", head)
		}
		j, err := yaml.YAMLToJSON([]byte(body))
		if err == nil {
			err = protojson.Unmarshal(j, m)
		}
		if err != nil {
			t.Fatalf("a golden %s: %v", head, err)
		}
		out[typ] = append(out[typ], m.(types.Resource))
	}
	return out
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
