package kubernetes

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store/storetest"
)

// TestKubectlEditIsANewVersion: a Kubernetes zone's resources are custom
// resources a user applies with kubectl, and the catalogue relies on every
// write of a resource giving it a new version (pkg/catalog writeMeta). A
// `kubectl apply` that changes a TrafficRoute's split (the DR lever) left
// the annotation ursa.io/version as it was: the store read the changed
// route at its old version, the mesh's PolicyHash did not move, and
// xds.NewState kept every proxy's memoised route. Now every kubectl change
// is a version more (the object's generation past the one the store's
// last write left), the store's next write goes on from it, and a route
// made by kubectl alone counts its versions by generation too.
func TestKubectlEditIsANewVersion(t *testing.T) {
	s := newStore(t)
	rig := installed(t)
	ctx := context.Background()
	storetest.MustCreate(t, s, storetest.Mesh("default"))
	route := &api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: "default", Name: "billing-split"},
		Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: "billing"},
			Split: []api.Split{{Weight: 90, Tags: map[string]string{api.TagZone: "zone-1"}}, {Weight: 10, Tags: map[string]string{api.TagZone: "zone-2"}}}}}
	before, err := s.Create(ctx, route)
	if err != nil {
		t.Fatal(err)
	}

	// The DR lever, pulled with kubectl: everything to zone-2.
	f := filepath.Join(t.TempDir(), "route.yaml")
	if err := os.WriteFile(f, []byte(`apiVersion: ursa.io/v1alpha1
kind: TrafficRoute
metadata: {name: billing-split, namespace: `+s.ns+`}
mesh: default
spec:
  destination: {ursa.io/service: billing}
  split:
  - {weight: 0, tags: {ursa.io/zone: zone-1}}
  - {weight: 100, tags: {ursa.io/zone: zone-2}}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := rig.Kubectl(ctx, "apply", "-f", f).CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply: %v: %s", err, out)
	}
	got, err := s.Get(ctx, api.KeyOf(route))
	if err != nil {
		t.Fatal(err)
	}
	after := got.(*api.TrafficRoute)
	if after.Spec.Split[0].Weight != 0 {
		t.Fatalf("precondition: the store reads the old spec: %+v", after.Spec)
	}
	// What the catalogue goes by (pkg/catalog writeMeta): a new version.
	// The modification time does not go back; it may stay (kubectl's
	// managedFields times are whole seconds: an apply within the second
	// of the store's own write reads no later).
	if after.Version == before.GetMeta().Version || after.ModificationTime.Before(before.GetMeta().ModificationTime) {
		t.Fatalf("kubectl apply changed the route's split (90/10 -> 0/100) but the store reads it at version %d (before: %d), modified %s (before: %s): "+
			"the catalogue keeps its state, and every proxy routes 90/10", after.Version, before.GetMeta().Version,
			after.ModificationTime, before.GetMeta().ModificationTime)
	}
	version := func() int64 {
		t.Helper()
		r, err := s.Get(ctx, api.KeyOf(route))
		if err != nil {
			t.Fatal(err)
		}
		return r.GetMeta().Version
	}
	kubectl := func(args ...string) {
		t.Helper()
		if out, err := rig.Kubectl(ctx, args...).CombinedOutput(); err != nil {
			t.Fatalf("kubectl %v: %v: %s", args, err, out)
		}
	}
	// Each kubectl change is a version more; the store's own write goes on
	// from what it read, and a change after it is one more again.
	v1 := after.Version
	kubectl("patch", "trafficroutes.ursa.io", "billing-split", "-n", s.ns, "--type=merge", "-p", `{"spec":{"split":[{"weight":50,"tags":{"ursa.io/zone":"zone-1"}},{"weight":50,"tags":{"ursa.io/zone":"zone-2"}}]}}`)
	if v := version(); v != v1+1 {
		t.Fatalf("a second kubectl change: version %d, want %d", v, v1+1)
	}
	after.Version = v1 + 1
	after.Spec.Split[0].Weight, after.Spec.Split[1].Weight = 70, 30
	written, err := s.Update(ctx, after)
	if err != nil {
		t.Fatalf("the store's write after kubectl's: %v", err)
	}
	if written.GetMeta().Version != v1+2 || version() != v1+2 {
		t.Fatalf("the store's write: version %d (read %d), want %d", written.GetMeta().Version, version(), v1+2)
	}
	// A store write that changes nothing of the content, then kubectl's.
	if _, err := s.Update(ctx, written); err != nil {
		t.Fatal(err)
	}
	kubectl("patch", "trafficroutes.ursa.io", "billing-split", "-n", s.ns, "--type=merge", "-p", `{"spec":{"split":[{"weight":10,"tags":{"ursa.io/zone":"zone-1"}},{"weight":90,"tags":{"ursa.io/zone":"zone-2"}}]}}`)
	if v := version(); v != v1+4 {
		t.Fatalf("kubectl after an unchanged store write: version %d, want %d", v, v1+4)
	}
	// A route kubectl alone made and changed.
	f2 := filepath.Join(t.TempDir(), "other.yaml")
	os.WriteFile(f2, []byte(`apiVersion: ursa.io/v1alpha1
kind: TrafficRoute
metadata: {name: other, namespace: `+s.ns+`}
mesh: default
spec:
  destination: {ursa.io/service: web}
  split: [{weight: 100, tags: {version: v1}}]
`), 0o600)
	kubectl("apply", "-f", f2)
	key := api.Key{Type: "TrafficRoute", Mesh: "default", Name: "other"}
	r, err := s.Get(ctx, key)
	if err != nil || r.GetMeta().Version != 1 {
		t.Fatalf("a route kubectl made: %v %v", r, err)
	}
	kubectl("patch", "trafficroutes.ursa.io", "other", "-n", s.ns, "--type=merge", "-p", `{"spec":{"split":[{"weight":100,"tags":{"version":"v2"}}]}}`)
	if r, err = s.Get(ctx, key); err != nil || r.GetMeta().Version != 2 {
		t.Fatalf("a route kubectl made, changed by kubectl: %v %v, want version 2", r, err)
	}
}
