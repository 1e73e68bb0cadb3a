// Package storetest is the conformance suite every store.Store
// implementation must pass.
package storetest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// Factory returns a new, empty store for one test.
type Factory func(t *testing.T) store.Store

// Capabilities say which promises of store.Store an implementation keeps
// beyond those every store must. A case that needs a missing capability
// checks the weaker promise instead, saying so in its log; every
// implementation states its capabilities, and why, where it calls RunWith.
type Capabilities struct {
	// DenseRevisions: every write advances the revision by exactly one,
	// and an empty store is at revision 0. Without it, revisions only
	// strictly increase (a Kubernetes store reads etcd's revision, which
	// every write in the cluster advances).
	DenseRevisions bool
	// OrderedAcrossTypes: Watch delivers changes of different types in
	// revision order too. Without it, only each type's changes are in
	// order, and a case that checks an order across types sorts what it
	// got by revision first.
	OrderedAcrossTypes bool
	// NamesPerMesh: two meshes may hold resources of one type and name.
	// Without it (Kubernetes: names are unique per namespace and kind) the
	// second is refused with ErrAlreadyExists, and the cases that list or
	// cascade over two meshes use distinct names.
	NamesPerMesh bool
	// Transactions: an Apply, and a Mesh's deletion with what is in it,
	// is one transaction, whose changes but the last carry Event.More,
	// and the store is a store.Snapshotter. Without it every change is
	// its own (More is never set) and the store lists one type at a time.
	Transactions bool
}

// Full is every capability: the memory and PostgreSQL stores.
var Full = Capabilities{DenseRevisions: true, OrderedAcrossTypes: true, NamesPerMesh: true, Transactions: true}

// Run runs the whole suite against stores made by newStore, which must have
// every capability.
func Run(t *testing.T, newStore Factory) { RunWith(t, newStore, Full) }

// RunWith runs the whole suite against stores made by newStore, which has
// the capabilities caps.
func RunWith(t *testing.T, newStore Factory, caps Capabilities) {
	tests := []struct {
		name string
		fn   func(*testing.T, store.Store, Capabilities)
	}{
		{"CRUD", testCRUD},
		{"OptimisticConcurrency", testOptimisticConcurrency},
		{"MeshMustExist", testMeshMustExist},
		{"MeshDeleteCascades", testMeshDeleteCascades},
		{"ConcurrentUpdatersExactlyOneWins", testConcurrentUpdaters},
		{"ConcurrentCreatorsExactlyOneWins", testConcurrentCreators},
		{"WatchDeliversEveryChangeInCommitOrder", testWatchOrder},
		{"WatchResumesFromRevision", testWatchResume},
		{"WatchUnknownRevision", testWatchUnknownRevision},
		{"ListFilters", testListFilters},
		{"LargeList", testLargeList},
		{"ApplyIsOneTransaction", testApply},
		{"ApplyWithVersionsIsConditional", testApplyConditional},
		{"NamesAcrossMeshes", testNamesAcrossMeshes},
		{"PrivateTypes", testPrivateTypes},
		{"MirrorSeesWholeTransactions", testMirrorTransactions},
		{"ListTypesIsOneSnapshot", testListTypes},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, newStore(t), caps) })
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// Mesh returns a mesh resource.
func Mesh(name string) *api.Mesh {
	return &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: name}}
}

// Route returns a traffic route with the given weight and labels.
func Route(mesh, name string, weight int, labels map[string]string) *api.TrafficRoute {
	return &api.TrafficRoute{
		Meta: api.Meta{Type: "TrafficRoute", Mesh: mesh, Name: name, Labels: labels},
		Spec: api.TrafficRouteSpec{
			Destination: map[string]string{api.TagService: "billing"},
			Split:       []api.Split{{Weight: weight, Tags: map[string]string{api.TagZone: "zone-1"}}},
		},
	}
}

// MustCreate creates r or fails the test.
func MustCreate(t *testing.T, s store.Store, r api.Resource) api.Resource {
	t.Helper()
	out, err := s.Create(ctx(t), r)
	if err != nil {
		t.Fatalf("create %s: %v", api.KeyOf(r), err)
	}
	return out
}

