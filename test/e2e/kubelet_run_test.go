package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/k8stest"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// TestKubelet checks the test kubelet that the Kubernetes tests run their
// pods with: a Deployment's pods get addresses of their own on the hosts'
// network, run their init container as its runAsUser with a projected
// service-account token the apiserver accepts (bound to the pod), become
// Ready through their probes and answer at their pod IP and through a
// NodePort; a pod made Not Ready says so in its status; a pod deleted is
// stopped, its namespace removed and its object finalized, and its
// ReplicaSet's replacement runs.
func TestKubelet(t *testing.T) {
	rig := kube.Get(t)
	h := newHosts(t, "client")
	ns := fmt.Sprintf("kubelet-%d", os.Getpid())
	kubeNamespace(t, rig, ns, nil)
	k := newKubelet(t, h, rig, ns)
	kubeApply(t, rig, fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: %[1]s}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      # The rig runs without the ServiceAccount admission plugin, which
      # would set it: a projected token is refused without it.
      serviceAccountName: default
      volumes:
      - {name: work, emptyDir: {}}
      - name: token
        projected:
          sources:
          - serviceAccountToken: {audience: ursa-test, expirationSeconds: 600, path: token}
      initContainers:
      - name: init
        image: ursa-dp:dev
        command: [sh, -c, "id -u > /work/uid && cp /var/run/secrets/ursa/token /work/token && echo $(GREETING) > /work/greeting"]
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: GREETING, value: "hello-$(POD_NAME)"}
        securityContext: {runAsUser: 5678}
        volumeMounts:
        - {name: work, mountPath: /work}
        - {name: token, mountPath: /var/run/secrets/ursa}
      containers:
      - name: app
        image: %[2]s
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: MESSAGE, value: "echo $(POD_NAME)"}
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: http}}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: %[1]s}
spec:
  type: NodePort
  selector: {app: echo}
  ports: [{port: 80, targetPort: http}]
