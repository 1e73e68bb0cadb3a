package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/api/crd"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/storetest"
	"github.com/ursamesh/ursa/pkg/testutil"
)

func dataplane(mesh, name string) *api.Dataplane {
	return &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: mesh, Name: name},
		Networking: api.DataplaneNetworking{Address: "10.0.0.1", Inbound: []api.Inbound{{Port: 8080, Tags: map[string]string{api.TagService: "web"}}}}}
}

// objectAt reads the raw object at loc, nil when there is none.
func objectAt(t *testing.T, s *Store, typ string, loc location) crd.Object {
	t.Helper()
	d, _ := api.Lookup(typ)
	var obj crd.Object
	err := s.do(context.Background(), http.MethodGet, s.path(d, loc), nil, &obj)
	if err != nil && !errors.Is(err, store.ErrNotFound) && !isNotFound(err) {
		t.Fatal(err)
	}
	return obj
}

func isNotFound(err error) bool { return err != nil && errors.Is(conflict(err), store.ErrNotFound) }

// TestDataplanesInWorkloadNamespaces: the pod controller's Dataplane
// "<pod>.<namespace>" (and its insight) is object <pod> of that namespace
// when it exists, anything else is in the store's namespace; every method
// sees the resource's own name, lists and watches cover every namespace,
// and deleting the mesh takes them all.
func TestDataplanesInWorkloadNamespaces(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	wl := s.ns + "-apps"
	nsObj := crd.Object{"apiVersion": "v1", "kind": "Namespace", "metadata": crd.Object{"name": wl}}
	if err := s.do(ctx, http.MethodPost, "/api/v1/namespaces", nsObj, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.do(context.Background(), http.MethodDelete, "/api/v1/namespaces/"+wl, nil, nil) })
	storetest.MustCreate(t, s, storetest.Mesh("default"))
	start, err := s.List(ctx, store.ListOptions{Type: "Mesh"})
	if err != nil {
		t.Fatal(err)
	}
	inWl, vm, noNS := dataplane("default", "web-7f9.x."+wl), dataplane("default", "vm-1"), dataplane("default", "web-1.no-such-namespace")
	for _, dp := range []*api.Dataplane{inWl, vm, noNS} {
		if got := storetest.MustCreate(t, s, dp); got.GetMeta().Name != dp.Name {
			t.Fatalf("created %s as %s", dp.Name, got.GetMeta().Name)
		}
	}
	ins := &api.DataplaneInsight{Meta: api.Meta{Type: "DataplaneInsight", Mesh: "default", Name: inWl.Name}}
	ins.Connected = true
	storetest.MustCreate(t, s, ins)
	for _, c := range []struct {
		typ string
		loc location
	}{
		{"Dataplane", location{wl, "web-7f9.x"}},
		{"DataplaneInsight", location{wl, "web-7f9.x"}},
		{"Dataplane", location{s.ns, "vm-1"}},
		{"Dataplane", location{s.ns, "web-1.no-such-namespace"}},
	} {
		if objectAt(t, s, c.typ, c.loc) == nil {
			t.Errorf("no %s object %s/%s", c.typ, c.loc.ns, c.loc.name)
		}
	}
	if got, err := s.Get(ctx, api.KeyOf(inWl)); err != nil || !api.SameContent(got, inWl) {
		t.Fatalf("get %s = %v, %v", inWl.Name, got, err)
	}
	res, err := s.List(ctx, store.ListOptions{Type: "Dataplane", Mesh: "default"})
	if want := []string{"Dataplane/default/vm-1", "Dataplane/default/web-1.no-such-namespace", "Dataplane/default/" + inWl.Name}; err != nil || !slices.Equal(keys(res.Items), want) {
		t.Fatalf("list = %v, %v; want %v", keys(res.Items), err, want)
	}
	upd := dataplane("default", inWl.Name)
	upd.Networking.Address, upd.Version = "10.0.0.2", 1
	if got, err := s.Update(ctx, upd); err != nil || got.GetMeta().Version != 2 {
		t.Fatalf("update = %v, %v", got, err)
	}
	events, err := storetest.Collect(s, start.Revision, 5, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if n := e.Resource.GetMeta().Name; n != inWl.Name && n != vm.Name && n != noNS.Name {
			t.Fatalf("watch gave %s", api.KeyOf(e.Resource))
		}
	}
	if err := s.Delete(ctx, api.KeyOf(ins), 0); err != nil {
		t.Fatal(err)
	}
	if objectAt(t, s, "DataplaneInsight", location{wl, "web-7f9.x"}) != nil {
		t.Fatal("the deleted insight's object is still there")
	}
	if err := s.Delete(ctx, api.Key{Type: "Mesh", Name: "default"}, 0); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 30*time.Second, "dataplanes of the deleted mesh gone", func() error {
		res, err := s.List(ctx, store.ListOptions{Type: "Dataplane", Mesh: "default"})
		if err != nil || len(res.Items) > 0 {
			return fmt.Errorf("%v left (%v)", keys(res.Items), err)
		}
		return nil
	})
}

