package mtls

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/api/crd"
	"github.com/ursamesh/ursa/pkg/store"
)

// A Kubernetes zone keeps its copy of each mesh's MeshCA as one core Secret
// (crd.ToSecret), whose data the API server caps at crd.MaxSecretData. The
// copy grows with the zones and with their intermediates' rotations: each
// record is one intermediate the root signed that has not expired. These
// tests build that copy with the authority's own code (Plan, Rotate,
// RotateRoot's publishNextRoot) and measure its Secret.

// supportedZones is the federation the mesh CA's Secret is guaranteed to
// fit: every zone at the peak of its yearly renewal cycle, plus one manual
// rotation (ursactl zone rotate-ca) each within the year, one zone in ten
// of those with --revoke-previous; TestMeshCASecretFitsSupportedFederation
// fails when it would not fit. That shape reaches the limit at about 161
// zones (TestMeshCASecretSize; test/BENCHMARKS.md): 150 leaves a margin of
// 7 %. README ("Kubernetes zones") states it.
const supportedZones = 150

// fleet is one mesh's CAs at the global, in a memory store: what the
// authority plans from and writes to.
type fleet struct {
	st    *store.Memory
	zones map[string]bool
	now   time.Time
}

func newFleet(t testing.TB, zones int, now time.Time) *fleet {
	t.Helper()
	f := &fleet{st: store.NewMemory(0), zones: map[string]bool{}, now: now}
	for i := range zones {
		f.zones[fmt.Sprintf("zone-%d", i+1)] = true
	}
	root, err := NewCA("default", now)
	if err != nil {
		t.Fatal(err)
	}
	mesh := &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}, MTLS: &api.MeshMTLS{Enabled: true}}
	if _, err := f.st.Apply(context.Background(), []api.Resource{mesh, root}, nil); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fleet) root(t testing.TB) *api.MeshCA {
	t.Helper()
	r, err := f.st.Get(context.Background(), api.Key{Type: "MeshCA", Mesh: "default", Name: CAName})
	if err != nil {
		t.Fatal(err)
	}
	return r.(*api.MeshCA)
}

// plan makes the authority's pass at at, and reports whether it wrote.
func (f *fleet) plan(t testing.TB, at time.Time) bool {
	t.Helper()
	f.now = at
	res, err := f.st.List(context.Background(), store.ListOptions{Type: "ZoneCA"})
	if err != nil {
		t.Fatal(err)
	}
	zcas := map[string]*api.ZoneCA{}
	for _, r := range res.Items {
		zcas[r.GetMeta().Name] = r.(*api.ZoneCA)
	}
	puts, deletes, _, err := Timing{}.Plan(f.root(t), zcas, f.zones, at)
	if err != nil {
		t.Fatal(err)
	}
	if len(puts) == 0 && len(deletes) == 0 {
		return false
	}
	if _, err := f.st.Apply(context.Background(), puts, deletes); err != nil {
		t.Fatal(err)
	}
	return true
}

// rotate rotates every n-th zone's CA (ursactl zone rotate-ca), an hour
// later.
func (f *fleet) rotate(t testing.TB, every int, revokePrevious bool) {
	t.Helper()
	f.now = f.now.Add(time.Hour)
	for i := 0; i < len(f.zones); i += every {
		if _, err := (Timing{}).Rotate(context.Background(), f.st, "default", fmt.Sprintf("zone-%d", i+1), revokePrevious, f.now); err != nil {
			t.Fatal(err)
		}
	}
}

// secretData is the size of the data of the Secret a Kubernetes zone
// stores root's federated copy in (what KDS carries, through the real
// crd.ToSecret: crd.MaxSecretData applies to it), and that copy's number
// of records.
func secretData(t testing.TB, root *api.MeshCA) (size, records int, err error) {
	t.Helper()
	d, _ := api.Lookup("MeshCA")
	fed := d.Redact(root).(*api.MeshCA)
	obj, err := crd.ToSecret(fed, "ursa-system")
	if err != nil {
		return 0, len(fed.Intermediates), err
	}
	for _, v := range obj["data"].(map[string]any) {
		b, _ := base64.StdEncoding.DecodeString(v.(string))
		size += len(b)
	}
	return size, len(fed.Intermediates), nil
}

