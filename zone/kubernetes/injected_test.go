package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// TestHostNetworkPodGetsNoDataplane: the injector leaves a pod on the
// host's network alone (inject.go: "not on the host's network"), so it runs
// without a sidecar; the pod controller must then not make it a Dataplane,
// as Kuma's makes one only of a pod annotated kuma.io/sidecar-injected
// (pod_controller.go). Here a hostNetwork pod of an injected namespace,
// selected by a Service, admitted through the real webhook (no sidecar),
// must not become a ready Dataplane at the node's address: every meshed
// caller of nodeIP:9100 would speak mTLS to an app that takes plaintext.
func TestHostNetworkPodGetsNoDataplane(t *testing.T) {
	_, admin := rig(t)
	cp := controlPlane(t, admin, "rvhn-system")
	serveWebhooks(t, cp)
	k := k8s{t, admin}
	k.namespace("rvhn-mon", map[string]string{LabelSidecarInjection: "enabled"})
	st := newStore(t, cp, "rvhn-system") // the control plane writes what the controller makes
	k.service("rvhn-mon", "node-exporter", map[string]string{"app": "node-exporter"}, map[string]any{"name": "metrics", "port": 9100})
	ensure(t, admin, "/api/v1/namespaces/rvhn-mon/serviceaccounts", obj{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": obj{"name": "app"}})
	startController(t, admin, st, "rvhn-system", 2)

	// An ordinary pod first: once it is injected, the webhook is live.
	ctx := context.Background()
	testutil.Eventually(t, 20*time.Second, "the injector is called", func() error {
		var p rigPod
		err := admin.Do(ctx, "POST", "/api/v1/namespaces/rvhn-mon/pods?dryRun=All", obj{"apiVersion": "v1", "kind": "Pod",
			"metadata": obj{"name": "probe"}, "spec": obj{"serviceAccountName": "app", "containers": []any{obj{"name": "app", "image": "app:1"}}}}, &p)
		if err != nil {
			return err
		}
		if !slices.Contains(p.containers(), SidecarName) {
			return fmt.Errorf("containers %v", p.containers())
		}
		return nil
	})
	var p rigPod
	must(t, admin.Do(ctx, "POST", "/api/v1/namespaces/rvhn-mon/pods", obj{"apiVersion": "v1", "kind": "Pod",
		"metadata": obj{"name": "node-exporter-abcde", "labels": obj{"app": "node-exporter"}},
		"spec": obj{"serviceAccountName": "app", "hostNetwork": true, "containers": []any{obj{"name": "exporter", "image": "node-exporter:1",
			"ports": []any{obj{"name": "metrics", "containerPort": 9100}}}}}}, &p))
	if slices.Contains(p.containers(), SidecarName) {
		t.Fatalf("precondition: the hostNetwork pod was injected: %v", p.containers())
	}
	k.status("rvhn-mon", "node-exporter-abcde", "192.0.2.50", true) // the node's IP

	// A pod injected normally, for comparison: its Dataplane comes.
	must(t, admin.Do(ctx, "POST", "/api/v1/namespaces/rvhn-mon/pods", obj{"apiVersion": "v1", "kind": "Pod",
		"metadata": obj{"name": "prom-0", "labels": obj{"app": "prom"}},
		"spec":     obj{"serviceAccountName": "app", "containers": []any{obj{"name": "prom", "image": "prom:1"}}}}, nil))
	k.status("rvhn-mon", "prom-0", "10.60.0.2", true)
	waitDataplane(t, st, "prom-0.rvhn-mon", "10.60.0.2 49151:prom-0_rvhn-mon_svc:false")

	if dp := dataplane(t, st, "node-exporter-abcde.rvhn-mon"); dp != nil {
		t.Fatalf("a hostNetwork pod that has no sidecar got a Dataplane: %s (meshed callers of %s:9100 now get mTLS to a plaintext app)",
			describe(dp), dp.Networking.Address)
	}
}

// TestNamespaceMeshChangeKeepsRunningSidecars: an operator moves a
// namespace to another mesh (its annotation), for its next pods. A pod
// running already keeps the mesh its sidecar was injected with (--mesh):
// the injector pins it on the pod, as Kuma does. Its Dataplane moved to the
// new mesh before, and its proxy was refused there until the pod restarted.
func TestNamespaceMeshChangeKeepsRunningSidecars(t *testing.T) {
	_, admin := rig(t)
	cp := controlPlane(t, admin, "rvmesh-system")
	serveWebhooks(t, cp)
	k := k8s{t, admin}
	ctx := context.Background()
	namespace(t, admin, "rvmesh-app", map[string]string{LabelSidecarInjection: "enabled"}, map[string]string{AnnotationMesh: "blue"})
	t.Cleanup(func() { admin.Do(context.Background(), "DELETE", "/api/v1/namespaces/rvmesh-app", nil, nil) })
	ensure(t, admin, "/api/v1/namespaces/rvmesh-app/serviceaccounts", obj{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": obj{"name": "app"}})
	st := newStore(t, cp, "rvmesh-system") // the control plane writes what the controller makes
	for _, m := range []string{"blue", "green"} {
		if _, err := st.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: m}}); err != nil && !errors.Is(err, store.ErrAlreadyExists) {
			t.Fatal(err)
		}
	}
	startController(t, admin, st, "rvmesh-system", 2)
	meshOf := func(name string) string {
		for _, m := range []string{"blue", "green"} {
			if _, err := st.Get(ctx, api.Key{Type: "Dataplane", Mesh: m, Name: name}); err == nil {
				return m
			}
		}
		return "none"
	}
	waitMesh := func(name, want string) {
		t.Helper()
		testutil.Eventually(t, 20*time.Second, name+" in mesh "+want, func() error {
			if got := meshOf(name); got != want {
				return fmt.Errorf("in %s", got)
			}
			return nil
		})
	}
	var p rigPod
	testutil.Eventually(t, 20*time.Second, "the injector is called", func() error {
		p = rigPod{}
		if err := admin.Do(ctx, "POST", "/api/v1/namespaces/rvmesh-app/pods?dryRun=All", obj{"apiVersion": "v1", "kind": "Pod",
			"metadata": obj{"name": "web-1"}, "spec": obj{"serviceAccountName": "app", "containers": []any{obj{"name": "app", "image": "app:1"}}}}, &p); err != nil {
			return err
		}
		if !slices.Contains(p.containers(), SidecarName) {
			return fmt.Errorf("containers %v", p.containers())
		}
		return nil
	})
	p = rigPod{}
	must(t, admin.Do(ctx, "POST", "/api/v1/namespaces/rvmesh-app/pods", obj{"apiVersion": "v1", "kind": "Pod",
		"metadata": obj{"name": "web-1"}, "spec": obj{"serviceAccountName": "app", "containers": []any{obj{"name": "app", "image": "app:1"}}}}, &p))
	sidecarMesh := ""
	if i := slices.Index(p.Spec.Containers[0].Command, "--mesh"); i >= 0 {
		sidecarMesh = p.Spec.Containers[0].Command[i+1]
	}
	if sidecarMesh != "blue" {
		t.Fatalf("precondition: sidecar command %v", p.Spec.Containers[0].Command)
	}
	k.status("rvmesh-app", "web-1", "10.80.0.1", true)
	waitMesh("web-1.rvmesh-app", "blue")

	// The operator moves the namespace to green, for its next pods.
	k.edit("/api/v1/namespaces/rvmesh-app", func(o map[string]any) { field(o, "metadata", "annotations")[AnnotationMesh] = "green" })
	// A pod made after the change is green: the controller has seen it.
	time.Sleep(NamespaceCacheTTL + 100*time.Millisecond) // past the injector's namespace cache
	must(t, admin.Do(ctx, "POST", "/api/v1/namespaces/rvmesh-app/pods", obj{"apiVersion": "v1", "kind": "Pod",
		"metadata": obj{"name": "web-2"}, "spec": obj{"serviceAccountName": "app", "containers": []any{obj{"name": "app", "image": "app:1"}}}}, nil))
	k.status("rvmesh-app", "web-2", "10.80.0.2", true)
	waitMesh("web-2.rvmesh-app", "green")
	if got := meshOf("web-1.rvmesh-app"); got != sidecarMesh {
		t.Fatalf("the running pod web-1's sidecar runs --mesh %s, but its Dataplane moved to mesh %s: its proxy (node %s.web-1.rvmesh-app) is refused and it leaves the mesh until restarted",
			sidecarMesh, got, sidecarMesh)
	}
}
