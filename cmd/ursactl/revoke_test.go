package main

import (
	"context"
	"maps"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/tokens"
)

// startTokensAPI serves the real global API with user and zone tokens,
// requiring a token from loopback callers too (as from another host), and
// returns its URL, the zone-token issuer and an admin's token.
func startTokensAPI(t *testing.T) (string, *tokens.Issuer, *tokens.UserTokens, string) {
	t.Helper()
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
		Mode: apiserver.ModeGlobal, RequireTokenOnLocalhost: true, Users: users, Extra: extra})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	admin, err := users.Issue(ctx, "ada", "admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return srv.URL, zones, users, admin
}

// TestRevokeZoneToken runs `ursactl revoke zone-token` against the real
// global API: an admin revokes one zone token (from a file or standard
// input), which then no longer verifies while another does; a readonly user
// may not; a token refused already is refused, saying why.
func TestRevokeZoneToken(t *testing.T) {
	ctx := context.Background()
	url, zones, users, admin := startTokensAPI(t)
	rita, _ := users.Issue(ctx, "rita", "readonly", time.Hour)
	leaked, _ := zones.IssueZoneToken(ctx, "zone-1", time.Hour)
	kept, _ := zones.IssueZoneToken(ctx, "zone-1", time.Hour)
	asAdmin := map[string]string{envAPIServer: url, envToken: admin}

	if res := ursactl(t, map[string]string{envAPIServer: url, envToken: rita}, leaked, "revoke", "zone-token", "-"); res.code != exitError || !strings.Contains(res.stderr, "Forbidden") {
		t.Fatalf("readonly revoke: %d %q", res.code, res.stderr)
	}
	file := filepath.Join(t.TempDir(), "zone-1.token")
	if err := os.WriteFile(file, []byte(leaked+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	res := ursactl(t, asAdmin, "", "revoke", "zone-token", file)
	if res.code != exitOK || !regexp.MustCompile(`^revoked: the zone token for zone zone-1 \(id \S+\), which was valid until \S+\n$`).MatchString(res.stdout) {
		t.Fatalf("revoke: %d %q %q", res.code, res.stdout, res.stderr)
	}
	if _, err := zones.VerifyZoneToken(ctx, leaked); !strings.Contains(err.Error(), "revoked") {
		t.Errorf("the revoked token: %v", err)
	}
	if _, err := zones.VerifyZoneToken(ctx, kept); err != nil {
		t.Errorf("the other token: %v", err)
	}
	if res := ursactl(t, asAdmin, leaked, "revoke", "zone-token", "-"); res.code != exitOK {
		t.Errorf("revoking it again: %d %q", res.code, res.stderr)
	}
	res = ursactl(t, asAdmin, admin, "revoke", "zone-token", "-")
	if res.code != exitError || !strings.Contains(res.stderr, "nothing to revoke") {
		t.Errorf("a user token revoked as a zone token: %d %q", res.code, res.stderr)
	}
	if res := ursactl(t, asAdmin, "", "revoke", "zone-token", "-"); res.code == exitOK || !strings.Contains(res.stderr, "no token in") {
		t.Errorf("no token: %d %q", res.code, res.stderr)
	}
}

// TestGetTokenRevocations: ursactl get token-revocations says which token
// each revocation is for: its kind, ID, subject and expiry.
func TestGetTokenRevocations(t *testing.T) {
	url, zones, _, admin := startTokensAPI(t)
	leaked, _ := zones.IssueZoneToken(context.Background(), "zone-7", time.Hour)
	env := map[string]string{envAPIServer: url, envToken: admin}
	if res := ursactl(t, env, leaked, "revoke", "zone-token", "-"); res.code != exitOK {
		t.Fatalf("revoke: %d %q", res.code, res.stderr)
	}
	res := ursactl(t, env, "", "get", "token-revocations")
	if res.code != exitOK || !strings.Contains(res.stdout, "zone zone-7") || !strings.Contains(res.stdout, "TOKEN") || !strings.Contains(res.stdout, "EXPIRES") {
		t.Fatalf("get token-revocations does not say which token was revoked:\n%s%s", res.stdout, res.stderr)
	}
}