// renewalPeak returns the days since its zones were enabled at which the
// authority acts, up to the first at which a zone holds the most records
// in its yearly renewal cycle, found by running the authority daily on one
// zone for two years.
func renewalPeak(t testing.TB, start time.Time) (days []int, records int) {
	t.Helper()
	f := newFleet(t, 1, start)
	f.plan(t, start)
	var acted []int
	peakDay := 0
	for day := 1; day <= 730; day++ {
		if f.plan(t, start.AddDate(0, 0, day)) {
			acted = append(acted, day)
		}
		if n := len(f.root(t).Intermediates); n > records {
			records, peakDay = n, day
		}
	}
	for _, d := range acted {
		if d <= peakDay {
			days = append(days, d)
		}
	}
	return days, records
}

// peakFleet is zones enabled at start and run by the authority up to the
// peak of their renewal cycle (days, from renewalPeak).
func peakFleet(t testing.TB, zones int, start time.Time, days []int) *fleet {
	t.Helper()
	f := newFleet(t, zones, start)
	f.plan(t, start)
	for _, d := range days {
		f.plan(t, start.AddDate(0, 0, d))
	}
	return f
}

// shape is one measured federation: its Secret's size per zone, and the
// zones at which it would reach crd.MaxSecretData.
type shape struct {
	name            string
	size, records   int
	fixed, zones    int
	perZone, perRec float64
}

func (s shape) crossing() int { return int(float64(crd.MaxSecretData-s.fixed) / s.perZone) }

// TestMeshCASecretSize measures the mesh CA's Secret in a Kubernetes zone
// for a few shapes of a federation of 50 zones (the size is linear in the
// zones: every zone of a shape has the same records) and logs, for each,
// the bytes per zone and per record and the zones at which the Secret
// would reach Kubernetes' limit (go test ./pkg/mtls -run
// TestMeshCASecretSize -v; the figures are in test/BENCHMARKS.md). It
// checks only that the measurement is sound; the guard is
// TestMeshCASecretFitsSupportedFederation.
func TestMeshCASecretSize(t *testing.T) {
	if testing.Short() {
		t.Skip("signs hundreds of intermediates")
	}
	const zones = 50
	start := time.Now().UTC()
	days, peakRecords := renewalPeak(t, start)
	t.Logf("a zone's yearly renewal cycle: the authority acts on days %v, and a zone holds %d records at most", days, peakRecords)
	fixedSize, _, err := secretData(t, newFleet(t, 0, start).root(t))
	if err != nil {
		t.Fatal(err)
	}
	var shapes []shape
	measure := func(name string, f *fleet) {
		size, records, err := secretData(t, f.root(t))
		if err != nil {
			t.Fatalf("%s: %v (measure fewer zones: the size is linear in them)", name, err)
		}
		s := shape{name: name, size: size, records: records, fixed: fixedSize,
			perZone: float64(size-fixedSize) / zones, perRec: float64(size-fixedSize) / float64(records)}
		shapes = append(shapes, s)
	}

	fresh := newFleet(t, zones, start)
	fresh.plan(t, start)
	measure("every zone just enabled (current + next)", fresh)

	f := peakFleet(t, zones, start, days)
	measure("renewal peak (automatic renewals only)", f)
	f.rotate(t, 1, false)
	measure("renewal peak + 1 manual rotation per zone", f)

	f = peakFleet(t, zones, start, days)
	f.rotate(t, 1, false)
	f.rotate(t, 10, true)
	measure("renewal peak + 1 rotation per zone, 1 in 10 with --revoke-previous", f)

	f = peakFleet(t, zones, start, days)
	f.rotate(t, 1, false)
	f.rotate(t, 1, false)
	f.rotate(t, 1, false)
	f.rotate(t, 1, false)
	measure("renewal peak + 4 manual rotations per zone (quarterly)", f)

	// A root rotation at the renewal peak: the largest copy of every
	// step, the authority looking every quarter hour as it does by
	// default, until the old root has retired.
	f = peakFleet(t, zones, start, days)
	f.rotate(t, 1, false)
	rotating := f.root(t)
	if err := publishNextRoot(rotating, f.now); err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.Apply(context.Background(), []api.Resource{rotating}, nil); err != nil {
		t.Fatal(err)
	}
	var worst *api.MeshCA
	worstSize := 0
	for at := f.now; f.root(t).Rotating(); at = at.Add(NextPublished / 4) {
		if at.Sub(f.now) > 24*time.Hour {
			t.Fatal("the root's rotation did not end within a day")
		}
		f.plan(t, at)
		if size, _, _ := secretData(t, f.root(t)); size > worstSize {
			worst, worstSize = f.root(t), size
		}
	}
	measure("renewal peak + 1 rotation per zone, root rotation in progress (its largest step)", &fleet{st: memoryWith(t, worst)})

	for _, s := range shapes {
		t.Logf("%-85s %d zones: %8d bytes, %4d records; %6.0f bytes/zone, %5.0f bytes/record (fixed %d); reaches %d bytes at %d zones",
			s.name, zones, s.size, s.records, s.perZone, s.perRec, s.fixed, crd.MaxSecretData, s.crossing())
		if s.perRec < 100 || s.records < zones {
			t.Fatalf("%s: %d records, %.0f bytes each: not a measurement", s.name, s.records, s.perRec)
		}
	}
	if peakRecords < 2 {
		t.Fatalf("a zone holds %d records at its renewal peak, fewer than its current and next", peakRecords)
	}
}

