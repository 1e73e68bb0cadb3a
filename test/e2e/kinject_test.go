package e2e

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/k8stest"
)

// kubeCRDs applies deploy/crds to the rig once per test binary.
func kubeCRDs(t *testing.T, rig *k8stest.Rig) {
	t.Helper()
	if err := rig.InstallCRDs("../../deploy/crds"); err != nil {
		t.Fatal(err)
	}
}

// serviceAccountKubeconfig makes service account name in namespace ns a
// cluster-admin and returns a kubeconfig file with a token of it: a zone CP
// run with it is a user other than the rig's admin, which kubectl is, so
// the validating webhook tells the CP's writes from a user's.
func serviceAccountKubeconfig(t *testing.T, rig *k8stest.Rig, ns, name string) string {
	t.Helper()
	ctx := context.Background()
	for path, obj := range map[string]any{
		"/api/v1/namespaces/" + ns + "/serviceaccounts": map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": map[string]any{"name": name}},
		"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings": map[string]any{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
			"metadata": map[string]any{"name": ns + "-" + name},
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
			"subjects": []any{map[string]any{"kind": "ServiceAccount", "name": name, "namespace": ns}}},
	} {
		if err := kubeDo(ctx, rig, http.MethodPost, path, "", obj, nil); err != nil && !isStatus(err, http.StatusConflict) {
			t.Fatalf("POST %s: %v", path, err)
		}
	}
	token := kubeToken(t, rig, ns, name, nil, "", "")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: rig, cluster: {server: %s, certificate-authority-data: %s}}]
