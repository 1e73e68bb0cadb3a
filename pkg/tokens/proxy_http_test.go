package tokens

import (
	"context"
	"crypto/tls"
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
)

// newZoneAPI serves a standalone zone's REST API over st with the proxy
// token handlers mounted, as the zone CP does.
func newZoneAPI(t *testing.T, st store.Store) (*DataplaneIssuer, *IngressIssuer, http.Handler, string) {
	t.Helper()
	dp, ing := NewDataplaneIssuer(st), NewIngressIssuer(st, "zone-1")
	extra := dp.Handlers()
	maps.Copy(extra, ing.Handlers())
	h, err := apiserver.New(apiserver.Deps{Store: st, Log: zaptest.NewLogger(t), Registry: prometheus.NewRegistry(),
		Mode: apiserver.ModeStandalone, Extra: extra})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return dp, ing, h, srv.URL
}

func TestProxyTokenHandlers(t *testing.T) {
	ctx := context.Background()
	dp, ing, h, url := newZoneAPI(t, zoneStore(t))
	var got ZoneTokenResponse
	if code, eb := post(t, url+PathDataplaneToken, `{"mesh":"default","service":"web","tags":{"version":"v1"},"name":"web-1","validFor":"2h"}`, &got); code != 200 {
		t.Fatalf("dataplane token: %d %+v", code, eb)
	}
	c, err := dp.Verify(ctx, got.Token)
	if err != nil || c.Service != "web" || c.Tags["version"] != "v1" || c.Name != "web-1" || time.Until(c.ExpiresAt) < time.Hour {
		t.Fatalf("dataplane token: %+v %v", c, err)
	}
	if code, eb := post(t, url+PathIngressToken, `{"zone":"zone-1"}`, &got); code != 200 {
		t.Fatalf("ingress token: %d %+v", code, eb)
	}
	if ic, err := ing.Verify(ctx, got.Token); err != nil || ic.Zone != "zone-1" {
		t.Fatalf("ingress token: %+v %v", ic, err)
	}

	for _, tt := range []struct {
		name, path, body, field, message string
	}{
		{"no mesh", PathDataplaneToken, `{"service":"web"}`, "mesh", "required"},
		{"a mesh not here", PathDataplaneToken, `{"mesh":"nope"}`, "mesh", "must name a mesh that exists in this zone"},
		{"bad service", PathDataplaneToken, `{"mesh":"default","service":"web app"}`, "service", "must be 1-63"},
		{"bad tag", PathDataplaneToken, `{"mesh":"default","tags":{"version":""}}`, "tags", `value of "version"`},
		{"bad name", PathDataplaneToken, `{"mesh":"default","name":"Web_1"}`, "name", "is not valid"},
		{"bad validity", PathDataplaneToken, `{"mesh":"default","validFor":"30d"}`, "validFor", "not a duration"},
		{"unknown field", PathDataplaneToken, `{"mesh":"default","zone":"zone-1"}`, "", `unknown field "zone"`},
		{"another zone's ingress", PathIngressToken, `{"zone":"zone-2"}`, "zone", "this is zone zone-1's control plane"},
		{"no zone", PathIngressToken, `{}`, "zone", "required"},
		{"bad ingress validity", PathIngressToken, `{"zone":"zone-1","validFor":"-1h"}`, "validFor", "negative"},
	} {
		code, eb := post(t, url+tt.path, tt.body, &got)
		switch {
		case code != 400:
			t.Errorf("%s: %d, want 400", tt.name, code)
		case tt.field == "" && !strings.Contains(eb.Details, tt.message):
			t.Errorf("%s: details %q, want %q", tt.name, eb.Details, tt.message)
		case tt.field != "" && (len(eb.Causes) == 0 || eb.Causes[0].Field != tt.field || !strings.Contains(eb.Causes[0].Message, tt.message)):
			t.Errorf("%s: causes %+v, want %s: %q", tt.name, eb.Causes, tt.field, tt.message)
		}
	}

	// Admins only: the API's auth is in front.
	for _, path := range []string{PathDataplaneToken, PathIngressToken} {
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(`{"mesh":"default","zone":"zone-1"}`))
		req.RemoteAddr = "203.0.113.9:40000"
		req.TLS = &tls.ConnectionState{HandshakeComplete: true} // the HTTPS port, where tokens are checked
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusUnauthorized {
			t.Errorf("POST %s from a remote caller: %d, want 401", path, rec.Code)
		}
	}
}

// TestRevokeHandlers: POST /tokens/dataplane/signing-key {"mesh": M} and
// POST /tokens/ingress/signing-key revoke every token of their kind issued
// before, and tell Revoked; a mesh name that is none, or an unknown field,
// is a 400 that changes nothing.
func TestRevokeHandlers(t *testing.T) {
	ctx := context.Background()
	dp, ing, _, url := newZoneAPI(t, zoneStore(t))
	told := 0
	dp.Revoked, ing.Revoked = func() { told++ }, func() { told++ }
	dpTok, err := dp.Issue(ctx, DataplaneClaims{Mesh: "default"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ingTok, err := ing.Issue(ctx, "zone-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var got RevokeResponse
	for _, bad := range []string{`{"mesh":"Bad_Mesh"}`, `{"mesh":"nope"}`, `{"mesh":"default","zone":"zone-1"}`} {
		if code, _ := post(t, url+PathDataplaneTokenSigningKey, bad, &got); code != 400 {
			t.Fatalf("%s: %d, want 400", bad, code)
		}
	}
	if _, err := dp.Verify(ctx, dpTok); err != nil || told != 0 {
		t.Fatalf("a refused revocation revoked (told %d): %v", told, err)
	}
	if code, eb := post(t, url+PathDataplaneTokenSigningKey, `{"mesh":"default"}`, &got); code != 200 || got.Revoked != "every dataplane token of mesh default" {
		t.Fatalf("revoke dataplane tokens: %d %+v %+v", code, eb, got)
	}
	if code, eb := post(t, url+PathIngressTokenSigningKey, ``, &got); code != 200 || got.Revoked != "every ingress token of zone zone-1" {
		t.Fatalf("revoke ingress tokens: %d %+v %+v", code, eb, got)
	}
	if _, err := dp.Verify(ctx, dpTok); !IsInvalid(err) {
		t.Fatalf("a revoked dataplane token: %v", err)
	}
	if _, err := ing.Verify(ctx, ingTok); !IsInvalid(err) {
		t.Fatalf("a revoked ingress token: %v", err)
	}
	if told != 2 {
		t.Fatalf("Revoked told %d times, want 2", told)
	}
}