func weight(r api.Resource) int { return r.(*api.TrafficRoute).Spec.Split[0].Weight }

func testCRUD(t *testing.T, s store.Store, caps Capabilities) {
	c := ctx(t)
	m := MustCreate(t, s, Mesh("default"))
	if m.GetMeta().Version != 1 || m.GetMeta().CreationTime.IsZero() {
		t.Fatalf("created mesh meta = %+v, want version 1 and a creation time", m.GetMeta())
	}
	r := MustCreate(t, s, Route("default", "r1", 10, map[string]string{"team": "a"}))
	if _, err := s.Create(c, Route("default", "r1", 20, nil)); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("second create = %v, want ErrAlreadyExists", err)
	}
	got, err := s.Get(c, api.KeyOf(r))
	if err != nil || weight(got) != 10 || got.GetMeta().Labels["team"] != "a" {
		t.Fatalf("get = %+v, %v", got, err)
	}
	upd := Route("default", "r1", 30, nil)
	upd.Version = 1
	time.Sleep(time.Millisecond) // modification time has microsecond precision
	u, err := s.Update(c, upd)
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	um := u.GetMeta()
	if um.Version != 2 || !um.CreationTime.Equal(r.GetMeta().CreationTime) || !um.ModificationTime.After(um.CreationTime) {
		t.Fatalf("updated meta = %+v", um)
	}
	if got, _ := s.Get(c, api.KeyOf(r)); weight(got) != 30 || got.GetMeta().Version != 2 {
		t.Fatalf("get after update = %+v", got)
	}
	if err := s.Delete(c, api.KeyOf(r), 0); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if _, err := s.Get(c, api.KeyOf(r)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get after delete = %v, want ErrNotFound", err)
	}
	if err := s.Delete(c, api.KeyOf(r), 0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second delete = %v, want ErrNotFound", err)
	}
	if _, err := s.Update(c, upd); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("update of deleted = %v, want ErrNotFound", err)
	}
	// The store owns its copies: changing what we got changes nothing.
	got, _ = s.Get(c, api.KeyOf(m))
	got.GetMeta().Labels = map[string]string{"x": "y"}
	if again, _ := s.Get(c, api.KeyOf(m)); again.GetMeta().Labels != nil {
		t.Fatalf("store shares memory with its callers")
	}
}

func testOptimisticConcurrency(t *testing.T, s store.Store, caps Capabilities) {
	c := ctx(t)
	MustCreate(t, s, Mesh("default"))
	MustCreate(t, s, Route("default", "r", 1, nil))
	stale := Route("default", "r", 2, nil)
	stale.Version = 1
	if _, err := s.Update(c, stale); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(c, stale); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("update with stale version = %v, want ErrConflict", err)
	}
	if err := s.Delete(c, api.KeyOf(stale), 1); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("delete with stale version = %v, want ErrConflict", err)
	}
	if got, _ := s.Get(c, api.KeyOf(stale)); got.GetMeta().Version != 2 || weight(got) != 2 {
		t.Fatalf("a refused write changed the resource: %+v", got)
	}
	if err := s.Delete(c, api.KeyOf(stale), 2); err != nil {
		t.Fatalf("delete with current version: %v", err)
	}
}

func testMeshMustExist(t *testing.T, s store.Store, caps Capabilities) {
	if _, err := s.Create(ctx(t), Route("nope", "r", 1, nil)); !errors.Is(err, store.ErrMeshNotFound) {
		t.Fatalf("create in a missing mesh = %v, want ErrMeshNotFound", err)
	}
	res, err := s.List(ctx(t), store.ListOptions{Type: "TrafficRoute"})
	if !caps.DenseRevisions && err == nil && len(res.Items) == 0 {
		return // the revision is the cluster's: it says nothing of this store
	}
	if err != nil || len(res.Items) != 0 || res.Revision != 0 {
		t.Fatalf("a refused create left %d items at revision %d (%v)", len(res.Items), res.Revision, err)
	}
}

