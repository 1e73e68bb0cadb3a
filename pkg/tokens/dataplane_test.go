package tokens

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

func TestDataplaneTokens(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory(0)
	st.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}})
	d := NewDataplaneIssuer(st)
	if _, err := d.Issue(ctx, "nope", "", 0); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("token for a missing mesh: %v", err)
	}
	tok, err := d.Issue(ctx, "default", "web", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.Verify(ctx, tok)
	if err != nil || c.Mesh != "default" || c.Service != "web" {
		t.Fatalf("verify: %+v %v", c, err)
	}
	later := &DataplaneIssuer{store: st, now: func() time.Time { return time.Now().Add(2 * time.Hour) }}
	if _, err := later.Verify(ctx, tok); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("expired: %v", err)
	}
	none := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"mesh": "default", "sub": "dataplane", "exp": time.Now().Add(time.Hour).Unix()})
	none.Header["kid"] = "default"
	unsigned, _ := none.SignedString(jwt.UnsafeAllowNoneSignatureType)
	if _, err := d.Verify(ctx, unsigned); err == nil {
		t.Fatal("an unsigned token was accepted")
	}
	// Deleting the mesh's key revokes its tokens.
	if err := st.Delete(ctx, api.Key{Type: "GlobalSecret", Name: DataplaneKeyPrefix + "default"}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Verify(ctx, tok); !errors.Is(err, ErrTokenSignature) {
		t.Fatalf("after the key is gone: %v", err)
	}
}
