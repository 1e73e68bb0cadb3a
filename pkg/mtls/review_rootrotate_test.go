package mtls

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// TestZoneRotateDuringRootSwitch: `ursactl zone rotate-ca` (without
// --revoke-previous) asked once the mesh's next root signs intermediates,
// but before the authority has prepared the zone a next intermediate of
// the next root, switches the zone to an intermediate every other zone
// already holds the record (and so the revocation list) of, as a rotation
// does at any other time: no peer is asked to verify a certificate whose
// issuer's list it does not hold yet. (It used to sign a fresh pair under
// the next root and issue from it at once.)
func TestZoneRotateDuringRootSwitch(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory(0)
	for _, r := range []api.Resource{
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}, MTLS: &api.MeshMTLS{Enabled: true}},
		&api.Zone{Meta: api.Meta{Type: "Zone", Name: "zone-1"}},
		&api.Zone{Meta: api.Meta{Type: "Zone", Name: "zone-2"}},
	} {
		if _, err := st.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	tm := Timing{Published: time.Hour}
	t0 := time.Now().UTC()
	now := t0
	a := &Authority{Store: st, Zones: EnabledZones, Timing: tm, Log: zap.NewNop(), Now: func() time.Time { return now }}
	for range 2 {
		if err := a.Reconcile(ctx, viewOf(t, st)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tm.RotateRoot(ctx, st, "default", t0); err != nil {
		t.Fatal(err)
	}
	// No pass of the authority between the switch and the operator's
	// rotation: the window is up to a quarter of Published after the
	// switch starts, or as long as the authority cannot write.
	r, err := st.Get(ctx, api.Key{Type: "MeshCA", Mesh: "default", Name: CAName})
	if err != nil {
		t.Fatal(err)
	}
	held := keyless(t, r.(*api.MeshCA)) // what zone-2's proxies hold
	switchAt := t0.Add(tm.Published + time.Minute)
	rec, err := tm.Rotate(ctx, st, "default", "zone-1", false, switchAt)
	if err != nil {
		t.Fatal(err)
	}
	known := false
	for _, in := range held.Intermediates {
		known = known || in.Serial == rec.Serial
	}
	if !known {
		t.Errorf("zone-1 issues from intermediate %s, whose record no other zone holds yet", rec.Serial)
	}
	z, err := st.Get(ctx, api.Key{Type: "ZoneCA", Mesh: "default", Name: "zone-1"})
	if err != nil {
		t.Fatal(err)
	}
	leaf := leafOf(t, z.(*api.ZoneCA), false, switchAt)
	if err := verifyAt(t, leaf, held, switchAt); err != nil {
		t.Errorf("a certificate zone-1 issues right after the rotation, at zone-2: %v", err)
	}
	// The rotation still completes: the authority moves zone-1 on.
	for i := range 4 {
		now = switchAt.Add(time.Duration(i+1) * (tm.Published + time.Minute))
		for range 2 {
			if err := a.Reconcile(ctx, viewOf(t, st)); err != nil {
				t.Fatal(err)
			}
		}
	}
	r, err = st.Get(ctx, api.Key{Type: "MeshCA", Mesh: "default", Name: CAName})
	if err != nil {
		t.Fatal(err)
	}
	if r.(*api.MeshCA).Rotating() {
		t.Fatal("the root's rotation did not complete after a zone's rotation during it")
	}
}
