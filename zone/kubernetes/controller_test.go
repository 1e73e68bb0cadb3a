package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/k8stest"
	"github.com/ursamesh/ursa/pkg/kube"
	"github.com/ursamesh/ursa/pkg/store"
	kubestore "github.com/ursamesh/ursa/pkg/store/kubernetes"
	"github.com/ursamesh/ursa/pkg/testutil"
)

var cluster k8stest.Shared

func TestMain(m *testing.M) { os.Exit(cluster.Main(m)) }

// rig returns the shared rig with deploy/crds applied, and a client of it.
func rig(t *testing.T) (*k8stest.Rig, *kube.Client) {
	t.Helper()
	r := cluster.Get(t)
	if err := r.InstallCRDs("../../deploy/crds"); err != nil {
		t.Fatal(err)
	}
	cfg, err := kube.LoadKubeconfig(r.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kube.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r, c
}

// counting counts a store's writes.
type counting struct {
	store.Store
	writes atomic.Int64
}

func (c *counting) Create(ctx context.Context, r api.Resource) (api.Resource, error) {
	c.writes.Add(1)
	return c.Store.Create(ctx, r)
}

func (c *counting) Update(ctx context.Context, r api.Resource) (api.Resource, error) {
	c.writes.Add(1)
	return c.Store.Update(ctx, r)
}

func (c *counting) Delete(ctx context.Context, k api.Key, v int64) error {
	c.writes.Add(1)
	return c.Store.Delete(ctx, k, v)
}

// k8s is a test's view of the cluster: it creates and changes objects as a
// user, a controller and a kubelet would.
type k8s struct {
	t *testing.T
	c *kube.Client
}

func (k k8s) do(method, path string, body any) map[string]any {
	k.t.Helper()
	var out map[string]any
	if err := k.c.Do(context.Background(), method, path, body, &out); err != nil {
		k.t.Fatalf("%s %s: %v", method, path, err)
	}
	return out
}

func (k k8s) namespace(name string, labels map[string]string) {
	k.t.Helper()
	k.do("POST", "/api/v1/namespaces", map[string]any{"metadata": map[string]any{"name": name, "labels": labels}})
	k.t.Cleanup(func() { k.c.Do(context.Background(), "DELETE", "/api/v1/namespaces/"+name, nil, nil) })
}

func (k k8s) service(ns, name string, selector map[string]string, ports ...map[string]any) {
	k.t.Helper()
	k.do("POST", "/api/v1/namespaces/"+ns+"/services", map[string]any{
		"metadata": map[string]any{"name": name},
		"spec":     map[string]any{"selector": selector, "ports": ports}})
}

func (k k8s) pod(ns, name string, labels map[string]string) {
	k.t.Helper()
	k.do("POST", "/api/v1/namespaces/"+ns+"/pods", map[string]any{
		"metadata": map[string]any{"name": name, "labels": labels, "annotations": map[string]any{AnnotationInjected: "true"}},
		"spec": map[string]any{"containers": []any{map[string]any{"name": "app", "image": "app",
			"ports": []any{map[string]any{"name": "http", "containerPort": 8080}}}}}})
}

// status sets a pod's IP and Ready condition, as its kubelet would.
func (k k8s) status(ns, name, ip string, ready bool) {
	k.t.Helper()
	cond := "False"
	if ready {
		cond = "True"
	}
	k.edit("/api/v1/namespaces/"+ns+"/pods/"+name+"/status", func(o map[string]any) {
		o["status"] = map[string]any{"phase": "Running", "podIP": ip, "podIPs": []any{map[string]any{"ip": ip}},
			"conditions": []any{map[string]any{"type": "Ready", "status": cond}}}
	})
}

// edit changes an object: read, change, PUT back (kube.Client sends
// application/json, which PATCH does not take).
func (k k8s) edit(path string, change func(obj map[string]any)) {
	k.t.Helper()
	for range 5 {
		obj := k.do("GET", path, nil)
		change(obj)
		err := k.c.Do(context.Background(), "PUT", path, obj, nil)
		if kube.IsConflict(err) {
			continue
		}
		if err != nil {
			k.t.Fatalf("PUT %s: %v", path, err)
		}
		return
	}
	k.t.Fatalf("PUT %s: kept conflicting", path)
}

func field(obj map[string]any, path ...string) map[string]any {
	for _, p := range path {
		next, _ := obj[p].(map[string]any)
		if next == nil {
			next = map[string]any{}
			obj[p] = next
		}
		obj = next
	}
	return obj
}

// startController runs a controller until the test ends (or stop is
// called) and returns once it has synced.
func startController(t *testing.T, c *kube.Client, st store.Store, system string, workers int) (stop func()) {
	t.Helper()
	return startControllerWith(t, &Controller{Client: c, Store: st, Zone: "zone-k", SystemNamespace: system, Workers: workers})
}

func startControllerWith(t *testing.T, ctl *Controller) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	synced := make(chan struct{})
	ctl.Log, ctl.Synced = zaptest.NewLogger(t), func() { close(synced) }
	done := make(chan error, 1)
	go func() { done <- ctl.Run(ctx) }()
	halt := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller: %v", err)
		}
	}
	select {
	case <-synced:
	case err := <-done:
		t.Fatalf("controller ended before it synced: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("controller did not sync in 30 s")
	}
	var once sync.Once
	t.Cleanup(func() { once.Do(halt) })
	return func() { once.Do(halt) }
}

