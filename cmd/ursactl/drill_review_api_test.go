package main

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/store"
)

// deletesDown is a store whose database is gone for deletes: the API
// answers them 503, as it does when PostgreSQL is down.
type deletesDown struct{ store.Store }

func (deletesDown) Delete(context.Context, api.Key, int64) error { return store.ErrUnavailable }

// TestDrillExitsNonZeroWhenUndrainFails: a drill whose undrain at the end
// fails leaves the zone drained (until the expiry label, if the global gets
// to it), prints "could not undrain", and must not exit 0: a script that
// runs "ursactl zone drill Z --for 5m && next-step" would go on as if the
// zone took traffic again. Against a real API server on loopback.
func TestDrillExitsNonZeroWhenUndrainFails(t *testing.T) {
	mem := store.NewMemory(0)
	ctx := context.Background()
	yes := true
	for _, r := range []api.Resource{
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}},
		&api.Zone{Meta: api.Meta{Type: "Zone", Name: "zone-3"}, Enabled: &yes},
	} {
		if _, err := mem.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	h, err := apiserver.New(apiserver.Deps{Store: deletesDown{mem}, Log: zaptest.NewLogger(t), Mode: apiserver.ModeGlobal, Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	res := ursactl(t, nil, "", "--api-server", srv.URL, "zone", "drill", "zone-3", "--for", "1s")
	t.Logf("exit %d\nstdout:\n%s\nstderr:\n%s", res.code, res.stdout, res.stderr)
	if !strings.Contains(res.stderr, "could not undrain") {
		t.Fatalf("the undrain did not fail as set up")
	}
	if res.code == exitOK {
		t.Fatalf("drill exited %d (success) although the zone is still drained", res.code)
	}
}
