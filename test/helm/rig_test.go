package helm

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/k8stest"
	k8szone "github.com/ursamesh/ursa/zone/kubernetes"
)

// kubectl runs the rig's kubectl and returns its combined output.
func kubectl(t *testing.T, rig *k8stest.Rig, stdin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := rig.Kubectl(ctx, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustKubectl(t *testing.T, rig *k8stest.Rig, stdin string, args ...string) string {
	t.Helper()
	out, err := kubectl(t, rig, stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// restrictedNamespace creates a namespace whose pods must meet the
// restricted Pod Security Standard, and that warns of any workload that
// would not. The test deletes it at its end.
func restrictedNamespace(t *testing.T, rig *k8stest.Rig, name string) {
	t.Helper()
	mustKubectl(t, rig, `apiVersion: v1
kind: Namespace
metadata:
  name: `+name+`
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/warn: restricted
    pod-security.kubernetes.io/audit: restricted
`, "apply", "-f", "-")
	t.Cleanup(func() {
		if out, err := kubectl(t, rig, "", "delete", "namespace", name, "--wait=false"); err != nil {
			t.Logf("delete namespace %s: %v\n%s", name, err, out)
		}
	})
}

// installCRDs applies the chart's crds/ folder, as `helm install` does, and
// waits until the apiserver serves them.
func installCRDs(t *testing.T, rig *k8stest.Rig) {
	t.Helper()
	mustKubectl(t, rig, "", "apply", "--server-side", "-f", filepath.Join(chartDir, "crds"))
	mustKubectl(t, rig, "", "wait", "--for=condition=Established", "--timeout=60s", "-f", filepath.Join(chartDir, "crds"))
}

// apply applies manifests to the rig, first as a server-side dry run (every
// object checked against the apiserver's schemas and admission, the
// restricted Pod Security Standard included) and then for real. kubectl
// warnings fail the test: the apiserver warns of unknown or deprecated
// fields and of pods the namespace's policy would refuse.
func apply(t *testing.T, rig *k8stest.Rig, what, manifests string) {
	t.Helper()
	// The webhook configurations are the cluster's, not the test
	// namespace's: gone with the test (after a CP it starts stops).
	t.Cleanup(func() {
		kubectl(t, rig, "", "delete", "mutatingwebhookconfiguration/"+k8szone.MutatingConfigName,
			"validatingwebhookconfiguration/"+k8szone.ValidatingConfigName, "--ignore-not-found")
	})
	for _, dry := range []string{"--dry-run=server", "--dry-run=none"} {
		out, err := kubectl(t, rig, manifests, "apply", dry, "--validate=strict", "-f", "-")
		if err != nil {
			t.Fatalf("%s: kubectl apply %s: %v\n%s", what, dry, err, out)
		}
		if strings.Contains(strings.ToLower(out), "warning") {
			t.Errorf("%s: kubectl apply %s warns:\n%s", what, dry, out)
		}
	}
}

// canI asks whether the ServiceAccount may do something: the words of
// `kubectl auth can-i` (VERB RESOURCE [NAME] [-n NS | --all-namespaces]
// [--subresource S]).
func canI(t *testing.T, rig *k8stest.Rig, sa string, words ...string) bool {
	t.Helper()
	out, err := kubectl(t, rig, "", append([]string{"auth", "can-i", "--as=" + sa}, words...)...)
	// The answer is the last line; warnings (a cluster-scoped resource
	// asked about in a namespace) come before it.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	answer := strings.TrimSpace(lines[len(lines)-1])
	switch {
	case err == nil && answer == "yes":
		return true
	case strings.HasPrefix(answer, "no"):
		return false
	default:
		t.Fatalf("kubectl auth can-i %s: %v\n%s", strings.Join(words, " "), err, out)
		return false
	}
}

// grants checks each question's answer for the ServiceAccount.
func grants(t *testing.T, rig *k8stest.Rig, sa string, allowed bool, questions [][]string) {
	t.Helper()
	for _, q := range questions {
		if got := canI(t, rig, sa, q...); got != allowed {
			verb := "may not"
			if allowed {
				verb = "may"
			}
			t.Errorf("%s %s: kubectl auth can-i %s says %v", sa, verb, strings.Join(q, " "), got)
		}
	}
}

// TestZoneOnAPIServer installs a zone with its ingress into a throwaway
// namespace of a real apiserver and proves what its ServiceAccount may do:
// everything the zone control plane needs, and nothing more (no Secrets or
// Leases outside its namespace, no writes to workloads, no RBAC).
func TestZoneOnAPIServer(t *testing.T) {
	rig := kube.Get(t)
	const ns, other = "helm-zone", "helm-zone-other"
	restrictedNamespace(t, rig, ns)
	restrictedNamespace(t, rig, other)
	installCRDs(t, rig)
	for _, vs := range valueSets {
		if strings.HasPrefix(vs.name, "zone") {
			// Each rendering on its own: they share object names.
			apply(t, rig, vs.name, render(t, ns, vs))
		}
	}
	if t.Failed() {
		return
	}

	sa := "system:serviceaccount:" + ns + ":ursa-control-plane"
	grants(t, rig, sa, true, [][]string{
		// The pod controller reads the whole cluster's workloads.
		{"list", "pods", "--all-namespaces"},
		{"watch", "pods", "-n", other},
		{"get", "pods", "-n", other},
		{"watch", "services", "--all-namespaces"},
		{"list", "namespaces"},
		{"watch", "nodes"},
		// The store: Ursa resources everywhere, their status too.
		{"create", "dataplanes.ursa.io", "-n", other},
		{"update", "dataplanes.ursa.io", "-n", other},
		{"delete", "dataplanes.ursa.io", "-n", other},
		{"watch", "trafficroutes.ursa.io", "--all-namespaces"},
		{"patch", "meshes.ursa.io"},
		{"update", "dataplaneinsights.ursa.io", "-n", ns, "--subresource=status"},
		{"create", "zoneingresses.ursa.io", "-n", ns},
		// Its own namespace's Secrets and Leases.
		{"get", "secrets", "-n", ns},
		{"create", "secrets", "-n", ns},
		{"update", "secrets", "-n", ns},
		{"watch", "secrets", "-n", ns},
		{"create", "leases.coordination.k8s.io", "-n", ns},
		{"update", "leases.coordination.k8s.io", "-n", ns},
		// The check at start that the CRDs are installed (discovery).
		{"get", "/apis/ursa.io/v1alpha1"},
		// Sidecar identity, its own identity, its webhooks.
		{"create", "tokenreviews.authentication.k8s.io"},
		{"create", "selfsubjectreviews.authentication.k8s.io"},
		{"get", "mutatingwebhookconfigurations/ursa-sidecar-injector"},
		{"patch", "mutatingwebhookconfigurations/ursa-sidecar-injector"},
		{"update", "validatingwebhookconfigurations/ursa-validator"},
	})
	grants(t, rig, sa, false, [][]string{
		// Nobody else's Secrets or Leases.
		{"get", "secrets", "-n", other},
		{"list", "secrets", "--all-namespaces"},
		{"get", "secrets", "-n", "kube-system"},
		{"update", "leases.coordination.k8s.io", "-n", other},
		{"get", "configmaps", "-n", other},
		// Workloads are only read.
		{"create", "pods", "-n", other},
		{"delete", "pods", "-n", other},
		{"patch", "pods", "-n", ns},
		{"create", "pods", "-n", other, "--subresource=exec"},
		{"update", "services", "-n", other},
		{"create", "namespaces"},
		{"update", "nodes"},
		{"create", "deployments.apps", "-n", ns},
		{"update", "customresourcedefinitions.apiextensions.k8s.io"},
		// No way to more rights: no webhook of its own (the chart makes
		// the CP's two).
		{"create", "mutatingwebhookconfigurations"},
		{"create", "validatingwebhookconfigurations"},
		{"delete", "mutatingwebhookconfigurations"},
		// Nobody else's webhooks.
		{"patch", "mutatingwebhookconfigurations/another-products-injector"},
		{"update", "validatingwebhookconfigurations/another-products-policy"},
		{"create", "clusterrolebindings.rbac.authorization.k8s.io"},
		{"create", "rolebindings.rbac.authorization.k8s.io", "-n", ns},
		{"impersonate", "users"},
		{"create", "serviceaccounts/token", "-n", ns},
		{"*", "*"},
	})
	// The ingress talks only to the zone CP, never to the cluster's API.
	grants(t, rig, "system:serviceaccount:"+ns+":ursa-ingress", false, [][]string{
		{"get", "pods", "-n", ns},
		{"get", "secrets", "-n", ns},
		{"create", "tokenreviews.authentication.k8s.io"},
		{"get", "zoneingresses.ursa.io", "-n", ns},
	})
}

// TestGlobalOnAPIServer installs a global: its store is PostgreSQL, so its
// ServiceAccount may do nothing with the cluster's API.
func TestGlobalOnAPIServer(t *testing.T) {
	rig := kube.Get(t)
	const ns = "helm-global"
	restrictedNamespace(t, rig, ns)
	installCRDs(t, rig)
	for _, vs := range valueSets {
		if strings.HasPrefix(vs.name, "global") {
			apply(t, rig, vs.name, render(t, ns, vs))
		}
	}
	grants(t, rig, "system:serviceaccount:"+ns+":ursa-control-plane", false, [][]string{
		{"get", "secrets", "-n", ns},
		{"list", "pods", "--all-namespaces"},
		{"create", "tokenreviews.authentication.k8s.io"},
		{"get", "dataplanes.ursa.io", "-n", ns},
		{"update", "leases.coordination.k8s.io", "-n", ns},
	})
	out := mustKubectl(t, rig, "", "get", "secret", "ursa-global-store", "-n", ns, "-o", "jsonpath={.data.url}")
	if out == "" {
		t.Errorf("the global's store Secret has no url")
	}
}

// TestHelmInstall installs the chart with helm itself (CRDs from crds/, the
// release's objects, its hooks), as a user would, and uninstalls it.
func TestHelmInstall(t *testing.T) {
	rig := kube.Get(t)
	const ns = "helm-install"
	restrictedNamespace(t, rig, ns)
	out, err := helm(t, "install", "ursa", chartDir, "--namespace", ns, "--kubeconfig", rig.Kubeconfig,
		"--set", "zone.name=zone-1", "--set", "ingress.enabled=true", "--set", "ingress.service.type=NodePort")
	if err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	if !strings.Contains(out, "STATUS: deployed") || !strings.Contains(out, "ursa.io/sidecar-injection=enabled") {
		t.Errorf("helm install did not deploy or print the notes:\n%s", out)
	}
	mustKubectl(t, rig, "", "get", "crd", "dataplanes.ursa.io")
	mustKubectl(t, rig, "", "get", "-n", ns, "deployment/ursa-control-plane", "service/ursa-control-plane", "service/ursa-ingress")

	// The release makes the webhook configurations, empty; the CP fills
	// them in (as it does, server-side, with its field manager), and an
	// upgrade of the release leaves what the CP wrote.
	hooks := &k8szone.Webhooks{CABundle: rig.CAPEM, Service: k8szone.ServiceRef{Namespace: ns, Name: "ursa-control-plane", Port: 5443},
		Validator: &k8szone.Validator{Self: "system:serviceaccount:" + ns + ":ursa-control-plane"}}
	m, v := hooks.Configurations()
	for _, c := range []any{m, v} {
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		mustKubectl(t, rig, string(b), "apply", "--server-side", "--force-conflicts", "--field-manager="+k8szone.FieldManager, "-f", "-")
	}
	webhooks := func() string {
		return mustKubectl(t, rig, "", "get", "mutatingwebhookconfiguration/"+k8szone.MutatingConfigName,
			"validatingwebhookconfiguration/"+k8szone.ValidatingConfigName, "-o", `jsonpath={range .items[*]}{.metadata.labels.app\.kubernetes\.io/managed-by} {.webhooks[*].name};{end}`)
	}
	const filled = "Helm sidecar-injector.ursa.io;Helm validator.ursa.io;"
	if got := webhooks(); got != filled {
		t.Fatalf("the release's webhook configurations, filled in by the CP: %q, want %q", got, filled)
	}
	if out, err := helm(t, "upgrade", "ursa", chartDir, "--namespace", ns, "--kubeconfig", rig.Kubeconfig, "--reuse-values"); err != nil {
		t.Fatalf("helm upgrade: %v\n%s", err, out)
	}
	if got := webhooks(); got != filled {
		t.Errorf("after helm upgrade: %q, want the CP's webhooks kept: %q", got, filled)
	}

	if out, err := helm(t, "uninstall", "ursa", "--namespace", ns, "--kubeconfig", rig.Kubeconfig); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
	// No fail-closed webhook is left calling a control plane that is gone.
	if out := mustKubectl(t, rig, "", "get", "mutatingwebhookconfigurations,validatingwebhookconfigurations", "-o", "name"); strings.Contains(out, "ursa") {
		t.Errorf("webhook configurations left after helm uninstall:\n%s", out)
	}
}
