package helm

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/testutil"
)

// TestZoneCPWithChartRBAC runs the real `ursa-cp zone` with the arguments
// the chart renders, authenticated as the chart's ServiceAccount (a token
// from the TokenRequest API) and so limited by the chart's RBAC, against a
// real apiserver where the chart is applied: it must become ready, take the
// leader Lease, have an injected pod admitted with the sidecar, turn it into
// a Dataplane and a pod of the chart's ingress template into the ZoneIngress
// that pod connects as (advertised at a node's address and the NodePort),
// and the apiserver must refuse it nothing. Only the addresses (loopback), the kubeconfig and
// the system namespace differ from a pod's; once the CP has webhooks, it
// registers them at a loopback URL.
func TestZoneCPWithChartRBAC(t *testing.T) {
	rig := kube.Get(t)
	const ns, app = "helm-cp", "helm-cp-app"
	restrictedNamespace(t, rig, ns)
	installCRDs(t, rig)
	vs := valueSet{"zone-standalone-ingress", []string{"zone.name=zone-1", "ingress.enabled=true",
		"ingress.service.type=NodePort", "ingress.service.nodePort=30101"}}
	manifests := render(t, ns, vs)
	apply(t, rig, vs.name, manifests)
	args := cpArgs(t, manifests)

	token := strings.TrimSpace(mustKubectl(t, rig, "", "create", "token", "ursa-control-plane", "-n", ns, "--duration=1h"))
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: rig, cluster: {server: %q, certificate-authority-data: %s}}]
users: [{name: cp, user: {token: %q}}]
contexts: [{name: cp, context: {cluster: rig, user: cp}}]
current-context: cp
`, rig.URL, base64.StdEncoding.EncodeToString(rig.CAPEM), token)), 0o600); err != nil {
		t.Fatal(err)
	}
	ports := freePorts(t, 5)
	api := "127.0.0.1:" + strconv.Itoa(ports[0])
	args = append(args, "--kubeconfig="+kubeconfig, "--kubernetes-system-namespace="+ns, "--instance=helm-cp-0",
		"--api-addr="+api, "--api-tls-addr=127.0.0.1:"+strconv.Itoa(ports[1]),
		"--xds-addr=127.0.0.1:"+strconv.Itoa(ports[2]), "--dns-addr=127.0.0.1:"+strconv.Itoa(ports[3]))
	if _, ok := knownFlags(t, "ursa-cp", "zone")["webhook-url"]; ok {
		hook := "127.0.0.1:" + strconv.Itoa(ports[4])
		args = append(args, "--webhook-addr="+hook, "--webhook-url=https://"+hook)
	}
	// After the CP has stopped (cleanups run last first): the webhook
	// configurations it registered would call it still.
	t.Cleanup(func() {
		kubectl(t, rig, "", "delete", "mutatingwebhookconfigurations,validatingwebhookconfigurations",
			"-l", "app.kubernetes.io/name=ursa", "--ignore-not-found")
		kubectl(t, rig, "", "delete", "mutatingwebhookconfiguration/ursa-sidecar-injector",
			"validatingwebhookconfiguration/ursa-validator", "--ignore-not-found")
	})
	cp := startCP(t, args)

	get := func(path string) (int, string, error) {
		resp, err := http.Get("http://" + api + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	eventually(t, cp, 60*time.Second, "the CP to be ready", func() error {
		code, body, err := get("/readyz")
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("/readyz: %d %s", code, body)
		}
		return err
	})
	eventually(t, cp, 30*time.Second, "a leader Lease in "+ns, func() error {
		if out, err := kubectl(t, rig, "", "get", "leases", "-n", ns, "-o", "name"); err != nil || !strings.Contains(out, "lease") {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})

	// A standalone zone takes its mesh from a user, through its API.
	req, err := http.NewRequest(http.MethodPut, "http://"+api+"/meshes/default", strings.NewReader(`{"type":"Mesh","name":"default"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if body, _ := io.ReadAll(resp.Body); resp.StatusCode/100 != 2 {
		t.Fatalf("PUT /meshes/default: %d %s", resp.StatusCode, body)
	}
	resp.Body.Close()

	// An injected pod, as a kubelet would report it, becomes a Dataplane.
	mustKubectl(t, rig, `apiVersion: v1
kind: Namespace
metadata:
  name: `+app+`
  labels: {ursa.io/sidecar-injection: enabled}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: `+app+`}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: `+app+`}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: `+app+`, labels: {app: web}}
spec:
  serviceAccountName: web
  containers: [{name: app, image: app, ports: [{name: http, containerPort: 8080}]}]
`, "apply", "-f", "-")
	t.Cleanup(func() { kubectl(t, rig, "", "delete", "namespace", app, "--wait=false") })
	// Admitted through the CP's webhook, registered with the chart's RBAC;
	// the rig's API server is 1.29 or later: the sidecar is native.
	if got := mustKubectl(t, rig, "", "get", "pod", "web-1", "-n", app, "-o",
		`jsonpath={.spec.initContainers[*].name} {.spec.containers[*].name} {.spec.initContainers[?(@.name=="ursa-sidecar")].image}`); got != "ursa-init ursa-sidecar app "+image(t, manifests) {
		t.Errorf("the admitted pod's init containers, containers and sidecar image: %q, want the sidecar and init container injected with the chart's image", got)
	}
	mustKubectl(t, rig, "", "patch", "pod", "web-1", "-n", app, "--subresource=status", "--type=merge", "-p",
		`{"status":{"phase":"Running","podIP":"10.9.0.1","podIPs":[{"ip":"10.9.0.1"}],"conditions":[{"type":"Ready","status":"True"}]}}`)
	eventually(t, cp, 30*time.Second, "the Dataplane of pod web-1", func() error {
		code, body, err := get("/meshes/default/dataplanes")
		if err == nil && (code != http.StatusOK || !strings.Contains(body, "web-1."+app) || !strings.Contains(body, "10.9.0.1")) {
			err = fmt.Errorf("GET /meshes/default/dataplanes: %d %s", code, body)
		}
		return err
	})

	// The ingress: a pod of the chart's template, as the Deployment would
	// make it, on a node, becomes the ZoneIngress it connects as.
	mustKubectl(t, rig, `apiVersion: v1
kind: Node
metadata: {name: helm-cp-node}
status:
  addresses: [{type: InternalIP, address: 192.0.2.10}]
`, "apply", "-f", "-")
	t.Cleanup(func() { kubectl(t, rig, "", "delete", "node", "helm-cp-node", "--ignore-not-found") })
	mustKubectl(t, rig, "", "patch", "node", "helm-cp-node", "--subresource=status", "--type=merge", "-p",
		`{"status":{"addresses":[{"type":"InternalIP","address":"192.0.2.10"}]}}`)
	mustKubectl(t, rig, ingressPod(t, manifests, ns, "ursa-ingress-0"), "apply", "-f", "-")
	mustKubectl(t, rig, "", "patch", "pod", "ursa-ingress-0", "-n", ns, "--subresource=status", "--type=merge", "-p",
		`{"status":{"phase":"Running","podIP":"10.9.0.9","podIPs":[{"ip":"10.9.0.9"}],"conditions":[{"type":"Ready","status":"True"}]}}`)
	eventually(t, cp, 30*time.Second, "the ZoneIngress of the ingress pod", func() error {
		code, body, err := get("/zone-ingresses")
		if err == nil && (code != http.StatusOK || !strings.Contains(body, "ursa-ingress-0."+ns) ||
			!strings.Contains(body, "10.9.0.9") || !strings.Contains(body, "192.0.2.10") || !strings.Contains(body, "30101")) {
			err = fmt.Errorf("GET /zone-ingresses: %d %s", code, body)
		}
		return err
	})

	logs, err := os.ReadFile(cp.logPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(logs), "\n") {
		if l := strings.ToLower(line); strings.Contains(l, "forbidden") || strings.Contains(l, " 403 ") {
			t.Errorf("the apiserver refused the CP something its RBAC should grant:\n%s", line)
		}
	}
}

