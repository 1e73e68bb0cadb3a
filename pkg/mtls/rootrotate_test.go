package mtls

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/proxy"
	"github.com/ursamesh/ursa/pkg/store"
)

// caState is one mesh's CAs as the store holds them: what Plan reads, with
// its puts and deletes applied as a transaction would (versions bumped).
type caState struct {
	root *api.MeshCA
	zcas map[string]*api.ZoneCA
}

func (s *caState) apply(t *testing.T, puts []api.Resource, deletes []api.Key) {
	t.Helper()
	for _, p := range puts {
		switch p := api.DeepCopy(p).(type) {
		case *api.MeshCA:
			if p.Version != s.root.Version {
				t.Fatalf("a put of the root on version %d over %d", p.Version, s.root.Version)
			}
			p.Version++
			s.root = p
		case *api.ZoneCA:
			if old := s.zcas[p.Name]; old != nil && old.Version != p.Version {
				t.Fatalf("a put of zone %s's CA on version %d over %d", p.Name, p.Version, old.Version)
			}
			p.Version++
			s.zcas[p.Name] = p
		}
	}
	for _, k := range deletes {
		delete(s.zcas, k.Name)
	}
}

// plan plans at now and applies what it planned.
// rotateRoot asks for the root's replacement at now, as the REST API's
// rotate-root does: the next root is published beside it.
func (s *caState) rotateRoot(t *testing.T, now time.Time) {
	t.Helper()
	rotating := api.DeepCopy(s.root).(*api.MeshCA)
	if err := publishNextRoot(rotating, now); err != nil {
		t.Fatalf("publishing the next root: %v", err)
	}
	s.apply(t, []api.Resource{rotating}, nil)
}

func (s *caState) plan(t *testing.T, tm Timing, zones map[string]bool, now time.Time) []string {
	t.Helper()
	puts, deletes, what, err := tm.Plan(s.root, s.zcas, zones, now)
	if err != nil {
		t.Fatal(err)
	}
	s.apply(t, puts, deletes)
	return what
}

