package mtls

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

func mustCert(t *testing.T, certPEM string) *x509.Certificate {
	t.Helper()
	c, err := parseCert(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustCRL(t *testing.T, crlPEM string) *x509.RevocationList {
	t.Helper()
	b, _ := pem.Decode([]byte(crlPEM))
	if b == nil || b.Type != "X509 CRL" {
		t.Fatalf("no CRL in %q", crlPEM)
	}
	l, err := x509.ParseRevocationList(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestZoneCAIsAnIntermediate: a zone CA is signed by the mesh root, may sign
// leaves but no further CA, names the mesh, never outlives the root, and its
// own revocation list is signed by it and empty. Its next one is made with
// it, and recorded too.
func TestZoneCAIsAnIntermediate(t *testing.T) {
	now := time.Now()
	root, err := NewCA("default", now)
	if err != nil {
		t.Fatal(err)
	}
	ca, recs, err := NewZoneCA(root, "zone-1", now)
	if err != nil {
		t.Fatal(err)
	}
	if err := api.Validate(ca); err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[1].Serial != mustCert(t, ca.NextCertPEM).SerialNumber.Text(16) || ca.NextKeyPEM == "" || ca.NextCertPEM == ca.CertPEM {
		t.Fatalf("the next intermediate: %d records", len(recs))
	}
	if err := mustCert(t, ca.NextCertPEM).CheckSignatureFrom(mustCert(t, root.CertPEM)); err != nil {
		t.Fatalf("the next one is not signed by the root: %v", err)
	}
	rec := recs[0]
	rootCert, inter := mustCert(t, root.CertPEM), mustCert(t, ca.CertPEM)
	if err := inter.CheckSignatureFrom(rootCert); err != nil {
		t.Fatalf("not signed by the root: %v", err)
	}
	if !inter.IsCA || inter.MaxPathLen != 0 || !inter.MaxPathLenZero || inter.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Fatalf("IsCA %v MaxPathLen %d zero %v usage %v", inter.IsCA, inter.MaxPathLen, inter.MaxPathLenZero, inter.KeyUsage)
	}
	if len(inter.URIs) != 1 || inter.URIs[0].String() != "spiffe://default" {
		t.Fatalf("URIs %v", inter.URIs)
	}
	if got := inter.NotAfter.Sub(now); got < IntermediateTTL-time.Minute || got > IntermediateTTL+time.Minute {
		t.Fatalf("lifetime %v", got)
	}
	if rec.Zone != "zone-1" || rec.Serial != inter.SerialNumber.Text(16) || !rec.NotAfter.Equal(inter.NotAfter) {
		t.Fatalf("record %+v", rec)
	}
	crl := mustCRL(t, rec.CRLPEM)
	if err := crl.CheckSignatureFrom(inter); err != nil || len(crl.RevokedCertificateEntries) != 0 || !crl.NextUpdate.Equal(inter.NotAfter) {
		t.Fatalf("its CRL: %v, %d revoked, next %v", err, len(crl.RevokedCertificateEntries), crl.NextUpdate)
	}

	// A root closer to its end caps the intermediate.
	old, _ := NewCA("default", now.AddDate(-10, 0, 30))
	ca, _, err = NewZoneCA(old, "zone-1", now)
	if err != nil {
		t.Fatal(err)
	}
	if got, limit := mustCert(t, ca.CertPEM).NotAfter, mustCert(t, old.CertPEM).NotAfter; got.After(limit) {
		t.Fatalf("intermediate until %v outlives its root (%v)", got, limit)
	}

	// Path length 0: a CA under the intermediate does not verify.
	_, key, _ := parseCA(ca.CertPEM, ca.KeyPEM)
	sub := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(nil, sub, mustCert(t, ca.CertPEM), key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	subCert, _ := x509.ParseCertificate(der)
	der, err = x509.CreateCertificate(nil, &x509.Certificate{SerialNumber: big.NewInt(8), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)},
		subCert, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(mustCert(t, old.CertPEM))
	inters.AddCert(mustCert(t, ca.CertPEM))
	opts := x509.VerifyOptions{Roots: roots, Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	if _, err := subCert.Verify(opts); err != nil {
		t.Fatalf("a certificate the zone CA signed does not verify: %v", err)
	}
	inters.AddCert(subCert)
	if _, err := leaf.Verify(opts); err == nil {
		t.Fatal("a leaf under a CA the zone CA signed verified: path length 0 not enforced")
	}

	// Without the root's key, nothing is signed.
	keyless := *root
	keyless.KeyPEM = ""
	if _, _, err := NewZoneCA(&keyless, "zone-1", now); err == nil || !strings.Contains(err.Error(), "no private key") {
		t.Fatalf("signed without the root's key: %v", err)
	}
}

// TestPlan: enabled zones get an intermediate each (and the next one),
// recorded in the root with a root-signed CRL; a zone that leaves the set
// has its intermediates revoked (serials in the root's CRL) and deleted;
// one two thirds through its life is replaced, the old one staying
// trusted; a missing next one is made alone; expired records go; an
// up-to-date mesh plans nothing.
func TestPlan(t *testing.T) {
	now := time.Now().UTC()
	root, _ := NewCA("default", now)
	root.Version = 3
	puts, deletes, _, err := Timing{}.Plan(root, nil, map[string]bool{"zone-1": true, "zone-2": true}, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(puts) != 3 || len(deletes) != 0 {
		t.Fatalf("puts %d deletes %d, want the root and two zone CAs", len(puts), len(deletes))
	}
	next := puts[0].(*api.MeshCA)
	if next.Version != 3 || len(next.Intermediates) != 4 || next.KeyPEM != root.KeyPEM {
		t.Fatalf("root put: version %d, %d intermediates", next.Version, len(next.Intermediates))
	}
	if err := api.Validate(next); err != nil {
		t.Fatal(err)
	}
	rootCert := mustCert(t, root.CertPEM)
	if crl := mustCRL(t, next.CRLPEM); crl.CheckSignatureFrom(rootCert) != nil || len(crl.RevokedCertificateEntries) != 0 {
		t.Fatal("the root's CRL is not signed by it, or revokes something")
	}
	if n := strings.Count(next.CRLBundle(), "BEGIN X509 CRL"); n != 5 {
		t.Fatalf("bundle holds %d CRLs, want the root's and four intermediates'", n)
	}
	zcas := map[string]*api.ZoneCA{}
	for _, p := range puts[1:] {
		z := p.(*api.ZoneCA)
		z.Version = 1
		zcas[z.Name] = z
	}
	if zcas["zone-1"] == nil || zcas["zone-2"] == nil {
		t.Fatalf("zone CAs %v", zcas)
	}

	// No zone, no intermediate: nothing to do, not even a list.
	if puts, deletes, _, _ := (Timing{}).Plan(root, nil, nil, now); len(puts)+len(deletes) != 0 {
		t.Fatalf("a mesh without zones planned %d puts, %d deletes", len(puts), len(deletes))
	}

	// Nothing changed: nothing to do.
	if puts, deletes, _, _ := (Timing{}).Plan(next, zcas, map[string]bool{"zone-1": true, "zone-2": true}, now.Add(time.Hour)); len(puts)+len(deletes) != 0 {
		t.Fatalf("an up-to-date mesh planned %d puts, %d deletes", len(puts), len(deletes))
	}

	// zone-2 disabled: revoked and deleted.
	puts, deletes, what, err := Timing{}.Plan(next, zcas, map[string]bool{"zone-1": true}, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(puts) != 1 || len(deletes) != 1 || deletes[0] != (api.Key{Type: "ZoneCA", Mesh: "default", Name: "zone-2"}) {
		t.Fatalf("puts %d deletes %v", len(puts), deletes)
	}
	if !strings.Contains(strings.Join(what, ";"), "revoked the CA of zone zone-2") {
		t.Fatalf("said %q", what)
	}
	revoked := puts[0].(*api.MeshCA)
	crl := mustCRL(t, revoked.CRLPEM)
	serial2 := mustCert(t, zcas["zone-2"].CertPEM).SerialNumber
	if crl.CheckSignatureFrom(rootCert) != nil || len(crl.RevokedCertificateEntries) != 2 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(serial2) != 0 ||
		crl.RevokedCertificateEntries[1].SerialNumber.Cmp(mustCert(t, zcas["zone-2"].NextCertPEM).SerialNumber) != 0 {
		t.Fatalf("the root's CRL does not revoke zone-2's serials %s and its next", serial2.Text(16))
	}
	if crl.Number.Cmp(mustCRL(t, next.CRLPEM).Number) <= 0 {
		t.Fatal("the new CRL's number does not supersede the last")
	}
	delete(zcas, "zone-2")

	// Re-enabled: a new intermediate, the old serial still revoked.
	puts, _, _, err = Timing{}.Plan(revoked, zcas, map[string]bool{"zone-1": true, "zone-2": true}, now.Add(2*time.Hour))
	if err != nil || len(puts) != 2 {
		t.Fatalf("re-enabling: %d puts, %v", len(puts), err)
	}
	reenabled := puts[0].(*api.MeshCA)
	if got := mustCert(t, puts[1].(*api.ZoneCA).CertPEM).SerialNumber; got.Cmp(serial2) == 0 {
		t.Fatal("the revoked intermediate came back")
	}
	if len(mustCRL(t, reenabled.CRLPEM).RevokedCertificateEntries) != 2 {
		t.Fatal("re-enabling forgot the revocation")
	}

	// Without its next one, a zone gets it, and keeps issuing from the one
	// it has.
	bare := api.DeepCopy(zcas["zone-1"]).(*api.ZoneCA)
	bare.NextCertPEM, bare.NextKeyPEM = "", ""
	puts, _, what, err = Timing{}.Plan(reenabled, map[string]*api.ZoneCA{"zone-1": bare}, map[string]bool{"zone-1": true}, now.Add(2*time.Hour))
	if err != nil || len(puts) != 2 {
		t.Fatalf("a missing next CA: %d puts, %v", len(puts), err)
	}
	if got := puts[1].(*api.ZoneCA); got.CertPEM != bare.CertPEM || got.NextCertPEM == "" || !strings.Contains(what[0], "prepared the next CA") {
		t.Fatalf("a missing next CA: %q", what)
	}

	// Two thirds through its life, zone-1's is due; its next one, signed
	// with it, is as old: a new next one is published first, the current
	// one issuing meanwhile, and once that one has been published for
	// NextPublished, it issues. The old record stays, not revoked, so what
	// it issued keeps verifying.
	later := now.Add(IntermediateTTL * 2 / 3).Add(time.Hour)
	puts, _, what, err = Timing{}.Plan(reenabled, map[string]*api.ZoneCA{"zone-1": zcas["zone-1"]}, map[string]bool{"zone-1": true}, later)
	if err != nil {
		t.Fatal(err)
	}
	if len(puts) != 2 || puts[1].(*api.ZoneCA).CertPEM != zcas["zone-1"].CertPEM || puts[1].(*api.ZoneCA).NextCertPEM == zcas["zone-1"].NextCertPEM ||
		!strings.Contains(what[0], "prepared the next CA") {
		t.Fatalf("due with a next one as old: %q", what)
	}
	prepared := puts[1].(*api.ZoneCA)
	prepared.Version = 2
	published := puts[0].(*api.MeshCA)
	if puts, _, _, _ = (Timing{}).Plan(published, map[string]*api.ZoneCA{"zone-1": prepared}, map[string]bool{"zone-1": true}, later.Add(time.Minute)); len(puts) != 0 {
		t.Fatalf("renewed to a next one published a minute before: %d puts", len(puts))
	}
	puts, _, _, err = Timing{}.Plan(published, map[string]*api.ZoneCA{"zone-1": prepared}, map[string]bool{"zone-1": true}, later.Add(NextPublished+time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if len(puts) != 2 || puts[1].(*api.ZoneCA).Version != 2 {
		t.Fatalf("renewal: %d puts (want root and a conditional replacement)", len(puts))
	}
	renewed := puts[0].(*api.MeshCA)
	if got := puts[1].(*api.ZoneCA); got.CertPEM != prepared.NextCertPEM {
		t.Fatal("renewal does not issue from the next one published an hour before")
	}
	var live int
	for _, in := range renewed.Intermediates {
		if in.Zone == "zone-1" && !in.Revoked() {
			live++
		}
	}
	if live != 4 {
		t.Fatalf("zone-1 has %d trusted intermediates after renewal, want the first pair, the one prepared and issuing now, and its next", live)
	}

	// Past an intermediate's end, its record goes.
	end := now.Add(IntermediateTTL + time.Hour)
	puts, _, _, err = Timing{}.Plan(renewed, nil, nil, end)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range puts[0].(*api.MeshCA).Intermediates {
		if !end.Before(in.NotAfter) {
			t.Fatalf("expired record kept: %+v", in)
		}
	}
}

// viewOf reads the whole store as the authority's mirror would.
func viewOf(t *testing.T, st store.Store) *store.View {
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
	return store.NewView(all, types...)
}

// caStore is a memory store holding mesh default (mTLS on), mesh plain
// (mTLS off) and the zones named, enabled.
func caStore(t *testing.T, zones ...string) *store.Memory {
	t.Helper()
	st := store.NewMemory(0)
	rs := []api.Resource{
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}, MTLS: &api.MeshMTLS{Enabled: true}},
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "plain"}},
	}
	for _, z := range zones {
		rs = append(rs, &api.Zone{Meta: api.Meta{Type: "Zone", Name: z}})
	}
	for _, r := range rs {
		if _, err := st.Create(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// TestAuthorityAndRotate: on a real (memory) store, the authority makes the
// root, then an intermediate per enabled zone; a rotation replaces one
// conditionally, keeping or revoking the previous one; a rotation of a zone
// without a CA, or over a concurrent change, fails and changes nothing.
func TestAuthorityAndRotate(t *testing.T) {
	ctx := context.Background()
	st := caStore(t, "zone-1", "zone-2")
	a := &Authority{Store: st, Zones: EnabledZones, Log: zap.NewNop()}
	for range 2 { // the root, then its intermediates
		if err := a.Reconcile(ctx, viewOf(t, st)); err != nil {
			t.Fatal(err)
		}
	}
	view := viewOf(t, st)
	zcas, _ := store.All[*api.ZoneCA](view)
	if len(zcas) != 2 {
		t.Fatalf("%d zone CAs, want zone-1's and zone-2's in mesh default only", len(zcas))
	}
	first, waiting := mustCert(t, zcas[0].CertPEM).SerialNumber.Text(16), mustCert(t, zcas[0].NextCertPEM).SerialNumber.Text(16)

	rec, err := Timing{}.Rotate(ctx, st, "default", "zone-1", false, store.Now())
	if err != nil {
		t.Fatal(err)
	}
	view = viewOf(t, st)
	after, _, _ := store.Get[*api.MeshCA](view, "default", CAName)
	z1, _, _ := store.Get[*api.ZoneCA](view, "default", "zone-1")
	if got := mustCert(t, z1.CertPEM).SerialNumber.Text(16); got != rec.Serial || got != waiting {
		t.Fatalf("zone-1's CA is %s after rotation to %s (was %s, next %s): the next one must issue now", got, rec.Serial, first, waiting)
	}
	if len(after.Intermediates) != 5 || len(mustCRL(t, after.CRLPEM).RevokedCertificateEntries) != 0 {
		t.Fatalf("after a plain rotation: %d records, CRL revokes %d", len(after.Intermediates), len(mustCRL(t, after.CRLPEM).RevokedCertificateEntries))
	}

	next := mustCert(t, z1.NextCertPEM).SerialNumber.Text(16)
	if _, err := (Timing{}).Rotate(ctx, st, "default", "zone-1", true, store.Now()); err != nil {
		t.Fatal(err)
	}
	after, _, _ = store.Get[*api.MeshCA](viewOf(t, st), "default", CAName)
	revoked := map[string]bool{}
	for _, e := range mustCRL(t, after.CRLPEM).RevokedCertificateEntries {
		revoked[e.SerialNumber.Text(16)] = true
	}
	if len(revoked) != 2 || !revoked[rec.Serial] || !revoked[next] {
		t.Fatalf("a rotation with revocation revoked %v; want the issuing %s and the next %s (the zone held both keys)", revoked, rec.Serial, next)
	}
	z1, _, _ = store.Get[*api.ZoneCA](viewOf(t, st), "default", "zone-1")
	if s := mustCert(t, z1.CertPEM).SerialNumber.Text(16); revoked[s] {
		t.Fatalf("zone-1 issues from %s, which is revoked", s)
	}

	for _, tc := range []struct{ mesh, zone string }{{"default", "zone-9"}, {"plain", "zone-1"}, {"nope", "zone-1"}} {
		if _, err := (Timing{}).Rotate(ctx, st, tc.mesh, tc.zone, false, store.Now()); !errors.Is(err, ErrNoZoneCA) {
			t.Errorf("rotate %s/%s: %v, want ErrNoZoneCA", tc.mesh, tc.zone, err)
		}
	}

	// Disabled at the global: the next pass revokes and deletes it.
	z2, _ := st.Get(ctx, api.Key{Type: "Zone", Name: "zone-2"})
	off := false
	z2.(*api.Zone).Enabled = &off
	if _, err := st.Update(ctx, z2); err != nil {
		t.Fatal(err)
	}
	if err := a.Reconcile(ctx, viewOf(t, st)); err != nil {
		t.Fatal(err)
	}
	view = viewOf(t, st)
	if _, ok, _ := store.Get[*api.ZoneCA](view, "default", "zone-2"); ok {
		t.Fatal("a disabled zone kept its CA")
	}
	after, _, _ = store.Get[*api.MeshCA](view, "default", CAName)
	if got := len(mustCRL(t, after.CRLPEM).RevokedCertificateEntries); got != 4 {
		t.Fatalf("CRL revokes %d, want zone-1's two revoked by the rotation and zone-2's two", got)
	}

	// Over HTTP: the handler answers with the new serial, 404 for a zone
	// without a CA, 400 for a bad name or body.
	h := Handlers(st, Timing{}, nil, zap.NewNop())[RotatePath]
	mux := http.NewServeMux()
	mux.Handle(RotatePath, h)
	for _, tc := range []struct {
		path, body string
		code       int
	}{
		{"/meshes/default/zones/zone-1/ca/rotate", "", 200},
		{"/meshes/default/zones/zone-1/ca/rotate", `{"revokePrevious":true}`, 200},
		{"/meshes/default/zones/zone-2/ca/rotate", "", 404},
		{"/meshes/default/zones/Zone_1/ca/rotate", "", 400},
		{"/meshes/default/zones/zone-1/ca/rotate", `{"revoke":1}`, 400},
	} {
		rr := httptest.NewRecorder()
		mux.ServeHTTP(rr, httptest.NewRequest("POST", tc.path, strings.NewReader(tc.body)))
		if rr.Code != tc.code {
			t.Errorf("POST %s %s: %d %s, want %d", tc.path, tc.body, rr.Code, rr.Body, tc.code)
		}
	}
}
