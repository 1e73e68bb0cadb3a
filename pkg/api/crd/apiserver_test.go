package crd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/api/crd"
	"github.com/ursamesh/ursa/pkg/k8stest"
	"github.com/ursamesh/ursa/pkg/testutil"
)

var kube k8stest.Shared

func TestMain(m *testing.M) { os.Exit(kube.Main(m)) }

var (
	installOnce sync.Once
	installErr  error
)

// installed returns the shared rig with deploy/crds applied by kubectl and
// every CRD Established (once per test binary: a new CRD's first requests
// are slow).
func installed(t *testing.T) *k8stest.Rig {
	t.Helper()
	rig := kube.Get(t)
	installOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := rig.Kubectl(ctx, "apply", "-f", crdDir).CombinedOutput(); err != nil {
			installErr = fmt.Errorf("kubectl apply -f deploy/crds: %v\n%s", err, out)
		}
	})
	if installErr != nil {
		t.Fatal(installErr)
	}
	defs, err := crd.Definitions(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range defs {
		testutil.Eventually(t, 30*time.Second, d.Metadata.Name+" Established", func() error {
			obj, code, err := do(rig, "GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"+d.Metadata.Name, nil)
			if err != nil || code != http.StatusOK {
				return fmt.Errorf("GET: %d %v", code, err)
			}
			status, _ := obj["status"].(map[string]any)
			conds, _ := status["conditions"].([]any)
			for _, c := range conds {
				c, _ := c.(map[string]any)
				if c["type"] == "Established" && c["status"] == "True" {
					return nil
				}
			}
			return fmt.Errorf("conditions %v", conds)
		})
	}
	return rig
}

// do sends a JSON request to the rig and returns the decoded answer and
// its status code.
func do(rig *k8stest.Rig, method, path string, body any) (crd.Object, int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, rig.URL+path, rd)
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := rig.Client().Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, resp.StatusCode, err
	}
	var out crd.Object
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, resp.StatusCode, fmt.Errorf("%s %s: %d: %w: %s", method, path, resp.StatusCode, err, b)
	}
	return out, resp.StatusCode, nil
}

