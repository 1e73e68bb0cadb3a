package xds

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/mtls"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// stateFrom reads a multi-document YAML of resources into the state of mesh
// "default" in zone "zone-1"; VirtualIPs documents give the VIPs.
func stateFrom(t *testing.T, file string) *MeshState {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	rs, errs := api.DecodeAll(data)
	if len(errs) > 0 {
		t.Fatalf("%s: %v", file, errs)
	}
	s := &MeshState{Zone: "zone-1", VIPs: map[string]netip.Addr{}}
	for _, r := range rs {
		switch r := r.(type) {
		case *api.Mesh:
			s.Mesh = r
		case *api.Dataplane:
			s.Dataplanes = append(s.Dataplanes, r)
		case *api.TrafficRoute:
			s.Routes = append(s.Routes, r)
		case *api.TrafficPermission:
			s.Permissions = append(s.Permissions, r)
		case *api.Failover:
			s.Failovers = append(s.Failovers, r)
		case *api.ZoneIngress:
			s.Ingresses = append(s.Ingresses, r)
		case *api.VirtualIPs:
			for svc, e := range r.Entries {
				s.VIPs[svc] = netip.MustParseAddr(e.IP)
			}
		}
	}
	if s.Mesh == nil {
		t.Fatalf("%s has no Mesh", file)
	}
	return s
}

// render writes resources as YAML, ordered by type and name, so that the
// golden files are stable and readable.
func render(t *testing.T, r Resources) []byte {
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
			buf.WriteString("# " + shortType(typ) + "\n")
			buf.Write(y)
			buf.WriteString("---\n")
		}
	}
	return buf.Bytes()
}

// golden compares got with the file, or rewrites it under -update.
func golden(t *testing.T, file string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(file, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run go test ./pkg/xds/... -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from what was generated (go test ./pkg/xds/... -update rewrites it):\n%s", file, got)
	}
}

// TestProxylessGolden runs the proxyless generator on each case under
// testdata/proxyless and compares with its golden file; every generated
// resource must pass Validate.
func TestProxylessGolden(t *testing.T) {
	inputs, _ := filepath.Glob("testdata/proxyless/*.input.yaml")
	if len(inputs) == 0 {
		t.Fatal("no test cases")
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".input.yaml")
		t.Run(name, func(t *testing.T) {
			s := stateFrom(t, in)
			r, err := Proxyless(s, Proxy{Dataplane: s.Dataplanes[0], Proxyless: true})
			if err != nil {
				t.Fatal(err)
			}
			if err := Validate(r); err != nil {
				t.Fatalf("generated resources do not validate: %v", err)
			}
			golden(t, strings.TrimSuffix(in, ".input.yaml")+".golden.yaml", render(t, r))
		})
	}
}

// TestSidecarGolden runs the sidecar generator on each case under
// testdata/sidecar; the first Dataplane of a case is the proxy.
func TestSidecarGolden(t *testing.T) {
	inputs, _ := filepath.Glob("testdata/sidecar/*.input.yaml")
	if len(inputs) == 0 {
		t.Fatal("no test cases")
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".input.yaml")
		t.Run(name, func(t *testing.T) {
			s := stateFrom(t, in)
			r, err := Sidecar(s, Proxy{Dataplane: s.Dataplanes[0]})
			if err != nil {
				t.Fatal(err)
			}
			if err := Validate(r); err != nil {
				t.Fatalf("generated resources do not validate: %v", err)
			}
			golden(t, strings.TrimSuffix(in, ".input.yaml")+".golden.yaml", render(t, r))
		})
	}
}

func TestSecretsGolden(t *testing.T) {
	r := Secrets(mtls.Identity{CertPEM: []byte("-----BEGIN CERTIFICATE-----\nWORKLOAD\n-----END CERTIFICATE-----\n"),
		KeyPEM: []byte("-----BEGIN PRIVATE KEY-----\nTEST KEY\n-----END PRIVATE KEY-----\n")},
		"-----BEGIN CERTIFICATE-----\nMESH CA\n-----END CERTIFICATE-----\n")
	if err := Validate(r); err != nil {
		t.Fatal(err)
	}
	golden(t, "testdata/secrets.golden.yaml", render(t, r))
}

// TestIngressGolden runs the ingress generator; the case's ZoneIngress is
// this zone's own.
func TestIngressGolden(t *testing.T) {
	inputs, _ := filepath.Glob("testdata/ingress/*.input.yaml")
	if len(inputs) == 0 {
		t.Fatal("no test cases")
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".input.yaml")
		t.Run(name, func(t *testing.T) {
			s := stateFrom(t, in)
			ing := s.Ingresses[0]
			s.Ingresses = nil
			r, err := Ingress([]*MeshState{s}, ing)
			if err != nil {
				t.Fatal(err)
			}
			if err := Validate(r); err != nil {
				t.Fatalf("generated resources do not validate: %v", err)
			}
			golden(t, strings.TrimSuffix(in, ".input.yaml")+".golden.yaml", render(t, r))
			avail := AvailableServices([]*MeshState{s}, "zone-1")
			if len(avail) != 3 || avail[0].Instances != 1 || avail[0].Tags[api.TagZone] != "zone-1" {
				t.Fatalf("available services: %+v", avail)
			}
		})
	}
}

func TestBootstrapGolden(t *testing.T) {
	b, err := Bootstrap(BootstrapOptions{NodeID: "default.web-1", CPAddress: "127.0.0.1:5678", Token: "TOKEN",
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
	golden(t, "testdata/bootstrap.golden.yaml", y)
	if _, err := Bootstrap(BootstrapOptions{NodeID: "x", CPAddress: "nope", AdminAddress: "127.0.0.1:1"}); err == nil {
		t.Fatal("a bad control-plane address was accepted")
	}
}
