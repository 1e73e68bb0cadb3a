package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/api/crd"
	"github.com/ursamesh/ursa/pkg/k8stest"
	"github.com/ursamesh/ursa/pkg/kube"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/storetest"
	"github.com/ursamesh/ursa/pkg/testutil"
)

var cluster k8stest.Shared

func TestMain(m *testing.M) {
	// The garbage collector deletes what a deleted Mesh owned.
	cluster.Options.ControllerManager = true
	os.Exit(cluster.Main(m))
}

var namespaces atomic.Int64

// installed returns the shared rig with deploy/crds applied and every CRD
// Established (once per test binary: a new CRD's first requests are slow).
func installed(t testing.TB) *k8stest.Rig {
	t.Helper()
	rig := cluster.Get(t)
	if err := rig.InstallCRDs("../../../deploy/crds"); err != nil {
		t.Fatal(err)
	}
	warmOnce.Do(func() { warm(t, rig) })
	return rig
}

var warmOnce sync.Once

// warm waits until the API server's watch cache of every kind holds the
// present: the cache of a custom resource starts on its first request, at
// the revision of that moment, and answers a watch from any earlier
// revision 410 Gone ("too old resource version"), which Watch turns into
// ErrCompacted as it must. A control plane meets this too (after an API
// server restart, say) and lists again; the conformance cases do not.
func warm(t testing.TB, rig *k8stest.Rig) {
	s, err := New(Options{Client: client(t, rig), Namespace: "default"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, d := range kinds() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			testutil.Eventually(t, 30*time.Second, d.Type+"'s watch cache", func() error {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				_, rev, err := s.listObjects(ctx, d, nil)
				if err != nil {
					return err
				}
				_, err = s.watchOnce(ctx, d, rev, func(item) bool { return true })
				if errors.Is(err, store.ErrCompacted) {
					return err
				}
				return nil
			})
		}()
	}
	wg.Wait()
}