func must(t *testing.T, rig *k8stest.Rig, method, path string, body any, want int) crd.Object {
	t.Helper()
	obj, code, err := do(rig, method, path, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	if code != want {
		t.Fatalf("%s %s: %d, want %d: %v", method, path, code, want, obj)
	}
	return obj
}

// collection is the REST path of a type's objects in namespace.
func collection(d api.Descriptor, namespace string) string {
	if !crd.Namespaced(d) {
		return "/apis/" + crd.APIVersion + "/" + crd.NamesOf(d).Plural
	}
	return "/apis/" + crd.APIVersion + "/namespaces/" + namespace + "/" + crd.NamesOf(d).Plural
}

func namespace(t *testing.T, rig *k8stest.Rig, name string) {
	t.Helper()
	must(t, rig, "POST", "/api/v1/namespaces", crd.Object{"apiVersion": "v1", "kind": "Namespace", "metadata": crd.Object{"name": name}}, http.StatusCreated)
	t.Cleanup(func() { _, _, _ = do(rig, "DELETE", "/api/v1/namespaces/"+name, nil) })
}

func kubectl(t *testing.T, rig *k8stest.Rig, stdin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := rig.Kubectl(ctx, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// columns are the printer columns `kubectl get` should show for each
// example (examples), by header.
var columns = map[string]map[string]string{
	"Mesh":               {"MTLS": "true"},
	"Zone":               {"ENABLED": "true"},
	"ZoneInsight":        {"CONNECTED": "true", "CP-VERSION": "v0.9.0"},
	"ZoneIngress":        {"ZONE": "zone-2", "ADDRESS": "10.0.1.5", "PORT": "10001", "ADVERTISED": "203.0.113.7"},
	"Dataplane":          {"MESH": "default", "ADDRESS": "10.0.0.7", "SERVICE": "billing"},
	"DataplaneInsight":   {"MESH": "default", "ONLINE": "true", "INSTANCE": "zone-1-cp-0", "NACKS": "2"},
	"ZoneIngressInsight": {"ONLINE": "false", "INSTANCE": "", "NACKS": "0"},
	"ServiceInsight":     {"MESH": "default", "ZONE": "zone-1", "SERVICE": "billing"},
	"TrafficPermission":  {"MESH": "default", "ACTION": "ALLOW"},
	"TrafficRoute":       {"MESH": "default", "DESTINATION": "billing"},
	"Failover":           {"MESH": "default", "DESTINATION": "billing"},
	"Timeout":            {"MESH": "default"},
	"Retry":              {"MESH": "default"},
	"CircuitBreaker":     {"MESH": "default"},
	"HealthCheck":        {"MESH": "default"},
	"FaultInjection":     {"MESH": "default"},
	"TrafficLog":         {"MESH": "default"},
	"TrafficTrace":       {"MESH": "default"},
	"VirtualIPs":         {"MESH": "default"},
	"UserTokenPublicKey": {},
	"TokenRevocation":    {"TOKEN": "dataplane", "SUBJECT": "mesh default, service web"},
}

// TestExamples creates one object of every type from its resource, reads
// it back equal, and checks what `kubectl get` shows of it.
func TestExamples(t *testing.T) {
	rig := installed(t)
	const ns = "crd-examples"
	namespace(t, rig, ns)
	for _, r := range examples(t) {
		d, _ := api.Lookup(r.GetMeta().Type)
		t.Run(d.Type, func(t *testing.T) {
			obj, err := crd.ToObject(r, ns)
			if err != nil {
				t.Fatal(err)
			}
			coll := collection(d, ns)
			created := must(t, rig, "POST", coll+"?fieldValidation=Strict", obj, http.StatusCreated)
			if crd.IsInsight(d) && created["status"] == nil {
				// No status subresource: one create writes it all.
				t.Errorf("created %s has no status", d.Type)
			}
			got := must(t, rig, "GET", coll+"/"+r.GetMeta().Name, nil, http.StatusOK)
			back, err := crd.FromObject(got)
			if err != nil {
				t.Fatal(err)
			}
			if !api.SameContent(r, back) {
				t.Errorf("read back as\n%s\nnot\n%s", api.Content(back), api.Content(r))
			}

			args := []string{"get", crd.NamesOf(d).Plural, r.GetMeta().Name}
			if crd.Namespaced(d) {
				args = append(args, "-n", ns)
			}
			out, err := kubectl(t, rig, "", args...)
			if err != nil {
				t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 2 {
				t.Fatalf("kubectl get: want a header and one row:\n%s", out)
			}
			shown := table(lines[0], lines[1])
			if shown["NAME"] != r.GetMeta().Name || shown["AGE"] == "" {
				t.Fatalf("kubectl get: want NAME, the columns and AGE:\n%s", out)
			}
			delete(shown, "NAME")
			delete(shown, "AGE")
			if fmt.Sprint(shown) != fmt.Sprint(columns[d.Type]) {
				t.Errorf("kubectl get shows %v, want %v:\n%s", shown, columns[d.Type], out)
			}
		})
	}

	// The category lists every kind; mesh is a selectable field.
	out, err := kubectl(t, rig, "", "get", crd.Category, "-A", "-o", "name")
	if err != nil {
		t.Fatalf("kubectl get ursa: %v\n%s", err, out)
	}
	for _, want := range []string{"mesh.ursa.io/default", "dataplane.ursa.io/billing-1", "trafficroute.ursa.io/billing-split", "dataplaneinsight.ursa.io/billing-1"} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl get ursa -A does not list %s:\n%s", want, out)
		}
	}
	for sel, want := range map[string]string{"mesh=default": "billing-1", "mesh=other": "No resources found"} {
		out, err := kubectl(t, rig, "", "get", "dp", "-n", ns, "--field-selector", sel)
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("kubectl get dp --field-selector %s: %v: want %q in:\n%s", sel, err, want, out)
		}
	}
}

// table reads one row of kubectl's table by its header: each column starts
// where its header does (an empty cell is blank).
func table(header, row string) map[string]string {
	var starts []int
	for i := range header {
		if header[i] != ' ' && (i == 0 || header[i-1] == ' ') {
			starts = append(starts, i)
		}
	}
	out := map[string]string{}
	for j, st := range starts {
		end := len(header)
		if j+1 < len(starts) {
			end = starts[j+1]
		}
		name := strings.TrimSpace(header[st:end])
		if j+1 == len(starts) {
			end = len(row)
		}
		out[name] = strings.TrimSpace(row[min(st, len(row)):min(end, len(row))])
	}
	return out
}

// TestSchemaRefuses sends objects the schema refuses, through the API and
// through kubectl, and expects the answer to name the field.
func TestSchemaRefuses(t *testing.T) {
	rig := installed(t)
	const ns = "crd-refuses"
	namespace(t, rig, ns)
	dp := func(edit func(spec, networking, inbound map[string]any, obj crd.Object)) crd.Object {
		r, err := api.Decode([]byte(`{"type":"Dataplane","mesh":"default","name":"bad","networking":{"address":"10.0.0.1",` +
			`"inbound":[{"port":10011,"tags":{"ursa.io/service":"x"}}]}}`))
		if err != nil {
			t.Fatal(err)
		}
		obj, err := crd.ToObject(r, ns)
		if err != nil {
			t.Fatal(err)
		}
		spec := obj["spec"].(map[string]any)
		networking := spec["networking"].(map[string]any)
		edit(spec, networking, networking["inbound"].([]any)[0].(map[string]any), obj)
		return obj
	}
	tp := func(action any) crd.Object {
		return crd.Object{"apiVersion": crd.APIVersion, "kind": "TrafficPermission", "metadata": crd.Object{"name": "bad", "namespace": ns},
			"mesh": "default", "spec": crd.Object{"action": action,
				"sources": []any{crd.Object{"match": crd.Object{"a": "b"}}}, "destinations": []any{crd.Object{"match": crd.Object{"a": "b"}}}}}
	}
	dataplanes, _ := api.Lookup("Dataplane")
	permissions, _ := api.Lookup("TrafficPermission")
	for _, tt := range []struct {
		name string
		d    api.Descriptor
		obj  crd.Object
		want []string
	}{
		{"wrong type", dataplanes, dp(func(_, _, in map[string]any, _ crd.Object) { in["port"] = "http" }),
			[]string{"spec.networking.inbound[0].port", "integer"}},
		{"out of range", dataplanes, dp(func(_, _, in map[string]any, _ crd.Object) { in["port"] = 70000 }),
			[]string{"spec.networking.inbound[0].port", "65535"}},
		{"unknown field", dataplanes, dp(func(_, n, _ map[string]any, _ crd.Object) { n["adress"] = "10.0.0.2" }),
			[]string{`unknown field "spec.networking.adress"`}},
		{"required", dataplanes, dp(func(_, n, _ map[string]any, _ crd.Object) { delete(n, "address") }),
			[]string{"spec.networking.address", "Required value"}},
		{"no mesh", dataplanes, dp(func(_, _, _ map[string]any, obj crd.Object) { delete(obj, "mesh") }),
			[]string{"mesh", "Required value"}},
		{"enum", permissions, tp("MAYBE"), []string{"spec.action", `"ALLOW"`, `"DENY"`}},
		{"wrong type of a list", permissions, tp([]any{"ALLOW"}), []string{"spec.action", "string"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			obj, code, err := do(rig, "POST", collection(tt.d, ns)+"?fieldValidation=Strict", tt.obj)
			if err != nil {
				t.Fatal(err)
			}
			msg, _ := obj["message"].(string)
			t.Logf("refused: %d %s", code, msg)
			if code < 400 || code >= 500 {
				t.Fatalf("POST: %d, want a refusal: %v", code, obj)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("API refusal %q does not contain %q", msg, w)
				}
			}
			// kubectl validates strictly by default.
			doc, err := json.Marshal(tt.obj)
			if err != nil {
				t.Fatal(err)
			}
			out, err := kubectl(t, rig, string(doc), "create", "-f", "-")
			if err == nil {
				t.Fatalf("kubectl create accepted it:\n%s", out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("kubectl create's refusal does not contain %q:\n%s", w, out)
				}
			}
		})
	}
	if _, code, _ := do(rig, "GET", collection(dataplanes, ns)+"/bad", nil); code != http.StatusNotFound {
		t.Errorf("a refused Dataplane exists (GET: %d)", code)
	}
}
