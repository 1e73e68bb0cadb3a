package zone

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
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
// short enough for a handover under 5 s.
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