// leafOf issues a workload certificate from zone's current intermediate
// (or its next one), as the zone does, and returns its chain, leaf first.
func leafOf(t *testing.T, z *api.ZoneCA, next bool, now time.Time) []*x509.Certificate {
	t.Helper()
	ca := z
	if next {
		ca = &api.ZoneCA{Meta: z.Meta, CertPEM: z.NextCertPEM, KeyPEM: z.NextKeyPEM}
	}
	s, err := SignerFromZoneCA(ca)
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.Issue(Subject{Mesh: "default", Services: []string{"web"}}, nil, 24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	var out []*x509.Certificate
	for rest := id.CertPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// verifyAt checks chain as a sidecar holding root (the copy a zone has)
// does at now: against the roots it trusts, then the revocation lists,
// with the built-in proxy's check, which wants a list from every CA.
func verifyAt(t *testing.T, chain []*x509.Certificate, root *api.MeshCA, now time.Time) error {
	t.Helper()
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(root.TrustBundle())) {
		t.Fatal("no root in the trust bundle")
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	chains, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		return err
	}
	lists, err := proxy.ParseRevocations([]byte(root.CRLBundle()))
	if err != nil {
		t.Fatal(err)
	}
	return lists.Check(chains[0], now)
}

func keyless(t *testing.T, root *api.MeshCA) *api.MeshCA {
	t.Helper()
	d, _ := api.Lookup("MeshCA")
	return d.Redact(api.DeepCopy(root)).(*api.MeshCA)
}

// TestRootRotationPhases walks a rotation of the root through Plan: the
// next root is published beside the root (both trusted, a list from each)
// and nothing is signed with it for Published; then each zone's next
// intermediate is signed by it, and Published later the zones issue from
// it; Published after that the old root retires. Certificates issued under
// the old root verify throughout, at every zone's copy of the root as it
// was at each step; certificates of the new intermediates verify at the
// copies published before they issue; after retirement a chain to the old
// root is refused; the zones' copies never hold a root's key.
func TestRootRotationPhases(t *testing.T) {
	tm := Timing{Published: time.Hour}
	t0 := time.Now().UTC()
	first, err := NewCA("default", t0)
	if err != nil {
		t.Fatal(err)
	}
	zones := map[string]bool{"zone-1": true, "zone-2": true}
	s := &caState{root: first, zcas: map[string]*api.ZoneCA{}}
	s.plan(t, tm, zones, t0)
	oldRoot := mustCert(t, s.root.CertPEM)
	old1, old2 := leafOf(t, s.zcas["zone-1"], false, t0), leafOf(t, s.zcas["zone-2"], false, t0)
	var copies []*api.MeshCA // every version a zone may hold, oldest first
	copies = append(copies, keyless(t, s.root))
	checkOld := func(now time.Time) {
		t.Helper()
		for i, c := range copies {
			for _, leaf := range [][]*x509.Certificate{old1, old2} {
				if err := verifyAt(t, leaf, c, now); err != nil {
					t.Fatalf("a certificate of the old root is refused at copy %d of the root: %v", i, err)
				}
			}
		}
	}

	// Phase 1: the next root is published; both are trusted, each with its
	// list; nothing is signed with it yet.
	t1 := t0.Add(time.Minute)
	s.rotateRoot(t, t1)
	copies = append(copies, keyless(t, s.root))
	next := mustCert(t, s.root.NextCertPEM)
	if next.Subject.String() == oldRoot.Subject.String() || next.CheckSignatureFrom(next) != nil || !next.IsCA {
		t.Fatalf("the next root: subject %q (the root's %q), self-signed CA?", next.Subject, oldRoot.Subject)
	}
	if err := api.Validate(s.root); err != nil {
		t.Fatal(err)
	}
	if c := copies[len(copies)-1]; c.KeyPEM != "" || c.NextKeyPEM != "" || strings.Count(c.TrustBundle(), "BEGIN CERTIFICATE") != 2 {
		t.Fatalf("a zone's copy during the rotation: key %t, next key %t, %d roots trusted", c.KeyPEM != "", c.NextKeyPEM != "", strings.Count(c.TrustBundle(), "BEGIN CERTIFICATE"))
	}
	if mustCRL(t, s.root.NextCRLPEM).CheckSignatureFrom(next) != nil || !strings.Contains(s.root.CRLBundle(), s.root.NextCRLPEM) {
		t.Fatal("the next root's list is not signed by it, or not in the bundle")
	}
	checkOld(t1)
	if what := s.plan(t, tm, zones, t1.Add(tm.Published-time.Minute)); len(what) != 0 {
		t.Fatalf("before the next root was published for Published: %q", what)
	}

	// Phase 2a: published long enough: each zone's next intermediate is
	// signed by the next root; the current one goes on issuing.
	t2 := t1.Add(tm.Published + time.Minute)
	cur1 := s.zcas["zone-1"].CertPEM
	what := s.plan(t, tm, zones, t2)
	if len(what) != 2 || !strings.Contains(what[0], "moving to the mesh's next root") {
		t.Fatalf("after publishing: %q", what)
	}
	copies = append(copies, keyless(t, s.root))
	for zone, z := range s.zcas {
		if !signedBy(z.NextCertPEM, next) || signedBy(z.CertPEM, next) {
			t.Fatalf("%s: its next intermediate is not the next root's, or its current one already is", zone)
		}
	}
	if s.zcas["zone-1"].CertPEM != cur1 {
		t.Fatal("zone-1 stopped issuing from its intermediate before the next one was published")
	}
	checkOld(t2)
	if what := s.plan(t, tm, zones, t2.Add(tm.Published-time.Minute)); len(what) != 0 {
		t.Fatalf("the zones switched before their next intermediates were published: %q", what)
	}

	// Phase 2b: the zones switch. What they issue now verifies at the copy
	// published with the next intermediates (phase 2a) and after.
	t3 := t2.Add(tm.Published + time.Minute)
	what = s.plan(t, tm, zones, t3)
	if len(what) != 2 || !strings.Contains(what[0], "renewed the CA of zone zone-1") || !strings.Contains(what[0], "next root") {
		t.Fatalf("the switch: %q", what)
	}
	copies = append(copies, keyless(t, s.root))
	new1, new2 := leafOf(t, s.zcas["zone-1"], false, t3), leafOf(t, s.zcas["zone-2"], false, t3)
	for i, c := range copies[2:] {
		for _, leaf := range [][]*x509.Certificate{new1, new2} {
			if err := verifyAt(t, leaf, c, t3); err != nil {
				t.Fatalf("a certificate of a new intermediate is refused at copy %d of the root: %v", i+2, err)
			}
		}
	}
	if err := verifyAt(t, new1, copies[0], t3); err == nil {
		t.Fatal("a copy of the root from before the rotation trusts the new root: the check cannot fail")
	}
	checkOld(t3)
	if st := tm.StatusOf(s.root, []*api.ZoneCA{s.zcas["zone-1"], s.zcas["zone-2"]}, t3); st.Phase != api.RootPhaseRetiring || len(st.Zones) != 2 || !st.Zones[0].OnNext {
		t.Fatalf("status after the switch: %+v", st)
	}

	// Phase 3: the old root stays while the zones' proxies get their new
	// certificates, then retires: the next root is the root, alone.
	if what := s.plan(t, tm, zones, t3.Add(tm.Published-time.Minute)); len(what) != 0 {
		t.Fatalf("the old root retired before the zones had issued under the new one for Published: %q", what)
	}
	checkOld(t3.Add(tm.Published - time.Minute))
	t4 := t3.Add(tm.Published + time.Minute)
	what = s.plan(t, tm, zones, t4)
	if len(what) != 1 || !strings.Contains(what[0], "retired the mesh's previous root CA") {
		t.Fatalf("retirement: %q", what)
	}
	if s.root.Rotating() || s.root.CertPEM != copies[1].NextCertPEM || s.root.NextKeyPEM != "" || s.root.NextCRLPEM != "" {
		t.Fatal("after retirement the next root is not the root, alone")
	}
	if err := api.Validate(s.root); err != nil {
		t.Fatal(err)
	}
	if mustCRL(t, s.root.CRLPEM).CheckSignatureFrom(next) != nil {
		t.Fatal("the root's list is not the new root's")
	}
	for _, in := range s.root.Intermediates {
		if in.CertPEM == "" || !signedBy(in.CertPEM, next) {
			t.Fatalf("a record of zone %s's intermediate %s, not the new root's, stays", in.Zone, in.Serial)
		}
	}
	if strings.Contains(s.root.ProxylessTrust(t4), strings.TrimSpace(first.CertPEM)) {
		t.Fatal("proxyless applications still trust the old root")
	}
	retired := keyless(t, s.root)
	for _, leaf := range [][]*x509.Certificate{new1, new2} {
		if err := verifyAt(t, leaf, retired, t4); err != nil {
			t.Fatalf("after retirement a certificate of the new root is refused: %v", err)
		}
	}
	for _, leaf := range [][]*x509.Certificate{old1, old2} {
		var unknown x509.UnknownAuthorityError
		if err := verifyAt(t, leaf, retired, t4); !errors.As(err, &unknown) {
			t.Fatalf("after retirement a chain to the old root: %v, want unknown authority", err)
		}
	}
	if what := s.plan(t, tm, zones, t4.Add(time.Hour)); len(what) != 0 {
		t.Fatalf("a retired rotation goes on: %q", what)
	}
	if st := tm.StatusOf(s.root, nil, t4); st.Phase != api.RootPhaseStable || st.Next != nil || st.Root.Serial != next.SerialNumber.Text(16) {
		t.Fatalf("status after retirement: %+v", st)
	}
}

// TestRootRotationZoneDisabledAndAdded: a zone disabled during the
// rotation has both its intermediates revoked, each in the list of the
// root that signed it, and no longer holds retirement up; a zone enabled
// during the switch gets its CA from the next root at once; retirement
// then waits for that one too.
func TestRootRotationZoneDisabledAndAdded(t *testing.T) {
	tm := Timing{Published: time.Hour}
	t0 := time.Now().UTC()
	first, _ := NewCA("default", t0)
	zones := map[string]bool{"zone-1": true, "zone-2": true}
	s := &caState{root: first, zcas: map[string]*api.ZoneCA{}}
	s.plan(t, tm, zones, t0)
	s.rotateRoot(t, t0)
	oldRoot, next := mustCert(t, s.root.CertPEM), mustCert(t, s.root.NextCertPEM)
	t2 := t0.Add(tm.Published + time.Minute)
	s.plan(t, tm, zones, t2) // next intermediates signed by the next root
	z2 := s.zcas["zone-2"]
	curLeaf, nextLeaf := leafOf(t, z2, false, t2), leafOf(t, z2, true, t2)
	if err := verifyAt(t, nextLeaf, s.root, t2); err != nil {
		t.Fatalf("zone-2's next intermediate's certificate before zone-2 was disabled: %v", err)
	}

	// zone-2 disabled: revoked and deleted; its current intermediate
	// (the old root's) in the old root's list, its next (the next
	// root's) in the next root's.
	t3 := t2.Add(time.Minute)
	zones = map[string]bool{"zone-1": true}
	what := s.plan(t, tm, zones, t3)
	if s.zcas["zone-2"] != nil || !strings.Contains(strings.Join(what, ";"), "revoked the CA of zone zone-2") {
		t.Fatalf("disabling zone-2 mid-rotation: %q", what)
	}
	serials := func(crlPEM string) map[string]bool {
		out := map[string]bool{}
		for _, e := range mustCRL(t, crlPEM).RevokedCertificateEntries {
			out[e.SerialNumber.Text(16)] = true
		}
		return out
	}
	cur, nxt := serialOf(z2.CertPEM), serialOf(z2.NextCertPEM)
	if got := serials(s.root.CRLPEM); len(got) != 1 || !got[cur] {
		t.Fatalf("the old root's list revokes %v, want zone-2's current intermediate %s alone", got, cur)
	}
	if got := serials(s.root.NextCRLPEM); len(got) != 1 || !got[nxt] {
		t.Fatalf("the next root's list revokes %v, want zone-2's next intermediate %s alone", got, nxt)
	}
	if mustCRL(t, s.root.CRLPEM).CheckSignatureFrom(oldRoot) != nil || mustCRL(t, s.root.NextCRLPEM).CheckSignatureFrom(next) != nil {
		t.Fatal("a root's list is not signed by it")
	}
	for _, leaf := range [][]*x509.Certificate{curLeaf, nextLeaf} {
		if err := verifyAt(t, leaf, keyless(t, s.root), t3); err == nil || !strings.Contains(err.Error(), "revoked") {
			t.Fatalf("a certificate of disabled zone-2 (issuer %s): %v, want revoked", leaf[1].SerialNumber.Text(16), err)
		}
	}

	// zone-3 enabled while zone-1 switches: its CA is the next root's.
	t4 := t2.Add(tm.Published + time.Minute)
	zones = map[string]bool{"zone-1": true, "zone-3": true}
	s.plan(t, tm, zones, t4)
	for zone, z := range s.zcas {
		if !signedBy(z.CertPEM, next) || !signedBy(z.NextCertPEM, next) {
			t.Fatalf("%s does not issue under the next root after the switch", zone)
		}
	}
	// zone-3's CA is new: retirement waits Published from it, then comes.
	if what := s.plan(t, tm, zones, t4.Add(tm.Published-time.Minute)); len(what) != 0 {
		t.Fatalf("retired before zone-3 had issued for Published: %q", what)
	}
	if what := s.plan(t, tm, zones, t4.Add(tm.Published+time.Minute)); len(what) != 1 || !strings.Contains(what[0], "retired") {
		t.Fatalf("retirement without zone-2: %q", what)
	}
	for _, in := range s.root.Intermediates {
		if in.Zone == "zone-2" && in.Serial == cur {
			t.Fatal("the record of zone-2's old-root intermediate stays after retirement")
		}
	}
	// The next root's revocation of zone-2's next intermediate stays.
	if got := serials(s.root.CRLPEM); !got[nxt] {
		t.Fatalf("after retirement the root's list revokes %v, lost zone-2's %s", got, nxt)
	}
}

// TestRootRotationOnAStore: on a real (memory) store, two authority
// replicas deciding from the same view do not both write (the loser's
// transaction conflicts and changes nothing, and it then finds nothing to
// do), the rotation runs to its end by the authority's passes alone, and
// the REST endpoints answer bad requests with a 4xx naming the problem,
// changing nothing.
func TestRootRotationOnAStore(t *testing.T) {
	ctx := context.Background()
	st := caStore(t, "zone-1", "zone-2")
	tm := Timing{Published: time.Hour}
	now := time.Now().UTC()
	clock := func() time.Time { return now }
	a := &Authority{Store: st, Zones: EnabledZones, Timing: tm, Log: zap.NewNop(), Now: clock}
	b := &Authority{Store: st, Zones: EnabledZones, Timing: tm, Log: zap.NewNop(), Now: clock}
	for range 2 {
		if err := a.Reconcile(ctx, viewOf(t, st)); err != nil {
			t.Fatal(err)
		}
	}
	get := func() *api.MeshCA {
		t.Helper()
		r, err := st.Get(ctx, api.Key{Type: "MeshCA", Mesh: "default", Name: CAName})
		if err != nil {
			t.Fatal(err)
		}
		return r.(*api.MeshCA)
	}
	mux := http.NewServeMux()
	for p, h := range Handlers(st, tm, nil, zap.NewNop()) {
		mux.Handle(p, h)
	}
	do := func(method, path, body string) (int, string) {
		rr := httptest.NewRecorder()
		mux.ServeHTTP(rr, httptest.NewRequest(method, path, strings.NewReader(body)))
		return rr.Code, rr.Body.String()
	}

	// Bad requests, before and during a rotation: nothing changes.
	before := get()
	for _, tc := range []struct {
		path, body string
		code       int
		says       string
	}{
		{"/meshes/plain/ca/rotate-root", "", 400, "does not have mTLS enabled"},
		{"/meshes/nope/ca/rotate-root", "", 404, "no such mesh"},
		{"/meshes/Not_A_Mesh/ca/rotate-root", "", 400, "not a mesh name"},
		{"/meshes/default/ca/rotate-root", `{"revokePrevious":true}`, 400, "takes no options"},
	} {
		code, body := do("POST", tc.path, tc.body)
		if code != tc.code || !strings.Contains(body, tc.says) {
			t.Errorf("POST %s %s: %d %s, want %d saying %q", tc.path, tc.body, code, body, tc.code, tc.says)
		}
	}
	if after := get(); after.Version != before.Version || after.Rotating() {
		t.Fatal("a refused rotation changed the mesh's CA")
	}
	if code, body := do("GET", "/meshes/default/ca", ""); code != 200 || !strings.Contains(body, `"phase":"stable"`) || strings.Contains(body, "PRIVATE KEY") {
		t.Fatalf("status before: %d %s", code, body)
	}

	code, body := do("POST", "/meshes/default/ca/rotate-root", "")
	if code != 200 || !strings.Contains(body, `"phase":"publishing"`) || strings.Contains(body, "PRIVATE KEY") {
		t.Fatalf("rotate-root: %d %s", code, body)
	}
	started := get()
	code, body = do("POST", "/meshes/default/ca/rotate-root", "")
	if code != 409 || !strings.Contains(body, "already being rotated") || !strings.Contains(body, serialOf(started.NextCertPEM)) {
		t.Fatalf("a second rotate-root: %d %s, want 409 naming the rotation under way", code, body)
	}
	if _, err := tm.RotateRoot(ctx, st, "default", now); !errors.Is(err, ErrRootRotating) {
		t.Fatalf("a second rotation: %v", err)
	}
	if after := get(); after.Version != started.Version || after.NextCertPEM != started.NextCertPEM {
		t.Fatal("a refused second rotation changed the mesh's CA")
	}

	// Two replicas, one view, each step: one writes, the other conflicts.
	steps := []time.Duration{tm.Published + time.Minute, tm.Published + time.Minute, tm.Published + time.Minute}
	for i, d := range steps {
		now = now.Add(d)
		view := viewOf(t, st)
		v := get().Version
		if err := a.Reconcile(ctx, view); err != nil {
			t.Fatal(err)
		}
		if get().Version != v+1 {
			t.Fatalf("step %d: the first replica wrote nothing", i)
		}
		if err := b.Reconcile(ctx, view); err != nil { // the same, older view
			t.Fatal(err)
		}
		if get().Version != v+1 {
			t.Fatalf("step %d: the second replica wrote over the first from an older view", i)
		}
		if err := b.Reconcile(ctx, viewOf(t, st)); err != nil {
			t.Fatal(err)
		}
		if get().Version != v+1 {
			t.Fatalf("step %d: the second replica found more to do once it saw the first's write", i)
		}
	}
	done := get()
	if done.Rotating() || done.CertPEM != started.NextCertPEM {
		t.Fatalf("after three steps the rotation is not done: rotating %v", done.Rotating())
	}
	zcas, _ := store.All[*api.ZoneCA](viewOf(t, st))
	if len(zcas) != 2 {
		t.Fatalf("%d zone CAs", len(zcas))
	}
	// Each zone's two intermediates and nothing else: no record of a CA
	// that a losing replica signed and never stored.
	if len(done.Intermediates) != 4 {
		t.Fatalf("%d records after the rotation, want each zone's current and next", len(done.Intermediates))
	}
	for _, z := range zcas {
		if !signedBy(z.CertPEM, mustCert(t, done.CertPEM)) {
			t.Fatalf("%s issues under a root that is not the mesh's", z.Name)
		}
	}
	if code, body := do("GET", "/meshes/default/ca", ""); code != 200 || !strings.Contains(body, `"phase":"stable"`) || !strings.Contains(body, serialOf(done.CertPEM)) {
		t.Fatalf("status after: %d %s", code, body)
	}
	if code, _ := do("GET", "/meshes/plain/ca", ""); code != 404 {
		t.Fatalf("status of a mesh without mTLS: %d", code)
	}
}

// TestRootStatusSaysWhyThereIsNone: GET /meshes/{mesh}/ca of a mesh with no
// root says why: no such mesh, no mTLS (404), or a root not made yet
// (409, as rotate-root answers then).
func TestRootStatusSaysWhyThereIsNone(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory(0)
	for _, r := range []api.Resource{
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "fresh"}, MTLS: &api.MeshMTLS{Enabled: true}},
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "plain"}},
	} {
		if _, err := st.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	mux := http.NewServeMux()
	for p, h := range Handlers(st, Timing{}, nil, zap.NewNop()) {
		mux.Handle(p, h)
	}
	for _, tc := range []struct {
		mesh string
		code int
		says string
	}{
		{"nope", 404, "no such mesh"},
		{"plain", 404, "does not have mTLS enabled"},
		{"fresh", 409, "not made yet"},
	} {
		rr := httptest.NewRecorder()
		mux.ServeHTTP(rr, httptest.NewRequest("GET", "/meshes/"+tc.mesh+"/ca", nil))
		if rr.Code != tc.code || !strings.Contains(rr.Body.String(), tc.says) {
			t.Errorf("GET /meshes/%s/ca: %d %s, want %d saying %q", tc.mesh, rr.Code, rr.Body.String(), tc.code, tc.says)
		}
	}
}

