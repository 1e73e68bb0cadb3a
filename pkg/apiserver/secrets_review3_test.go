package apiserver_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ursamesh/ursa/pkg/api"
)

// A readonly user may not read Secrets by any path: the list across meshes,
// GET /secrets, holds the same data as /meshes/{mesh}/secrets. Over a real
// HTTPS socket, as the API is served.
func TestReadonlyCannotListSecretsAcrossMeshes(t *testing.T) {
	s := newAuthServer(t, false)
	secret := &api.Secret{Meta: api.Meta{Type: "Secret", Mesh: "default", Name: "db"}, Data: []byte("hunter2-password")}
	if _, err := s.store.Create(context.Background(), secret); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(s.handler)
	defer srv.Close()
	get := func(path, token string) (int, string) {
		req, err := http.NewRequest("GET", srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	readonly, admin := s.issue(t, "rita", "readonly"), s.issue(t, "ada", "admin")
	for _, path := range []string{"/secrets", "/meshes/default/secrets", "/meshes/default/secrets/db"} {
		if code, body := get(path, readonly); code != http.StatusForbidden || !strings.Contains(body, "requires group admin") {
			t.Errorf("readonly GET %s: %d %s; want 403 requiring admin", path, code, body)
		}
	}
	if code, body := get("/secrets", admin); code != http.StatusOK || !strings.Contains(body, `"db"`) {
		t.Errorf("admin GET /secrets: %d %s; want 200 listing db", code, body)
	}
}