users: [{name: %s, user: {token: %s}}]
contexts: [{name: rig, context: {cluster: rig, user: %s}}]
current-context: rig
`, rig.URL, base64.StdEncoding.EncodeToString(rig.CAPEM), name, token, name)
	path := filepath.Join(t.TempDir(), "kubeconfig-"+name)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// kubeToken asks the TokenRequest API for a token of service account sa
// for audiences, bound to pod (name, uid) unless pod is "".
func kubeToken(t *testing.T, rig *k8stest.Rig, ns, sa string, audiences []string, pod, uid string) string {
	t.Helper()
	spec := map[string]any{"audiences": audiences, "expirationSeconds": 3600}
	if pod != "" {
		spec["boundObjectRef"] = map[string]any{"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}
	}
	var out struct {
		Status struct{ Token string } `json:"status"`
	}
	if err := kubeDo(context.Background(), rig, http.MethodPost, "/api/v1/namespaces/"+ns+"/serviceaccounts/"+sa+"/token", "",
		map[string]any{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}, &out); err != nil {
		t.Fatalf("token of %s/%s: %v", ns, sa, err)
	}
	return out.Status.Token
}

// TestKubeZoneWebhooks runs a zone CP on the rig (outside the cluster, as
// its service account) with --webhook-addr and --webhook-url: the apiserver
// calls its webhooks over TLS on loopback. A pod of an injected namespace
// is stored with the sidecar; once the pod controller has made its
// Dataplane, a sidecar with the pod's bound service-account token (no
// dataplane token) is admitted as that Dataplane and refused as another
// pod's; an ingress pod of the CP's namespace runs its ZoneIngress by name
// with its own token, and no other; kubectl edit and delete of a policy the
// global sent are refused naming the global, while the CP's own write
// passes.
func TestKubeZoneWebhooks(t *testing.T) {
	rig := kube.Get(t)
	kubeCRDs(t, rig)
	const sys, app = "kinject-sys", "kinject-app"
	kubeNamespace(t, rig, sys, nil)
	kubeNamespace(t, rig, app, map[string]string{"ursa.io/sidecar-injection": "enabled"})
	cpConfig := serviceAccountKubeconfig(t, rig, sys, "ursa-control-plane")
	hook := freeAddr(t)
	zone := startCP(t, "zone", "--zone", "zone-k8s", "--environment", "kubernetes", "--kubeconfig", cpConfig,
		"--kubernetes-system-namespace", sys, "--webhook-addr", hook, "--webhook-url", "https://"+hook)
	t.Cleanup(func() {
		// The configurations fail closed: they must not outlive the CP.
		for _, p := range []string{"mutatingwebhookconfigurations/ursa-sidecar-injector", "validatingwebhookconfigurations/ursa-validator"} {
			kubeDo(context.Background(), rig, http.MethodDelete, "/apis/admissionregistration.k8s.io/v1/"+p, "", nil, nil)
		}
	})
	kubeApply(t, rig, "apiVersion: ursa.io/v1alpha1\nkind: Mesh\nmetadata: {name: default}\nspec: {}\n")
	if err := kubeDo(context.Background(), rig, http.MethodPost, "/api/v1/namespaces/"+app+"/serviceaccounts", "",
		map[string]any{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": map[string]any{"name": "app"}}, nil); err != nil {
		t.Fatal(err)
	}

	type stored struct {
		Metadata struct{ Name, UID string } `json:"metadata"`
		Spec     struct {
			Containers, InitContainers []struct{ Name string }
		} `json:"spec"`
	}
	names := func(cs []struct{ Name string }) (out []string) {
		for _, c := range cs {
			out = append(out, c.Name)
		}
		return out
	}
	pod := func(name, query string) (stored, error) {
		var p stored
		err := kubeDo(context.Background(), rig, http.MethodPost, "/api/v1/namespaces/"+app+"/pods"+query, "", map[string]any{
			"apiVersion": "v1", "kind": "Pod", "metadata": map[string]any{"name": name, "labels": map[string]any{"app": "web"}},
			"spec": map[string]any{"serviceAccountName": "app", "containers": []any{map[string]any{"name": "web", "image": "web:1",
				"ports": []any{map[string]any{"containerPort": 8080}}}}},
		}, &p)
		return p, err
	}
	eventually(t, "the injector is registered", func() bool {
		p, err := pod("probe", "?dryRun=All")
		return err == nil && slices.Contains(names(p.Spec.InitContainers), "ursa-sidecar")
	})
	pods := map[string]stored{}
	for i, name := range []string{"web-1", "web-2"} {
		p, err := pod(name, "")
		if err != nil {
			t.Fatal(err)
		}
		// The rig's API server is 1.29 or later: the sidecar is native.
		if !slices.Equal(names(p.Spec.Containers), []string{"web"}) || !slices.Equal(names(p.Spec.InitContainers), []string{"ursa-init", "ursa-sidecar"}) {
			t.Fatalf("pod %s stored as %+v", name, p.Spec)
		}
		pods[name] = p
		// As a kubelet would: an IP (this host's loopback) and Ready.
		status := map[string]any{"status": map[string]any{"phase": "Running", "podIP": fmt.Sprintf("127.0.0.%d", 11+i),
			"conditions": []any{map[string]any{"type": "Ready", "status": "True"}}}}
		if err := kubeDo(context.Background(), rig, http.MethodPatch, "/api/v1/namespaces/"+app+"/pods/"+name+"/status", "application/merge-patch+json", status, nil); err != nil {
			t.Fatal(err)
		}
	}
	for name := range pods {
		eventually(t, "the Dataplane of pod "+name, func() bool { return zone.has(t, "/meshes/default/dataplanes/"+name+"."+app) })
	}

	// web-1's sidecar, with web-1's projected token, as injected.
	token := tokenFile(t, kubeToken(t, rig, app, "app", []string{"ursa"}, "web-1", pods["web-1"].Metadata.UID))
	sidecar := func(dataplane string) *proc {
		args := append([]string{"run"}, zone.xdsFlags(t)...)
		return start(t, "ursa-dp", append(args, "--dataplane-name", dataplane, "--mesh", "default", "--token-file", token,
			"--admin-addr", freeAddr(t), "--dns-addr=")...)
	}
	p := sidecar("web-1." + app)
	admin := p.logged(t, "admin_addr")
	waitReady(t, "http://"+admin+"/ready", p)
	p.stop(t)
	// The same token cannot run web-2.
	p = sidecar("web-2." + app)
	eventually(t, "web-2's node refused with web-1's token", func() bool {
		return strings.Contains(p.out.String(), "token is for dataplane web-1."+app)
	})
	p.stop(t)

	// An ingress pod of the CP's namespace: its ZoneIngress, made by the
	// pod controller, run by name with the pod's token.
	kubeApply(t, rig, fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata: {name: ingress, namespace: %[1]s}
---
apiVersion: v1
kind: Service
metadata: {name: ursa-ingress, namespace: %[1]s}
spec: {selector: {app: ursa-ingress}, ports: [{name: ingress, port: 10001}]}
---
apiVersion: v1
kind: Pod
metadata: {name: ingress-1, namespace: %[1]s, labels: {app: ursa-ingress, ursa.io/ingress: enabled}}
spec: {serviceAccountName: ingress, containers: [{name: ingress, image: ursa:1, ports: [{containerPort: 10001}]}]}
`, sys))
	var ingPod stored
	if err := kubeDo(context.Background(), rig, http.MethodGet, "/api/v1/namespaces/"+sys+"/pods/ingress-1", "", nil, &ingPod); err != nil {
		t.Fatal(err)
	}
	if err := kubeDo(context.Background(), rig, http.MethodPatch, "/api/v1/namespaces/"+sys+"/pods/ingress-1/status", "application/merge-patch+json",
		map[string]any{"status": map[string]any{"phase": "Running", "podIP": "127.0.0.13", "conditions": []any{map[string]any{"type": "Ready", "status": "True"}}}}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the ingress pod's ZoneIngress", func() bool { return zone.has(t, "/zone-ingresses/ingress-1."+sys) })
	ingToken := tokenFile(t, kubeToken(t, rig, sys, "ingress", []string{"ursa"}, "ingress-1", ingPod.Metadata.UID))
	ingress := func(name string) *proc {
		args := append([]string{"ingress"}, zone.xdsFlags(t)...)
		return start(t, "ursa-dp", append(args, "--zone-ingress-name", name, "--token-file", ingToken, "--admin-addr", freeAddr(t))...)
	}
	p = ingress("ingress-1." + sys)
	// Admitted: it connects (a ClusterIP Service advertises nothing, so
	// it offers nothing and is sent nothing to be ready with).
	eventually(t, "the ingress pod's proxy admitted", func() bool {
		return strings.Contains(zone.out.String(), `"msg":"proxy connected","zone":"zone-k8s","proxy":"ingress-1.`+sys+`","kind":"ingress"`)
	})
	p.stop(t)
	p = ingress("ingress-2." + sys)
	eventually(t, "another ingress's node refused with ingress-1's token", func() bool {
		return strings.Contains(p.out.String(), "token is for zone ingress ingress-1."+sys)
	})
	p.stop(t)

	// A policy the global sent: written by the CP (as KDS does), refused
	// to the rig's admin.
	route := func(weight int) string {
		return fmt.Sprintf(`apiVersion: ursa.io/v1alpha1
kind: TrafficRoute
metadata: {name: billing-split, namespace: %s, labels: {ursa.io/origin: global}}
mesh: default
spec: {destination: {ursa.io/service: billing}, split: [{weight: %d, tags: {ursa.io/zone: zone-vm}}]}
`, sys, weight)
	}
	if out, err := kubectl(rig, route(100), "--kubeconfig", cpConfig, "apply", "-f", "-"); err != nil {
		t.Fatalf("the CP's write: %v\n%s", err, out)
	}
	const refusal = `TrafficRoute "billing-split" (mesh default) is synced from the global control plane; change it there (ursactl apply against the global)`
	editor := filepath.Join(t.TempDir(), "editor.sh")
	if err := os.WriteFile(editor, []byte("#!/bin/sh\nsed -i 's/weight: 100/weight: 50/' \"$1\"\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	eventually(t, "kubectl edit of the global's route refused", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := rig.Kubectl(ctx, "-n", sys, "edit", "trafficroute", "billing-split")
		cmd.Env = append(cmd.Env, "KUBE_EDITOR="+editor)
		out, err := cmd.CombinedOutput()
		return err != nil && strings.Contains(string(out), refusal)
	})
	if out, err := kubectl(rig, "", "-n", sys, "delete", "trafficroute", "billing-split"); err == nil || !strings.Contains(out, refusal) {
		t.Errorf("kubectl delete: %v\n%s", err, out)
	}
	if out, err := kubectl(rig, route(30), "--kubeconfig", cpConfig, "apply", "-f", "-"); err != nil {
		t.Errorf("the CP's own update: %v\n%s", err, out)
	}
}