func testMeshDeleteCascades(t *testing.T, s store.Store, caps Capabilities) {
	c := ctx(t)
	MustCreate(t, s, Mesh("a"))
	MustCreate(t, s, Mesh("b"))
	MustCreate(t, s, Route("a", "r1", 1, nil))
	MustCreate(t, s, Route("a", "r2", 1, nil))
	MustCreate(t, s, Route("b", otherName(caps, "r1"), 1, nil))
	start, _ := s.List(c, store.ListOptions{Type: "Mesh"})
	if err := s.Delete(c, api.Key{Type: "Mesh", Name: "a"}, 0); err != nil {
		t.Fatal(err)
	}
	left, _ := s.List(c, store.ListOptions{Type: "TrafficRoute"})
	if len(left.Items) != 1 || left.Items[0].GetMeta().Mesh != "b" {
		t.Fatalf("after deleting mesh a, routes left = %v", keys(left.Items))
	}
	if moved := left.Revision - start.Revision; moved != 3 && (caps.DenseRevisions || moved < 3) {
		t.Fatalf("a cascade of 3 deletions moved the revision by %d", moved)
	}
	events := collect(t, s, start.Revision, 3)
	if !caps.OrderedAcrossTypes {
		slices.SortFunc(events, func(a, b store.Event) int { return cmp.Compare(a.Revision, b.Revision) })
	}
	want := []string{"TrafficRoute/a/r1", "TrafficRoute/a/r2", "Mesh/a"}
	for i, e := range events {
		if e.Op != store.OpDelete || api.KeyOf(e.Resource).String() != want[i] {
			t.Fatalf("event %d = %s %s, want delete %s", i, e.Op, api.KeyOf(e.Resource), want[i])
		}
	}
	checkMore(t, caps, events, "a mesh's cascade")
}

// otherName is the name a case gives, in a second mesh, to what it names
// name in the first: the same name when the store keeps names per mesh.
func otherName(caps Capabilities, name string) string {
	if caps.NamesPerMesh {
		return name
	}
	return name + "-b"
}

func keys(rs []api.Resource) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = api.KeyOf(r).String()
	}
	return out
}

// collect watches from since until n events have arrived.
func collect(t *testing.T, s store.Store, since int64, n int) []store.Event {
	t.Helper()
	out, err := Collect(s, since, n, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Collect watches s from since until n events have arrived or timeout passes.
// It is safe to call from any goroutine.
func Collect(s store.Store, since int64, n int, timeout time.Duration) ([]store.Event, error) {
	c, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out []store.Event
	done := errors.New("done")
	err := s.Watch(c, since, func(e store.Event) error {
		out = append(out, e)
		if len(out) == n {
			return done
		}
		return nil
	})
	if !errors.Is(err, done) {
		return out, fmt.Errorf("watch from %d: got %d of %d events, then %w", since, len(out), n, err)
	}
	return out, nil
}

func testConcurrentUpdaters(t *testing.T, s store.Store, caps Capabilities) {
	c := ctx(t)
	MustCreate(t, s, Mesh("default"))
	MustCreate(t, s, Route("default", "r", 1, nil))
	const writers = 16
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		wins      []int
		conflicts int
	)
	start := make(chan struct{})
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := Route("default", "r", i+2, nil)
			r.Version = 1
			<-start
			_, err := s.Update(c, r)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins = append(wins, i+2)
			case errors.Is(err, store.ErrConflict):
				conflicts++
			default:
				t.Errorf("writer %d: %v", i, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(wins) != 1 || conflicts != writers-1 {
		t.Fatalf("%d writers raced: %d won, %d conflicted; want exactly one winner", writers, len(wins), conflicts)
	}
	got, _ := s.Get(c, api.Key{Type: "TrafficRoute", Mesh: "default", Name: "r"})
	if weight(got) != wins[0] || got.GetMeta().Version != 2 {
		t.Fatalf("stored %d at version %d, winner wrote %d", weight(got), got.GetMeta().Version, wins[0])
	}
}

func testConcurrentCreators(t *testing.T, s store.Store, caps Capabilities) {
	c := ctx(t)
	MustCreate(t, s, Mesh("default"))
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins int
	)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Create(c, Route("default", "same", i+1, nil))
			if err != nil && !errors.Is(err, store.ErrAlreadyExists) {
				t.Errorf("creator %d: %v", i, err)
			}
			if err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d creators won, want 1", wins)
	}
}

