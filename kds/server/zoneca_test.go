package server_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// reconcile runs one pass of the global's CA authority over the whole store.
func reconcile(t *testing.T, st store.Store) {
	t.Helper()
	types := []string{"Mesh", "MeshCA", "ZoneCA", "Zone"}
	var all []api.Resource
	for _, typ := range types {
		res, err := st.List(context.Background(), store.ListOptions{Type: typ})
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, res.Items...)
	}
	a := &mtls.Authority{Store: st, Zones: mtls.EnabledZones, Log: zap.NewNop()}
	if err := a.Reconcile(context.Background(), store.NewView(all, types...)); err != nil {
		t.Fatal(err)
	}
}

// everything is every resource of every type in st, as JSON.
func everything(t *testing.T, st store.Store) string {
	t.Helper()
	var b strings.Builder
	for _, d := range api.Types() {
		res, err := st.List(context.Background(), store.ListOptions{Type: d.Type})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range res.Items {
			doc, _ := json.Marshal(r)
			b.Write(doc)
		}
	}
	return b.String()
}

// TestZoneCAsReachOnlyTheirZone: each zone receives its own intermediate
// (with its key) and no other zone's, and the mesh's root without its key,
// even a zone that held the root with its key from before; a rotation
// reaches the zone, and disabling a zone revokes its intermediate in the
// CRL every other zone receives.
func TestZoneCAsReachOnlyTheirZone(t *testing.T) {
	ctx := context.Background()
	gst := store.NewMemory(0)
	for _, r := range []api.Resource{
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}, MTLS: &api.MeshMTLS{Enabled: true}},
		&api.Zone{Meta: api.Meta{Type: "Zone", Name: "zone-1"}},
		&api.Zone{Meta: api.Meta{Type: "Zone", Name: "zone-2"}},
	} {
		if _, err := gst.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	reconcile(t, gst) // the root
	reconcile(t, gst) // the zones' intermediates
	r, err := gst.Get(ctx, api.Key{Type: "MeshCA", Mesh: "default", Name: mtls.CAName})
	if err != nil {
		t.Fatal(err)
	}
	root := r.(*api.MeshCA)
	if root.KeyPEM == "" || len(root.Intermediates) != 4 {
		t.Fatalf("the global's root: key %v, %d intermediates", root.KeyPEM != "", len(root.Intermediates))
	}

	// Zone 1 held the root with its key, as older globals sent it.
	st1 := store.NewMemory(0)
	old := api.DeepCopy(root).(*api.MeshCA)
	old.Version, old.Labels = 0, map[string]string{api.LabelOrigin: api.OriginGlobal}
	old.Intermediates, old.CRLPEM = nil, ""
	if _, err := st1.Apply(ctx, []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default", Labels: old.Labels}}, old}, nil); err != nil {
		t.Fatal(err)
	}
	g := startGlobal(t, gst, 5*time.Second)
	z1 := startZoneOn(t, g, "zone-1", "zone:zone-1", st1)
	z2 := startZone(t, g, "zone-2", "zone:zone-2")

	zoneCA := func(z *zone, name string) *api.ZoneCA {
		r, err := z.store.Get(ctx, api.Key{Type: "ZoneCA", Mesh: "default", Name: name})
		if err != nil {
			return nil
		}
		return r.(*api.ZoneCA)
	}
	meshCA := func(z *zone) *api.MeshCA {
		r, err := z.store.Get(ctx, api.Key{Type: "MeshCA", Mesh: "default", Name: mtls.CAName})
		if err != nil {
			return nil
		}
		return r.(*api.MeshCA)
	}
	for _, z := range []*zone{z1, z2} {
		testutil.Until(t, 30*time.Second, "its intermediate and the keyless root in "+z.name, func() bool {
			ca, m := zoneCA(z, z.name), meshCA(z)
			return ca != nil && ca.KeyPEM != "" && m != nil && m.CRLPEM != "" && len(m.Intermediates) == 4
		})
	}
	rootKey := strings.ReplaceAll(strings.TrimSpace(root.KeyPEM), "\n", `\n`) // as JSON writes it
	if !strings.Contains(everything(t, gst), rootKey) {
		t.Fatal("the search for the root's key does not find it where it is")
	}
	for _, tc := range []struct{ z, other *zone }{{z1, z2}, {z2, z1}} {
		if zoneCA(tc.z, tc.other.name) != nil {
			t.Fatalf("%s was sent %s's intermediate", tc.z.name, tc.other.name)
		}
		if m := meshCA(tc.z); m.KeyPEM != "" || m.CertPEM != root.CertPEM {
			t.Fatalf("%s holds the root with key %v", tc.z.name, m.KeyPEM != "")
		}
		if strings.Contains(everything(t, tc.z.store), rootKey) {
			t.Fatalf("the root's private key is somewhere in %s's store", tc.z.name)
		}
	}
	if atGlobal, _ := gst.Get(ctx, api.Key{Type: "ZoneCA", Mesh: "default", Name: "zone-1"}); zoneCA(z1, "zone-1").CertPEM != atGlobal.(*api.ZoneCA).CertPEM {
		t.Fatal("zone-1 holds another intermediate than the global made for it")
	}

	// Rotated at the global: the new intermediate reaches zone-1.
	before := zoneCA(z1, "zone-1").CertPEM
	if _, err := (mtls.Timing{}).Rotate(ctx, gst, "default", "zone-1", false, store.Now()); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 30*time.Second, "the rotated intermediate in zone-1", func() bool {
		ca := zoneCA(z1, "zone-1")
		return ca != nil && ca.CertPEM != before && len(meshCA(z1).Intermediates) == 5
	})

	// Disabled at the global: zone-2's intermediate is revoked in the root's
	// CRL, which zone-1 receives.
	z, _ := gst.Get(ctx, api.Key{Type: "Zone", Name: "zone-2"})
	off := false
	z.(*api.Zone).Enabled = &off
	if _, err := gst.Update(ctx, z); err != nil {
		t.Fatal(err)
	}
	reconcile(t, gst)
	testutil.Until(t, 30*time.Second, "zone-2's intermediate revoked in zone-1's copy of the root", func() bool {
		for _, in := range meshCA(z1).Intermediates {
			if in.Zone == "zone-2" && in.Revoked() {
				return true
			}
		}
		return false
	})
	if has(gst, api.Key{Type: "ZoneCA", Mesh: "default", Name: "zone-2"}) {
		t.Fatal("the disabled zone's intermediate is still at the global")
	}
}
