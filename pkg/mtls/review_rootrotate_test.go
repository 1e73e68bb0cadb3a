package mtls

import (
	"context"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
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
	st := caStore(t, "zone-1", "zone-2")
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

// TestRootRotationZoneAwayAtTheSwitch: a zone that received the next root
// (the publishing step) but was away from the global when the other
// zones' intermediates of the next root were signed lacks their records,
// so its sidecars refuse the other zones' certificates from the moment
// those zones switch, not only from the old root's retirement; its
// proxyless applications, while nothing is revoked, trust both roots and
// admit them. (README, "Replacing a mesh's root", says so.)
func TestRootRotationZoneAwayAtTheSwitch(t *testing.T) {
	tm := Timing{Published: time.Hour}
	t0 := time.Now().UTC()
	first, _ := NewCA("default", t0)
	zones := map[string]bool{"zone-1": true, "zone-2": true}
	s := &caState{root: first, zcas: map[string]*api.ZoneCA{}}
	s.plan(t, tm, zones, t0)
	s.rotateRoot(t, t0)
	away := keyless(t, s.root) // zone-2's copy: it leaves now
	t2 := t0.Add(tm.Published + time.Minute)
	s.plan(t, tm, zones, t2)
	t3 := t2.Add(tm.Published + time.Minute)
	s.plan(t, tm, zones, t3) // zone-1 switches
	if !s.root.Rotating() {
		t.Fatal("retired already")
	}
	leaf := leafOf(t, s.zcas["zone-1"], false, t3)
	err := verifyAt(t, leaf, away, t3)
	if err == nil || !strings.Contains(err.Error(), "no revocation list") {
		t.Fatalf("zone-1's certificate after its switch, at the sidecars of a zone away since the publishing: %v, want refused for want of its issuer's list", err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(away.ProxylessTrust(t3)))
	inter := x509.NewCertPool()
	inter.AddCert(leaf[1])
	if _, err := leaf[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: t3, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("at the proxyless applications of that zone: %v", err)
	}
}

// TestRootRotationOfARootAboutToEnd: a root replaced because its end is
// near ("an end approaching") may end during the rotation: the rotation
// still runs to its end, and meanwhile the mesh's CAs are still kept
// (Plan does not fail, for this mesh, from then on), and a root already
// past its end can still be replaced.
func TestRootRotationOfARootAboutToEnd(t *testing.T) {
	// Each step comes more than an hour (the lists' backdating) after
	// the root's end.
	tm := Timing{Published: 3 * time.Hour}
	t0 := time.Now().UTC()
	first, err := NewCA("default", t0.AddDate(-10, 0, 0).Add(30*time.Minute)) // ends at t0+30m
	if err != nil {
		t.Fatal(err)
	}
	end := mustCert(t, first.CertPEM).NotAfter
	zones := map[string]bool{"zone-1": true}
	s := &caState{root: first, zcas: map[string]*api.ZoneCA{}}
	s.plan(t, tm, zones, t0)
	s.rotateRoot(t, t0)
	now := t0
	for i := 0; i < 6 && s.root.Rotating(); i++ {
		now = now.Add(tm.Published + time.Minute)
		puts, deletes, what, err := tm.Plan(s.root, s.zcas, zones, now)
		if err != nil {
			t.Fatalf("%s after the old root's end (step %d): %v", now.Sub(end).Round(time.Minute), i, err)
		}
		s.apply(t, puts, deletes)
		t.Logf("%s: %q", now.Sub(t0).Round(time.Minute), what)
	}
	if s.root.Rotating() {
		t.Fatal("the rotation of a root that ended during it never completes")
	}

	// A root already past its end: replacing it starts, and the zones
	// move to the next root at once (nothing chains to the old one any
	// more), intermediates of the old one being no good.
	late, err := NewCA("default", t0.AddDate(-10, 0, 0).Add(-2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	s = &caState{root: late, zcas: map[string]*api.ZoneCA{}}
	s.plan(t, Timing{Published: time.Hour}, zones, t0.Add(-10*time.Hour)) // while it lasted
	s.rotateRoot(t, t0)
	s.plan(t, Timing{Published: time.Hour}, zones, t0.Add(time.Minute))
	if next := mustCert(t, s.root.NextCertPEM); !signedBy(s.zcas["zone-1"].CertPEM, next) {
		t.Fatal("after a root past its end was replaced, the zone still issues under it")
	}
	for i := range 3 {
		if !s.root.Rotating() {
			break
		}
		s.plan(t, Timing{Published: time.Hour}, zones, t0.Add(time.Duration(i+1)*(time.Hour+time.Minute)))
	}
	if s.root.Rotating() {
		t.Fatal("the replacement of a root past its end never completes")
	}
}

// TestRootListsDue: a root's list is signed again past half its validity,
// the next root's too while there is one, but not one that lasts as long
// as its root (a root past its end being replaced would otherwise be
// written at every pass of the authority).
func TestRootListsDue(t *testing.T) {
	t0 := time.Now().UTC()
	root, _ := NewCA("default", t0)
	if err := SignRootCRL(root, t0); err != nil {
		t.Fatal(err)
	}
	if crlDue(root, t0.Add(CRLValidity/2-time.Hour)) || !crlDue(root, t0.Add(CRLValidity/2+time.Hour)) {
		t.Fatal("a root's list: due at the wrong time")
	}
	if err := publishNextRoot(root, t0); err != nil {
		t.Fatal(err)
	}
	stale := root.NextCRLPEM
	if err := SignRootCRL(root, t0.Add(CRLValidity/2)); err != nil {
		t.Fatal(err)
	}
	root.NextCRLPEM = stale // as if only the root's list had been signed again
	if !crlDue(root, t0.Add(CRLValidity/2+2*time.Hour)) {
		t.Fatal("the next root's list past half its validity is not due")
	}
	ending, _ := NewCA("ending", t0.AddDate(-10, 0, 0).Add(-2*time.Hour)) // ended two hours ago
	if err := SignRootCRL(ending, t0); err != nil {
		t.Fatalf("the list of a root past its end: %v", err)
	}
	if crlDue(ending, t0.Add(time.Minute)) {
		t.Fatal("the list of a root past its end is due at every pass")
	}
}
