package main

import (
	"context"
	"maps"
	"net/http"
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

// startRealAPI serves the real global API with real user tokens, requiring a
// token from loopback callers too (as from another host), and returns its URL
// and an admin's token.
func startRealAPI(t *testing.T) (string, string) {
	t.Helper()
	srv, _, admin := startGlobalAPI(t, store.NewMemory(0), nil)
	return srv.URL, admin
}

// startGlobalAPI serves st's API as a global does, with real user tokens
// (required from loopback callers too) and the extra handlers; it returns
// the server, the token issuer and an admin's token.
func startGlobalAPI(t *testing.T, st store.Store, extra map[string]http.Handler) (*httptest.Server, *tokens.UserTokens, string) {
	t.Helper()
	log := zaptest.NewLogger(t)
	users := tokens.NewUserIssuer(st, log)
	handlers := maps.Clone(users.Handlers())
	maps.Copy(handlers, extra)
	h, err := apiserver.New(apiserver.Deps{Store: st, Log: log, Mode: apiserver.ModeGlobal, Registry: prometheus.NewRegistry(),
		RequireTokenOnLocalhost: true, Users: users, Extra: handlers})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	admin, err := users.Issue(context.Background(), "ada", "admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return srv, users, admin
}

// TestUserTokens runs ursactl against the real API: tokens are generated,
// sent from URSA_TOKEN, refused with the server's reason, and revoked by a
// rotation.
func TestUserTokens(t *testing.T) {
	url, admin := startRealAPI(t)
	asAdmin := map[string]string{envAPIServer: url, envToken: admin}

	res := ursactl(t, map[string]string{envAPIServer: url}, "", "get", "meshes")
	if res.code != exitError || !strings.Contains(res.stderr, "Error: list meshes: Unauthorized: this server requires a user token") {
		t.Fatalf("without a token: %d %q", res.code, res.stderr)
	}

	res = ursactl(t, asAdmin, "", "generate", "user-token", "--name", "rita", "--group", "readonly", "--valid-for", "1h")
	if res.code != exitOK || strings.Count(res.stdout, ".") != 2 {
		t.Fatalf("generate user-token: %d %q %q", res.code, res.stdout, res.stderr)
	}
	asRita := map[string]string{envAPIServer: url, envToken: strings.TrimSpace(res.stdout)}
	if res := ursactl(t, asAdmin, "type: Mesh\nname: default\n", "apply", "-f", "-"); res.code != exitOK {
		t.Fatalf("admin apply: %d %q", res.code, res.stderr)
	}
	if res := ursactl(t, asRita, "", "get", "meshes"); res.code != exitOK || !strings.Contains(res.stdout, "default") {
		t.Fatalf("readonly get: %d %q %q", res.code, res.stdout, res.stderr)
	}
	res = ursactl(t, asRita, "type: Mesh\nname: default\n", "apply", "-f", "-")
	if res.code != exitError || !strings.Contains(res.stderr, "Forbidden: PUT /meshes/default requires group admin; the token of rita has readonly") {
		t.Fatalf("readonly apply: %d %q", res.code, res.stderr)
	}
	res = ursactl(t, asRita, "", "generate", "user-token", "--name", "eve", "--group", "admin")
	if res.code != exitError || !strings.Contains(res.stderr, "requires group admin") {
		t.Fatalf("readonly generating a token: %d %q", res.code, res.stderr)
	}

	res = ursactl(t, asAdmin, "", "generate", "user-token-signing-key")
	if res.code != exitOK || res.stdout != "rotated: user tokens are now signed with key 2; every older user token is revoked\n" {
		t.Fatalf("rotate: %d %q %q", res.code, res.stdout, res.stderr)
	}
	res = ursactl(t, asRita, "", "get", "meshes")
	if res.code != exitError || !strings.Contains(res.stderr, "Unauthorized: user token refused: bad token signature: signed with an unknown or rotated key") {
		t.Fatalf("a rotated token: %d %q", res.code, res.stderr)
	}
}

func TestGenerateUserTokenArguments(t *testing.T) {
	url, admin := startRealAPI(t)
	env := map[string]string{envAPIServer: url, envToken: admin}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr string
	}{
		{"no name", []string{"--group", "admin"}, exitUsage, "generate user-token needs --name NAME"},
		{"no group", []string{"--name", "a"}, exitUsage, "needs --group admin or --group readonly"},
		{"negative validity", []string{"--name", "a", "--group", "admin", "--valid-for", "-1h"}, exitUsage, "is negative"},
		{"positional", []string{"a"}, exitUsage, "accepts 0 arg(s)"},
		{"refused by the server", []string{"--name", "-a", "--group", "root"}, exitError,
			"Invalid request: the user token request is not valid\nname: \"-a\" is not a user name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := ursactl(t, env, "", append([]string{"generate", "user-token"}, tt.args...)...)
			if res.code != tt.wantCode || res.stdout != "" || !strings.Contains(res.stderr, tt.wantStderr) {
				t.Fatalf("code %d, stdout %q, stderr %q; want %d and %q", res.code, res.stdout, res.stderr, tt.wantCode, tt.wantStderr)
			}
		})
	}
}

// TestRevokeUserToken runs ursactl revoke user-token against the real API:
// the revoked token is refused, naming the revocation, every other token
// keeps working, a readonly user cannot revoke, and a token refused already
// cannot be revoked (the server says why).
func TestRevokeUserToken(t *testing.T) {
	url, admin := startRealAPI(t)
	asAdmin := map[string]string{envAPIServer: url, envToken: admin}
	gen := func(name, group string) string {
		res := ursactl(t, asAdmin, "", "generate", "user-token", "--name", name, "--group", group, "--valid-for", "1h")
		if res.code != exitOK {
			t.Fatalf("generate user-token: %d %q", res.code, res.stderr)
		}
		return strings.TrimSpace(res.stdout)
	}
	rita, sam := gen("rita", "readonly"), gen("sam", "readonly")
	if res := ursactl(t, map[string]string{envAPIServer: url, envToken: rita}, rita, "revoke", "user-token", "-"); res.code != exitError ||
		!strings.Contains(res.stderr, "Forbidden") {
		t.Fatalf("a readonly user revoking: %d %q", res.code, res.stderr)
	}
	res := ursactl(t, asAdmin, rita+"\n", "revoke", "user-token", "-")
	if res.code != exitOK || !strings.Contains(res.stdout, "revoked: the readonly token of rita") {
		t.Fatalf("revoke user-token: %d %q %q", res.code, res.stdout, res.stderr)
	}
	if res := ursactl(t, map[string]string{envAPIServer: url, envToken: rita}, "", "get", "meshes"); res.code != exitError ||
		!strings.Contains(res.stderr, "token revoked") {
		t.Fatalf("the revoked token: %d %q", res.code, res.stderr)
	}
	if res := ursactl(t, map[string]string{envAPIServer: url, envToken: sam}, "", "get", "meshes"); res.code != exitOK {
		t.Fatalf("another token after a revocation: %d %q", res.code, res.stderr)
	}
	if res := ursactl(t, asAdmin, "not.a.token", "revoke", "user-token", "-"); res.code != exitError ||
		!strings.Contains(res.stderr, "refused already") {
		t.Fatalf("revoking garbage: %d %q", res.code, res.stderr)
	}
	if res := ursactl(t, asAdmin, "", "revoke", "user-token"); res.code != exitUsage {
		t.Fatalf("revoke without a file: %d %q", res.code, res.stderr)
	}
}
