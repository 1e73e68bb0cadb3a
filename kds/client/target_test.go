package client

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/kds/kdspb"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/api/crd"
	"github.com/ursamesh/ursa/pkg/store"
)

func entry(t *testing.T, r api.Resource) *discovery.Resource {
	t.Helper()
	e, err := kds.NewEntry(kds.WireName(api.KeyOf(r)), r, "")
	if err != nil {
		t.Fatal(err)
	}
	return e.Wire
}

// TestGlobalTargetRejects: what the zone cannot apply is NACKed with the
// reason, and nothing of that response is written.
func TestGlobalTargetRejects(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory(0)
	tgt := &globalTarget{store: st, log: zaptest.NewLogger(t), zone: "zone-b", held: map[string]map[string]bool{}}
	meshD, _ := api.Lookup("Mesh")
	ingD, _ := api.Lookup("ZoneIngress")
	routeD, _ := api.Lookup("TrafficRoute")
	zcaD, _ := api.Lookup("ZoneCA")
	for _, d := range []api.Descriptor{meshD, ingD, routeD, zcaD} {
		if _, err := tgt.Held(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	local := &api.ZoneIngress{Meta: api.Meta{Type: "ZoneIngress", Name: "zone-a.x"}, Zone: "zone-b",
		Networking: api.ZoneIngressNetworking{Address: "127.0.0.1", Port: 1}}
	if _, err := st.Create(ctx, local); err != nil {
		t.Fatal(err)
	}
	// A document the global would never send: a weight out of range.
	body, _ := proto.Marshal(&kdspb.Resource{Type: "TrafficRoute", Mesh: "m", Name: "r",
		Json: []byte(`{"type":"TrafficRoute","mesh":"m","name":"r","spec":{"destination":{"ursa.io/service":"s"},"split":[{"weight":500}]}}`)})
	invalid := &discovery.Resource{Name: "m/r", Version: "v", Resource: &anypb.Any{TypeUrl: "type.googleapis.com/ursa.kds.v1.Resource", Value: body}}
	remote := &api.ZoneIngress{Meta: api.Meta{Type: "ZoneIngress", Name: "zone-a.x"}, Zone: "zone-a",
		Networking: api.ZoneIngressNetworking{Address: "127.0.0.1", Port: 1}}
	otherCA := &api.ZoneCA{Meta: api.Meta{Type: "ZoneCA", Mesh: "m", Name: "zone-a"},
		CertPEM: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n", KeyPEM: "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"}
	tests := []struct {
		name string
		d    api.Descriptor
		res  []*discovery.Resource
		want string
	}{
		{"invalid resource", routeD, []*discovery.Resource{invalid}, "spec.split[0].weight: must be between 0 and 100"},
		{"policy in a mesh the zone lacks", routeD, []*discovery.Resource{entry(t, &api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: "m", Name: "r"},
			Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: "s"}, Split: []api.Split{{Weight: 1}}}})}, "mesh not found"},
		{"collision with a local resource", ingD, []*discovery.Resource{entry(t, remote)}, "conflicts with a resource of the same name made in this zone"},
		{"another zone's intermediate CA", zcaD, []*discovery.Resource{entry(t, otherCA)}, `is for zone "zone-a", not this zone ("zone-b")`},
	}
	for _, tt := range tests {
		err := tgt.Apply(ctx, tt.d, tt.res, nil)
		if !kds.IsRejection(err) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want a rejection mentioning %q", tt.name, err, tt.want)
		}
	}
	// The local resource is untouched, and removals of names the global
	// never sent are ignored.
	if err := tgt.Apply(ctx, ingD, nil, []string{"zone-a.x"}); err != nil {
		t.Fatal(err)
	}
	got, err := st.Get(ctx, api.KeyOf(local))
	if err != nil || got.(*api.ZoneIngress).Zone != "zone-b" {
		t.Fatalf("local ingress after refused writes: %+v %v", got, err)
	}
}

// tooLargeStore refuses every Apply as too large, as the Kubernetes store
// does a mesh CA whose Secret would pass 1 MiB.
type tooLargeStore struct{ store.Store }

