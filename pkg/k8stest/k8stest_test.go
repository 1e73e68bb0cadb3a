package k8stest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/k8stest"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// The shared rig runs kube-controller-manager too; TestStop starts a plain one.
var kube = k8stest.Shared{Options: k8stest.Options{ControllerManager: true}}

func TestMain(m *testing.M) { os.Exit(kube.Main(m)) }

// object is a Kubernetes object as JSON.
type object = map[string]any

// call sends a JSON request to the rig and decodes the answer, failing the
// test unless the status is want.
func call(t *testing.T, rig *k8stest.Rig, method, path string, body any, want int) object {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, rig.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := rig.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %s, want %d: %s", method, path, resp.Status, want, b)
	}
	var out object
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s %s: %v: %s", method, path, err, b)
	}
	return out
}

// field walks nested maps: field(o, "metadata", "name").
func field(o object, path ...string) any {
	var v any = o
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

type event struct {
	Type   string `json:"type"`
	Object object `json:"object"`
}

// watch streams the events of one object of a collection from
// resourceVersion rv.
func watch(t *testing.T, rig *k8stest.Rig, path, name, rv string) <-chan event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	q := url.Values{"watch": {"true"}, "resourceVersion": {rv}, "fieldSelector": {"metadata.name=" + name}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rig.URL+path+"?"+q.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := rig.Client().Do(req)
	if err != nil {
		t.Fatalf("watch %s: %v", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		t.Fatalf("watch %s: %s", path, resp.Status)
	}
	events := make(chan event, 16)
	go func() {
		defer resp.Body.Close()
		defer close(events)
		dec := json.NewDecoder(resp.Body)
		for {
			var ev event
			if err := dec.Decode(&ev); err != nil {
				return
			}
			events <- ev
		}
	}()
	return events
}

// next returns the next watch event, failing the test after a generous bound.
func next(t *testing.T, events <-chan event) event {
	t.Helper()
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatal("watch ended")
		}
		return ev
	case <-time.After(20 * time.Second):
		t.Fatal("no watch event in 20s")
	}
	return event{}
}

// TestRig proves the rig is a working Kubernetes API with what issue 14's
// tests need: the self-built version, namespaces, a watch that sees creates,
// updates and deletes, optimistic concurrency as 409, Pods accepted without
// a ServiceAccount and their status set as a kubelet would, and kubectl
// through the kubeconfig, and a Deployment's Pods made by the controller
// manager.
func TestRig(t *testing.T) {
	rig := kube.Get(t)
	t.Logf("rig ready in %s at %s", rig.Started.Round(time.Millisecond), rig.URL)

	if v := call(t, rig, "GET", "/version", nil, 200); v["gitVersion"] != "v1.37.2" {
		t.Errorf("apiserver gitVersion = %v, want v1.37.2 (built without the -X version flags?)", v["gitVersion"])
	}
	call(t, rig, "POST", "/api/v1/namespaces", object{
		"apiVersion": "v1", "kind": "Namespace",
		"metadata": object{"name": "smoke", "labels": object{"ursa.io/sidecar-injection": "enabled"}},
	}, 201)

	cms := "/api/v1/namespaces/smoke/configmaps"
	list := call(t, rig, "GET", cms, nil, 200)
	// Only cm: the controller manager adds kube-root-ca.crt to every namespace.
	events := watch(t, rig, cms, "cm", field(list, "metadata", "resourceVersion").(string))

	created := call(t, rig, "POST", cms, object{
		"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": object{"name": "cm"}, "data": object{"a": "1"},
	}, 201)
	if ev := next(t, events); ev.Type != "ADDED" || field(ev.Object, "metadata", "name") != "cm" || field(ev.Object, "data", "a") != "1" {
		t.Fatalf("first event %s %v, want ADDED cm with a=1", ev.Type, ev.Object)
	}

	updated := call(t, rig, "PUT", cms+"/cm", object{
		"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": object{"name": "cm", "resourceVersion": field(created, "metadata", "resourceVersion")},
		"data":     object{"a": "2"},
	}, 200)
	if ev := next(t, events); ev.Type != "MODIFIED" || field(ev.Object, "data", "a") != "2" {
		t.Fatalf("second event %s %v, want MODIFIED with a=2", ev.Type, ev.Object)
	}
	if field(updated, "metadata", "resourceVersion") == field(created, "metadata", "resourceVersion") {
		t.Error("an update kept the resourceVersion")
	}
	stale := call(t, rig, "PUT", cms+"/cm", object{
		"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": object{"name": "cm", "resourceVersion": field(created, "metadata", "resourceVersion")},
		"data":     object{"a": "3"},
	}, 409)
	if stale["reason"] != "Conflict" {
		t.Errorf("stale update: reason %v, want Conflict", stale["reason"])
	}
	call(t, rig, "DELETE", cms+"/cm", nil, 200)
	if ev := next(t, events); ev.Type != "DELETED" || field(ev.Object, "metadata", "name") != "cm" {
		t.Fatalf("third event %s %v, want DELETED cm", ev.Type, ev.Object)
	}

	// A Pod in a namespace with no ServiceAccount (no controller manager
	// makes one), then its status as a kubelet would set it.
	pods := "/api/v1/namespaces/smoke/pods"
	pod := call(t, rig, "POST", pods, object{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": object{"name": "p1", "labels": object{"app": "billing"}},
		"spec":     object{"containers": []object{{"name": "app", "image": "billing:1"}}},
	}, 201)
	pod["status"] = object{
		"phase": "Running", "podIP": "10.244.0.7", "podIPs": []object{{"ip": "10.244.0.7"}},
		"conditions": []object{
			{"type": "Ready", "status": "True"},
			{"type": "ContainersReady", "status": "True"},
		},
	}
	call(t, rig, "PUT", pods+"/p1/status", pod, 200)
	got := call(t, rig, "GET", pods+"/p1", nil, 200)
	if ip := field(got, "status", "podIP"); ip != "10.244.0.7" {
		t.Errorf("pod IP after the status update = %v, want 10.244.0.7", ip)
	}

	// The controller manager makes a Deployment's Pods, unscheduled.
	call(t, rig, "POST", "/apis/apps/v1/namespaces/smoke/deployments", object{
		"apiVersion": "apps/v1", "kind": "Deployment",
		"metadata": object{"name": "web"},
		"spec": object{
			"replicas": 2,
			"selector": object{"matchLabels": object{"app": "web"}},
			"template": object{
				"metadata": object{"labels": object{"app": "web"}},
				"spec":     object{"containers": []object{{"name": "web", "image": "web:1"}}},
			},
		},
	}, 201)
	testutil.Eventually(t, 30*time.Second, "the Deployment's 2 Pods", func() error {
		list := call(t, rig, "GET", pods+"?labelSelector=app%3Dweb", nil, 200)
		if items, _ := list["items"].([]any); len(items) != 2 {
			return fmt.Errorf("%d pods", len(items))
		}
		return nil
	})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := rig.Kubectl(ctx, "get", "pod", "p1", "-n", "smoke", "-o", "name").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "pod/p1" {
		t.Errorf("kubectl get pod p1: %v: %q, want pod/p1", err, out)
	}
}