// ingressPod returns, as JSON, a Pod named name of the rendered ingress
// Deployment's template.
func ingressPod(t *testing.T, manifests, ns, name string) string {
	t.Helper()
	for _, o := range parse(t, manifests) {
		if o.kind() != "Deployment" || o.name() != "ursa-ingress" {
			continue
		}
		tmpl, _ := get(o, "spec", "template").(object)
		meta, _ := tmpl["metadata"].(object)
		meta["name"], meta["namespace"] = name, ns
		b, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": tmpl["spec"]})
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	t.Fatal("no ursa-ingress Deployment rendered")
	return ""
}

// image returns the image of the rendered control plane.
func image(t *testing.T, manifests string) string {
	t.Helper()
	c := containers(parse(t, manifests))["ursa-control-plane/control-plane"]
	img, _ := c["image"].(string)
	return img
}

// cpArgs returns the zone CP container's arguments in the rendered
// manifests, without the flags the binary does not know yet (pendingFlags).
func cpArgs(t *testing.T, manifests string) []string {
	t.Helper()
	c, ok := containers(parse(t, manifests))["ursa-control-plane/control-plane"]
	if !ok {
		t.Fatal("no control-plane container rendered")
	}
	known := knownFlags(t, "ursa-cp", "zone")
	var args []string
	for i, a := range list(c["args"]) {
		s := a.(string)
		flag, _, _ := strings.Cut(strings.TrimPrefix(s, "--"), "=")
		if _, ok := known[flag]; i > 0 && !ok {
			continue
		}
		args = append(args, s)
	}
	return args
}

// cpProc is a started ursa-cp.
type cpProc struct {
	logPath string
	done    chan struct{} // closed when it has exited
	state   *os.ProcessState
}

// startCP starts the built ursa-cp with args, its output in a file; the
// test's end stops it with SIGTERM, then SIGKILL.
func startCP(t *testing.T, args []string) *cpProc {
	t.Helper()
	return startCPEnv(t, nil, args)
}

// startCPEnv is startCP with the process's environment set to env (a
// container's, as the chart renders it); nil is the test's own.
func startCPEnv(t *testing.T, env, args []string) *cpProc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "cp.log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binaries(t), "ursa-cp"), args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &cpProc{logPath: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); p.state = cmd.ProcessState; f.Close(); close(p.done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// eventually is testutil.Eventually that fails at once when the CP has
// exited, and shows the end of its log when it gives up.
func eventually(t *testing.T, cp *cpProc, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	testutil.Eventually(logOnFail{t, cp.logPath}, timeout, what, func() error {
		select {
		case <-cp.done:
			logOnFail{t, cp.logPath}.Fatalf("the CP exited (%v) while waiting for %s", cp.state, what)
		default:
		}
		return cond()
	})
}

type logOnFail struct {
	*testing.T
	logPath string
}

func (l logOnFail) Fatalf(format string, args ...any) {
	l.Helper()
	b, _ := os.ReadFile(l.logPath)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	l.T.Fatalf(format+"\nthe end of the CP's log:\n%s", append(args, strings.Join(lines, "\n"))...)
}

// freePorts returns n distinct loopback ports, free for TCP and UDP a
// moment ago (see testutil.FreeAddr).
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		_, port, _ := net.SplitHostPort(testutil.FreeAddr(t))
		p, _ := strconv.Atoi(port)
		ports = append(ports, p)
	}
	return ports
}
