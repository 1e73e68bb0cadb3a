package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/k8stest"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// TestHybridZones is issue 14's hybrid mesh: a global on PostgreSQL;
// zone-vm, universal, its hosts network namespaces with transparent
// sidecars (as in TestVMZones); zone-k8s on the k8stest rig, its CP on a
// host of its own reaching the apiserver (and reached by it, for the
// webhooks) through relays, its pods run by the test kubelet on the same
// network. Pods of a namespace labelled for injection are injected (the
// admitted spec has the sidecar and its init container) and become
// Dataplanes; a client pod in zone-k8s calls billing.mesh, served only in
// zone-vm, and a VM calls shop.mesh, served only in zone-k8s, each through
// the other zone's ingress; with billing in both zones, a TrafficRoute made
// at the global shifts it from one zone to the other; a shop pod deleted
// leaves zone-vm's endpoints (the time is logged, for test/BENCHMARKS.md);
// a kubectl edit of the route, synced from the global, is refused naming
// the global.
func TestHybridZones(t *testing.T) {
	for _, tool := range []string{"curl", "iptables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run deploy/deps.sh (%v)", tool, err)
		}
	}
	rig := kube.Get(t)
	h := newHosts(t, "global", "cpvm", "ingressvm", "billingvm", "webvm", "cpk8s")
	dir := t.TempDir()
	file := func(name, text string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	ctlOn := func(host, stdin string, args ...string) string {
		t.Helper()
		out, stderr, err := h.ctl(t, host, nil, "http://127.0.0.1:5681", stdin, args...)
		if err != nil {
			t.Fatalf("ursactl %s on %s: %v\n%s", strings.Join(args, " "), host, err, stderr)
		}
		return out
	}

	global := h.startCP(t, "global", "global", "--store", newDatabase(t), "--api-addr", ":5681", "--kds-addr", ":5685")
	_, kdsCA := global.get(t, "/kds/ca.pem")
	ctlOn("global", openMTLSMesh, "apply", "-f", "-")
	// get GETs path of the API of the CP on host from that host's
	// loopback, where a caller needs no token.
	get := func(host, path string) (int, string) {
		t.Helper()
		resp, err := h.client(t, host).Get("http://127.0.0.1:5681" + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	has := func(host, path string) bool {
		code, _ := get(host, path)
		return code == 200
	}
	// zoneArgs are what zone z needs to reach the global.
	zoneArgs := func(z string) []string {
		return []string{"--zone", z, "--api-addr", ":5681", "--xds-addr", ":5678",
			"--global-kds-address", "grpcs://" + h.addr("global") + ":5685", "--global-kds-ca-file", file("kds-ca.pem", kdsCA),
			"--zone-token-file", file(z+".token", ctlOn("global", "", "generate", "zone-token", "--zone", z))}
	}

	// zone-vm: billing, an ingress, and web, the VM client, resolving
	// through the zone CP's DNS.
	vm := h.startCP(t, "cpvm", append([]string{"zone", "--dns-addr", ":53"}, zoneArgs("zone-vm")...)...)
	eventually(t, "the mesh in zone-vm", func() bool { return has("cpvm", "/meshes/default") })
	xdsFlags := []string{"--cp-address", "grpcs://" + vm.xds, "--ca-cert-file", vm.xdsCAFile(t)}
	vmApp(t, h, "billingvm", "127.0.0.1:8080", "billing in zone-vm")
	vmSidecar(t, h, xdsFlags, ctlOn, file, "billingvm", "billing", 8080)
	zi := file("ingressvm.yaml", fmt.Sprintf("type: ZoneIngress\nname: ingress\nzone: zone-vm\nnetworking: {address: %[1]s, port: 10001, advertisedAddress: %[1]s, advertisedPort: 10001}\n", h.addr("ingressvm")))
	ing := h.start(t, "ingressvm", "ursa-dp", append(xdsFlags, "ingress", "--zone-ingress-file", zi, "--admin-addr", "127.0.0.1:9902",
		"--token-file", file("ingressvm.token", ctlOn("cpvm", "", "generate", "ingress-token", "--zone", "zone-vm")))...)
	waitReadyVia(t, h.client(t, "ingressvm"), "http://127.0.0.1:9902/ready", ing)
	h.setResolvConf(t, "webvm", "nameserver "+h.addr("cpvm")+"\noptions timeout:1 attempts:2\n")
	vmSidecar(t, h, xdsFlags, ctlOn, file, "webvm", "web", 8000)

	// zone-k8s: its CP outside the cluster, as a developer runs one.
	kubeCRDs(t, rig)
	system := fmt.Sprintf("ursa-system-%d", os.Getpid())
	apps := fmt.Sprintf("hybrid-%d", os.Getpid())
	kubeNamespace(t, rig, system, nil)
	kubeNamespace(t, rig, apps, map[string]string{"ursa.io/sidecar-injection": "enabled"})
	// The CP's own identity, a service account (cluster-admin here, for
	// brevity; the Helm chart's RBAC is narrower).
	cpToken := kubeServiceAccount(t, rig, system, "ursa-control-plane", "cluster-admin")
	// Meshes are cluster-scoped: the one synced from the global would
	// outlive the namespaces, read-only, in the rig's later tests. Deleted
	// once the webhooks are gone (the next cleanup, which runs first).
	t.Cleanup(func() {
		if out, err := kubectl(rig, "", "delete", "meshes.ursa.io", "--all", "--wait=false"); err != nil {
			t.Errorf("kubectl delete meshes: %v %s", err, out)
		}
	})
	// The CP registers its webhooks cluster-wide and fail-closed: once it
	// is gone (cleanups run last-registered first), they would refuse the
	// rig's later tests' pods and ursa.io objects.
	t.Cleanup(func() {
		for _, kind := range []string{"mutatingwebhookconfigurations/ursa-sidecar-injector", "validatingwebhookconfigurations/ursa-validator"} {
			kubeDo(context.Background(), rig, http.MethodDelete, "/apis/admissionregistration.k8s.io/v1/"+kind, "", nil, nil)
		}
	})
	k8sZone := h.startCP(t, "cpk8s", append([]string{"zone", "--environment", "kubernetes",
		"--kubernetes-injection-image", "ursa-dp:e2e", "--kubernetes-injection-cp-address", "grpcs://" + h.addr("cpk8s") + ":5678",
		"--kubeconfig", h.kubeconfigOn(t, rig, "cpk8s", cpToken), "--kubernetes-system-namespace", system,
		"--webhook-addr", "127.0.0.1:5443", "--webhook-url", "https://" + h.relayToHost(t, "cpk8s", "127.0.0.1:5443")},
		zoneArgs("zone-k8s")...)...)
	eventually(t, "the mesh in zone-k8s", func() bool { return has("cpk8s", "/meshes/default") })
	waitWebhooks(t, rig)
	k := newKubelet(t, h, rig, system, apps)

	caPEM, err := os.ReadFile(k8sZone.xdsCAFile(t))
	if err != nil {
		t.Fatal(err)
	}
	kubeApply(t, rig, kubeIngress(system, h.addr("cpk8s"), string(caPEM))+"---\n"+
		kubeApp(apps, "shop", 2, 8080, "shop in zone-k8s")+"---\n"+kubeApp(apps, "client", 1, 0, ""))

	// Injected, admitted with the sidecar and its init container, and
	// Dataplanes in zone-k8s.
	pods := waitPods(t, rig, apps, "shop-", 2)
	pods = append(pods, waitPods(t, rig, apps, "client-", 1)...)
	for _, p := range pods {
		if !p.injected() {
			t.Fatalf("pod %s was admitted without the sidecar and its init container: %+v", p.Metadata.Name, p.Spec)
		}
		name := p.Metadata.Name + "." + apps
		eventually(t, "Dataplane "+name+" in zone-k8s", func() bool { return has("cpk8s", "/meshes/default/dataplanes/"+name) })
	}
	client := pods[2].Metadata.Name
	// The sidecar runs as the user the redirection lets through.
	if uid := k.containerUID(t, apps, client, "ursa-sidecar"); uid != "5678" {
		t.Fatalf("the client pod's sidecar runs as user %s, want 5678", uid)
	}

	// Each zone calls a service only the other serves.
	curlIn := func(ns, url string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "curl", "-sS", "--max-time", "3", url).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	fromPod := func(url string) (string, error) {
		rp := k.pod(apps, client)
		if rp == nil {
			return "", fmt.Errorf("no client pod")
		}
		ns, err := h.nsPath(rp.host)
		if err != nil {
			return "", err
		}
		return curlIn(filepath.Base(ns), url)
	}
	fromVM := func(url string) (string, error) { return curlIn(h.namespace(t, "webvm"), url) }
	reaches := func(what string, curl func(string) (string, error), url, want string) {
		t.Helper()
		testutil.Eventually(t, 30*time.Second, what+": curl "+url, func() error {
			out, err := curl(url)
			if err != nil || out != want {
				return fmt.Errorf("%q %v", out, err)
			}
			return nil
		})
	}
	reaches("a pod of zone-k8s calls billing in zone-vm", fromPod, "http://billing.mesh/", "billing in zone-vm")
	reaches("a VM of zone-vm calls shop in zone-k8s", fromVM, "http://shop.mesh:8080/", "shop in zone-k8s")
	// At the address zone-k8s advertises its ingress at: the node's, on
	// the Service's node port.
	if k.nodePortConns.Load() == 0 {
		t.Fatal("zone-vm reached zone-k8s, but not through the ingress Service's node port")
	}

	// billing in both zones: a route at the global shifts it.
	kubeApply(t, rig, kubeApp(apps, "billing", 1, 8080, "billing in zone-k8s"))
	waitPods(t, rig, apps, "billing-", 1)
	route := func(zone string) string {
		return fmt.Sprintf("type: TrafficRoute\nmesh: default\nname: billing-zone\nspec:\n  destination: {ursa.io/service: billing}\n  split:\n  - {weight: 100, tags: {ursa.io/zone: %s}}\n", zone)
	}
	for _, zone := range []string{"zone-k8s", "zone-vm", "zone-k8s"} {
		ctlOn("global", route(zone), "apply", "-f", "-")
		want := "billing in " + zone
		for what, curl := range map[string]func(string) (string, error){"the VM": fromVM, "the pod": fromPod} {
			testutil.Eventually(t, 30*time.Second, what+"'s calls of billing all going to "+zone, func() error {
				for range 5 {
					if out, err := curl("http://billing.mesh/"); err != nil || out != want {
						return fmt.Errorf("%q %v", out, err)
					}
				}
				return nil
			})
		}
	}

	// A shop pod deleted leaves zone-vm's endpoints: zone-k8s's ingress,
	// as zone-vm has it, offers one shop instance.
	shopInstances := func() int {
		_, body := get("cpvm", "/zone-ingresses")
		return offered(body, "zone-k8s", "shop")
	}
	eventually(t, "two shop instances offered to zone-vm", func() bool { return shopInstances() == 2 })
	t0 := time.Now()
	// As kubectl delete does, with the default grace period: the pod is
	// terminating, then gone once the kubelet has stopped it.
	if err := kubeDo(context.Background(), rig, http.MethodDelete, "/api/v1/namespaces/"+apps+"/pods/"+pods[0].Metadata.Name, "", nil, nil); err != nil {
		t.Fatalf("delete pod %s: %v", pods[0].Metadata.Name, err)
	}
	// The ReplicaSet's replacement takes longer to become Ready (an init
	// container, a sidecar connecting, a probe) than the endpoints take to
	// change: the count is seen at 1 first.
	gone := timeUntil(t, "zone-vm offers one shop instance after a pod's deletion", t0, func() bool { return shopInstances() == 1 })
	t.Logf("a deleted pod left the other zone's endpoints in %s", gone.Round(time.Millisecond))
	reaches("shop with one pod", fromVM, "http://shop.mesh:8080/", "shop in zone-k8s")

	// A pod's readiness flipped by its kubelet: the time until zone-vm's
	// endpoints follow, each way.
	eventually(t, "the replacement shop pod offered to zone-vm", func() bool { return shopInstances() == 2 })
	flipped := waitPods(t, rig, apps, "shop-", 2)[0].Metadata.Name
	var flips []time.Duration
	for range 10 {
		for _, ready := range []bool{false, true} {
			want := map[bool]int{false: 1, true: 2}[ready]
			t0 := time.Now()
			k.setReady(t, apps, flipped, ready)
			flips = append(flips, timeUntil(t, fmt.Sprintf("zone-vm offers %d shop instances", want), t0, func() bool { return shopInstances() == want }))
		}
	}
	slices.Sort(flips)
	t.Logf("a pod's readiness flip reached the other zone's endpoints in: median %s, max %s (of %d)",
		flips[len(flips)/2].Round(time.Millisecond), flips[len(flips)-1].Round(time.Millisecond), len(flips))

	// The route came from the global: a kubectl edit of it is refused.
	out, err := kubectl(rig, "", "get", "trafficroutes", "-A", "-o", "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}{\"\\n\"}{end}")
	if err != nil {
		t.Fatalf("kubectl get trafficroutes: %v %s", err, out)
	}
	var cr string
	for _, line := range strings.Fields(out) {
		if strings.Contains(line, "billing-zone") {
			cr = line
		}
	}
	if cr == "" {
		t.Fatalf("no TrafficRoute billing-zone in the cluster:\n%s", out)
	}
	crNS, crName, _ := strings.Cut(cr, "/")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	edit := rig.Kubectl(ctx, "-n", crNS, "edit", "trafficroute", crName)
	edit.Env = append(edit.Env, "KUBE_EDITOR=sed -i s/weight:\\ 100/weight:\\ 50/")
	editOut, err := edit.CombinedOutput()
	if err == nil || !strings.Contains(string(editOut), "is synced from the global control plane") {
		t.Fatalf("kubectl edit of a route synced from the global: %v\n%s", err, editOut)
	}
	t.Logf("kubectl edit refused: %s", strings.TrimSpace(string(editOut)))
}

// timeUntil polls cond every 5 ms, the measurement's resolution, and returns
// the time from t0 until it held; it fails the test after 30 s, a generous
// bound: the figures go to test/BENCHMARKS.md, not to pass or fail.
func timeUntil(t *testing.T, what string, t0 time.Time, cond func() bool) time.Duration {
	t.Helper()
	for !cond() {
		if time.Since(t0) > 30*time.Second {
			t.Fatalf("%s: not after 30 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(t0)
}

// vmApp serves message on host at addr.
func vmApp(t *testing.T, h *hosts, host, addr, message string) {
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, message)
	})}
	go srv.Serve(h.listen(t, host, "tcp", addr))
	t.Cleanup(func() { srv.Close() })
}

// vmSidecar runs a transparent sidecar for service on host, its app on
// 127.0.0.1:port, its inbound at the host's address, and waits until it is
// ready.
func vmSidecar(t *testing.T, h *hosts, xdsFlags []string, ctlOn func(host, stdin string, args ...string) string,
	file func(name, text string) string, host, service string, port int) {
	t.Helper()
	token := ctlOn("cpvm", "", "generate", "dataplane-token", "--mesh", "default", "--service", service, "--name", host)
	dp := file(host+".yaml", fmt.Sprintf("type: Dataplane\nmesh: default\nname: %s\nnetworking:\n  address: %s\n  inbound: [{port: %d, servicePort: %d, tags: {ursa.io/service: %s}}]\n",
		host, h.addr(host), port, port, service))
	p := h.start(t, host, "ursa-dp", append(xdsFlags, "run", "--dataplane-file", dp, "--token-file", file(host+".token", token),
		"--admin-addr", "127.0.0.1:9901", "--transparent-proxy")...)
	waitReadyVia(t, h.client(t, host), "http://127.0.0.1:9901/ready", p)
}

// offered is how many instances of service the ingress of zone offers, in
// a zone's /zone-ingresses list.
func offered(list, zone, service string) int {
	var ings struct {
		Items []struct {
			Zone              string `json:"zone"`
			AvailableServices []struct {
				Instances int               `json:"instances"`
				Tags      map[string]string `json:"tags"`
			} `json:"availableServices"`
		} `json:"items"`
	}
	if json.Unmarshal([]byte(list), &ings) != nil {
		return -1
	}
	n := 0
	for _, ing := range ings.Items {
		if ing.Zone != zone {
			continue
		}
		for _, s := range ing.AvailableServices {
			if s.Tags["ursa.io/service"] == service {
				n += s.Instances
			}
		}
	}
	return n
}

// waitWebhooks waits until the zone CP has registered its admission
// webhooks.
func waitWebhooks(t *testing.T, rig *k8stest.Rig) {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, "the zone CP's webhook configurations", func() error {
		out, err := kubectl(rig, "", "get", "mutatingwebhookconfigurations,validatingwebhookconfigurations", "-o", "name")
		if err != nil || strings.Count(out, "ursa") < 2 {
			return fmt.Errorf("%s %v", out, err)
		}
		return nil
	})
}