func (tooLargeStore) Apply(context.Context, []api.Resource, []api.Key) (int, error) {
	return 0, fmt.Errorf("apply 1 puts, 0 deletes: %w: its data would be 1300000 bytes", store.ErrTooLarge)
}

// TestGlobalTargetRejectsTooLarge: a resource the zone's store cannot hold
// for its size is NACKed with the store's reason (the global's insight of
// the zone shows it), not retried on a new stream forever.
func TestGlobalTargetRejectsTooLarge(t *testing.T) {
	ctx := context.Background()
	tgt := &globalTarget{store: tooLargeStore{store.NewMemory(0)}, log: zaptest.NewLogger(t), zone: "zone-b", held: map[string]map[string]bool{}}
	caD, _ := api.Lookup("MeshCA")
	if _, err := tgt.Held(ctx, caD); err != nil {
		t.Fatal(err)
	}
	ca := &api.MeshCA{Meta: api.Meta{Type: "MeshCA", Mesh: "m", Name: "ca"}, CertPEM: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"}
	err := tgt.Apply(ctx, caD, []*discovery.Resource{entry(t, ca)}, nil)
	if !kds.IsRejection(err) || !strings.Contains(err.Error(), "1300000 bytes") {
		t.Fatalf("apply of a mesh CA too large for the store = %v, want a rejection with the store's reason", err)
	}
	if tgt.held[kds.TypeURL("MeshCA")][kds.WireName(api.KeyOf(ca))] {
		t.Fatal("a refused mesh CA counts as held")
	}
}

// TestStandaloneLeftoversTakeTheGlobals: a zone that ran standalone made its
// own Mesh and policies; once it joins a global, the global's of the same
// names replace them (they were refused as conflicting, forever), while a
// ZoneIngress, which zones write, is still the zone's own.
func TestStandaloneLeftoversTakeTheGlobals(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory(0)
	tgt := &globalTarget{store: st, log: zaptest.NewLogger(t), zone: "zone-b", held: map[string]map[string]bool{}}
	meshD, _ := api.Lookup("Mesh")
	routeD, _ := api.Lookup("TrafficRoute")
	for _, d := range []api.Descriptor{meshD, routeD} {
		if _, err := tgt.Held(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	route := func(zone string) *api.TrafficRoute {
		return &api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: "default", Name: "billing"},
			Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: "billing"},
				Split: []api.Split{{Weight: 100, Tags: map[string]string{api.TagZone: zone}}}}}
	}
	local := []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}, route("zone-b")}
	if _, err := st.Apply(ctx, local, nil); err != nil {
		t.Fatal(err)
	}
	globalMesh := &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}, MTLS: &api.MeshMTLS{Enabled: true}}
	if err := tgt.Apply(ctx, meshD, []*discovery.Resource{entry(t, globalMesh)}, nil); err != nil {
		t.Fatalf("the global's Mesh over the standalone zone's: %v", err)
	}
	if err := tgt.Apply(ctx, routeD, []*discovery.Resource{entry(t, route("zone-a"))}, nil); err != nil {
		t.Fatalf("the global's TrafficRoute over the standalone zone's: %v", err)
	}
	m, err := st.Get(ctx, api.Key{Type: "Mesh", Name: "default"})
	if err != nil || m.GetMeta().Labels[api.LabelOrigin] != api.OriginGlobal || !m.(*api.Mesh).MTLSEnabled() {
		t.Fatalf("mesh after joining: %+v %v, want the global's", m, err)
	}
	r, err := st.Get(ctx, api.Key{Type: "TrafficRoute", Mesh: "default", Name: "billing"})
	if err != nil || r.GetMeta().Labels[api.LabelOrigin] != api.OriginGlobal || r.(*api.TrafficRoute).Spec.Split[0].Tags[api.TagZone] != "zone-a" {
		t.Fatalf("route after joining: %+v %v, want the global's", r, err)
	}
	// Now the global's: its removal deletes it.
	if err := tgt.Apply(ctx, routeD, nil, []string{"default/billing"}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(ctx, api.Key{Type: "TrafficRoute", Mesh: "default", Name: "billing"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("route after the global removed it: %v", err)
	}
}

// secretSizedStore refuses, as the Kubernetes store does, a whole batch
// holding a resource whose core Secret would pass crd.MaxSecretData.
type secretSizedStore struct{ store.Store }

func (s secretSizedStore) Apply(ctx context.Context, puts []api.Resource, deletes []api.Key) (int, error) {
	for _, r := range puts {
		if p, _ := crd.PlacementOf(r.GetMeta().Type); p.Kind != crd.CoreSecret {
			continue
		}
		if _, err := crd.ToSecret(r, "ursa-system"); errors.Is(err, crd.ErrTooLarge) {
			return 0, fmt.Errorf("apply %d puts, %d deletes: %w: %w", len(puts), len(deletes), store.ErrTooLarge, err)
		}
	}
	return s.Store.Apply(ctx, puts, deletes)
}

// TestGlobalTargetTooLargeHoldsNoOther: one mesh's CA too large for the
// zone's store is NACKed alone. Another mesh's CA and a removal in the same
// response are applied: after the first NACK the global sends the large one
// again with every later change of the type (and a zone that reconnects
// gets them all in one response), so refusing the batch would keep every
// other mesh's CA from the zone for as long as the one stays too large.
func TestGlobalTargetTooLargeHoldsNoOther(t *testing.T) {
	ctx := context.Background()
	mem := store.NewMemory(0)
	for _, m := range []string{"big", "small", "gone"} {
		if _, err := mem.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: m}}); err != nil {
			t.Fatal(err)
		}
	}
	tgt := &globalTarget{store: secretSizedStore{mem}, log: zaptest.NewLogger(t), zone: "zone-b", held: map[string]map[string]bool{}}
	caD, _ := api.Lookup("MeshCA")
	ca := func(mesh string, crlBytes int) *api.MeshCA {
		return &api.MeshCA{Meta: api.Meta{Type: "MeshCA", Mesh: mesh, Name: "ca"}, CertPEM: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
			Intermediates: []api.Intermediate{{Zone: "zone-b", Serial: "1", CRLPEM: string(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: make([]byte, crlBytes)}))}}}
	}
	if _, err := tgt.Held(ctx, caD); err != nil {
		t.Fatal(err)
	}
	if err := tgt.Apply(ctx, caD, []*discovery.Resource{entry(t, ca("gone", 10))}, nil); err != nil {
		t.Fatal(err)
	}
	big, small := ca("big", crd.MaxSecretData), ca("small", 10)
	gone := kds.WireName(api.KeyOf(ca("gone", 10)))
	err := tgt.Apply(ctx, caD, []*discovery.Resource{entry(t, big), entry(t, small)}, []string{gone})
	if !kds.IsRejection(err) || !strings.Contains(err.Error(), "MeshCA/big/ca") {
		t.Fatalf("apply of one mesh CA too large beside another = %v, want a rejection naming the large one", err)
	}
	if strings.Contains(err.Error(), "MeshCA/small/ca") {
		t.Fatalf("the rejection names the CA that fits: %v", err)
	}
	if !has(mem, api.KeyOf(small)) {
		t.Fatal("the mesh CA that fits was not applied beside the one too large")
	}
	if has(mem, api.KeyOf(big)) {
		t.Fatal("the mesh CA too large is in the store")
	}
	if has(mem, api.KeyOf(ca("gone", 10))) {
		t.Fatal("the response's removal was not applied beside the refused CA")
	}
	held := tgt.held[kds.TypeURL("MeshCA")]
	if !held[kds.WireName(api.KeyOf(small))] || held[kds.WireName(api.KeyOf(big))] || held[gone] {
		t.Fatalf("held after the partial refusal: %v", held)
	}
}