// planAway is caState.plan with zones away (not known to be up to date).
func (s *caState) planAway(t *testing.T, tm Timing, zones, away map[string]bool, now time.Time) []string {
	t.Helper()
	puts, deletes, what, err := tm.plan(s.root, s.zcas, zones, away, now)
	if err != nil {
		t.Fatal(err)
	}
	s.apply(t, puts, deletes)
	return what
}

// TestRootRotationWaitsForZonesAway: while an enabled zone is away (it
// may not hold the next root's intermediates and their lists), no zone
// moves to the next root's intermediate and the old root does not retire:
// the away zone's sidecars would refuse those certificates. The next
// intermediates are still signed and published (harmless, and ready when it
// is back); once it is, the rotation goes on, and the zones move and the
// old root retires as without it.
func TestRootRotationWaitsForZonesAway(t *testing.T) {
	tm := Timing{Published: time.Hour}
	t0 := time.Now().UTC()
	first, err := NewCA("default", t0)
	if err != nil {
		t.Fatal(err)
	}
	zones := map[string]bool{"zone-1": true, "zone-2": true, "zone-3": true}
	away := map[string]bool{"zone-3": true}
	s := &caState{root: first, zcas: map[string]*api.ZoneCA{}}
	s.plan(t, tm, zones, t0)
	t1 := t0.Add(time.Minute)
	s.rotateRoot(t, t1)
	next := mustCert(t, s.root.NextCertPEM)

	t2 := t1.Add(tm.Published + time.Minute)
	if what := s.planAway(t, tm, zones, away, t2); len(what) != 3 {
		t.Fatalf("signing the next intermediates with zone-3 away: %q, want all three prepared", what)
	}
	t3 := t2.Add(tm.Published + time.Minute)
	for _, now := range []time.Time{t3, t3.Add(24 * time.Hour)} {
		if what := s.planAway(t, tm, zones, away, now); len(what) != 0 {
			t.Fatalf("with zone-3 away: %q, want nothing to move", what)
		}
		for zone, z := range s.zcas {
			if signedBy(z.CertPEM, next) {
				t.Fatalf("%s issues under the next root while zone-3 is away", zone)
			}
		}
	}

	// Back: the zones move, then the old root retires.
	if what := s.planAway(t, tm, zones, nil, t3.Add(24*time.Hour)); len(what) != 3 {
		t.Fatalf("zone-3 back: %q, want every zone moved", what)
	}
	t4 := t3.Add(24*time.Hour + tm.Published + time.Minute)
	if what := s.planAway(t, tm, zones, away, t4); len(what) != 0 || !s.root.Rotating() {
		t.Fatalf("retirement with zone-3 away again: %q (still rotating: %t), want it to wait", what, s.root.Rotating())
	}
	if what := s.planAway(t, tm, zones, nil, t4); len(what) != 1 || !strings.Contains(what[0], "retired") || s.root.Rotating() {
		t.Fatalf("retirement with every zone back: %q", what)
	}
}

