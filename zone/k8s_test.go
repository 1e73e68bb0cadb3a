package zone

import (
	"context"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/api/crd"
	"github.com/ursamesh/ursa/pkg/kube"
	"github.com/ursamesh/ursa/pkg/leader"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
	k8szone "github.com/ursamesh/ursa/zone/kubernetes"
)

// TestEnvironmentSettings: the kubernetes settings are refused, naming the
// key, where they cannot work, and accepted where they can.
func TestEnvironmentSettings(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(c *Config)
		want string // "" when valid
	}{
		{"universal by default", func(c *Config) {}, ""},
		{"kubernetes with a kubeconfig", func(c *Config) { c.Environment, c.Kubeconfig = "kubernetes", "/k" }, ""},
		{"kubernetes in cluster, a namespace", func(c *Config) { c.Environment, c.Kubernetes.SystemNamespace = "kubernetes", "mesh-cp" }, ""},
		{"unknown environment", func(c *Config) { c.Environment = "k8s" }, `environment: "k8s" is neither universal nor kubernetes`},
		{"a store on kubernetes", func(c *Config) { c.Environment, c.Store = "kubernetes", "postgres://db/x" }, "store: \"postgres://db/x\" with environment kubernetes"},
		{"a kubeconfig on universal", func(c *Config) { c.Kubeconfig = "/k" }, "kubeconfig: only with environment kubernetes"},
		{"a namespace on universal", func(c *Config) { c.Kubernetes.SystemNamespace = "x" }, "kubernetes.systemNamespace: only with environment kubernetes"},
		{"a bad namespace", func(c *Config) { c.Environment, c.Kubernetes.SystemNamespace = "kubernetes", "Ursa_System" }, "kubernetes.systemNamespace: \"Ursa_System\" is not a DNS-1123 label"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Zone = "zone-1"
			tc.set(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestElection: a universal zone elects through its store with the long
// lease; a zone on Kubernetes through coordination Leases in its namespace,
// short enough for a handover under 5 s. Every leader-only job runs under
// one lease, restarted on its own when it fails.
func TestElection(t *testing.T) {
	st := store.NewMemory(0)
	el := newElection(st, nil, "a")
	if _, ok := el.leases.(leader.StoreLeases); !ok || el.duration != 15*time.Second || el.instance != "a" {
		t.Fatalf("universal: %+v", el)
	}
	el = newElection(st, &kubeEnv{namespace: "ursa-system"}, "b")
	kl, ok := el.leases.(leader.KubeLeases)
	if !ok || kl.Namespace != "ursa-system" || el.duration > 3*time.Second || el.instance != "b" {
		t.Fatalf("kubernetes: %+v", el)
	}

	el = newElection(st, nil, "c")
	el.duration = time.Second
	var calls atomic.Int64
	el.leaderOnly("fails", func(ctx context.Context) error {
		calls.Add(1)
		return errors.New("boom")
	})
	ran := make(chan struct{})
	el.leaderOnly("steady", func(ctx context.Context) error {
		close(ran)
		<-ctx.Done()
		return nil
	})
	name, c := el.component(zaptest.NewLogger(t))
	if name != "leader only: fails, steady" {
		t.Fatalf("component name %q", name)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Start(ctx) }()
	<-ran
	testutil.Until(t, 20*time.Second, "the failing job restarted", func() bool { return calls.Load() >= 2 })
	if l, err := st.Get(ctx, api.Key{Type: "Lease", Name: LeaderLease}); err != nil || l.(*api.Lease).Holder != "c" {
		t.Fatalf("lease %s: %v %v", LeaderLease, l, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestOfflineRemovalSparesPods: a pod's Dataplane, which the pod
// controller keeps as long as the pod lives, is not removed when its proxy
// has been gone long; its insight is.
func TestOfflineRemovalSparesPods(t *testing.T) {
	ctx := context.Background()
	st, mirror := newZoneStore(t)
	pod := dp("default", "web-1.shop", "web", 0)
	pod.Labels = map[string]string{k8szone.LabelManagedBy: k8szone.ManagedByController}
	vm := dp("default", "vm-1", "web", 0)
	if _, err := st.Apply(ctx, []api.Resource{pod, vm}, nil); err != nil {
		t.Fatal(err)
	}
	gone := store.Now() // not before either Dataplane's creation
	for _, name := range []string{"web-1.shop", "vm-1"} {
		in := &api.DataplaneInsight{Meta: api.Meta{Type: "DataplaneInsight", Mesh: "default", Name: name},
			ProxyStatus: api.ProxyStatus{Instance: "cp-a", ConnectedSince: gone, DisconnectedAt: gone}}
		if _, err := st.Apply(ctx, []api.Resource{in}, nil); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Until(t, 5*time.Second, "mirror", func() bool {
		v, _ := mirror.Current()
		ins, _ := store.All[*api.DataplaneInsight](v)
		return len(ins) == 2
	})
	view, _ := mirror.Current()
	if err := removeOfflineOnce(ctx, st, view, gone.Add(2*time.Hour), time.Hour, zaptest.NewLogger(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(ctx, api.KeyOf(pod)); err != nil {
		t.Fatalf("the pod's Dataplane: %v", err)
	}
	if _, err := st.Get(ctx, api.KeyOf(vm)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the VM's Dataplane: %v, want it removed", err)
	}
	for _, name := range []string{"web-1.shop", "vm-1"} {
		if _, err := st.Get(ctx, api.Key{Type: "DataplaneInsight", Mesh: "default", Name: name}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("insight %s: %v, want it removed", name, err)
		}
	}
}

// fakeAPI is an API server that has namespace ursa-system, the ursa.io
// resources listed in resources (none: the group is not served), and
// answers /readyz while up.
func fakeAPI(t *testing.T, resources ...string) (*httptest.Server, *kube.Client) {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/readyz":
			w.Write([]byte("ok"))
		case r.URL.Path == "/api/v1/namespaces/ursa-system":
			w.Write([]byte(`{"metadata":{"name":"ursa-system"}}`))
		case r.URL.Path == "/apis/ursa.io/v1alpha1" && len(resources) > 0:
			var items []string
			for _, name := range resources {
				items = append(items, `{"name":"`+name+`"}`)
			}
			w.Write([]byte(`{"resources":[` + strings.Join(items, ",") + `]}`))
		default:
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"kind":"Status","reason":"NotFound","message":"not found"}`))
		}
	}))
	t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	c, err := kube.New(&kube.Config{Server: srv.URL, CAPEM: ca, Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	return srv, c
}

// TestCheckCluster: a missing namespace or missing CRDs stop the start with
// what to run.
func TestCheckCluster(t *testing.T) {
	ctx := context.Background()
	_, c := fakeAPI(t)
	if err := checkCluster(ctx, c, "other"); err == nil || !strings.Contains(err.Error(), `namespace "other" does not exist (kubectl create namespace other`) {
		t.Fatalf("missing namespace: %v", err)
	}
	if err := checkCluster(ctx, c, "ursa-system"); err == nil || !strings.Contains(err.Error(), "CRDs are not installed") || !strings.Contains(err.Error(), "kubectl apply -f deploy/crds") {
		t.Fatalf("no CRDs: %v", err)
	}
	_, c = fakeAPI(t, "meshes", "dataplanes")
	if err := checkCluster(ctx, c, "ursa-system"); err == nil || !strings.Contains(err.Error(), "trafficroutes.ursa.io") || strings.Contains(err.Error(), "meshes.ursa.io") {
		t.Fatalf("some CRDs: %v", err)
	}
	var all []string
	for _, d := range api.Types() {
		if p, ok := crd.PlacementOf(d.Type); ok && p.Kind == crd.CustomResource {
			all = append(all, crd.NamesOf(d).Plural)
		}
	}
	_, c = fakeAPI(t, all...)
	if err := checkCluster(ctx, c, "ursa-system"); err != nil {
		t.Fatalf("every CRD: %v", err)
	}
}

// TestReadyFollowsAPIServer: the zone's readiness check fails once the API
// server stops answering.
func TestReadyFollowsAPIServer(t *testing.T) {
	srv, c := fakeAPI(t)
	ping := apiServerPing(c)
	if err := ping(context.Background()); err != nil {
		t.Fatalf("up: %v", err)
	}
	srv.Close()
	if err := ping(context.Background()); err == nil || !strings.Contains(err.Error(), "kubernetes API server") {
		t.Fatalf("down: %v", err)
	}
}
