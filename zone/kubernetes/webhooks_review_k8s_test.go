package kubernetes

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/api/crd"
	"github.com/ursamesh/ursa/pkg/kube"
	"github.com/ursamesh/ursa/pkg/servingcert"
	"github.com/ursamesh/ursa/pkg/store"
)

// TestReviewK8sCPDownBlocksNamespaceDeletion: the zone CP is down (its
// pods evicted, crash-looping, or the chart uninstalled: the CP registered
// the configurations itself, so they stay). The validating webhook covers
// DELETE of every ursa.io object, fail closed, and its only exemption for
// the namespace controller and the garbage collector is inside the webhook
// server, which does not answer. So the namespace controller cannot delete
// the Dataplanes in a namespace being deleted, and every injected namespace
// deleted while the CP is down stays Terminating (and the GC cannot take a
// deleted Mesh's contents). The exemption belongs in matchConditions, which
// the API server evaluates without calling the webhook.
func TestReviewK8sCPDownBlocksNamespaceDeletion(t *testing.T) {
	r, admin := rig(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cp := controlPlane(t, admin, "krev-cp")
	self, err := SelfUser(ctx, cp)
	must(t, err)

	// A Dataplane of the pod controller's, next to its pod.
	const apps = "krev-apps"
	namespace(t, admin, apps, map[string]string{LabelSidecarInjection: "enabled"}, nil)
	dp := &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: "web-1",
		Labels: map[string]string{LabelManagedBy: ManagedByController}},
		Networking: api.DataplaneNetworking{Address: "10.1.0.7", Inbound: []api.Inbound{{Port: 8080, ServicePort: 8080, Tags: map[string]string{api.TagService: "web_krev-apps_svc_80"}}}}}
	o, err := crd.ToObject(dp, apps)
	must(t, err)
	dps := "/apis/ursa.io/v1alpha1/namespaces/" + apps + "/dataplanes"
	ensure(t, cp, dps, o)

	// The namespace controller, as kube-controller-manager runs it.
	ensure(t, admin, "/api/v1/namespaces/kube-system/serviceaccounts", obj{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": obj{"name": "namespace-controller"}})
	ensure(t, admin, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", obj{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": obj{"name": "krev-namespace-controller"},
		"roleRef":  obj{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
		"subjects": []any{obj{"kind": "ServiceAccount", "name": "namespace-controller", "namespace": "kube-system"}},
	})
	nsController := clientWithToken(t, r, boundToken(t, admin, "kube-system", "namespace-controller", nil, "", ""))

	registerDown(t, admin, cp, self)

	// Wait until the configuration is live: a user's write is refused for
	// want of the webhook.
	deadline := time.Now().Add(20 * time.Second)
	for {
		var cur obj
		must(t, admin.Do(ctx, http.MethodGet, dps+"/web-1", nil, &cur))
		cur["metadata"].(map[string]any)["annotations"] = obj{"x": "1"}
		err := admin.Do(ctx, http.MethodPut, dps+"/web-1", cur, nil)
		if err != nil && strings.Contains(err.Error(), "failed calling webhook") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("validating webhook never live: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	// What the namespace controller does when "krev-apps" is deleted.
	err = nsController.Do(ctx, http.MethodDelete, dps, obj{"kind": "DeleteOptions", "apiVersion": "v1"}, nil)
	if err != nil {
		t.Errorf("the namespace controller cannot empty a namespace being deleted while the CP is down (it stays Terminating):\n%v", err)
	}
}

// registerDown registers the CP's webhook configurations at an address
// nothing answers on: the CP registered them, then went down.
func registerDown(t *testing.T, admin, cp *kube.Client, self string) {
	t.Helper()
	ctx := context.Background()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	url := "https://" + ln.Addr().String()
	names, _ := WebhookNames(url, ServiceRef{})
	cert, err := servingcert.Load(ctx, store.NewMemory(0), servingcert.Options{Secret: "webhook-server-tls", CommonName: "test webhooks CA", Listen: ln.Addr().String(), SANs: names})
	must(t, err)
	ln.Close()
	hooks := &Webhooks{Client: cp, Injector: testInjector(), Validator: &Validator{Self: self}, CABundle: cert.CAPEM(), URL: url, Log: zaptest.NewLogger(t)}
	t.Cleanup(func() {
		for _, p := range []string{"mutatingwebhookconfigurations/" + MutatingConfigName, "validatingwebhookconfigurations/" + ValidatingConfigName} {
			if err := admin.Do(context.Background(), http.MethodDelete, "/apis/admissionregistration.k8s.io/v1/"+p, nil, nil); err != nil && !kube.IsNotFound(err) {
				t.Errorf("delete %s: %v", p, err)
			}
		}
	})
	must(t, hooks.Register(ctx))

}

// TestReviewK8sCPDownBlocksOptedOutPods: while the CP is down, a pod that
// opts out of injection (ursa.io/sidecar-injection: disabled, label and
// annotation) in an injected namespace cannot be created either: the
// mutating webhook is fail closed and selects by namespace only, and the
// opt-out is read inside the webhook server. So nothing can be deployed
// into a meshed namespace during a CP outage, not even what is meant to
// run without the mesh (a debugging pod, the workload that must come back
// first). Istio's injector has an objectSelector (sidecar.istio.io/inject
// NotIn [false]) so the API server never calls it for opted-out pods.
func TestReviewK8sCPDownBlocksOptedOutPods(t *testing.T) {
	_, admin := rig(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cp := controlPlane(t, admin, "krev-cp2")
	self, err := SelfUser(ctx, cp)
	must(t, err)
	const apps = "krev-apps2"
	namespace(t, admin, apps, map[string]string{LabelSidecarInjection: "enabled"}, nil)
	ensure(t, admin, "/api/v1/namespaces/"+apps+"/serviceaccounts", obj{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": obj{"name": "app"}})
	registerDown(t, admin, cp, self)
	pod := func(name string) obj {
		return obj{"apiVersion": "v1", "kind": "Pod",
			"metadata": obj{"name": name, "labels": obj{LabelSidecarInjection: "disabled"}, "annotations": obj{LabelSidecarInjection: "disabled"}},
			"spec":     obj{"serviceAccountName": "app", "containers": []any{obj{"name": "app", "image": "app:1"}}}}
	}
	// Live once a pod of the namespace is refused for want of the webhook.
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; ; i++ {
		err = admin.Do(ctx, http.MethodPost, "/api/v1/namespaces/"+apps+"/pods?dryRun=All", pod("probe"), nil)
		if err != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err == nil {
		return // the opted-out pod was admitted
	}
	if !strings.Contains(err.Error(), "failed calling webhook") {
		t.Fatalf("unexpected: %v", err)
	}
	t.Errorf("a pod opted out of injection cannot be created in an injected namespace while the CP is down:\n%v", err)
}