// admittedPod is what the test reads of an admitted pod.
type admittedPod struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		InitContainers []struct {
			Name string `json:"name"`
		} `json:"initContainers"`
		Containers []struct {
			Name string `json:"name"`
		} `json:"containers"`
	} `json:"spec"`
	Status struct {
		PodIP      string `json:"podIP"`
		Conditions []struct {
			Type   string `json:"type"`
			Status string `json:"status"`
		} `json:"conditions"`
	} `json:"status"`
}

func (p admittedPod) ready() bool {
	for _, c := range p.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True"
		}
	}
	return false
}

// injected says whether the pod has the sidecar and its init container.
func (p admittedPod) injected() bool {
	sidecar, init := false, false
	for _, c := range p.Spec.Containers {
		sidecar = sidecar || c.Name == "ursa-sidecar"
	}
	for _, c := range p.Spec.InitContainers {
		init = init || c.Name == "ursa-init"
		sidecar = sidecar || c.Name == "ursa-sidecar" // native (Kubernetes 1.29 and later)
	}
	return sidecar && init
}

// waitPods waits until namespace has n Ready pods whose names start with
// prefix, and returns them.
func waitPods(t *testing.T, rig *k8stest.Rig, namespace, prefix string, n int) []admittedPod {
	t.Helper()
	var got []admittedPod
	testutil.Eventually(t, 60*time.Second, fmt.Sprintf("%d Ready pods %s* in %s", n, prefix, namespace), func() error {
		var list struct {
			Items []admittedPod `json:"items"`
		}
		if err := kubeDo(context.Background(), rig, http.MethodGet, "/api/v1/namespaces/"+namespace+"/pods", "", nil, &list); err != nil {
			return err
		}
		got = nil
		for _, p := range list.Items {
			if strings.HasPrefix(p.Metadata.Name, prefix) && p.ready() {
				got = append(got, p)
			}
		}
		if len(got) != n {
			return fmt.Errorf("%d Ready of %d", len(got), len(list.Items))
		}
		return nil
	})
	return got
}