func testWatchOrder(t *testing.T, s store.Store, caps Capabilities) {
	c := ctx(t)
	MustCreate(t, s, Mesh("default"))
	start, err := s.List(c, store.ListOptions{Type: "Mesh"})
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 25
	type result struct {
		events []store.Event
		err    error
	}
	got := make(chan result, 1)
	go func() {
		var r result
		r.events, r.err = Collect(s, start.Revision, writers*each*2, 30*time.Second)
		got <- r
	}()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				name := fmt.Sprintf("w%d-%d", w, i)
				r, err := s.Create(c, Route("default", name, 1, nil))
				if err != nil {
					t.Errorf("create %s: %v", name, err)
					return
				}
				upd := Route("default", name, 2, nil)
				upd.Version = r.GetMeta().Version
				if _, err := s.Update(c, upd); err != nil {
					t.Errorf("update %s: %v", name, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	res := <-got
	if res.err != nil {
		t.Fatal(res.err)
	}
	seen := map[string]store.Op{}
	for i, e := range res.events {
		if want := start.Revision + int64(i) + 1; caps.DenseRevisions && e.Revision != want {
			t.Fatalf("event %d has revision %d, want %d: revisions must be gapless and ordered", i, e.Revision, want)
		}
		if i > 0 && e.Revision <= res.events[i-1].Revision {
			t.Fatalf("event %d has revision %d after %d: revisions must increase", i, e.Revision, res.events[i-1].Revision)
		}
		k := api.KeyOf(e.Resource).String()
		switch e.Op {
		case store.OpCreate:
			if _, dup := seen[k]; dup || weight(e.Resource) != 1 || e.Resource.GetMeta().Version != 1 {
				t.Fatalf("event %d: unexpected create of %s", i, k)
			}
		case store.OpUpdate:
			if seen[k] != store.OpCreate || weight(e.Resource) != 2 || e.Resource.GetMeta().Version != 2 {
				t.Fatalf("event %d: update of %s before its create", i, k)
			}
		default:
			t.Fatalf("event %d: unexpected %s", i, e.Op)
		}
		seen[k] = e.Op
	}
	end, _ := s.List(c, store.ListOptions{Type: "TrafficRoute"})
	if moved := end.Revision - start.Revision; moved != writers*each*2 && (caps.DenseRevisions || moved < writers*each*2) {
		t.Fatalf("list revision %d, want %d", end.Revision, start.Revision+writers*each*2)
	}
}

func testWatchResume(t *testing.T, s store.Store, caps Capabilities) {
	MustCreate(t, s, Mesh("default"))
	for i := range 10 {
		MustCreate(t, s, Route("default", fmt.Sprintf("r%d", i), 1, nil))
	}
	if !caps.DenseRevisions {
		// The same, at the revisions the store gave: resuming after r4's
		// yields r5..r9 at theirs.
		first := collect(t, s, 0, 11)
		events := collect(t, s, first[5].Revision, 5)
		for i, e := range events {
			if e.Revision != first[6+i].Revision || e.Resource.GetMeta().Name != fmt.Sprintf("r%d", 5+i) {
				t.Fatalf("resumed event %d = rev %d %s, want rev %d r%d", i, e.Revision, api.KeyOf(e.Resource), first[6+i].Revision, 5+i)
			}
		}
		if first[0].Resource.GetMeta().Type != "Mesh" {
			t.Fatalf("watch from 0 starts with %s, want the mesh", api.KeyOf(first[0].Resource))
		}
		return
	}
	// Revision 1 is the mesh; resuming after revision 6 yields r5..r9.
	events := collect(t, s, 6, 5)
	for i, e := range events {
		if e.Revision != int64(7+i) || e.Resource.GetMeta().Name != fmt.Sprintf("r%d", 5+i) {
			t.Fatalf("resumed event %d = rev %d %s", i, e.Revision, api.KeyOf(e.Resource))
		}
	}
	all := collect(t, s, 0, 11)
	if all[0].Resource.GetMeta().Type != "Mesh" {
		t.Fatalf("watch from 0 starts with %s, want the mesh", api.KeyOf(all[0].Resource))
	}
}

func testWatchUnknownRevision(t *testing.T, s store.Store, caps Capabilities) {
	MustCreate(t, s, Mesh("default"))
	future := int64(100)
	if !caps.DenseRevisions {
		res, err := s.List(ctx(t), store.ListOptions{Type: "Mesh"})
		if err != nil {
			t.Fatal(err)
		}
		future = res.Revision + 1_000_000
	}
	err := s.Watch(ctx(t), future, func(store.Event) error { return nil })
	if !errors.Is(err, store.ErrCompacted) {
		t.Fatalf("watch from a future revision = %v, want ErrCompacted", err)
	}
}

func testListFilters(t *testing.T, s store.Store, caps Capabilities) {
	c := ctx(t)
	MustCreate(t, s, Mesh("a"))
	MustCreate(t, s, Mesh("b"))
	MustCreate(t, s, Route("a", "r1", 1, map[string]string{"team": "x", "env": "prod"}))
	MustCreate(t, s, Route("a", "r2", 1, map[string]string{"team": "y", "env": "prod"}))
	b1 := otherName(caps, "r1")
	MustCreate(t, s, Route("b", b1, 1, map[string]string{"team": "x"}))
	tests := []struct {
		opts store.ListOptions
		want []string
	}{
		{store.ListOptions{Type: "Mesh"}, []string{"Mesh/a", "Mesh/b"}},
		{store.ListOptions{Type: "TrafficRoute"}, []string{"TrafficRoute/a/r1", "TrafficRoute/a/r2", "TrafficRoute/b/" + b1}},
		{store.ListOptions{Type: "TrafficRoute", Mesh: "a"}, []string{"TrafficRoute/a/r1", "TrafficRoute/a/r2"}},
		{store.ListOptions{Type: "TrafficRoute", Labels: map[string]string{"team": "x"}}, []string{"TrafficRoute/a/r1", "TrafficRoute/b/" + b1}},
		{store.ListOptions{Type: "TrafficRoute", Mesh: "a", Labels: map[string]string{"team": "x", "env": "prod"}}, []string{"TrafficRoute/a/r1"}},
		{store.ListOptions{Type: "TrafficRoute", Labels: map[string]string{"team": "z"}}, nil},
		{store.ListOptions{Type: "Failover"}, nil},
	}
	for _, tt := range tests {
		res, err := s.List(c, tt.opts)
		if err != nil {
			t.Fatal(err)
		}
		if got := keys(res.Items); fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("List(%+v) = %v, want %v", tt.opts, got, tt.want)
		}
	}
}

func testLargeList(t *testing.T, s store.Store, caps Capabilities) {
	// The case is about a list over several pages, not about speed: 3,000
	// creates take the Kubernetes store (several requests each) longer than
	// ctx's 30 s on a loaded machine.
	c, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	MustCreate(t, s, Mesh("default"))
	const n, workers = 3000, 16
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				if _, err := s.Create(c, Route("default", fmt.Sprintf("r%05d", i), i%100+1, nil)); err != nil {
					t.Errorf("create: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	res, err := s.List(c, store.ListOptions{Type: "TrafficRoute", Mesh: "default"})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Items) != n {
		t.Fatalf("listed %d of %d", len(res.Items), n)
	}
	for i, r := range res.Items {
		if r.GetMeta().Name != fmt.Sprintf("r%05d", i) || weight(r) != i%100+1 {
			t.Fatalf("item %d = %s weight %d", i, r.GetMeta().Name, weight(r))
		}
	}
}

func testApply(t *testing.T, s store.Store, caps Capabilities) {
	c := ctx(t)
	// The route comes before its mesh in the batch: meshes go first.
	n, err := s.Apply(c, []api.Resource{Route("m", "r1", 1, nil), Mesh("m"), Route("m", "r2", 1, nil)}, nil)
	if err != nil || n != 3 {
		t.Fatalf("apply of 3 new resources = %d, %v", n, err)
	}
	events := collect(t, s, 0, 3)
	if events[0].Resource.GetMeta().Type != "Mesh" || events[1].Op != store.OpCreate {
		t.Fatalf("first events: %s %s", events[0].Op, api.KeyOf(events[0].Resource))
	}
	if !caps.OrderedAcrossTypes {
		slices.SortFunc(events, func(a, b store.Event) int { return cmp.Compare(a.Revision, b.Revision) })
	}
	checkMore(t, caps, events, "an apply of 3 creates")
	start, _ := s.List(c, store.ListOptions{Type: "TrafficRoute"})
	// The same content again changes nothing and says nothing.
	if n, err := s.Apply(c, []api.Resource{Mesh("m"), Route("m", "r1", 1, nil)}, []api.Key{{Type: "TrafficRoute", Mesh: "m", Name: "absent"}}); err != nil || n != 0 {
		t.Fatalf("idempotent apply = %d, %v", n, err)
	}
	// One change and one delete.
	n, err = s.Apply(c, []api.Resource{Route("m", "r1", 7, nil)}, []api.Key{{Type: "TrafficRoute", Mesh: "m", Name: "r2"}})
	if err != nil || n != 2 {
		t.Fatalf("apply of an update and a delete = %d, %v", n, err)
	}
	ev := collect(t, s, start.Revision, 2)
	if ev[0].Op != store.OpUpdate || ev[0].Resource.GetMeta().Version != 2 || weight(ev[0].Resource) != 7 || ev[1].Op != store.OpDelete {
		t.Fatalf("events after update+delete: %s v%d, %s", ev[0].Op, ev[0].Resource.GetMeta().Version, ev[1].Op)
	}
	checkMore(t, caps, ev, "an apply of an update and a delete")
	// A batch with one put into a missing mesh writes nothing at all.
	before, _ := s.List(c, store.ListOptions{Type: "TrafficRoute"})
	_, err = s.Apply(c, []api.Resource{Route("m", "r3", 1, nil), Route("nope", "r", 1, nil)}, []api.Key{{Type: "TrafficRoute", Mesh: "m", Name: "r1"}})
	if !errors.Is(err, store.ErrMeshNotFound) {
		t.Fatalf("apply into a missing mesh = %v, want ErrMeshNotFound", err)
	}
	after, _ := s.List(c, store.ListOptions{Type: "TrafficRoute"})
	if (caps.DenseRevisions && after.Revision != before.Revision) || fmt.Sprint(versions(after.Items)) != fmt.Sprint(versions(before.Items)) {
		t.Fatalf("a refused batch changed the store: revision %d -> %d, %d -> %d routes", before.Revision, after.Revision, len(before.Items), len(after.Items))
	}
	// Deleting a mesh in a batch takes its contents.
	if n, err := s.Apply(c, nil, []api.Key{{Type: "Mesh", Name: "m"}}); err != nil || n != 2 {
		t.Fatalf("apply deleting a mesh with one route = %d, %v", n, err)
	}
}

// testApplyConditional: a put carrying a version applies only over that
// version; one stale put refuses the whole batch.
func testApplyConditional(t *testing.T, s store.Store, caps Capabilities) {
	c := ctx(t)
	MustCreate(t, s, Mesh("default"))
	r1 := MustCreate(t, s, Route("default", "a", 10, nil))
	MustCreate(t, s, Route("default", "b", 10, nil))
	stale := Route("default", "a", 20, nil)
	stale.Version = r1.GetMeta().Version
	if _, err := s.Apply(c, []api.Resource{stale}, nil); err != nil {
		t.Fatalf("apply at the stored version: %v", err)
	}
	again := Route("default", "a", 30, nil)
	again.Version = r1.GetMeta().Version // no longer stored
	other := Route("default", "b", 40, nil)
	if _, err := s.Apply(c, []api.Resource{other, again}, nil); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("apply at a replaced version: %v, want ErrConflict", err)
	}
	if got, _ := s.Get(c, api.KeyOf(other)); weight(got) != 10 {
		t.Fatalf("a refused batch wrote b (weight %d)", weight(got))
	}
	missing := Route("default", "c", 10, nil)
	missing.Version = 1
	if _, err := s.Apply(c, []api.Resource{missing}, nil); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("apply at a version of nothing: %v, want ErrConflict", err)
	}
	if got, _ := s.Get(c, api.KeyOf(stale)); weight(got) != 20 {
		t.Fatalf("a = weight %d, want 20", weight(got))
	}
}