func newStore(t *testing.T, c *kube.Client, ns string) *counting {
	t.Helper()
	s, err := kubestore.New(kubestore.Options{Client: c, Namespace: ns, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := s.Get(ctx, api.Key{Type: "Mesh", Name: "default"}); errors.Is(err, store.ErrNotFound) {
		if _, err := s.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}); err != nil && !errors.Is(err, store.ErrAlreadyExists) {
			t.Fatal(err)
		}
	}
	return &counting{Store: s}
}

// dataplane returns the stored Dataplane, or nil.
func dataplane(t *testing.T, st store.Store, name string) *api.Dataplane {
	t.Helper()
	r, err := st.Get(context.Background(), api.Key{Type: "Dataplane", Mesh: "default", Name: name})
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return r.(*api.Dataplane)
}

// describe is a Dataplane in one line: address, then port:service:ready of
// each inbound.
func describe(dp *api.Dataplane) string {
	if dp == nil {
		return "none"
	}
	s := dp.Networking.Address
	for _, in := range dp.Networking.Inbound {
		s += fmt.Sprintf(" %d:%s:%v", in.Port, in.Tags[api.TagService], in.Ready())
	}
	return s
}

func waitDataplane(t *testing.T, st store.Store, name, want string) {
	t.Helper()
	testutil.Eventually(t, 20*time.Second, "dataplane "+name+" to be "+want, func() error {
		if got := describe(dataplane(t, st, name)); got != want {
			return fmt.Errorf("it is %s", got)
		}
		return nil
	})
}

