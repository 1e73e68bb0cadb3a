package zone

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/k8stest"
	"github.com/ursamesh/ursa/pkg/kube"
	"github.com/ursamesh/ursa/pkg/leader"
	"github.com/ursamesh/ursa/pkg/store"
	kubestore "github.com/ursamesh/ursa/pkg/store/kubernetes"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// cluster is the package's Kubernetes rig, started by the first test that
// needs it.
var cluster k8stest.Shared

func TestMain(m *testing.M) { os.Exit(cluster.Main(m)) }

// kubeRig returns the rig with deploy/crds installed, a client of it and a
// namespace of the test's own.
func kubeRig(t *testing.T, ns string) *kube.Client {
	t.Helper()
	rig := cluster.Get(t)
	if err := rig.InstallCRDs("../deploy/crds"); err != nil {
		t.Fatal(err)
	}
	cfg, err := kube.LoadKubeconfig(rig.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kube.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Do(context.Background(), "POST", "/api/v1/namespaces", map[string]any{"metadata": map[string]any{"name": ns}}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Do(context.Background(), "DELETE", "/api/v1/namespaces/"+ns, nil, nil) })
	return c
}

// TestLeasesOnKubernetes: a zone on Kubernetes keeps api.Lease (the
// replicas' heartbeats) as coordination Leases beside the cluster's store:
// created, read, updated conditionally, applied as an upsert, listed
// without the leader elections' Leases, deleted, and followed by a mirror
// with the rest.
func TestLeasesOnKubernetes(t *testing.T) {
	c := kubeRig(t, "leases-system")
	ks, err := kubestore.New(kubestore.Options{Client: c, Namespace: "leases-system", Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	st := withLeases{Store: ks, client: c, ns: "leases-system"}
	ctx := context.Background()
	// A leader election's Lease in the same namespace is not the store's.
	el := &leader.Elector{Leases: leader.KubeLeases{Client: c, Namespace: "leases-system"}, Lease: "vip-allocator", Identity: "a", Duration: 3 * time.Second, Log: zaptest.NewLogger(t)}
	elCtx, stopEl := context.WithCancel(ctx)
	led := make(chan struct{})
	var once sync.Once
	go el.Start(elCtx, func(ctx context.Context) error { once.Do(func() { close(led) }); <-ctx.Done(); return nil })
	t.Cleanup(stopEl)
	<-led

	// The mirror of the types this store keeps on main today (not yet the
	// Secrets of mirroredTypes).
	m := store.NewMirror(st, []string{"Lease", "Mesh", "Dataplane"}, zaptest.NewLogger(t))
	mctx, stopMirror := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { m.Start(mctx) })
	t.Cleanup(func() { stopMirror(); wg.Wait() })
	<-m.Ready()
	now := time.Now().UTC().Truncate(time.Microsecond)
	hb := &api.Lease{Meta: api.Meta{Type: "Lease", Name: "heartbeat-1"}, Holder: "a", RenewTime: now, Duration: 15}
	got, err := st.Create(ctx, hb)
	if err != nil {
		t.Fatal(err)
	}
	l := got.(*api.Lease)
	if l.Holder != "a" || l.Duration != 15 || !l.RenewTime.Equal(now) || l.Version == 0 {
		t.Fatalf("created %+v", l)
	}
	if _, err := st.Create(ctx, hb); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("create again: %v", err)
	}
	stale := *l
	l.RenewTime = now.Add(time.Second)
	got, err = st.Update(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	if v := got.GetMeta().Version; v <= l.Version {
		t.Fatalf("updated to version %d from %d", v, l.Version)
	}
	if _, err := st.Update(ctx, &stale); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("update of a stale version: %v", err)
	}
	if _, err := st.Apply(ctx, []api.Resource{&api.Lease{Meta: api.Meta{Type: "Lease", Name: "heartbeat-1"}, Holder: "a", RenewTime: now.Add(2 * time.Second), Duration: 15}}, nil); err != nil {
		t.Fatalf("apply over it: %v", err)
	}
	if _, err := st.Apply(ctx, []api.Resource{&api.Lease{Meta: api.Meta{Type: "Lease", Name: "heartbeat-2"}, Holder: "b", RenewTime: now, Duration: 15}}, nil); err != nil {
		t.Fatalf("apply a new one: %v", err)
	}
	if _, err := st.Get(ctx, api.Key{Type: "Lease", Name: "vip-allocator"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the election's Lease through the store: %v", err)
	}
	res, err := st.List(ctx, store.ListOptions{Type: "Lease"})
	if err != nil || len(res.Items) != 2 {
		t.Fatalf("list: %v %v", res.Items, err)
	}
	testutil.Until(t, 10*time.Second, "the mirror to hold both heartbeats, heartbeat-1 renewed", func() bool {
		v, _ := m.Current()
		ls, _ := store.All[*api.Lease](v)
		return len(ls) == 2 && ls[0].Name == "heartbeat-1" && ls[0].RenewTime.Equal(now.Add(2*time.Second))
	})
	if err := st.Delete(ctx, api.Key{Type: "Lease", Name: "heartbeat-2"}, 0); err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(ctx, api.Key{Type: "Lease", Name: "vip-allocator"}, 0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete of the election's Lease through the store: %v", err)
	}
	cur, err := st.Get(ctx, api.Key{Type: "Lease", Name: "heartbeat-1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(ctx, api.KeyOf(cur), cur.GetMeta().Version+1); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("delete of another version: %v", err)
	}
	testutil.Until(t, 10*time.Second, "the mirror to drop heartbeat-2", func() bool {
		v, _ := m.Current()
		ls, _ := store.All[*api.Lease](v)
		return len(ls) == 1
	})
	// The rest of the store is followed as before.
	if _, err := st.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}); err != nil && !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatal(err)
	}
	waitMesh(t, m)
}