`, ns, testAppImage))

	type podState struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Spec struct {
			NodeName string `json:"nodeName"`
		} `json:"spec"`
		Status struct {
			Phase      string `json:"phase"`
			PodIP      string `json:"podIP"`
			Conditions []struct {
				Type   string `json:"type"`
				Status string `json:"status"`
			} `json:"conditions"`
		} `json:"status"`
	}
	ready := func(p podState) bool {
		for _, c := range p.Status.Conditions {
			if c.Type == "Ready" {
				return c.Status == "True"
			}
		}
		return false
	}
	pods := func() []podState {
		var list struct {
			Items []podState `json:"items"`
		}
		if err := kubeDo(context.Background(), rig, http.MethodGet, "/api/v1/namespaces/"+ns+"/pods", "", nil, &list); err != nil {
			t.Fatal(err)
		}
		return list.Items
	}
	readyPods := func(n int) []podState {
		t.Helper()
		var got []podState
		testutil.Eventually(t, 60*time.Second, fmt.Sprintf("%d Ready pods", n), func() error {
			got = nil
			all := pods()
			for _, p := range all {
				if ready(p) && p.Status.Phase == "Running" && p.Status.PodIP != "" {
					got = append(got, p)
				}
			}
			if len(got) != n || len(all) != n {
				return fmt.Errorf("%d pods, %d Ready: %+v", len(all), len(got), all)
			}
			return nil
		})
		return got
	}
	running := readyPods(2)
	client := h.client(t, "client")
	get := func(url string) (string, error) {
		resp, err := client.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(b)), err
	}
	for _, p := range running {
		if p.Spec.NodeName != k.nodeObj {
			t.Fatalf("pod %s is bound to %q, want %s", p.Metadata.Name, p.Spec.NodeName, k.nodeObj)
		}
		if got, err := get("http://" + p.Status.PodIP + ":8080/"); err != nil || got != "echo "+p.Metadata.Name {
			t.Fatalf("pod %s at %s answered %q (%v)", p.Metadata.Name, p.Status.PodIP, got, err)
		}
		rp := k.pod(ns, p.Metadata.Name)
		work := filepath.Join(rp.dir, "volumes", "work")
		if b, _ := os.ReadFile(filepath.Join(work, "uid")); strings.TrimSpace(string(b)) != "5678" {
			t.Fatalf("pod %s's init container ran as %q, want 5678", p.Metadata.Name, b)
		}
		if b, _ := os.ReadFile(filepath.Join(work, "greeting")); strings.TrimSpace(string(b)) != "hello-"+p.Metadata.Name {
			t.Fatalf("pod %s's init container's $(GREETING) is %q", p.Metadata.Name, b)
		}
		token, _ := os.ReadFile(filepath.Join(work, "token"))
		user := tokenReview(t, rig, string(token), "ursa-test")
		if user.Username != "system:serviceaccount:"+ns+":default" || !strings.Contains(fmt.Sprint(user.Extra), p.Metadata.Name) {
			t.Fatalf("pod %s's token reviews as %+v", p.Metadata.Name, user)
		}
	}

	var svc kubeService
	if err := kubeDo(context.Background(), rig, http.MethodGet, "/api/v1/namespaces/"+ns+"/services/echo", "", nil, &svc); err != nil {
		t.Fatal(err)
	}
	nodeURL := fmt.Sprintf("http://%s:%d/", h.addr(k.node), svc.Spec.Ports[0].NodePort)
	testutil.Eventually(t, 15*time.Second, "the NodePort "+nodeURL, func() error {
		got, err := get(nodeURL)
		if err != nil || !strings.HasPrefix(got, "echo echo-") {
			return fmt.Errorf("%q %v", got, err)
		}
		return nil
	})

	first := running[0].Metadata.Name
	k.setReady(t, ns, first, false)
	testutil.Eventually(t, 15*time.Second, first+" Not Ready", func() error {
		for _, p := range pods() {
			if p.Metadata.Name == first && !ready(p) {
				return nil
			}
		}
		return fmt.Errorf("still Ready")
	})
	k.setReady(t, ns, first, true)

	// Deleted as kubectl deletes (with grace): stopped, finalized, replaced.
	host := k.pod(ns, first).host
	if out, err := kubectl(rig, "", "-n", ns, "delete", "pod", first, "--wait=false"); err != nil {
		t.Fatalf("kubectl delete pod: %v %s", err, out)
	}
	testutil.Eventually(t, 30*time.Second, first+" finalized", func() error {
		for _, p := range pods() {
			if p.Metadata.Name == first {
				return fmt.Errorf("still there: %+v", p.Status)
			}
		}
		return nil
	})
	if _, err := h.nsPath(host); err == nil {
		t.Fatalf("pod %s's host %s is still there", first, host)
	}
	for _, p := range readyPods(2) {
		if p.Metadata.Name == first {
			t.Fatalf("pod %s is back", first)
		}
	}
}

// reviewedUser is the user a TokenReview authenticates.
type reviewedUser struct {
	Username string              `json:"username"`
	Extra    map[string][]string `json:"extra"`
}

// tokenReview reviews token for audience with the rig's apiserver and
// returns the user, failing the test unless it is authenticated.
func tokenReview(t testing.TB, rig *k8stest.Rig, token, audience string) reviewedUser {
	t.Helper()
	review := map[string]any{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
		"spec": map[string]any{"token": token, "audiences": []string{audience}}}
	var out struct {
		Status struct {
			Authenticated bool         `json:"authenticated"`
			User          reviewedUser `json:"user"`
			Error         string       `json:"error"`
		} `json:"status"`
	}
	if err := kubeDo(context.Background(), rig, http.MethodPost, "/apis/authentication.k8s.io/v1/tokenreviews", "", review, &out); err != nil {
		t.Fatal(err)
	}
	if !out.Status.Authenticated {
		t.Fatalf("token not authenticated: %s", out.Status.Error)
	}
	return out.Status.User
}