// TestController drives the controller through what a cluster does to
// pods: namespace injection, pod IP and readiness from the kubelet,
// Service changes, opt-out, deletion, and a restart that finds a pod gone
// while it was away and writes nothing for those unchanged.
func TestController(t *testing.T) {
	_, c := rig(t)
	k := k8s{t, c}
	k.namespace("ctl-system", nil)
	k.namespace("shop", map[string]string{LabelSidecarInjection: "enabled"})
	k.namespace("other", nil) // not injected
	st := newStore(t, c, "ctl-system")

	k.service("shop", "web", map[string]string{"app": "web"}, map[string]any{"name": "http", "port": 80, "targetPort": "http"})
	k.pod("shop", "web-1", map[string]string{"app": "web"})
	k.pod("shop", "web-2", map[string]string{"app": "web"})
	k.pod("other", "web-1", map[string]string{"app": "web"})
	k.status("shop", "web-2", "10.1.0.2", true)
	k.status("other", "web-1", "10.1.1.1", true)
	stop := startController(t, c, st, "ctl-system", 4)

	// A pod already running at start; one with no IP has no Dataplane.
	web := "web_shop_svc_80"
	waitDataplane(t, st, "web-2.shop", "10.1.0.2 8080:"+web+":true")
	if dp := dataplane(t, st, "web-1.shop"); dp != nil {
		t.Fatalf("a pod without an IP has a dataplane: %s", describe(dp))
	}
	dp := dataplane(t, st, "web-2.shop")
	if dp.Labels[LabelManagedBy] != ManagedByController || dp.Networking.Inbound[0].Tags[api.TagZone] != "zone-k" || dp.Networking.Inbound[0].Tags["app"] != "web" {
		t.Fatalf("dataplane web-2.shop: %+v", dp)
	}

	// The kubelet reports an IP, then readiness.
	k.status("shop", "web-1", "10.1.0.1", false)
	waitDataplane(t, st, "web-1.shop", "10.1.0.1 8080:"+web+":false")
	k.status("shop", "web-1", "10.1.0.1", true)
	waitDataplane(t, st, "web-1.shop", "10.1.0.1 8080:"+web+":true")

	// A Service's change re-translates the pods it selects.
	k.service("shop", "admin", map[string]string{"app": "web"}, map[string]any{"port": 9000})
	waitDataplane(t, st, "web-1.shop", "10.1.0.1 9000:admin_shop_svc_9000:true 8080:"+web+":true")
	k.edit("/api/v1/namespaces/shop/services/admin", func(o map[string]any) { field(o, "spec")["selector"] = map[string]any{"app": "none"} })
	waitDataplane(t, st, "web-1.shop", "10.1.0.1 8080:"+web+":true")

	// Opted out, and back.
	k.edit("/api/v1/namespaces/shop/pods/web-1", func(o map[string]any) {
		field(o, "metadata", "annotations")[LabelSidecarInjection] = "disabled"
	})
	waitDataplane(t, st, "web-1.shop", "none")
	k.edit("/api/v1/namespaces/shop/pods/web-1", func(o map[string]any) {
		delete(field(o, "metadata", "annotations"), LabelSidecarInjection)
	})
	waitDataplane(t, st, "web-1.shop", "10.1.0.1 8080:"+web+":true")

	// A namespace's label decides for all its pods.
	k.edit("/api/v1/namespaces/other", func(o map[string]any) {
		field(o, "metadata", "labels")[LabelSidecarInjection] = "enabled"
	})
	waitDataplane(t, st, "web-1.other", "10.1.1.1 49151:web-1_other_svc:false")
	k.edit("/api/v1/namespaces/other", func(o map[string]any) { delete(field(o, "metadata", "labels"), LabelSidecarInjection) })
	waitDataplane(t, st, "web-1.other", "none")

	// A pod made again under its name (a StatefulSet's) has its Dataplane
	// say its uid, which the token of the pod before does not carry.
	uidOf := func(name string) string {
		uid, _ := field(k.do("GET", "/api/v1/namespaces/shop/pods/"+name, nil), "metadata")["uid"].(string)
		if uid == "" {
			t.Fatalf("pod %s has no uid", name)
		}
		return uid
	}
	before := uidOf("web-2")
	if got := dataplane(t, st, "web-2.shop").Labels[LabelPodUID]; got != before {
		t.Fatalf("dataplane web-2.shop is labelled pod uid %q; want %q", got, before)
	}
	k.do("DELETE", "/api/v1/namespaces/shop/pods/web-2?gracePeriodSeconds=0", nil)
	k.pod("shop", "web-2", map[string]string{"app": "web"})
	k.status("shop", "web-2", "10.1.0.2", true)
	after := uidOf("web-2")
	testutil.Eventually(t, 20*time.Second, "web-2.shop to be labelled with its new pod's uid", func() error {
		if dp := dataplane(t, st, "web-2.shop"); dp == nil || dp.Labels[LabelPodUID] != after {
			return fmt.Errorf("it is %s (the old pod's was %s, the new one's %s)", describe(dp), before, after)
		}
		return nil
	})

	// A deleted pod loses its Dataplane.
	k.do("DELETE", "/api/v1/namespaces/shop/pods/web-2?gracePeriodSeconds=0", nil)
	waitDataplane(t, st, "web-2.shop", "none")

	// Stopped, a pod goes; restarted, the controller deletes its Dataplane
	// and writes nothing for the pods that did not change. One worker
	// takes pods in order: when the pod changed last is written, the
	// start-up resync is done.
	// Another zone's ZoneIngress, synced here through the global with the
	// labels its own zone's controller gave it, is not this one's.
	stop()
	other := &api.ZoneIngress{Meta: api.Meta{Type: "ZoneIngress", Name: "ingress-0.ctl-system", Labels: map[string]string{
		LabelManagedBy: ManagedByController, LabelPodUID: "3f9c7e0a-0000-4000-8000-000000000001", api.LabelOrigin: api.OriginGlobal}},
		Zone: "zone-a", Networking: api.ZoneIngressNetworking{Address: "10.9.0.1", Port: 10001, AdvertisedAddress: "203.0.113.9", AdvertisedPort: 30001}}
	if _, err := st.Create(context.Background(), other); err != nil {
		t.Fatal(err)
	}
	k.do("DELETE", "/api/v1/namespaces/shop/pods/web-1?gracePeriodSeconds=0", nil)
	k.pod("shop", "web-3", map[string]string{"app": "web"})
	k.pod("shop", "web-4", map[string]string{"app": "web"})
	k.status("shop", "web-3", "10.1.0.3", true)
	st.writes.Store(0)
	startController(t, c, st, "ctl-system", 1)
	waitDataplane(t, st, "web-1.shop", "none")
	waitDataplane(t, st, "web-3.shop", "10.1.0.3 8080:"+web+":true")
	k.status("shop", "web-4", "10.1.0.4", true)
	waitDataplane(t, st, "web-4.shop", "10.1.0.4 8080:"+web+":true")
	if n := st.writes.Load(); n != 3 {
		t.Fatalf("%d writes after a restart; want 3 (web-1 deleted, web-3 and web-4 created)", n)
	}
	if _, err := st.Get(context.Background(), api.KeyOf(other)); err != nil {
		t.Fatalf("zone-a's ZoneIngress, synced from the global: %v", err)
	}
}