// kubeApp is a Deployment of replicas pods of the test app answering
// message on port (no port when 0) and, with a port, a Service that names
// its Ursa service name.
func kubeApp(namespace, name string, replicas, port int, message string) string {
	ports, svc := "", ""
	if port != 0 {
		ports = fmt.Sprintf("\n        ports: [{name: http, containerPort: %d}]", port)
		svc = fmt.Sprintf(`---
apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: %[2]s, annotations: {ursa.io/service: %[1]s}}
spec:
  selector: {app: %[1]s}
  ports: [{port: %[3]d, targetPort: %[3]d}]
`, name, namespace, port)
	}
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  replicas: %[3]d
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata: {labels: {app: %[1]s}}
    spec:
      # The rig has no ServiceAccount admission plugin to set it, and
      # the injected projected token needs it.
      serviceAccountName: default
      containers:
      - name: app
        image: %[4]s
        env: [{name: MESSAGE, value: %[5]q}]%[6]s
`, name, namespace, replicas, testAppImage, message, ports) + svc
}

// kubeIngress is zone-k8s's ingress as deploy/helm/ursa's templates make
// it: a Deployment of ursa-dp ingress, which proves it is the ingress pod
// with its projected service-account token and names the ZoneIngress the
// pod controller made of it (<pod>.<namespace>), and a NodePort Service.
func kubeIngress(namespace, cpHost, caPEM string) string {
	ca, _ := json.Marshal(caPEM)
	return fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata: {name: ursa-ingress, namespace: %[1]s}
automountServiceAccountToken: false
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ursa-xds-ca, namespace: %[1]s}
data: {ca.pem: %[3]s}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ursa-ingress, namespace: %[1]s, labels: {ursa.io/ingress: enabled}}
spec:
  replicas: 1
  selector: {matchLabels: {app: ursa-ingress}}
  template:
    metadata: {labels: {app: ursa-ingress, ursa.io/ingress: enabled}}
    spec:
      serviceAccountName: ursa-ingress
      automountServiceAccountToken: false
      containers:
      - name: ingress
        image: ursa-dp:e2e
        command: [/usr/local/bin/ursa-dp]
        args: [ingress, --cp-address=grpcs://%[2]s:5678, --ca-cert-file=/etc/ursa/xds-ca/ca.pem,
          --token-file=/var/run/secrets/ursa.io/token, --zone-ingress-name=$(POD_NAME).$(POD_NAMESPACE), --admin-addr=:9902]
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        ports: [{name: ingress, containerPort: 10001}, {name: admin, containerPort: 9902}]
        readinessProbe: {httpGet: {path: /ready, port: admin}, periodSeconds: 5}
        volumeMounts:
        - {name: token, mountPath: /var/run/secrets/ursa.io, readOnly: true}
        - {name: xds-ca, mountPath: /etc/ursa/xds-ca, readOnly: true}
      volumes:
      - name: token
        projected: {sources: [{serviceAccountToken: {audience: ursa, expirationSeconds: 3600, path: token}}]}
      - name: xds-ca
        configMap: {name: ursa-xds-ca, items: [{key: ca.pem, path: ca.pem}]}
---
apiVersion: v1
kind: Service
metadata: {name: ursa-ingress, namespace: %[1]s, labels: {ursa.io/ingress: enabled}}
spec:
  type: NodePort
  selector: {app: ursa-ingress}
  ports: [{name: ingress, port: 10001, targetPort: ingress}]
`, namespace, cpHost, ca)
}