// versions are the keys of rs with their versions.
func versions(rs []api.Resource) []string {
	out := keys(rs)
	for i, r := range rs {
		out[i] += fmt.Sprintf("@%d", r.GetMeta().Version)
	}
	return out
}

// testNamesAcrossMeshes: two meshes hold one name, or (without
// NamesPerMesh) the second create is refused and changes nothing.
func testNamesAcrossMeshes(t *testing.T, s store.Store, caps Capabilities) {
	c := ctx(t)
	MustCreate(t, s, Mesh("a"))
	MustCreate(t, s, Mesh("b"))
	MustCreate(t, s, Route("a", "same", 1, nil))
	_, err := s.Create(c, Route("b", "same", 2, nil))
	if caps.NamesPerMesh {
		if err != nil {
			t.Fatalf("create of b/same next to a/same: %v", err)
		}
		return
	}
	if !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("create of b/same next to a/same = %v, want ErrAlreadyExists", err)
	}
	if _, err := s.Get(c, api.Key{Type: "TrafficRoute", Mesh: "b", Name: "same"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get b/same = %v, want ErrNotFound", err)
	}
	if err := s.Delete(c, api.Key{Type: "TrafficRoute", Mesh: "b", Name: "same"}, 0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete b/same = %v, want ErrNotFound", err)
	}
	if got, err := s.Get(c, api.Key{Type: "TrafficRoute", Mesh: "a", Name: "same"}); err != nil || weight(got) != 1 {
		t.Fatalf("get a/same = %v, %v", got, err)
	}
}