// TestZonesUpToDate: a zone is up to date when its insight says it is
// connected, fresh, and no revision behind; a zone that never connected,
// one disconnected, one whose replica went quiet, or one behind is not.
// The authority asks only while a root is being replaced.
func TestZonesUpToDate(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory(0)
	now := store.Now()
	for _, zi := range []*api.ZoneInsight{
		{Meta: api.Meta{Type: "ZoneInsight", Name: "current"}, Connected: true, Heartbeat: now},
		{Meta: api.Meta{Type: "ZoneInsight", Name: "behind"}, Connected: true, Heartbeat: now, RevisionBehind: 2},
		{Meta: api.Meta{Type: "ZoneInsight", Name: "quiet"}, Connected: true, Heartbeat: now.Add(-time.Minute)},
		{Meta: api.Meta{Type: "ZoneInsight", Name: "gone"}, Heartbeat: now, DisconnectedAt: now},
	} {
		if _, err := st.Create(ctx, zi); err != nil {
			t.Fatal(err)
		}
	}
	got, err := ZonesUpToDate(st)(ctx)
	if err != nil || len(got) != 1 || !got["current"] {
		t.Fatalf("up to date: %v, %v; want current only", got, err)
	}

	asked := 0
	a := &Authority{UpToDate: func(context.Context) (map[string]bool, error) { asked++; return got, nil }}
	zones := map[string]bool{"current": true, "behind": true, "never": true, "disabled": false}
	root, err := NewCA("default", now)
	if err != nil {
		t.Fatal(err)
	}
	if away, err := a.away(ctx, store.NewView([]api.Resource{root}, "MeshCA"), zones, now); err != nil || away != nil || asked != 0 {
		t.Fatalf("no rotation: away %v, %v, asked %d times; want nothing asked", away, err, asked)
	}
	if err := publishNextRoot(root, now); err != nil {
		t.Fatal(err)
	}
	away, err := a.away(ctx, store.NewView([]api.Resource{root}, "MeshCA"), zones, now)
	if err != nil || asked != 1 || len(away) != 2 || !away["behind"] || !away["never"] {
		t.Fatalf("rotating: away %v, %v; want behind and never (enabled, not up to date)", away, err)
	}
}
