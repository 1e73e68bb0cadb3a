package tokens

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/store"
)

// newAPI serves the global REST API over st with the token handlers mounted,
// as the global CP does.
func newAPI(t *testing.T, i *Issuer, st store.Store) (http.Handler, string) {
	t.Helper()
	h, err := apiserver.New(apiserver.Deps{Store: st, Log: zaptest.NewLogger(t), Registry: prometheus.NewRegistry(),
		Mode: apiserver.ModeGlobal, Extra: i.Handlers()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return h, srv.URL
}

type errorBody struct {
	Title   string           `json:"title"`
	Details string           `json:"details"`
	Causes  []api.FieldError `json:"causes"`
}

// post sends body and decodes a 2xx answer into out, or returns the error
// body.
func post(t *testing.T, url, body string, out any) (int, errorBody) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var eb errorBody
	if resp.StatusCode >= 300 {
		if err := json.Unmarshal(data, &eb); err != nil || eb.Title == "" {
			t.Fatalf("POST %s: error body %q is not the JSON error shape", url, data)
		}
		return resp.StatusCode, eb
	}
	if err := json.Unmarshal(data, out); err != nil {
		t.Fatalf("POST %s: decode %q: %v", url, data, err)
	}
	return resp.StatusCode, eb
}

func TestHandlers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, st, _ store.Store) {
		ctx := context.Background()
		i := NewIssuer(st)
		_, url := newAPI(t, i, st)

		tests := []struct {
			body     string
			validFor time.Duration
		}{
			{`{"zone":"zone-1","validFor":"720h"}`, 720 * time.Hour},
			{`{"zone":"zone-1","validFor":"90m"}`, 90 * time.Minute},
			{`{"zone":"zone-1"}`, DefaultValidity},
			{`{"zone":"zone-1","validFor":""}`, DefaultValidity},
		}
		var tokens []string
		for _, tt := range tests {
			var got ZoneTokenResponse
			if code, eb := post(t, url+"/tokens/zone", tt.body, &got); code != http.StatusOK {
				t.Fatalf("POST %s: %d %+v", tt.body, code, eb)
			}
			c, err := i.VerifyZoneTokenClaims(ctx, got.Token)
			if err != nil || c.Zone != "zone-1" || c.ExpiresAt.Sub(c.IssuedAt) != tt.validFor {
				t.Errorf("POST %s: token %+v, %v; want zone-1 valid for %s", tt.body, c, err, tt.validFor)
			}
			tokens = append(tokens, got.Token)
		}

		var rotated SigningKeyResponse
		if code, eb := post(t, url+"/tokens/zone/signing-key", "", &rotated); code != http.StatusOK || rotated.Serial != 2 {
			t.Fatalf("rotate: %d %+v %+v; want 200 and serial 2", code, rotated, eb)
		}
		for _, token := range tokens {
			if _, err := i.VerifyZoneToken(ctx, token); !errors.Is(err, ErrTokenSignature) {
				t.Errorf("token issued before rotation: %v, want ErrTokenSignature", err)
			}
		}
		var fresh ZoneTokenResponse
		if code, _ := post(t, url+"/tokens/zone", `{"zone":"zone-2"}`, &fresh); code != http.StatusOK {
			t.Fatalf("issue after rotation: %d", code)
		}
		if c, err := i.VerifyZoneTokenClaims(ctx, fresh.Token); err != nil || c.KeySerial != 2 {
			t.Errorf("token after rotation: %+v, %v; want key 2", c, err)
		}
	})
}

func TestHandlersRefuseBadRequests(t *testing.T) {
	st := store.NewMemory(0)
	_, url := newAPI(t, NewIssuer(st), st)
	tests := []struct {
		name    string
		body    string
		code    int
		field   string // the cause expected, if any
		message string // in the cause's message, or else in the details
	}{
		{"bad zone", `{"zone":"Zone_1"}`, 400, "zone", "not a DNS-1123 label"},
		{"dotted zone", `{"zone":"zone.1","validFor":"1h"}`, 400, "zone", "not a DNS-1123 label"},
		{"no zone", `{"validFor":"1h"}`, 400, "zone", "required"},
		{"empty body", ``, 400, "zone", "required"},
		{"bad duration", `{"zone":"zone-1","validFor":"a month"}`, 400, "validFor", "not a duration"},
		{"days are not a unit", `{"zone":"zone-1","validFor":"30d"}`, 400, "validFor", "not a duration"},
		{"negative duration", `{"zone":"zone-1","validFor":"-1h"}`, 400, "validFor", "negative"},
		{"too long", `{"zone":"zone-1","validFor":"100000h"}`, 400, "validFor", "longer than the maximum"},
		{"duration as a number", `{"zone":"zone-1","validFor":3600}`, 400, "", "cannot unmarshal"},
		{"unknown field", `{"zone":"zone-1","valid_for":"1h"}`, 400, "", `unknown field "valid_for"`},
		{"not JSON", `zone: zone-1`, 400, "", "invalid character"},
		{"two values", `{"zone":"zone-1"}{"zone":"zone-2"}`, 400, "", "more than one JSON value"},
		{"too large", `{"zone":"` + strings.Repeat("z", apiserver.DefaultBodyLimit) + `"}`, 413, "", "exceeds the limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ok ZoneTokenResponse
			code, eb := post(t, url+"/tokens/zone", tt.body, &ok)
			if code != tt.code {
				t.Fatalf("status = %d %+v, want %d", code, eb, tt.code)
			}
			if tt.field == "" {
				if !strings.Contains(eb.Details, tt.message) {
					t.Errorf("details = %q, want it to contain %q", eb.Details, tt.message)
				}
				return
			}
			if len(eb.Causes) != 1 || eb.Causes[0].Field != tt.field || !strings.Contains(eb.Causes[0].Message, tt.message) {
				t.Errorf("causes = %+v, want one on %s saying %q", eb.Causes, tt.field, tt.message)
			}
		})
	}
	if res, err := st.List(context.Background(), store.ListOptions{Type: "GlobalSecret"}); err != nil || len(res.Items) != 0 {
		t.Errorf("bad requests created %d keys (%v), want none", len(res.Items), err)
	}
}

// TestHandlersAreBehindTheAPIAuth checks that the token endpoints are not
// open to callers the API does not admit, and that the keys themselves are
// never served.
func TestHandlersAreBehindTheAPIAuth(t *testing.T) {
	st := store.NewMemory(0)
	i := newIssuer(t, st, nil)
	h, url := newAPI(t, i, st)
	for _, path := range []string{"/tokens/zone", "/tokens/zone/signing-key"} {
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(`{"zone":"zone-1"}`))
		req.RemoteAddr = "203.0.113.9:40000"
		req.TLS = &tls.ConnectionState{HandshakeComplete: true} // the HTTPS port, where tokens are checked
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusUnauthorized {
			t.Errorf("POST %s from a remote caller: %d, want 401", path, rec.Code)
		}
	}
	if got := serials(t, i); len(got) != 1 || got[0] != 1 {
		t.Errorf("keys = %v after refused requests, want [1]", got)
	}
	for _, path := range []string{"/global-secrets", "/global-secrets/" + SigningKeyName(1), "/tokens/zone"} {
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK || strings.Contains(string(body), "zone-token-signing-key.1\"") && strings.Contains(string(body), `"data"`) {
			t.Errorf("GET %s: %d %s; want the keys never served", path, resp.StatusCode, body)
		}
	}
}