func has(s store.Store, k api.Key) bool {
	_, err := s.Get(context.Background(), k)
	return err == nil
}

// TestGlobalTargetMissingMeshHoldsNoOther: a policy in a mesh the zone
// lacks is NACKed alone; the same response's policies of meshes the zone
// has are applied. After a NACK the global sends the refused name again
// with every later change of its type, so refusing the lot would hold every
// mesh's policies of that type back until the missing Mesh came.
func TestGlobalTargetMissingMeshHoldsNoOther(t *testing.T) {
	ctx := context.Background()
	mem := store.NewMemory(0)
	if _, err := mem.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "here"}}); err != nil {
		t.Fatal(err)
	}
	tgt := &globalTarget{store: mem, log: zaptest.NewLogger(t), zone: "zone-b", held: map[string]map[string]bool{}}
	routeD, _ := api.Lookup("TrafficRoute")
	if _, err := tgt.Held(ctx, routeD); err != nil {
		t.Fatal(err)
	}
	route := func(mesh string) *api.TrafficRoute {
		return &api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: mesh, Name: "r"},
			Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: "s"}, Split: []api.Split{{Weight: 1}}}}
	}
	here, away := route("here"), route("away")
	err := tgt.Apply(ctx, routeD, []*discovery.Resource{entry(t, away), entry(t, here)}, nil)
	if !kds.IsRejection(err) || !strings.Contains(err.Error(), "mesh not found") {
		t.Fatalf("apply of a policy in a missing mesh beside another = %v, want a rejection", err)
	}
	if !has(mem, api.KeyOf(here)) {
		t.Fatal("the policy of a mesh the zone has was held back by the one of a mesh it lacks")
	}
	held := tgt.held[kds.TypeURL("TrafficRoute")]
	if !held[kds.WireName(api.KeyOf(here))] || held[kds.WireName(api.KeyOf(away))] {
		t.Fatalf("held after the partial refusal: %v", held)
	}
}

