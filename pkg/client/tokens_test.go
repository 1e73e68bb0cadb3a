package client_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/client"
)

// TestGenerateZoneTokenRequest checks the body sent and the decoding of the
// answer.
func TestGenerateZoneTokenRequest(t *testing.T) {
	tests := []struct {
		name     string
		validFor time.Duration
		answer   string
		wantBody string
		want     string
		wantErr  string
	}{
		{"server default validity", 0, `{"token":"t0k"}`, `{"zone":"zone-1"}`, "t0k", ""},
		{"given validity", 720 * time.Hour, `{"token":"t0k"}`, `{"zone":"zone-1","validFor":"720h0m0s"}`, "t0k", ""},
		{"no token in the answer", time.Hour, `{}`, `{"zone":"zone-1","validFor":"1h0m0s"}`, "", "the response holds no token"},
		{"answer not JSON", time.Hour, `token`, `{"zone":"zone-1","validFor":"1h0m0s"}`, "", "decode response"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body, contentType string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				body, contentType = string(b), r.Header.Get("Content-Type")
				_, _ = w.Write([]byte(tt.answer))
			}))
			defer srv.Close()
			token, err := client.New(srv.URL, srv.Client()).GenerateZoneToken(context.Background(), "zone-1", tt.validFor)
			if body != tt.wantBody || contentType != "application/json" {
				t.Errorf("sent %q as %q, want %q as application/json", body, contentType, tt.wantBody)
			}
			if token != tt.want || (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("got %q, %v; want %q and an error containing %q", token, err, tt.want, tt.wantErr)
			}
			if err != nil && !strings.HasPrefix(err.Error(), "generate zone token for zone-1: ") {
				t.Errorf("error %q does not name the call", err)
			}
		})
	}
}

func TestZoneTokensAgainstTheFake(t *testing.T) {
	ctx := context.Background()
	fake, c := newFake(t)

	token, err := c.GenerateZoneToken(ctx, "zone-1", 48*time.Hour)
	if err != nil || token == "" {
		t.Fatalf("generate = %q, %v", token, err)
	}
	serial, err := c.RotateZoneTokenSigningKey(ctx)
	if err != nil || serial != 2 {
		t.Fatalf("rotate = %d, %v; want 2", serial, err)
	}
	if _, err := c.GenerateZoneToken(ctx, "zone-2", 0); err != nil {
		t.Fatal(err)
	}
	issued := fake.ZoneTokens()
	if len(issued) != 2 || issued[0].Zone != "zone-1" || issued[0].ValidFor != 48*time.Hour || issued[0].KeySerial != 1 ||
		issued[0].Token != token || issued[1].ValidFor != 0 || issued[1].KeySerial != 2 {
		t.Errorf("issued = %+v", issued)
	}

	_, err = c.GenerateZoneToken(ctx, "Zone_1", 0)
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Status != http.StatusBadRequest || len(ce.Causes) != 1 || ce.Causes[0].Field != "zone" {
		t.Errorf("bad zone: %v; want 400 with a cause on zone", err)
	}
	if _, err := c.GenerateZoneToken(ctx, "zone-1", -time.Hour); err == nil || !strings.Contains(err.Error(), "negative") {
		t.Errorf("negative validity: %v", err)
	}
	if n := len(fake.ZoneTokens()); n != 2 {
		t.Errorf("%d tokens issued, want 2", n)
	}
}

func TestRotateZoneTokenSigningKeyDecoding(t *testing.T) {
	tests := []struct {
		answer  string
		want    int
		wantErr string
	}{
		{`{"serial":7}`, 7, ""},
		{`{}`, 0, "no key serial"},
		{`{"serial":"7"}`, 0, "decode response"},
	}
	for _, tt := range tests {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write([]byte(tt.answer))
		}))
		serial, err := client.New(srv.URL, srv.Client()).RotateZoneTokenSigningKey(context.Background())
		srv.Close()
		if serial != tt.want || (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("answer %s: got %d, %v; want %d and an error containing %q", tt.answer, serial, err, tt.want, tt.wantErr)
		}
	}
}