func keys(rs []api.Resource) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = api.KeyOf(r).String()
	}
	return out
}

// TestSyncedNamesDoNotCollide: what the global sent (label
// ursa.io/origin=global) is named per mesh, so that two meshes' routes "r1"
// both land in one namespace; every method sees "r1". A user's route keeps
// its plain name.
func TestSyncedNamesDoNotCollide(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	synced := func(mesh string, w int) *api.TrafficRoute {
		return storetest.Route(mesh, "r1", w, map[string]string{api.LabelOrigin: "global"})
	}
	if n, err := s.Apply(ctx, []api.Resource{storetest.Mesh("a"), storetest.Mesh("b"), synced("a", 1), synced("b", 2)}, nil); err != nil || n != 4 {
		t.Fatalf("apply = %d, %v", n, err)
	}
	if n, err := s.Apply(ctx, []api.Resource{synced("a", 1), synced("b", 2)}, nil); err != nil || n != 0 {
		t.Fatalf("apply again = %d, %v; want no change", n, err)
	}
	storetest.MustCreate(t, s, storetest.Route("a", "mine", 5, nil))
	if _, err := s.Create(ctx, storetest.Route("a", "r1", 5, nil)); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("a user's a/r1 next to the global's = %v, want ErrAlreadyExists", err)
	}
	if _, err := s.Create(ctx, synced("a", 5)); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("a second synced a/r1 = %v, want ErrAlreadyExists", err)
	}
	for _, m := range []string{"a", "b"} {
		obj := objectAt(t, s, "TrafficRoute", location{s.ns, syncedName(m, "r1")})
		ann, _ := obj["metadata"].(map[string]any)["annotations"].(map[string]any)
		if ann[crd.AnnotationName] != "r1" || obj["mesh"] != m {
			t.Fatalf("object of %s/r1 = %v", m, obj["metadata"])
		}
	}
	if objectAt(t, s, "TrafficRoute", location{s.ns, "mine"}) == nil {
		t.Fatal("a user's route is not under its own name")
	}
	got, err := s.Get(ctx, api.Key{Type: "TrafficRoute", Mesh: "b", Name: "r1"})
	if err != nil || got.GetMeta().Name != "r1" || got.(*api.TrafficRoute).Spec.Split[0].Weight != 2 || got.GetMeta().Labels[api.LabelOrigin] != "global" {
		t.Fatalf("get b/r1 = %v, %v", got, err)
	}
	res, err := s.List(ctx, store.ListOptions{Type: "TrafficRoute"})
	if want := []string{"TrafficRoute/a/mine", "TrafficRoute/a/r1", "TrafficRoute/b/r1"}; err != nil || !slices.Equal(keys(res.Items), want) {
		t.Fatalf("list = %v, %v; want %v", keys(res.Items), err, want)
	}
	upd := synced("b", 3)
	upd.Version = 1
	if _, err := s.Update(ctx, upd); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Apply(ctx, nil, []api.Key{{Type: "TrafficRoute", Mesh: "a", Name: "r1"}}); err != nil || n != 1 {
		t.Fatalf("apply deleting a/r1 = %d, %v", n, err)
	}
	events, err := storetest.Collect(s, 0, 4, 30*time.Second) // meshes a and b, a/mine, b/r1
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if n := e.Resource.GetMeta().Name; n != "a" && n != "b" && n != "r1" && n != "mine" {
			t.Fatalf("watch gave %s", api.KeyOf(e.Resource))
		}
	}
}