// client returns a client of the rig built from its kubeconfig file, as a
// control plane builds its own.
func client(t testing.TB, rig *k8stest.Rig) *kube.Client {
	t.Helper()
	cfg, err := kube.LoadKubeconfig(rig.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kube.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newStore returns a store in a namespace of its own, with no Mesh in the
// cluster (Mesh is cluster-scoped: the tests of this binary take turns).
func newStore(t testing.TB) *Store {
	t.Helper()
	rig := installed(t)
	s, err := New(Options{Client: client(t, rig), Namespace: "default", Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	mesh, _ := api.Lookup("Mesh")
	if err := s.do(ctx, http.MethodDelete, s.collection(mesh), nil, nil); err != nil {
		t.Fatalf("delete every mesh: %v", err)
	}
	ns := fmt.Sprintf("kstore-%d", namespaces.Add(1))
	nsObj := crd.Object{"apiVersion": "v1", "kind": "Namespace", "metadata": crd.Object{"name": ns}}
	if err := s.do(ctx, http.MethodPost, "/api/v1/namespaces", nsObj, nil); err != nil {
		t.Fatalf("create namespace %s: %v", ns, err)
	}
	t.Cleanup(func() { _ = s.do(context.Background(), http.MethodDelete, "/api/v1/namespaces/"+ns, nil, nil) })
	s.ns = ns
	return s
}

// caps are the Kubernetes store's capabilities; the package doc says why
// each is missing.
var caps = storetest.Capabilities{DenseRevisions: false, OrderedAcrossTypes: false, NamesPerMesh: false, Transactions: false}

func TestConformance(t *testing.T) {
	storetest.RunWith(t, func(t *testing.T) store.Store { return newStore(t) }, caps)
}

// TestInsightIsOneWrite: an insight's body (status) survives its create
// and updates, and each write is one watch event (no status subresource:
// a create does not drop status and need a second write).
func TestInsightIsOneWrite(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	storetest.MustCreate(t, s, storetest.Mesh("default"))
	start, err := s.List(ctx, store.ListOptions{Type: "Mesh"})
	if err != nil {
		t.Fatal(err)
	}
	in := &api.ServiceInsight{Meta: api.Meta{Type: "ServiceInsight", Mesh: "default", Name: "billing"}}
	in.Service, in.Zone = "billing", "zone-1"
	got, err := s.Create(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	if !api.SameContent(got, in) {
		t.Fatalf("created %s, stored %s", api.Content(in), api.Content(got))
	}
	in.Zone, in.Version = "zone-2", 1
	if got, err = s.Update(ctx, in); err != nil || got.GetMeta().Version != 2 {
		t.Fatalf("update: %v, %v", got, err)
	}
	if back, err := s.Get(ctx, api.KeyOf(in)); err != nil || !api.SameContent(back, in) {
		t.Fatalf("get after update = %s, %v", api.Content(back), err)
	}
	other := &api.ServiceInsight{Meta: api.Meta{Type: "ServiceInsight", Mesh: "default", Name: "web"}}
	other.Service = "web"
	storetest.MustCreate(t, s, other)
	// One kind: its events come in order. A second write per insight
	// would come between these.
	events, err := storetest.Collect(s, start.Revision, 3, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"create ServiceInsight/default/billing zone-1", "update ServiceInsight/default/billing zone-2", "create ServiceInsight/default/web "}
	for i, e := range events {
		if got := fmt.Sprintf("%s %s %s", e.Op, api.KeyOf(e.Resource), e.Resource.(*api.ServiceInsight).Zone); got != want[i] {
			t.Fatalf("event %d = %q, want %q", i, got, want[i])
		}
	}
}

// TestApplyPartialFailure: a write that fails after others were made says
// how many were.
func TestApplyPartialFailure(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	storetest.MustCreate(t, s, storetest.Mesh("default"))
	// A route whose object the API server refuses (weight below the
	// schema's minimum) comes after one it takes.
	bad := storetest.Route("default", "bad", 1, nil)
	bad.Spec.Split[0].Weight = -1
	n, err := s.Apply(ctx, []api.Resource{storetest.Route("default", "good", 1, nil), bad}, nil)
	var pe *PartialError
	if !errors.As(err, &pe) || n != 1 || pe.Done != 1 || pe.Planned != 2 {
		t.Fatalf("apply = %d, %v; want a PartialError after 1 of 2", n, err)
	}
	if _, err := s.Get(ctx, api.Key{Type: "TrafficRoute", Mesh: "default", Name: "good"}); err != nil {
		t.Fatalf("the write made before the failure: %v", err)
	}
}

// TestWatchTooOld: a revision older than the API server's
// watch window is ErrCompacted.
func TestWatchTooOld(t *testing.T) {
	s := newStore(t)
	storetest.MustCreate(t, s, storetest.Mesh("default"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := s.Watch(ctx, 1, func(store.Event) error { return nil })
	if !errors.Is(err, store.ErrCompacted) {
		t.Fatalf("watch from revision 1 = %v, want ErrCompacted", err)
	}
}

// TestMeshOwnsItsContents: deleting a Mesh's object behind the store's
// back (`kubectl delete mesh`) deletes what is in it, through Kubernetes'
// garbage collector, whether written by Create or Apply.
func TestMeshOwnsItsContents(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	storetest.MustCreate(t, s, storetest.Mesh("m"))
	storetest.MustCreate(t, s, storetest.Route("m", "created", 1, nil))
	if _, err := s.Apply(ctx, []api.Resource{storetest.Mesh("n"), storetest.Route("n", "applied", 1, nil)}, nil); err != nil {
		t.Fatal(err)
	}
	upd := storetest.Route("m", "created", 2, nil)
	upd.Version = 1
	if _, err := s.Update(ctx, upd); err != nil { // an update keeps the owner
		t.Fatal(err)
	}
	for _, k := range []api.Key{{Type: "TrafficRoute", Mesh: "m", Name: "created"}, {Type: "TrafficRoute", Mesh: "n", Name: "applied"}} {
		o, ok, err := s.read(ctx, k)
		md, _ := o.obj["metadata"].(map[string]any)
		if refs, _ := md["ownerReferences"].([]any); err != nil || !ok || len(refs) != 1 {
			t.Fatalf("%s: owners %v (%v)", k, md["ownerReferences"], err)
		}
	}
	mesh, _ := api.Lookup("Mesh")
	for _, m := range []string{"m", "n"} {
		if err := s.do(ctx, http.MethodDelete, s.collection(mesh)+"/"+m, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, 90*time.Second, "routes of deleted meshes gone", func() error {
		res, err := s.List(ctx, store.ListOptions{Type: "TrafficRoute"})
		if err != nil {
			return err
		}
		if len(res.Items) != 0 {
			return fmt.Errorf("%d routes left", len(res.Items))
		}
		return nil
	})
}

// requests sums the API server's apiserver_request_total of one resource
// and verb (GET: one object; LIST) from its /metrics.
func requests(t *testing.T, s *Store, resource, verb string) int {
	t.Helper()
	body, err := s.client.Stream(context.Background(), "/metrics")
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
		if !strings.HasPrefix(line, "apiserver_request_total{") || !strings.Contains(line, `resource="`+resource+`"`) || !strings.Contains(line, `verb="`+verb+`"`) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		n += int(v)
	}
	return n
}

// TestApplyListsOnce: Apply reads the puts of one type with one List, not
// one GET each (KDS re-applies a zone's whole global state every round).
func TestApplyListsOnce(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	storetest.MustCreate(t, s, storetest.Mesh("default"))
	var puts []api.Resource
	for i := range 30 {
		puts = append(puts, storetest.Route("default", fmt.Sprintf("r%02d", i), 1, map[string]string{api.LabelOrigin: "global"}))
	}
	// The API server's counters are cluster-wide: a controller, or another
	// package's test on the same API server, may GET or LIST trafficroutes
	// in the same window (a CI run once saw 20 GETs and 3 LISTs while
	// creating). So one re-apply of three must be clean: no GET, one LIST.
	apply := func(round, want int) (gets, lists int) {
		gets, lists = requests(t, s, "trafficroutes", "GET"), requests(t, s, "trafficroutes", "LIST")
		if n, err := s.Apply(ctx, puts, nil); err != nil || n != want {
			t.Fatalf("round %d: apply = %d, %v; want %d", round, n, err, want)
		}
		gets, lists = requests(t, s, "trafficroutes", "GET")-gets, requests(t, s, "trafficroutes", "LIST")-lists
		t.Logf("round %d: %d GETs, %d LISTs of trafficroutes for 30 puts", round, gets, lists)
		return gets, lists
	}
	apply(0, 30)
	for round := 1; ; round++ {
		if gets, lists := apply(round, 0); gets == 0 && lists == 1 {
			return
		}
		if round == 3 {
			t.Fatalf("no re-apply of three read trafficroutes with one LIST and no GET")
		}
	}
}
