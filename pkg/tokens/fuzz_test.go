package tokens

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/store"
)

// FuzzVerifyZoneToken checks that any input gets a verdict, never a panic,
// and that an accepted token names a valid zone.
func FuzzVerifyZoneToken(f *testing.F) {
	ctx := context.Background()
	i := NewIssuer(store.NewMemory(0))
	if err := i.EnsureKey(ctx); err != nil {
		f.Fatal(err)
	}
	good, err := i.IssueZoneToken(ctx, "zone-1", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	key, err := i.ring.load(ctx, 1)
	if err != nil {
		f.Fatal(err)
	}
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"zone": "zone-1", "sub": "zone-1"}).
		SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		f.Fatal(err)
	}
	weird := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{"zone": []int{1}, "exp": "soon", "sub": nil})
	weird.Header["kid"] = map[string]any{"a": 1}
	weirdToken, err := weird.SignedString(key)
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{good, none, weirdToken, "", "a.b.c", "..", good + ".x", strings.ToUpper(good),
		"eyJhbGciOiJFZERTQSIsImtpZCI6IjEifQ.e30.", "eyJhbGciOiJFZERTQSIsImtpZCI6Ijk5OTk5OTk5OTk5OSJ9.e30.AA"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, token string) {
		zone, err := i.VerifyZoneToken(ctx, token)
		if err != nil {
			if !IsInvalid(err) {
				t.Fatalf("error %v is not a verdict on the token", err)
			}
			return
		}
		if CheckZoneName(zone) != nil {
			t.Fatalf("accepted a token for %q, not a valid zone name", zone)
		}
	})
}

// FuzzVerifyUserToken checks that any input gets a verdict, never a panic,
// that an accepted token names a valid user and group, and that the API's
// view of a refusal is a refusal.
func FuzzVerifyUserToken(f *testing.F) {
	ctx := context.Background()
	u := NewUserIssuer(store.NewMemory(0), zap.NewNop())
	good, err := u.Issue(ctx, "alice@example.com", "readonly", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	key, err := u.ring.load(ctx, 1)
	if err != nil {
		f.Fatal(err)
	}
	weird := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{"name": []int{1}, "group": map[string]any{}, "exp": 1e300, "sub": "alice"})
	weird.Header["kid"] = "1"
	weirdToken, err := weird.SignedString(key)
	if err != nil {
		f.Fatal(err)
	}
	unicode := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{"name": "ålice", "sub": "ålice", "group": "admin", "exp": 4102444800})
	unicode.Header["kid"] = "1"
	unicodeToken, err := unicode.SignedString(key)
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{good, weirdToken, unicodeToken, "", "Bearer " + good, good[:len(good)/2], good + good,
		"eyJhbGciOiJFZERTQSIsImtpZCI6IjEifQ.eyJuYW1lIjoiYSIsImdyb3VwIjoiYWRtaW4ifQ.", strings.Repeat(".", 3000)} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, token string) {
		c, err := u.Verify(ctx, token)
		if err != nil {
			if !IsInvalid(err) {
				t.Fatalf("error %v is not a verdict on the token", err)
			}
			if _, aerr := u.Authenticate(ctx, token); !errors.Is(aerr, apiserver.ErrBadToken) {
				t.Fatalf("authenticate = %v, want a refusal", aerr)
			}
			return
		}
		if CheckUserName(c.Name) != nil || CheckGroup(c.Group) != nil {
			t.Fatalf("accepted a token for %q in %q", c.Name, c.Group)
		}
	})
}

// FuzzVerifyProxyTokens checks that any input gets a verdict from both
// proxy-token issuers, never a panic; that an accepted dataplane token
// carries valid claims for an existing key's mesh; that an accepted ingress
// token names a valid zone; and that no input passes as both kinds.
func FuzzVerifyProxyTokens(f *testing.F) {
	ctx := context.Background()
	st := store.NewMemory(0)
	for _, m := range []string{"default", "other"} {
		if _, err := st.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: m}}); err != nil {
			f.Fatal(err)
		}
	}
	dp, ing := NewDataplaneIssuer(st), NewIngressIssuer(st, "zone-1")
	seeds := []string{"", "a.b.c", "..", "eyJhbGciOiJFZERTQSIsImtpZCI6ImRlZmF1bHQifQ.e30.",
		"eyJhbGciOiJFZERTQSIsImtpZCI6ImluZ3Jlc3MifQ.eyJzdWIiOiJpbmdyZXNzIn0.AA"}
	for _, c := range []DataplaneClaims{{Mesh: "default"}, {Mesh: "other", Service: "web", Tags: map[string]string{"version": "v1"}, Name: "web-1"}} {
		tok, err := dp.Issue(ctx, c, time.Hour)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, tok, tok+"x", strings.Replace(tok, ".", "..", 1))
	}
	tok, err := ing.Issue(ctx, "zone-1", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	seeds = append(seeds, tok)
	key, err := dp.key(ctx, "default", false)
	if err != nil {
		f.Fatal(err)
	}
	exp := time.Now().Add(time.Hour).Unix()
	for _, claims := range []jwt.MapClaims{
		{"mesh": "default", "sub": "dataplane", "exp": exp, "tags": map[string]any{"version": 1}},
		{"mesh": "default", "sub": "dataplane", "exp": exp, "name": "Not_A_Name"},
		{"mesh": "other", "sub": "dataplane", "exp": exp},
		{"zone": "zone-1", "sub": "ingress", "exp": exp},
	} {
		t := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims)
		t.Header["kid"] = "default"
		s, err := t.SignedString(key)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, s)
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, token string) {
		_ = UnverifiedSubject(token)
		c, dpErr := dp.Verify(ctx, token)
		if dpErr != nil && !IsInvalid(dpErr) {
			t.Fatalf("dataplane: error %v is not a verdict on the token", dpErr)
		}
		if dpErr == nil {
			if causes := c.check(); len(causes) > 0 {
				t.Fatalf("accepted a dataplane token with invalid claims %+v: %v", c, causes)
			}
			if _, err := dp.key(ctx, c.Mesh, false); err != nil {
				t.Fatalf("accepted a dataplane token for mesh %q, which has no key", c.Mesh)
			}
		}
		ic, ingErr := ing.Verify(ctx, token)
		if ingErr != nil && !IsInvalid(ingErr) {
			t.Fatalf("ingress: error %v is not a verdict on the token", ingErr)
		}
		if ingErr == nil && CheckZoneName(ic.Zone) != nil {
			t.Fatalf("accepted an ingress token for %q, not a valid zone name", ic.Zone)
		}
		if dpErr == nil && ingErr == nil {
			t.Fatal("a token passed as both a dataplane and an ingress token")
		}
	})
}