// countingStore counts the store's Apply calls.
type countingStore struct {
	store.Store
	applies *int
}

func (s countingStore) Apply(ctx context.Context, puts []api.Resource, deletes []api.Key) (int, error) {
	*s.applies++
	return s.Store.Apply(ctx, puts, deletes)
}

// TestGlobalTargetMissingMeshTriedOnce: the puts of a mesh the zone lacks
// are tried once, not one by one, and NACKed in one line naming the mesh.
// The global resends a NACKed response whole, every half minute at most,
// for as long as the Mesh is missing (a Mesh this zone refused): one store
// transaction and one line per policy of that mesh, at every retry, would
// be for nothing, since only this stream writes the zone's Meshes.
func TestGlobalTargetMissingMeshTriedOnce(t *testing.T) {
	ctx := context.Background()
	mem := store.NewMemory(0)
	if _, err := mem.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "here"}}); err != nil {
		t.Fatal(err)
	}
	applies := 0
	tgt := &globalTarget{store: countingStore{mem, &applies}, log: zaptest.NewLogger(t), zone: "zone-b", held: map[string]map[string]bool{}}
	routeD, _ := api.Lookup("TrafficRoute")
	if _, err := tgt.Held(ctx, routeD); err != nil {
		t.Fatal(err)
	}
	route := func(mesh, name string) *api.TrafficRoute {
		return &api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: mesh, Name: name},
			Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: "s"}, Split: []api.Split{{Weight: 1}}}}
	}
	var resources []*discovery.Resource
	for i := range 50 {
		resources = append(resources, entry(t, route("away", fmt.Sprintf("r%d", i))))
	}
	here := route("here", "r")
	resources = append(resources, entry(t, here))
	err := tgt.Apply(ctx, routeD, resources, nil)
	if !kds.IsRejection(err) || !errors.Is(err, store.ErrMeshNotFound) {
		t.Fatalf("apply with a missing mesh's policies = %v, want a rejection", err)
	}
	if n := strings.Count(err.Error(), "mesh not found"); n != 1 || !strings.Contains(err.Error(), "50 TrafficRoute") {
		t.Errorf("the rejection says \"mesh not found\" %d times, want once, counting the mesh's 50: %v", n, err)
	}
	if !has(mem, api.KeyOf(here)) {
		t.Fatal("the policy of a mesh the zone has was held back")
	}
	if applies > 3 { // the batch, the missing mesh's first, here's
		t.Errorf("%d store applies for one missing mesh's 50 policies and another's one, want 3", applies)
	}
}