// privateExamples are one resource of each type holding private material
// (a Kubernetes store keeps them as core Secrets), in mesh and beside the
// meshes. Their content is what the store must give back, not valid PEM.
func privateExamples(mesh string) []api.Resource {
	return []api.Resource{
		&api.Secret{Meta: api.Meta{Type: "Secret", Mesh: mesh, Name: "s1", Labels: map[string]string{"team": "a"}}, Data: []byte{0, 1, 2, 255}},
		&api.MeshCA{Meta: api.Meta{Type: "MeshCA", Mesh: mesh, Name: "ca"}, CertPEM: "cert of " + mesh, KeyPEM: "key",
			Intermediates: []api.Intermediate{{Zone: "zone-1", Serial: "0a", NotAfter: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}}},
		&api.ZoneCA{Meta: api.Meta{Type: "ZoneCA", Mesh: mesh, Name: "zone-1"}, CertPEM: "cert", KeyPEM: "key of " + mesh},
	}
}

// testPrivateTypes: the types holding private material behave as every
// other: the same name in two meshes (the mesh CA is "ca" in each), one
// name in several types, versions, conflicts, lists, watches and a mesh's
// cascade.
func testPrivateTypes(t *testing.T, s store.Store, caps Capabilities) {
	c := ctx(t)
	MustCreate(t, s, Mesh("a"))
	MustCreate(t, s, Mesh("b"))
	start, err := s.List(c, store.ListOptions{Type: "Mesh"})
	if err != nil {
		t.Fatal(err)
	}
	var all []api.Resource
	for _, m := range []string{"a", "b"} {
		all = append(all, privateExamples(m)...)
	}
	gs := &api.GlobalSecret{Meta: api.Meta{Type: "GlobalSecret", Name: "s1"}, Data: []byte("signing key")}
	all = append(all, gs)
	for _, r := range all {
		got := MustCreate(t, s, r)
		if got.GetMeta().Version != 1 || !api.SameContent(got, r) {
			t.Fatalf("create %s returned %s", api.KeyOf(r), api.Content(got))
		}
		back, err := s.Get(c, api.KeyOf(r))
		if err != nil || !api.SameContent(back, r) {
			t.Fatalf("get %s = %v, %v; want %s", api.KeyOf(r), back, err, api.Content(r))
		}
	}
	if _, err := s.Create(c, privateExamples("a")[1]); !errors.Is(err, store.ErrAlreadyExists) {
		t.Fatalf("second create of a's CA = %v, want ErrAlreadyExists", err)
	}
	if _, err := s.Create(c, privateExamples("nope")[0]); !errors.Is(err, store.ErrMeshNotFound) {
		t.Fatalf("secret in a missing mesh = %v, want ErrMeshNotFound", err)
	}
	res, err := s.List(c, store.ListOptions{Type: "MeshCA"})
	if err != nil || fmt.Sprint(keys(res.Items)) != "[MeshCA/a/ca MeshCA/b/ca]" {
		t.Fatalf("list mesh CAs = %v, %v", keys(res.Items), err)
	}
	res, err = s.List(c, store.ListOptions{Type: "Secret", Mesh: "b", Labels: map[string]string{"team": "a"}})
	if err != nil || fmt.Sprint(keys(res.Items)) != "[Secret/b/s1]" {
		t.Fatalf("list b's secrets labelled team=a = %v, %v", keys(res.Items), err)
	}
	res, err = s.List(c, store.ListOptions{Type: "GlobalSecret"})
	if err != nil || fmt.Sprint(keys(res.Items)) != "[GlobalSecret/s1]" {
		t.Fatalf("list global secrets = %v, %v", keys(res.Items), err)
	}
	upd := privateExamples("b")[2].(*api.ZoneCA)
	upd.NextCertPEM, upd.NextKeyPEM, upd.Version = "next cert", "next key", 1
	if got, err := s.Update(c, upd); err != nil || got.GetMeta().Version != 2 || !api.SameContent(got, upd) {
		t.Fatalf("update b's zone CA = %v, %v", got, err)
	}
	if _, err := s.Update(c, upd); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale update of b's zone CA = %v, want ErrConflict", err)
	}
	if got, _ := s.Get(c, api.KeyOf(privateExamples("a")[2])); got.GetMeta().Version != 1 || got.(*api.ZoneCA).NextCertPEM != "" {
		t.Fatalf("updating b's zone CA changed a's: %s", api.Content(got))
	}
	// 7 creates and an update, each an event with what was written.
	events := collect(t, s, start.Revision, len(all)+1)
	if !caps.OrderedAcrossTypes {
		slices.SortFunc(events, func(a, b store.Event) int { return cmp.Compare(a.Revision, b.Revision) })
	}
	for i, r := range all {
		if events[i].Op != store.OpCreate || !api.SameContent(events[i].Resource, r) {
			t.Fatalf("event %d = %s %s, want create %s", i, events[i].Op, api.Content(events[i].Resource), api.Content(r))
		}
	}
	if last := events[len(all)]; last.Op != store.OpUpdate || !api.SameContent(last.Resource, upd) {
		t.Fatalf("last event = %s %s, want the update", last.Op, api.KeyOf(last.Resource))
	}
	if err := s.Delete(c, api.Key{Type: "Mesh", Name: "a"}, 0); err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"Secret", "MeshCA", "ZoneCA"} {
		res, err := s.List(c, store.ListOptions{Type: typ})
		if err != nil || len(res.Items) != 1 || res.Items[0].GetMeta().Mesh != "b" {
			t.Fatalf("%s after deleting mesh a = %v, %v", typ, keys(res.Items), err)
		}
	}
	if err := s.Delete(c, api.KeyOf(gs), 1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(c, api.KeyOf(gs)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get deleted global secret = %v, want ErrNotFound", err)
	}
}
