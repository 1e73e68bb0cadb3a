package apiserver_test

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/tokens"
)

// authServer is the global API with real user tokens over a memory store.
type authServer struct {
	handler http.Handler
	users   *tokens.UserTokens
	store   store.Store
	logs    *observer.ObservedLogs
}

func newAuthServer(t *testing.T, requireOnLocalhost bool) *authServer {
	t.Helper()
	st := store.NewMemory(0)
	core, logs := observer.New(zap.DebugLevel)
	users := tokens.NewUserIssuer(st, zap.New(core))
	if err := users.EnsureKey(context.Background()); err != nil {
		t.Fatal(err)
	}
	h, err := apiserver.New(apiserver.Deps{Store: st, Log: zap.New(core), Registry: prometheus.NewRegistry(), Mode: apiserver.ModeGlobal,
		RequireTokenOnLocalhost: requireOnLocalhost, Users: users, Extra: users.Handlers()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Create(context.Background(), &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}); err != nil {
		t.Fatal(err)
	}
	return &authServer{handler: h, users: users, store: st, logs: logs}
}

func (s *authServer) issue(t *testing.T, name, group string) string {
	t.Helper()
	token, err := s.users.Issue(context.Background(), name, group, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return token
}

// expired signs, with the key of serial, a token that expired a minute ago.
func (s *authServer) expired(t *testing.T, name string, serial int) string {
	t.Helper()
	r, err := s.store.Get(context.Background(), api.Key{Type: "GlobalSecret", Name: tokens.UserSigningKeyName(serial)})
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.ParsePKCS8PrivateKey(r.(*api.GlobalSecret).Data)
	if err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-time.Hour)
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{"name": name, "sub": name, "group": "admin",
		"iat": past.Unix(), "exp": past.Add(59 * time.Minute).Unix()})
	tok.Header["kid"] = fmt.Sprint(serial)
	signed, err := tok.SignedString(key.(ed25519.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

type reply struct {
	code    int
	details string
	header  http.Header
}

// arrivedAtLoopback is req as an http.Server gives it when it arrived at
// the plain port's loopback address.
func arrivedAtLoopback(req *http.Request) *http.Request {
	return req.WithContext(context.WithValue(req.Context(), http.LocalAddrContextKey, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5681}))
}

// serve sends one request from remote with the Authorization header auth
// (none when empty), as it arrives on the port such a caller uses: the
// plain one from loopback, the HTTPS one from other hosts (the plain one
// serves them only the open paths, and the HTTPS one takes no loopback
// caller for this host's: remote_test.go).
func (s *authServer) serve(method, path, remote, auth, body string) reply {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.RemoteAddr = remote
	if remote != loopback {
		req.TLS = &tls.ConnectionState{HandshakeComplete: true}
	} else {
		req = arrivedAtLoopback(req)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	s.handler.ServeHTTP(rec, req)
	var e struct {
		Details string `json:"details"`
	}
	json.Unmarshal(rec.Body.Bytes(), &e)
	return reply{code: rec.Code, details: e.Details, header: rec.Header()}
}

const (
	loopback = "127.0.0.1:40000"
	remote   = "192.0.2.7:40000"
	meshBody = "type: Mesh"
)

// TestUserTokenAuth is the table of who may do what: from loopback and from
// another host, with no token, a readonly, an admin, an expired and a
// rotated token, reading and writing.
func TestUserTokenAuth(t *testing.T) {
	s := newAuthServer(t, false)
	rotated := s.issue(t, "old", "admin")
	if _, err := s.users.RotateKey(context.Background()); err != nil {
		t.Fatal(err)
	}
	readonly, admin := s.issue(t, "rita", "readonly"), s.issue(t, "ada", "admin")
	expired := s.expired(t, "ada", 2)

	tokens := map[string]string{"none": "", "readonly": readonly, "admin": admin, "expired": expired, "rotated": rotated}
	type want struct {
		code    int
		details string
	}
	// want[from][token][method]
	wants := map[string]map[string]map[string]want{
		loopback: {
			"none":     {"GET": {200, ""}, "PUT": {200, ""}},
			"readonly": {"GET": {200, ""}, "PUT": {403, "requires group admin; the token of rita has readonly"}},
			"admin":    {"GET": {200, ""}, "PUT": {200, ""}},
			"expired":  {"GET": {401, "token expired: it expired at"}, "PUT": {401, "token expired"}},
			"rotated":  {"GET": {401, "signed with an unknown or rotated key (kid 1)"}, "PUT": {401, "signed with an unknown or rotated key"}},
		},
		remote: {
			"none":     {"GET": {401, "a user token is required from a non-loopback address"}, "PUT": {401, "a user token is required"}},
			"readonly": {"GET": {200, ""}, "PUT": {403, "PUT /meshes/default requires group admin; the token of rita has readonly"}},
			"admin":    {"GET": {200, ""}, "PUT": {200, ""}},
			"expired":  {"GET": {401, "token expired"}, "PUT": {401, "token expired"}},
			"rotated":  {"GET": {401, "signed with an unknown or rotated key"}, "PUT": {401, "rotated"}},
		},
	}
	for from, byToken := range wants {
		for name, byMethod := range byToken {
			for method, w := range byMethod {
				t.Run(from+"/"+name+"/"+method, func(t *testing.T) {
					auth := ""
					if tokens[name] != "" {
						auth = "Bearer " + tokens[name]
					}
					body := ""
					if method == "PUT" {
						body = meshBody
					}
					r := s.serve(method, "/meshes/default", from, auth, body)
					if r.code != w.code || !strings.Contains(r.details, w.details) {
						t.Fatalf("%d %q; want %d with %q", r.code, r.details, w.code, w.details)
					}
					if r.code == 401 && r.header.Get("WWW-Authenticate") == "" {
						t.Error("a 401 without WWW-Authenticate")
					}
				})
			}
		}
	}
}

func TestUserTokenAuthEdges(t *testing.T) {
	s := newAuthServer(t, false)
	readonly, admin := s.issue(t, "rita", "readonly"), s.issue(t, "ada", "admin")
	tests := []struct {
		name, method, path, from, auth string
		code                           int
		details                        string
	}{
		{"readonly HEAD", "HEAD", "/meshes/default", remote, "Bearer " + readonly, 200, ""},
		{"readonly DELETE", "DELETE", "/meshes/default", remote, "Bearer " + readonly, 403, "requires group admin"},
		{"readonly issues a token", "POST", "/tokens/user", remote, "Bearer " + readonly, 403, "requires group admin; the token of rita has readonly"},
		{"readonly rotates", "POST", "/tokens/user/signing-key", loopback, "Bearer " + readonly, 403, "requires group admin"},
		{"lower-case scheme", "GET", "/meshes", remote, "bearer " + admin, 200, ""},
		{"basic auth", "GET", "/meshes", remote, "Basic YWRhOnB3", 401, `must be "Bearer TOKEN"`},
		{"bearer without token", "GET", "/meshes", remote, "Bearer ", 401, "no token after Bearer"},
		{"garbage token", "GET", "/meshes", remote, "Bearer a.b.c", 401, "user token refused: token malformed"},
		{"zone token", "GET", "/meshes", remote, "Bearer " + zoneToken(t, s.store), 401, "user token refused"},
		{"healthz from anywhere", "GET", "/healthz", remote, "", 200, ""},
		{"readyz from anywhere", "GET", "/readyz", remote, "", 200, ""},
		{"metrics from anywhere", "GET", "/metrics", remote, "", 200, ""},
		{"open path with a bad token", "GET", "/healthz", remote, "Bearer x", 200, ""},
		{"unknown path needs a token first", "GET", "/nope/nope/nope", remote, "", 401, "a user token is required"},
		{"open path written without a token", "PUT", "/kds/ca.pem", remote, "", 401, "a user token is required"},
		{"open path posted by readonly", "POST", "/healthz", remote, "Bearer " + readonly, 403, "requires group admin"},
		{"readonly lists secrets", "GET", "/meshes/default/secrets", remote, "Bearer " + readonly, 403, "GET /meshes/default/secrets requires group admin"},
		{"readonly reads a secret", "GET", "/meshes/default/secrets/db", remote, "Bearer " + readonly, 403, "requires group admin; the token of rita has readonly"},
		{"admin lists secrets", "GET", "/meshes/default/secrets", remote, "Bearer " + admin, 200, ""},
		{"readonly reads routes", "GET", "/meshes/default/traffic-routes", remote, "Bearer " + readonly, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := s.serve(tt.method, tt.path, tt.from, tt.auth, "")
			if r.code != tt.code || !strings.Contains(r.details, tt.details) {
				t.Fatalf("%d %q; want %d with %q", r.code, r.details, tt.code, tt.details)
			}
		})
	}
}

func zoneToken(t *testing.T, st store.Store) string {
	t.Helper()
	token, err := tokens.NewIssuer(st).IssueZoneToken(context.Background(), "zone-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return token
}

// TestRequireTokenOnLocalhost: with the flag, a loopback caller needs a token
// like anyone, and one with a token is served as its token says.
func TestRequireTokenOnLocalhost(t *testing.T) {
	s := newAuthServer(t, true)
	if r := s.serve("GET", "/meshes", loopback, "", ""); r.code != 401 || !strings.Contains(r.details, "--api-require-token-on-localhost") {
		t.Fatalf("loopback without a token: %d %q", r.code, r.details)
	}
	admin, readonly := s.issue(t, "ada", "admin"), s.issue(t, "rita", "readonly")
	if r := s.serve("PUT", "/meshes/default", loopback, "Bearer "+admin, meshBody); r.code != 200 {
		t.Fatalf("loopback admin: %d %q", r.code, r.details)
	}
	if r := s.serve("PUT", "/meshes/default", loopback, "Bearer "+readonly, meshBody); r.code != 403 {
		t.Fatalf("loopback readonly writing: %d %q", r.code, r.details)
	}
	if r := s.serve("GET", "/healthz", loopback, "", ""); r.code != 200 {
		t.Fatalf("healthz: %d", r.code)
	}
}

// TestWritesAreLoggedWithTheirUser: who wrote is at info level; reads stay
// at debug.
func TestWritesAreLoggedWithTheirUser(t *testing.T) {
	s := newAuthServer(t, false)
	admin := s.issue(t, "ada", "admin")
	s.serve("PUT", "/meshes/default", remote, "Bearer "+admin, meshBody)
	s.serve("PUT", "/meshes/default", loopback, "", meshBody)
	s.serve("GET", "/meshes", remote, "Bearer "+admin, "")
	var users []string
	for _, e := range s.logs.FilterMessage("write").All() {
		if e.Level != zap.InfoLevel {
			t.Errorf("write logged at %s", e.Level)
		}
		users = append(users, e.ContextMap()["user"].(string))
	}
	if strings.Join(users, ",") != "ada,(loopback)" {
		t.Errorf("writes logged for %q, want ada then (loopback)", users)
	}
	for _, e := range s.logs.FilterMessage("request").All() {
		if e.Level != zap.DebugLevel || e.ContextMap()["user"] != "ada" {
			t.Errorf("read logged as %v %v", e.Level, e.ContextMap())
		}
	}
}

// TestTokenUncheckable: a token that cannot be checked is 503, not a
// verdict.
func TestTokenUncheckable(t *testing.T) {
	down := apiserver.AuthenticatorFunc(func(context.Context, string) (apiserver.User, error) {
		return apiserver.User{}, store.ErrUnavailable
	})
	h, err := apiserver.New(apiserver.Deps{Store: store.NewMemory(0), Log: zap.NewNop(), Registry: prometheus.NewRegistry(), Users: down})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("GET", "/meshes", nil)
	req.RemoteAddr = remote
	req.TLS = &tls.ConnectionState{HandshakeComplete: true}
	req.Header.Set("Authorization", "Bearer x")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 503 || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("store down while checking a token: %d %s", rec.Code, rec.Body)
	}
	odd := apiserver.AuthenticatorFunc(func(context.Context, string) (apiserver.User, error) {
		return apiserver.User{Name: "x", Group: "root"}, nil
	})
	h, _ = apiserver.New(apiserver.Deps{Store: store.NewMemory(0), Log: zap.NewNop(), Registry: prometheus.NewRegistry(), Users: odd})
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 401 {
		t.Fatalf("a user of an unknown group: %d %s", rec.Code, rec.Body)
	}
}