// TestControllerIngress: an ingress pod of the system namespace becomes a
// ZoneIngress advertised at its Service's NodePort on a node's address, then
// at its load balancer; the same pod elsewhere does not.
func TestControllerIngress(t *testing.T) {
	_, c := rig(t)
	k := k8s{t, c}
	k.namespace("ing-system", nil)
	k.namespace("ing-elsewhere", map[string]string{LabelSidecarInjection: "enabled"})
	st := newStore(t, c, "ing-system")
	k.do("POST", "/api/v1/nodes", map[string]any{"metadata": map[string]any{"name": "node-ing"}})
	t.Cleanup(func() { c.Do(context.Background(), "DELETE", "/api/v1/nodes/node-ing", nil, nil) })
	k.edit("/api/v1/nodes/node-ing/status", func(o map[string]any) {
		field(o, "status")["addresses"] = []any{map[string]any{"type": "InternalIP", "address": "192.0.2.10"}}
	})
	labels := map[string]string{LabelIngress: "enabled", "app": "ingress"}
	for _, ns := range []string{"ing-system", "ing-elsewhere"} {
		port := map[string]any{"port": 10001, "targetPort": 10001}
		if ns == "ing-system" {
			port["nodePort"] = 30101
		}
		k.do("POST", "/api/v1/namespaces/"+ns+"/services", map[string]any{
			"metadata": map[string]any{"name": "ingress"},
			"spec":     map[string]any{"type": "NodePort", "selector": map[string]any{"app": "ingress"}, "ports": []any{port}}})
		k.pod(ns, "ingress-1", labels)
		k.status(ns, "ingress-1", "10.2.0.1", true)
	}
	startController(t, c, st, "ing-system", 2)

	get := func() string {
		r, err := st.Get(context.Background(), api.Key{Type: "ZoneIngress", Name: "ingress-1.ing-system"})
		if errors.Is(err, store.ErrNotFound) {
			return "none"
		}
		if err != nil {
			t.Fatal(err)
		}
		i := r.(*api.ZoneIngress)
		return fmt.Sprintf("%s %s:%d %s:%d", i.Zone, i.Networking.Address, i.Networking.Port, i.Networking.AdvertisedAddress, i.Networking.AdvertisedPort)
	}
	wait := func(want string) {
		t.Helper()
		testutil.Eventually(t, 20*time.Second, "zone ingress "+want, func() error {
			if got := get(); got != want {
				return fmt.Errorf("it is %s", got)
			}
			return nil
		})
	}
	wait("zone-k 10.2.0.1:10001 192.0.2.10:30101")
	waitDataplane(t, st, "ingress-1.ing-elsewhere", "10.2.0.1 10001:ingress_ing-elsewhere_svc_10001:true")
	if _, err := st.Get(context.Background(), api.Key{Type: "ZoneIngress", Name: "ingress-1.ing-elsewhere"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a pod outside the system namespace is a zone ingress: %v", err)
	}

	// The node's external address wins; then the load balancer's.
	k.edit("/api/v1/nodes/node-ing/status", func(o map[string]any) {
		field(o, "status")["addresses"] = []any{map[string]any{"type": "InternalIP", "address": "192.0.2.10"}, map[string]any{"type": "ExternalIP", "address": "198.51.100.7"}}
	})
	wait("zone-k 10.2.0.1:10001 198.51.100.7:30101")
	k.edit("/api/v1/namespaces/ing-system/services/ingress", func(o map[string]any) { field(o, "spec")["type"] = "LoadBalancer" })
	k.edit("/api/v1/namespaces/ing-system/services/ingress/status", func(o map[string]any) {
		field(o, "status", "loadBalancer")["ingress"] = []any{map[string]any{"ip": "203.0.113.9"}}
	})
	wait("zone-k 10.2.0.1:10001 203.0.113.9:10001")

	// The zone's offers survive the controller's updates.
	r, err := st.Get(context.Background(), api.Key{Type: "ZoneIngress", Name: "ingress-1.ing-system"})
	if err != nil {
		t.Fatal(err)
	}
	ing := r.(*api.ZoneIngress)
	ing.AvailableServices = []api.AvailableService{{Mesh: "default", Instances: 1, Tags: map[string]string{api.TagService: "web", api.TagZone: "zone-k"}}}
	if _, err := st.Update(context.Background(), ing); err != nil {
		t.Fatal(err)
	}
	k.status("ing-system", "ingress-1", "10.2.0.2", true)
	wait("zone-k 10.2.0.2:10001 203.0.113.9:10001")
	r, _ = st.Get(context.Background(), api.Key{Type: "ZoneIngress", Name: "ingress-1.ing-system"})
	if n := len(r.(*api.ZoneIngress).AvailableServices); n != 1 {
		t.Fatalf("the zone's offers were dropped: %d left", n)
	}
	k.do("DELETE", "/api/v1/namespaces/ing-system/pods/ingress-1?gracePeriodSeconds=0", nil)
	wait("none")
}

// TestControllerResync: what someone else deletes or changes of the
// controller's is restored at the next resync.
func TestControllerResync(t *testing.T) {
	_, c := rig(t)
	k := k8s{t, c}
	k.namespace("rs-system", nil)
	k.namespace("rs-app", map[string]string{LabelSidecarInjection: "enabled"})
	st := newStore(t, c, "rs-system")
	k.service("rs-app", "web", map[string]string{"app": "web"}, map[string]any{"port": 80})
	k.pod("rs-app", "web-1", map[string]string{"app": "web"})
	k.status("rs-app", "web-1", "10.3.0.1", true)
	startControllerWith(t, &Controller{Client: c, Store: st, Zone: "zone-k", SystemNamespace: "rs-system", Resync: 200 * time.Millisecond})
	want := "10.3.0.1 80:web_rs-app_svc_80:true"
	waitDataplane(t, st, "web-1.rs-app", want)

	ctx := context.Background()
	dp := dataplane(t, st, "web-1.rs-app")
	dp.Networking.Address = "10.9.9.9"
	if _, err := st.Store.Update(ctx, dp); err != nil {
		t.Fatal(err)
	}
	waitDataplane(t, st, "web-1.rs-app", want)
	if err := st.Store.Delete(ctx, api.KeyOf(dp), 0); err != nil {
		t.Fatal(err)
	}
	waitDataplane(t, st, "web-1.rs-app", want)
}

// podLists is how many times the API server has listed pods.
func podLists(t *testing.T, c *kube.Client) int {
	t.Helper()
	body, err := c.Stream(context.Background(), "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	b, err := io.ReadAll(body)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "apiserver_request_total{") && strings.Contains(line, `resource="pods"`) && strings.Contains(line, `verb="LIST"`) {
			v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			if err != nil {
				t.Fatalf("metrics line %q: %v", line, err)
			}
			n += int(v)
		}
	}
	return n
}

// TestControllerWarmRestart: a term that ends and a next that starts soon
// after, as when the leader's lease renewals stall under load and it wins
// the lease again: the next run resumes its watches from the first's cache,
// listing no pod, and still follows what changed in between.
func TestControllerWarmRestart(t *testing.T) {
	_, c := rig(t)
	k := k8s{t, c}
	k.namespace("warm-system", nil)
	k.namespace("warm", map[string]string{LabelSidecarInjection: "enabled"})
	st := newStore(t, c, "warm-system")
	k.service("warm", "web", map[string]string{"app": "web"}, map[string]any{"name": "http", "port": 80, "targetPort": "http"})
	k.pod("warm", "web-1", map[string]string{"app": "web"})
	k.status("warm", "web-1", "10.2.0.1", true)
	ctl := &Controller{Client: c, Store: st, Zone: "zone-k", SystemNamespace: "warm-system"}
	stop := startControllerWith(t, ctl)
	waitDataplane(t, st, "web-1.warm", "10.2.0.1 8080:web_warm_svc_80:true")
	stop()

	// Between the terms: web-1 turns not ready, web-2 comes.
	k.status("warm", "web-1", "10.2.0.1", false)
	k.pod("warm", "web-2", map[string]string{"app": "web"})
	k.status("warm", "web-2", "10.2.0.2", true)
	lists := podLists(t, c)
	startControllerWith(t, ctl)
	waitDataplane(t, st, "web-1.warm", "10.2.0.1 8080:web_warm_svc_80:false")
	waitDataplane(t, st, "web-2.warm", "10.2.0.2 8080:web_warm_svc_80:true")
	if n := podLists(t, c) - lists; n != 0 {
		t.Fatalf("the second run listed pods %d times; want it to resume from the first's cache", n)
	}
}
