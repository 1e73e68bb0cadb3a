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

	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/tokens"
)

// TestReviewGetTokenRevocationsShowsKindAndSubject: the README says
// `ursactl get token-revocations` lists the revocations "with each token's
// kind and whom it was for"; the table has NAME and AGE only (jti-<hex>),
// so nobody can tell which token a revocation is for.
func TestReviewGetTokenRevocationsShowsKindAndSubject(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory(0)
	users := tokens.NewUserIssuer(st, zaptest.NewLogger(t))
	zones := tokens.NewIssuer(st)
	if err := zones.EnsureKey(ctx); err != nil {
		t.Fatal(err)
	}
	extra := users.Handlers()
	maps.Copy(extra, zones.Handlers())
	h, err := apiserver.New(apiserver.Deps{Store: st, Log: zaptest.NewLogger(t), Registry: prometheus.NewRegistry(),
		Mode: apiserver.ModeGlobal, Users: users, Extra: extra})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	leaked, _ := zones.IssueZoneToken(ctx, "zone-7", time.Hour)
	env := map[string]string{envAPIServer: srv.URL}
	if res := ursactl(t, env, leaked, "revoke", "zone-token", "-"); res.code != exitOK {
		t.Fatalf("revoke: %d %q", res.code, res.stderr)
	}
	res := ursactl(t, env, "", "get", "token-revocations")
	if res.code != exitOK || !strings.Contains(res.stdout, "zone-7") || !strings.Contains(strings.ToUpper(res.stdout), "TOKEN") {
		t.Fatalf("get token-revocations does not say which token was revoked:\n%s%s", res.stdout, res.stderr)
	}
}
