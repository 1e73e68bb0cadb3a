package main

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/tokens"
)

// TestMeshRotateRoot: against a real API server with the CA's handlers and
// an authority on a clock the test moves, `ursactl mesh rotate-root`
// starts a rotation and says when the zones move; `mesh ca-status` shows
// each phase until the old root retires; a second rotation while one is
// under way, a mesh without mTLS, an unknown mesh and a read-only user
// fail with the problem named, changing nothing.
func TestMeshRotateRoot(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory(0)
	for _, r := range []api.Resource{
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}, MTLS: &api.MeshMTLS{Enabled: true}},
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "plain"}},
		&api.Zone{Meta: api.Meta{Type: "Zone", Name: "zone-1"}},
	} {
		if _, err := st.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	tm := mtls.Timing{Published: time.Minute}
	srv, users, admin := startCAAPI(t, st, tm)
	rita, err := users.Issue(ctx, "rita", "readonly", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// The handlers stamp what they make with the real clock; the
	// authority's clock runs ahead of it by offset.
	var offset time.Duration
	a := &mtls.Authority{Store: st, Zones: mtls.EnabledZones, Timing: tm, Log: zaptest.NewLogger(t), Now: func() time.Time { return time.Now().Add(offset) }}
	pass := func() { t.Helper(); reconcileCAs(t, st, a) }
	runAs := func(token string, args ...string) result {
		t.Helper()
		return ursactl(t, map[string]string{envAPIServer: srv.URL, envToken: token}, "", args...)
	}
	run := func(args ...string) result {
		t.Helper()
		return runAs(admin, args...)
	}
	pass()
	status := func(want ...string) {
		t.Helper()
		res := run("mesh", "ca-status")
		for _, w := range want {
			if res.code != 0 || !strings.Contains(res.stdout, w) {
				t.Fatalf("ca-status: exit %d, want %q in\n%s%s", res.code, w, res.stdout, res.stderr)
			}
		}
		if strings.Contains(res.stdout, "plain") {
			t.Fatalf("ca-status shows a mesh without mTLS:\n%s", res.stdout)
		}
	}
	status("MESH", "default", "stable")
	before, _ := st.Get(ctx, api.Key{Type: "MeshCA", Mesh: "default", Name: mtls.CAName})

	for _, tc := range []struct{ mesh, says string }{
		{"plain", "does not have mTLS enabled"},
		{"nope", "no such mesh"},
	} {
		if res := run("mesh", "rotate-root", tc.mesh); res.code == 0 || !strings.Contains(res.stderr, tc.says) {
			t.Errorf("rotate-root %s: exit %d, stderr %q, want it to say %q", tc.mesh, res.code, res.stderr, tc.says)
		}
	}
	// Admins only: a read-only user may look, not rotate.
	if res := runAs(rita, "mesh", "rotate-root", "default"); res.code == 0 || !strings.Contains(res.stderr, "Forbidden") {
		t.Errorf("a read-only user's rotate-root: exit %d, stderr %q", res.code, res.stderr)
	}
	if res := runAs(rita, "mesh", "ca-status", "default"); res.code != 0 || !strings.Contains(res.stdout, "stable") {
		t.Errorf("a read-only user's ca-status: exit %d, %s%s", res.code, res.stdout, res.stderr)
	}
	if after, _ := st.Get(ctx, api.Key{Type: "MeshCA", Mesh: "default", Name: mtls.CAName}); after.GetMeta().Version != before.GetMeta().Version {
		t.Fatal("a refused rotation changed the mesh's CA")
	}

	res := run("mesh", "rotate-root", "default")
	if res.code != 0 || !strings.Contains(res.stdout, "mesh default: next root CA published") || !strings.Contains(res.stdout, "zones move to it from") {
		t.Fatalf("rotate-root: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	started, _ := st.Get(ctx, api.Key{Type: "MeshCA", Mesh: "default", Name: mtls.CAName})
	if res := run("mesh", "rotate-root", "default"); res.code == 0 || !strings.Contains(res.stderr, "already being rotated") {
		t.Fatalf("a second rotate-root: exit %d, stderr %q", res.code, res.stderr)
	}
	if again, _ := st.Get(ctx, api.Key{Type: "MeshCA", Mesh: "default", Name: mtls.CAName}); again.GetMeta().Version != started.GetMeta().Version {
		t.Fatal("a refused second rotation changed the mesh's CA")
	}
	pass()
	status("publishing", "0/1", "zones move to the next root from")

	offset += tm.Published + time.Second
	pass() // zone-1's next intermediate is the next root's
	status("switching", "0/1", "waiting for zone-1")
	offset += tm.Published + time.Second
	pass() // zone-1 issues from it
	status("retiring", "1/1")
	offset += tm.Published + time.Second
	pass() // the old root retires
	status("stable")
	done, _ := st.Get(ctx, api.Key{Type: "MeshCA", Mesh: "default", Name: mtls.CAName})
	if done.(*api.MeshCA).CertPEM != started.(*api.MeshCA).NextCertPEM {
		t.Fatal("the rotation did not end with the next root as the root")
	}

	// A mesh whose root is not made yet does not hide the others'
	// status; the command says so and fails.
	if _, err := st.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "fresh"}, MTLS: &api.MeshMTLS{Enabled: true}}); err != nil {
		t.Fatal(err)
	}
	if res := run("mesh", "ca-status"); res.code == 0 || !strings.Contains(res.stdout, "default") || !strings.Contains(res.stdout, "stable") ||
		!strings.Contains(res.stderr, "not made yet") {
		t.Fatalf("ca-status with a mesh whose root is not made yet: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
}

// TestMeshRotateRootEveryMeshResumes: `ursactl mesh rotate-root` without a
// mesh rotates every mTLS mesh; one whose rotation is already under way
// (a run that stopped half-way, another admin's) is reported and skipped,
// not a stop before the meshes after it: running it again after a partial
// run finishes the job.
func TestMeshRotateRootEveryMeshResumes(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory(0)
	for _, r := range []api.Resource{
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "a"}, MTLS: &api.MeshMTLS{Enabled: true}},
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "b"}, MTLS: &api.MeshMTLS{Enabled: true}},
		&api.Zone{Meta: api.Meta{Type: "Zone", Name: "zone-1"}},
	} {
		if _, err := st.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	tm := mtls.Timing{Published: time.Minute}
	srv, _, admin := startCAAPI(t, st, tm)
	reconcileCAs(t, st, &mtls.Authority{Store: st, Zones: mtls.EnabledZones, Timing: tm, Log: zaptest.NewLogger(t)})
	run := func(args ...string) result {
		t.Helper()
		return ursactl(t, map[string]string{envAPIServer: srv.URL, envToken: admin}, "", args...)
	}
	rotating := func(mesh string) bool {
		r, err := st.Get(ctx, api.Key{Type: "MeshCA", Mesh: mesh, Name: mtls.CAName})
		if err != nil {
			t.Fatal(err)
		}
		return r.(*api.MeshCA).Rotating()
	}
	// A first run that got as far as mesh a.
	if res := run("mesh", "rotate-root", "a"); res.code != 0 {
		t.Fatalf("rotate-root a: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	res := run("mesh", "rotate-root")
	if !rotating("b") {
		t.Fatalf("rotate-root of every mesh stopped at a, whose rotation is under way; b is not rotated: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	if res.code != 0 || !strings.Contains(res.stdout+res.stderr, "mesh a") || !strings.Contains(res.stdout, "mesh b: next root CA published") {
		t.Fatalf("rotate-root of every mesh with a under way: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	// Named, a mesh under way is still an error.
	if res := run("mesh", "rotate-root", "a"); res.code == 0 || !strings.Contains(res.stderr, "already being rotated") {
		t.Fatalf("rotate-root a again: exit %d, stderr %q", res.code, res.stderr)
	}
}

// startCAAPI serves st's API with the CA's handlers (timing tm) and user
// tokens, as a global does; it returns the server, the token issuer and an
// admin's token.
func startCAAPI(t *testing.T, st store.Store, tm mtls.Timing) (*httptest.Server, *tokens.UserTokens, string) {
	t.Helper()
	return startGlobalAPI(t, st, mtls.Handlers(st, tm, nil, zaptest.NewLogger(t)))
}

// reconcileCAs runs a twice over st as it stands: the second pass takes
// what the first wrote.
func reconcileCAs(t *testing.T, st *store.Memory, a *mtls.Authority) {
	t.Helper()
	for range 2 {
		all, err := st.ListTypes(context.Background(), []string{"Mesh", "MeshCA", "ZoneCA", "Zone"})
		if err != nil {
			t.Fatal(err)
		}
		var rs []api.Resource
		for _, l := range all {
			rs = append(rs, l.Items...)
		}
		if err := a.Reconcile(context.Background(), store.NewView(rs, "Mesh", "MeshCA", "ZoneCA", "Zone")); err != nil {
			t.Fatal(err)
		}
	}
}
