package e2e

// Issue 14's figures of a hybrid mesh through the real binaries, for
// test/BENCHMARKS.md (timings are logged, never asserted):
//
//	go test ./test/e2e -run '^$' -bench KubeFlip -benchtime 1x -timeout 20m -v
//
// KubeFlip: a global on PostgreSQL, zone-k8s (`ursa-cp zone --environment
// kubernetes` on the k8stest rig) and zone-vm (universal). A pod of service
// billing in zone-k8s, its sidecar connected, behind zone-k8s's ingress; in
// zone-vm and in zone-k8s, an ADS client subscribed as the sidecar of a
// Dataplane that calls billing. The pod's Ready condition is flipped, as a
// kubelet does (GET and PUT of pods/status), URSA_KBENCH_FLIPS times
// (default 200); each flip is timed from the PUT's response to the ADS
// response at each client after which billing's endpoints changed.

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/metadata"

	"github.com/ursamesh/ursa/pkg/k8stest"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// hybrid is a global and its two zones, zone-k8s on the rig.
type hybrid struct {
	rig                *k8stest.Rig
	global, k8s, vm    *cp
	system, apps, hook string
}

// startHybrid starts a global on PostgreSQL with the default mesh (no
// mTLS), zone-vm and zone-k8s, the latter's objects in namespaces of this
// process (apps labelled for injection).
func startHybrid(b testing.TB) *hybrid {
	b.Helper()
	h := &hybrid{rig: kube.Get(b)}
	if err := h.rig.InstallCRDs("../../deploy/crds"); err != nil {
		b.Fatal(err)
	}
	h.system, h.apps = fmt.Sprintf("kb-system-%d", os.Getpid()), fmt.Sprintf("kb-app-%d", os.Getpid())
	kbNamespace(b, h.rig, h.system, nil)
	kbNamespace(b, h.rig, h.apps, map[string]string{"ursa.io/sidecar-injection": "enabled"})

	dsn, err := cluster.NewDatabase(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	if p := start(b, "ursa-cp", "migrate", "up", "--store", dsn); p.wait(b) != nil {
		b.Fatalf("migrate: %s", p.out.String())
	}
	h.global = startCP(b, "global", "--store", dsn)
	dir := b.TempDir()
	_, pem := h.global.get(b, "/kds/ca.pem")
	ca := filepath.Join(dir, "kds-ca.pem")
	if err := os.WriteFile(ca, []byte(pem), 0o600); err != nil {
		b.Fatal(err)
	}
	zoneArgs := func(zone string) []string {
		token := filepath.Join(dir, zone+".token")
		if err := os.WriteFile(token, []byte(ctl(b, h.global.api, "", "generate", "zone-token", "--zone", zone)), 0o600); err != nil {
			b.Fatal(err)
		}
		return []string{"--zone", zone, "--global-kds-address", "grpcs://" + h.global.kds, "--global-kds-ca-file", ca, "--zone-token-file", token}
	}
	h.vm = startCP(b, append([]string{"zone", "--vip-cidr", "127.242.0.0/16"}, zoneArgs("zone-vm")...)...)
	// The zone registers its webhooks cluster-wide and fail-closed: gone
	// with it, they would refuse the rig's later pods.
	b.Cleanup(func() {
		for _, kind := range []string{"mutatingwebhookconfigurations/ursa-sidecar-injector", "validatingwebhookconfigurations/ursa-validator"} {
			kubeDo(context.Background(), h.rig, http.MethodDelete, "/apis/admissionregistration.k8s.io/v1/"+kind, "", nil, nil)
		}
	})
	h.hook = freeAddr(b)
	h.k8s = startCP(b, append([]string{"zone", "--environment", "kubernetes", "--kubeconfig", h.rig.Kubeconfig,
		"--kubernetes-system-namespace", h.system, "--instance", "kb", "--vip-cidr", "127.243.0.0/16",
		"--webhook-addr", h.hook, "--webhook-url", "https://" + h.hook}, zoneArgs("zone-k8s")...)...)
	ctl(b, h.global.api, "type: Mesh\nname: default\n", "apply", "-f", "-")
	for _, z := range []*cp{h.vm, h.k8s} {
		eventually(b, "the mesh in "+z.api, func() bool { return z.has(b, "/meshes/default") })
	}
	return h
}

// kbNamespace creates namespace name with labels, deleted when b ends.
func kbNamespace(b testing.TB, rig *k8stest.Rig, name string, labels map[string]string) {
	b.Helper()
	ns := map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": name, "labels": labels}}
	if err := kubeDo(context.Background(), rig, http.MethodPost, "/api/v1/namespaces", "", ns, nil); err != nil {
		b.Fatalf("create namespace %s: %v", name, err)
	}
	b.Cleanup(func() { kubeDo(context.Background(), rig, http.MethodDelete, "/api/v1/namespaces/"+name, "", nil, nil) })
}

// admit applies manifests once the zone's webhooks admit them (the
// injector is registered shortly after the zone is ready).
func (h *hybrid) admit(b testing.TB, manifests string) {
	b.Helper()
	testutil.Eventually(b, 30*time.Second, "kubectl apply", func() error {
		if out, err := kubectl(h.rig, manifests, "apply", "-f", "-"); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
}

// putReady sets a pod's IP and Ready condition as a kubelet does: a GET of
// the pod and a PUT of its status (no retry: nothing else writes it).
func putReady(b testing.TB, rig *k8stest.Rig, ns, name, ip string, ready bool) {
	b.Helper()
	var pod map[string]any
	path := "/api/v1/namespaces/" + ns + "/pods/" + name
	if err := kubeDo(context.Background(), rig, http.MethodGet, path, "", nil, &pod); err != nil {
		b.Fatalf("get pod %s/%s: %v", ns, name, err)
	}
	cond := "False"
	if ready {
		cond = "True"
	}
	pod["status"] = map[string]any{"phase": "Running", "podIP": ip, "podIPs": []any{map[string]any{"ip": ip}},
		"conditions": []any{map[string]any{"type": "Ready", "status": cond}}}
	if err := kubeDo(context.Background(), rig, http.MethodPut, path+"/status", "", pod, nil); err != nil {
		b.Fatalf("put the status of pod %s/%s: %v", ns, name, err)
	}
}

// edsWatch is an ADS client of a zone CP, as the sidecar of a Dataplane:
// it subscribes to every cluster and to the load assignments of the EDS
// clusters whose names contain match, and reports, after each response,
// how many endpoints those have (0 once the clusters are gone).
type edsWatch struct {
	mu      sync.Mutex
	count   int
	addrs   []string    // the endpoints' addresses
	changes []edsChange // every change of count, in order
	err     error
}

type edsChange struct {
	at    time.Time
	count int
}

// watchEDS connects to zone z as node default.<dataplane> with token.
func watchEDS(b testing.TB, z *cp, dataplane, token, match string) *edsWatch {
	b.Helper()
	conn := z.dialXDS(b)
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+strings.TrimSpace(token))
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		b.Fatal(err)
	}
	node := &core.Node{Id: "default." + dataplane}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ClusterType}); err != nil {
		b.Fatal(err)
	}
	w := &edsWatch{}
	go func() {
		var names []string           // EDS names subscribed
		cla := map[string][]string{} // endpoints by EDS name
		acked := map[string]string{} // version by type
		for {
			resp, err := stream.Recv()
			if err != nil {
				if ctx.Err() == nil {
					w.mu.Lock()
					w.err = err
					w.mu.Unlock()
				}
				return
			}
			at := time.Now()
			switch resp.TypeUrl {
			case resource.ClusterType:
				var want []string
				for _, a := range resp.Resources {
					c := &clusterv3.Cluster{}
					if a.UnmarshalTo(c) != nil || !strings.Contains(c.Name, match) || c.GetType() != clusterv3.Cluster_EDS {
						continue
					}
					name := c.GetEdsClusterConfig().GetServiceName()
					if name == "" {
						name = c.Name
					}
					want = append(want, name)
				}
				slices.Sort(want)
				for n := range cla {
					if !slices.Contains(want, n) {
						delete(cla, n)
					}
				}
				acked[resp.TypeUrl] = resp.VersionInfo
				stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resp.TypeUrl, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce})
				if !slices.Equal(want, names) {
					names = want
					stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.EndpointType, ResourceNames: names, VersionInfo: acked[resource.EndpointType]})
				}
			case resource.EndpointType:
				for _, a := range resp.Resources {
					l := &endpoint.ClusterLoadAssignment{}
					if a.UnmarshalTo(l) != nil || !slices.Contains(names, l.ClusterName) {
						continue
					}
					var addrs []string
					for _, e := range l.Endpoints {
						for _, lb := range e.LbEndpoints {
							sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
							addrs = append(addrs, fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()))
						}
					}
					cla[l.ClusterName] = addrs
				}
				acked[resp.TypeUrl] = resp.VersionInfo
				stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resp.TypeUrl, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce, ResourceNames: names})
			default:
				stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resp.TypeUrl, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce})
			}
			var all []string
			for _, c := range cla {
				all = append(all, c...)
			}
			n := len(all)
			w.mu.Lock()
			w.addrs = all
			if n != w.count || len(w.changes) == 0 {
				w.count = n
				w.changes = append(w.changes, edsChange{at, n})
			}
			w.mu.Unlock()
		}
	}()
	return w
}

