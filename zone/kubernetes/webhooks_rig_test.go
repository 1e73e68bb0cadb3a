package kubernetes

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/k8stest"
	"github.com/ursamesh/ursa/pkg/kube"
	"github.com/ursamesh/ursa/pkg/servingcert"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
)

func clientWithToken(t *testing.T, r *k8stest.Rig, token string) *kube.Client {
	t.Helper()
	c, err := kube.New(&kube.Config{Server: r.URL, CAPEM: r.CAPEM, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// ensure creates obj at path, tolerating one that exists.
func ensure(t *testing.T, c *kube.Client, path string, obj any) {
	t.Helper()
	if err := c.Do(context.Background(), http.MethodPost, path, obj, nil); err != nil && !kube.IsConflict(err) {
		t.Fatalf("create %s: %v", path, err)
	}
}

func namespace(t *testing.T, c *kube.Client, name string, labels, annotations map[string]string) {
	t.Helper()
	ensure(t, c, "/api/v1/namespaces", obj{"apiVersion": "v1", "kind": "Namespace", "metadata": obj{"name": name, "labels": labels, "annotations": annotations}})
}

// boundToken asks the TokenRequest API for a token of service account sa
// in ns, for audiences, bound to pod (by name and uid) unless pod is "".
func boundToken(t *testing.T, c *kube.Client, ns, sa string, audiences []string, pod, uid string) string {
	t.Helper()
	spec := obj{"audiences": audiences, "expirationSeconds": 600}
	if pod != "" {
		spec["boundObjectRef"] = obj{"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}
	}
	var out struct {
		Status struct {
			Token string `json:"token"`
		} `json:"status"`
	}
	must(t, c.Do(context.Background(), http.MethodPost, "/api/v1/namespaces/"+ns+"/serviceaccounts/"+sa+"/token",
		obj{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}, &out))
	return out.Status.Token
}

// controlPlane makes the service account the test's control plane runs as
// (cluster-admin, as the chart's role is a subset of) and returns a client
// with its token: its writes are the control plane's own, the rig's admin
// (kubectl) is a user.
func controlPlane(t *testing.T, admin *kube.Client, ns string) *kube.Client {
	t.Helper()
	namespace(t, admin, ns, nil, nil)
	ensure(t, admin, "/api/v1/namespaces/"+ns+"/serviceaccounts", obj{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": obj{"name": "ursa-cp"}})
	ensure(t, admin, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", obj{
		"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": obj{"name": ns + "-ursa-cp"},
		"roleRef":  obj{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
		"subjects": []any{obj{"kind": "ServiceAccount", "name": "ursa-cp", "namespace": ns}},
	})
	r := cluster.Get(t)
	return clientWithToken(t, r, boundToken(t, admin, ns, "ursa-cp", nil, "", ""))
}

// serveWebhooks starts the webhooks over TLS on loopback with a certificate
// from servingcert (as the zone does), registers them with URL, and removes
// their configurations when the test ends.
func serveWebhooks(t *testing.T, cp *kube.Client) *Webhooks {
	t.Helper()
	ctx := context.Background()
	self, err := SelfUser(ctx, cp)
	must(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	url := "https://" + ln.Addr().String()
	names, err := WebhookNames(url, ServiceRef{})
	must(t, err)
	cert, err := servingcert.Load(ctx, store.NewMemory(0), servingcert.Options{Secret: "webhook-server-tls", CommonName: "test webhooks CA", Listen: ln.Addr().String(), SANs: names})
	must(t, err)
	inj := &Injector{Config: DefaultInjectionConfig("ursa/ursa-dp:test"), CPAddress: "grpcs://ursa-control-plane.kinject-system.svc:5678",
		CAPEM: []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"), Namespace: NamespaceGetter(cp)}
	hooks := &Webhooks{Client: cp, Injector: inj, Validator: &Validator{Self: self}, CABundle: cert.CAPEM(), URL: url, Log: zaptest.NewLogger(t)}
	srv := &http.Server{Handler: hooks.Handler(), TLSConfig: cert.TLSConfig(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(tls.NewListener(ln, srv.TLSConfig))
	t.Cleanup(func() {
		// Fail-closed configurations must not outlive their server.
		for _, p := range []string{"mutatingwebhookconfigurations/" + MutatingConfigName, "validatingwebhookconfigurations/" + ValidatingConfigName} {
			if err := cp.Do(context.Background(), http.MethodDelete, "/apis/admissionregistration.k8s.io/v1/"+p, nil, nil); err != nil && !kube.IsNotFound(err) {
				t.Errorf("delete %s: %v", p, err)
			}
		}
		srv.Close()
	})
	must(t, hooks.Register(ctx))
	return hooks
}

type rigPod struct {
	Metadata struct {
		Name        string            `json:"name"`
		UID         string            `json:"uid"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		Containers []struct {
			Name    string
			Command []string
		} `json:"containers"`
		InitContainers []struct{ Name string } `json:"initContainers"`
		Volumes        []struct{ Name string } `json:"volumes"`
	} `json:"spec"`
}

func (p rigPod) containers() (names []string) {
	for _, c := range p.Spec.Containers {
		names = append(names, c.Name)
	}
	return names
}

func createPod(ctx context.Context, c *kube.Client, ns, name string, annotations map[string]string, dryRun bool) (rigPod, error) {
	path := "/api/v1/namespaces/" + ns + "/pods"
	if dryRun {
		path += "?dryRun=All"
	}
	var out rigPod
	err := c.Do(ctx, http.MethodPost, path, obj{"apiVersion": "v1", "kind": "Pod",
		"metadata": obj{"name": name, "annotations": annotations},
		"spec": obj{"serviceAccountName": "app", "containers": []any{obj{"name": "app", "image": "app:1",
			"ports": []any{obj{"containerPort": 8080}}}}}}, &out)
	return out, err
}

// TestInjectionOnRig: the apiserver calls the injector over TLS on loopback
// for pods of enabled namespaces; the stored pod has the sidecar, the init
// container and the token volume, in the namespace's mesh; an opted-out pod
// and a pod of another namespace are left alone; registering again changes
// nothing.
func TestInjectionOnRig(t *testing.T) {
	_, admin := rig(t)
	cp := controlPlane(t, admin, "kinject-system")
	hooks := serveWebhooks(t, cp)
	ctx := context.Background()
	namespace(t, admin, "kinject-shop", map[string]string{LabelSidecarInjection: "enabled"}, map[string]string{AnnotationMesh: "payments"})
	namespace(t, admin, "kinject-plain", nil, nil)

	// The apiserver learns of a new configuration through an informer.
	testutil.Eventually(t, 20*time.Second, "the injector is called", func() error {
		p, err := createPod(ctx, admin, "kinject-shop", "probe", nil, true)
		if err != nil {
			return err
		}
		if !slices.Contains(p.containers(), SidecarName) {
			return fmt.Errorf("containers %v", p.containers())
		}
		return nil
	})
	p, err := createPod(ctx, admin, "kinject-shop", "web-1", nil, false)
	must(t, err)
	if !slices.Equal(p.containers(), []string{SidecarName, "app"}) || len(p.Spec.InitContainers) != 1 || p.Spec.InitContainers[0].Name != InitName ||
		p.Metadata.Annotations[AnnotationInjected] != "true" || !slices.ContainsFunc(p.Spec.Volumes, func(v struct{ Name string }) bool { return v.Name == TokenVolume }) {
		t.Fatalf("stored pod: %+v", p)
	}
	cmd := strings.Join(p.Spec.Containers[0].Command, " ")
	if !strings.Contains(cmd, "--mesh payments") || !strings.Contains(cmd, "--redirect-all-inbound") {
		t.Errorf("sidecar command %q", cmd)
	}
	if a := p.Metadata.Annotations; a[AnnotationScrape] != "true" || a[AnnotationScrapePort] != "9901" || a[AnnotationScrapePath] != "/metrics" {
		t.Errorf("the stored pod's Prometheus annotations: %v", a)
	}
	p, err = createPod(ctx, admin, "kinject-shop", "web-2", map[string]string{LabelSidecarInjection: "disabled"}, false)
	must(t, err)
	if !slices.Equal(p.containers(), []string{"app"}) {
		t.Errorf("opted-out pod: %v", p.containers())
	}
	p, err = createPod(ctx, admin, "kinject-plain", "web-3", nil, false)
	must(t, err)
	if !slices.Equal(p.containers(), []string{"app"}) {
		t.Errorf("pod of a namespace not enabled: %v", p.containers())
	}

	var before, after struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
	}
	path := "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/" + MutatingConfigName
	must(t, cp.Do(ctx, http.MethodGet, path, nil, &before))
	must(t, hooks.Register(ctx))
	must(t, cp.Do(ctx, http.MethodGet, path, nil, &after))
	if before.Metadata.ResourceVersion != after.Metadata.ResourceVersion {
		t.Errorf("registering again changed the configuration: %s -> %s", before.Metadata.ResourceVersion, after.Metadata.ResourceVersion)
	}
}

// TestValidationOnRig: kubectl edit, apply and delete of a TrafficRoute the
// global sent are refused with a message naming the global; the control
// plane's own update passes; a user's route with a bad spec is refused
// naming the field, a good one is created.
func TestValidationOnRig(t *testing.T) {
	r, admin := rig(t)
	const ns = "kinject-cp2"
	cp := controlPlane(t, admin, ns)
	serveWebhooks(t, cp)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	route := func(name string, weight int, global bool) obj {
		md := obj{"name": name, "namespace": ns}
		if global {
			md["labels"] = obj{"ursa.io/origin": "global"}
		}
		return obj{"apiVersion": "ursa.io/v1alpha1", "kind": "TrafficRoute", "metadata": md, "mesh": "default",
			"spec": obj{"destination": obj{"ursa.io/service": "billing"}, "split": []any{obj{"weight": weight, "tags": obj{"ursa.io/zone": "zone-vm"}}}}}
	}
	routes := "/apis/ursa.io/v1alpha1/namespaces/" + ns + "/trafficroutes"
	must(t, cp.Do(ctx, http.MethodPost, routes, route("r1", 100, true), nil))

	dir := t.TempDir()
	write := func(name, body string) string {
		f := filepath.Join(dir, name)
		must(t, os.WriteFile(f, []byte(body), 0o600))
		return f
	}
	kubectl := func(env []string, args ...string) (string, error) {
		cmd := r.Kubectl(ctx, args...)
		cmd.Env = append(cmd.Env, env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	const refusal = `TrafficRoute "r1" (mesh default) is synced from the global control plane; change it there (ursactl apply against the global)`
	// The validating configuration is live once a refusal comes back.
	testutil.Eventually(t, 20*time.Second, "kubectl label of a global route is refused", func() error {
		out, err := kubectl(nil, "-n", ns, "label", "trafficroute", "r1", "team=x")
		if err == nil || !strings.Contains(out, refusal) {
			return fmt.Errorf("kubectl label: %v: %s", err, out)
		}
		return nil
	})
	// kubectl edit, with an "editor" that changes the weight.
	editor := write("editor.sh", "#!/bin/sh\nsed -i 's/weight: 100/weight: 50/' \"$1\"\n")
	must(t, os.Chmod(editor, 0o700))
	out, err := kubectl([]string{"KUBE_EDITOR=" + editor}, "-n", ns, "edit", "trafficroute", "r1")
	if err == nil || !strings.Contains(out, refusal) {
		t.Errorf("kubectl edit: %v: %s", err, out)
	}
	apply := write("r1.yaml", fmt.Sprintf(`apiVersion: ursa.io/v1alpha1
kind: TrafficRoute
metadata: {name: r1, namespace: %s, labels: {ursa.io/origin: global}}
mesh: default
spec: {destination: {ursa.io/service: billing}, split: [{weight: 10}]}
`, ns))
	if out, err := kubectl(nil, "apply", "-f", apply); err == nil || !strings.Contains(out, refusal) {
		t.Errorf("kubectl apply: %v: %s", err, out)
	}
	if out, err := kubectl(nil, "-n", ns, "delete", "trafficroute", "r1"); err == nil || !strings.Contains(out, refusal) {
		t.Errorf("kubectl delete: %v: %s", err, out)
	}
	// The control plane's own write passes.
	var cur obj
	must(t, cp.Do(ctx, http.MethodGet, routes+"/r1", nil, &cur))
	cur["spec"].(map[string]any)["split"] = []any{obj{"weight": 70}}
	must(t, cp.Do(ctx, http.MethodPut, routes+"/r1", cur, nil))

	// A user may not label a route of theirs as the global's.
	if out, err := kubectl(nil, "apply", "-f", write("r2.yaml", strings.ReplaceAll(strings.ReplaceAll(readFile(t, apply), "r1", "r2"), "weight: 10", "weight: 20"))); err == nil ||
		!strings.Contains(out, "the label ursa.io/origin=global is the control plane's to set") {
		t.Errorf("kubectl apply of a route labelled global: %v: %s", err, out)
	}
	// A bad spec is refused naming the field; a good one is created.
	bad := write("r3.yaml", fmt.Sprintf(`apiVersion: ursa.io/v1alpha1
kind: TrafficRoute
metadata: {name: r3, namespace: %s}
mesh: default
spec: {destination: {ursa.io/service: billing}, split: [{weight: 0}]}
`, ns))
	if out, err := kubectl(nil, "apply", "-f", bad); err == nil || !strings.Contains(out, "spec.split: the weights must not all be 0") {
		t.Errorf("kubectl apply of a bad route: %v: %s", err, out)
	}
	if out, err := kubectl(nil, "apply", "-f", write("r4.yaml", strings.ReplaceAll(strings.ReplaceAll(readFile(t, bad), "r3", "r4"), "weight: 0", "weight: 5"))); err != nil {
		t.Errorf("kubectl apply of a good route: %v: %s", err, out)
	}

	// The pod controller's labels on what it made of a pod are its own:
	// a user may neither change nor remove them, nor put them on a
	// Dataplane of theirs (a pod's token would cover it).
	dp := func(name string, labels obj) obj {
		return obj{"apiVersion": "ursa.io/v1alpha1", "kind": "Dataplane", "metadata": obj{"name": name, "namespace": ns, "labels": labels}, "mesh": "default",
			"spec": obj{"networking": obj{"address": "10.1.0.1", "inbound": []any{obj{"port": 8080, "tags": obj{"ursa.io/service": "web"}}}}}}
	}
	must(t, cp.Do(ctx, http.MethodPost, "/apis/ursa.io/v1alpha1/namespaces/"+ns+"/dataplanes",
		dp("web-1", obj{LabelManagedBy: ManagedByController, LabelPodUID: "3f9c7e0a-0000-4000-8000-000000000001"}), nil))
	for what, args := range map[string][]string{
		"changed": {"-n", ns, "label", "dataplane", "web-1", LabelPodUID + "=3f9c7e0a-0000-4000-8000-000000000002", "--overwrite"},
		"removed": {"-n", ns, "label", "dataplane", "web-1", LabelPodUID + "-"},
		"taken":   {"-n", ns, "label", "dataplane", "web-1", LabelManagedBy + "-"},
	} {
		if out, err := kubectl(nil, args...); err == nil || !strings.Contains(out, "is the control plane's pod controller's to set") {
			t.Errorf("kubectl label (%s) of the pod controller's label: %v: %s", what, err, out)
		}
	}
	mine := write("dp.yaml", fmt.Sprintf(`apiVersion: ursa.io/v1alpha1
kind: Dataplane
metadata: {name: web-2, namespace: %s, labels: {%s: %s}}
mesh: default
spec: {networking: {address: 10.1.0.2, inbound: [{port: 8080, tags: {ursa.io/service: web}}]}}
`, ns, LabelManagedBy, ManagedByController))
	if out, err := kubectl(nil, "apply", "-f", mine); err == nil || !strings.Contains(out, "is the control plane's pod controller's to set") {
		t.Errorf("kubectl apply of a Dataplane labelled as the pod controller's: %v: %s", err, out)
	}
}

func readFile(t *testing.T, f string) string {
	t.Helper()
	b, err := os.ReadFile(f)
	must(t, err)
	return string(b)
}

// TestTokenReviewOnRig: a token from the TokenRequest API bound to a pod,
// for audience "ursa", is that pod's; it is reviewed once and then
// remembered. A token for another audience, one bound to no pod, garbage,
// and the token of a deleted pod are refused, saying why.
func TestTokenReviewOnRig(t *testing.T) {
	_, admin := rig(t)
	cp := controlPlane(t, admin, "kinject-cp3")
	const ns = "kinject-tokens"
	ctx := context.Background()
	namespace(t, admin, ns, nil, nil)
	ensure(t, admin, "/api/v1/namespaces/"+ns+"/serviceaccounts", obj{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": obj{"name": "app"}})
	p1, err := createPod(ctx, admin, ns, "p1", nil, false)
	must(t, err)
	p2, err := createPod(ctx, admin, ns, "p2", nil, false)
	must(t, err)

	rev := &TokenReviewer{Client: cp}
	tok1 := boundToken(t, admin, ns, "app", []string{TokenAudience}, "p1", p1.Metadata.UID)
	for range 3 {
		id, err := rev.Review(ctx, tok1)
		if err != nil || id.Dataplane() != "p1."+ns || id.ServiceAccount != "app" || id.PodUID != p1.Metadata.UID {
			t.Fatalf("p1's token: %+v, %v", id, err)
		}
	}
	if n := rev.Reviews(); n != 1 {
		t.Errorf("%d TokenReviews for one token, want 1 (remembered)", n)
	}
	tok2 := boundToken(t, admin, ns, "app", []string{TokenAudience}, "p2", p2.Metadata.UID)
	if id, err := rev.Review(ctx, tok2); err != nil || id.Dataplane() != "p2."+ns {
		t.Errorf("p2's token: %+v, %v", id, err)
	}
	for name, tc := range map[string]struct{ token, why string }{
		"another audience": {boundToken(t, admin, ns, "app", []string{"vault"}, "p1", p1.Metadata.UID), "audience"},
		"bound to no pod":  {boundToken(t, admin, ns, "app", []string{TokenAudience}, "", ""), "not bound to a pod"},
		"garbage":          {"not-a-token", "invalid bearer token"},
	} {
		_, err := rev.Review(ctx, tc.token)
		if !errors.Is(err, ErrTokenRefused) || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("%s: %v, want a refusal saying %q", name, err, tc.why)
		}
	}
	// At once: without a kubelet a graceful delete leaves the pod
	// terminating, and its tokens valid for a while yet.
	must(t, admin.Do(ctx, http.MethodDelete, "/api/v1/namespaces/"+ns+"/pods/p1?gracePeriodSeconds=0", nil, nil))
	// The apiserver remembers a token it authenticated for 10 s; a
	// reviewer each time, or the first answer would be remembered here.
	testutil.Eventually(t, 30*time.Second, "the deleted pod's token is refused", func() error {
		_, err = (&TokenReviewer{Client: cp}).Review(ctx, tok1)
		if !errors.Is(err, ErrTokenRefused) || !strings.Contains(err.Error(), "invalidated") {
			return fmt.Errorf("deleted pod's token: %v", err)
		}
		return nil
	})
}
