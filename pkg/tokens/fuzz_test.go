package tokens

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

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