// state returns the current count and how many changes were seen.
func (w *edsWatch) state() (count, changes int, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.count, len(w.changes), w.err
}

// change returns the i-th change.
func (w *edsWatch) change(i int) edsChange {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changes[i]
}

// waitCount waits until the count is want and returns the time of the
// change that made it so, the first after the first seen changes.
func (w *edsWatch) waitCount(b testing.TB, what string, seen, want int) time.Time {
	b.Helper()
	var at time.Time
	testutil.Eventually(b, 30*time.Second, what, func() error {
		count, n, err := w.state()
		if err != nil {
			b.Fatalf("%s: the ADS stream ended: %v", what, err)
		}
		if count != want || n <= seen {
			return fmt.Errorf("%d endpoints after %d changes", count, n)
		}
		for i := seen; i < n; i++ {
			if c := w.change(i); c.count == want {
				at = c.at
				break
			}
		}
		return nil
	})
	return at
}

func BenchmarkKubeFlip(b *testing.B) {
	flips := 200
	if s := os.Getenv("URSA_KBENCH_FLIPS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 2 {
			b.Fatalf("URSA_KBENCH_FLIPS=%q: want a count of at least 2", s)
		}
		flips = n
	}
	h := startHybrid(b)
	const billingIP, webIP = "127.0.0.61", "127.0.0.62"
	h.admit(b, fmt.Sprintf(`
apiVersion: v1
kind: Service
metadata: {name: billing, namespace: %[1]s}
spec:
  selector: {app: billing}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: %[1]s}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8000}]
---
apiVersion: v1
kind: Pod
metadata: {name: billing-1, namespace: %[1]s, labels: {app: billing}}
spec:
  serviceAccountName: default
  containers: [{name: app, image: app}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: %[1]s, labels: {app: web}}
spec:
  serviceAccountName: default
  containers: [{name: app, image: app}]
`, h.apps))
	putReady(b, h.rig, h.apps, "billing-1", billingIP, true)
	putReady(b, h.rig, h.apps, "web-1", webIP, true)
	billing, web := "billing-1."+h.apps, "web-1."+h.apps
	for _, dp := range []string{billing, web} {
		eventually(b, "dataplane "+dp+" in zone-k8s", func() bool { return h.k8s.has(b, "/meshes/default/dataplanes/"+dp) })
	}
	// billing's sidecar, online, so the ingress offers billing.
	start(b, "ursa-dp", append([]string{"run", "--dataplane-name", billing, "--mesh", "default", "--admin-addr", "127.0.0.1:0"},
		h.k8s.sidecarFlags(b, "default", "")...)...)
	// zone-k8s's ingress.
	dir := b.TempDir()
	ingFile := filepath.Join(dir, "ingress.yaml")
	ingAddr := freeAddr(b)
	os.WriteFile(ingFile, []byte(fmt.Sprintf("type: ZoneIngress\nname: ingress\nzone: zone-k8s\nnetworking: {address: 127.0.0.1, port: %[1]s, advertisedAddress: 127.0.0.1, advertisedPort: %[1]s}\n",
		port(ingAddr))), 0o600)
	start(b, "ursa-dp", append(append([]string{"ingress"}, h.k8s.ingressFlags(b, "zone-k8s")...), "--zone-ingress-file", ingFile, "--admin-addr", "127.0.0.1:0")...)
	b.Logf("zone-k8s's ingress at %s", ingAddr)
	eventually(b, "zone-k8s's ingress offering billing in zone-vm", func() bool {
		_, body := h.vm.get(b, "/zone-ingresses/zone-k8s.ingress")
		return strings.Contains(body, `"instances":1`)
	})
	// zone-vm's caller of billing.
	ctl(b, h.vm.api, "type: Dataplane\nmesh: default\nname: web-vm\nnetworking:\n  address: 127.0.0.1\n  inbound:\n  - {port: 18000, servicePort: 8000, tags: {ursa.io/service: web}}\n", "apply", "-f", "-")

	match := "billing_" + h.apps
	watchers := map[string]*edsWatch{
		"zone-vm":  watchEDS(b, h.vm, "web-vm", h.vm.dataplaneToken(b, "default"), match),
		"zone-k8s": watchEDS(b, h.k8s, web, h.k8s.dataplaneToken(b, "default"), match),
	}
	seen := map[string]int{}
	for zone, w := range watchers {
		w.waitCount(b, "billing's endpoint at the client in "+zone, 0, 1)
		_, seen[zone], _ = w.state()
		w.mu.Lock()
		b.Logf("billing's endpoints at the client in %s: %v", zone, w.addrs)
		w.mu.Unlock()
	}

	took := map[string][]time.Duration{}
	b.ResetTimer()
	for i := range flips {
		ready := i%2 == 1
		putReady(b, h.rig, h.apps, "billing-1", billingIP, ready)
		put := time.Now()
		want := 0
		if ready {
			want = 1
		}
		for zone, w := range watchers {
			at := w.waitCount(b, fmt.Sprintf("flip %d (ready %v) at the client in %s", i, ready, zone), seen[zone], want)
			_, seen[zone], _ = w.state()
			took[zone] = append(took[zone], at.Sub(put))
			dir := zone + map[bool]string{true: " to Ready", false: " to NotReady"}[ready]
			took[dir] = append(took[dir], at.Sub(put))
		}
	}
	b.StopTimer()
	load, _ := os.ReadFile("/proc/loadavg")
	for _, zone := range []string{"zone-vm", "zone-k8s", "zone-vm to NotReady", "zone-vm to Ready", "zone-k8s to NotReady", "zone-k8s to Ready"} {
		d := took[zone]
		slices.Sort(d)
		q := func(p float64) time.Duration {
			return d[min(len(d)-1, int(p*float64(len(d))))].Round(100 * time.Microsecond)
		}
		b.Logf("%d readiness flips → billing's endpoints at the client in %s: p50 %v, p90 %v, p99 %v, max %v, min %v (load %s)",
			len(d), zone, q(0.50), q(0.90), q(0.99), d[len(d)-1].Round(100*time.Microsecond), d[0].Round(100*time.Microsecond), strings.TrimSpace(string(load)))
		over := 0
		for _, x := range d {
			if x > 500*time.Millisecond {
				over++
			}
		}
		b.Logf("  %s: %d of %d over 500 ms", zone, over, len(d))
		if !strings.Contains(zone, " ") {
			b.ReportMetric(float64(q(0.99))/1e6, zone+"-p99-ms")
		}
	}
	// What the CPs rejected or retried on the way (a NACKed KDS type is
	// sent again after a pause of a second).
	for name, c := range map[string]*cp{"global": h.global, "zone-vm": h.vm, "zone-k8s": h.k8s} {
		b.Logf("%s's warnings and errors: %s", name, strings.Join(warnings(c), "; "))
	}
}

// warnings counts the CP's logged warnings and errors by message, most
// frequent first, with one example line of each.
func warnings(c *cp) []string {
	type msg struct {
		n       int
		example string
	}
	byMsg := map[string]*msg{}
	for _, line := range strings.Split(c.out.String(), "\n") {
		var f struct{ Level, Msg string }
		if json.Unmarshal([]byte(line), &f) != nil || (f.Level != "warn" && f.Level != "error") {
			continue
		}
		if byMsg[f.Msg] == nil {
			byMsg[f.Msg] = &msg{example: line}
		}
		byMsg[f.Msg].n++
	}
	keys := slices.SortedFunc(maps.Keys(byMsg), func(a, b string) int { return byMsg[b].n - byMsg[a].n })
	var out []string
	for _, k := range keys {
		out = append(out, fmt.Sprintf("%d× %s", byMsg[k].n, byMsg[k].example))
	}
	return out
}
