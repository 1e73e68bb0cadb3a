package main

import (
	"context"
	"maps"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/tokens"
)

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
	log := zaptest.NewLogger(t)
	tm := mtls.Timing{Published: time.Minute}
	users := tokens.NewUserIssuer(st, log)
	extra := mtls.Handlers(st, tm, nil, log)
	maps.Copy(extra, users.Handlers())
	h, err := apiserver.New(apiserver.Deps{Store: st, Log: log, Mode: apiserver.ModeGlobal, Registry: prometheus.NewRegistry(),
		RequireTokenOnLocalhost: true, Users: users, Extra: extra})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	admin, err := users.Issue(ctx, "ada", "admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	a := &mtls.Authority{Store: st, Zones: mtls.EnabledZones, Timing: tm, Log: log}
	for range 2 {
		all, err := st.ListTypes(ctx, []string{"Mesh", "MeshCA", "ZoneCA", "Zone"})
		if err != nil {
			t.Fatal(err)
		}
		var rs []api.Resource
		for _, l := range all {
			rs = append(rs, l.Items...)
		}
		if err := a.Reconcile(ctx, store.NewView(rs, "Mesh", "MeshCA", "ZoneCA", "Zone")); err != nil {
			t.Fatal(err)
		}
	}
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