// TestToolsMissing: without the binaries, Start fails with a message naming
// the script that builds them.
func TestToolsMissing(t *testing.T) {
	if k8stest.Off() {
		t.Skip("the rig is off")
	}
	empty := t.TempDir()
	t.Setenv(k8stest.ToolsEnv, empty)
	_, err := k8stest.Start(context.Background(), k8stest.Options{})
	if err == nil || !strings.Contains(err.Error(), k8stest.ToolsScript) || !strings.Contains(err.Error(), empty) {
		t.Fatalf("Start without tools: %v, want an error naming %s and %s", err, k8stest.ToolsScript, empty)
	}
}

// TestOff: URSA_K8S_RIG=off makes Start refuse with ErrOff (and Shared.Get skip).
func TestOff(t *testing.T) {
	t.Setenv(k8stest.RigEnv, "off")
	if _, err := k8stest.Start(context.Background(), k8stest.Options{}); !errors.Is(err, k8stest.ErrOff) {
		t.Fatalf("Start with %s=off: %v, want ErrOff", k8stest.RigEnv, err)
	}
}

// TestStop: Stop kills both processes and removes the rig's files.
func TestStop(t *testing.T) {
	if k8stest.Off() {
		t.Skip("the rig is off")
	}
	t.Parallel()
	rig, err := k8stest.Start(context.Background(), k8stest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	logs, err := filepath.Glob(filepath.Join(rig.Dir, "*.log"))
	if err != nil || len(logs) != 2 {
		t.Fatalf("rig logs %v (%v), want etcd.log and apiserver.log", logs, err)
	}
	rig.Stop()
	if _, err := os.Stat(rig.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Stop, %s: %v, want it gone", rig.Dir, err)
	}
	if _, err := http.Get(rig.EtcdURL + "/health"); err == nil {
		t.Errorf("etcd still answers at %s after Stop", rig.EtcdURL)
	}
	if _, err := rig.Client().Get(rig.URL + "/readyz"); err == nil {
		t.Errorf("the apiserver still answers at %s after Stop", rig.URL)
	}
}

// TestStartFails: an apiserver that exits at once (a flag it does not know)
// makes Start fail with the end of its log, having killed etcd and removed
// the rig's files.
func TestStartFails(t *testing.T) {
	if k8stest.Off() {
		t.Skip("the rig is off")
	}
	t.Parallel()
	_, err := k8stest.Start(context.Background(), k8stest.Options{APIServerFlags: []string{"--no-such-flag"}})
	if err == nil || !strings.Contains(err.Error(), "unknown flag: --no-such-flag") {
		t.Fatalf("Start with a bad flag: %v, want the apiserver's complaint", err)
	}
	m := regexp.MustCompile(`(/\S+)/apiserver\.log`).FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("error names no apiserver.log: %v", err)
	}
	if _, err := os.Stat(m[1]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after a failed Start, %s: %v, want it gone", m[1], err)
	}
}