// memoryWith is a store holding root alone (and its mesh), for fleet.root.
func memoryWith(t testing.TB, root *api.MeshCA) *store.Memory {
	t.Helper()
	st := store.NewMemory(0)
	root = api.DeepCopy(root).(*api.MeshCA)
	root.Version = 0
	mesh := &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}, MTLS: &api.MeshMTLS{Enabled: true}}
	if _, err := st.Apply(context.Background(), []api.Resource{mesh, root}, nil); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestMeshCASecretFitsSupportedFederation is the guard: a federation of
// supportedZones zones, built by the authority's own code at the peak of
// the zones' renewal cycle, each zone's CA rotated once by hand, one in
// ten of those with --revoke-previous, gives a mesh CA whose Secret a
// Kubernetes zone can store. It fails when a change to the records, or to
// what KDS carries of them, makes that federation too large.
func TestMeshCASecretFitsSupportedFederation(t *testing.T) {
	if testing.Short() {
		t.Skip("signs hundreds of intermediates")
	}
	start := time.Now().UTC()
	days, _ := renewalPeak(t, start)
	f := peakFleet(t, supportedZones, start, days)
	f.rotate(t, 1, false)
	f.rotate(t, 10, true)
	root := f.root(t)
	size, records, err := secretData(t, root)
	if err != nil {
		t.Fatalf("the mesh CA of %d zones does not fit a Kubernetes Secret: %v", supportedZones, err)
	}
	t.Logf("%d zones: %d records, %d bytes of Secret data (limit %d)", supportedZones, records, size, crd.MaxSecretData)
	if revoked := slices.IndexFunc(root.Intermediates, api.Intermediate.Revoked); revoked < 0 {
		t.Fatal("no record is revoked: the shape is not the one stated")
	}
	if size > crd.MaxSecretData {
		t.Fatalf("the mesh CA of %d zones needs %d bytes of Secret data, over %d", supportedZones, size, crd.MaxSecretData)
	}
}
