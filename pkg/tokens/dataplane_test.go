package tokens

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// zoneStore returns a zone's store with meshes default and other.
func zoneStore(t *testing.T) store.Store {
	t.Helper()
	st := store.NewMemory(0)
	for _, m := range []string{"default", "other"} {
		if _, err := st.Create(context.Background(), &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: m}}); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func TestDataplaneTokens(t *testing.T) {
	ctx := context.Background()
	st := zoneStore(t)
	d := NewDataplaneIssuer(st)
	clk := newClock()
	d.now = clk.Now
	for _, bad := range []DataplaneClaims{
		{Mesh: "nope"},
		{Mesh: ""},
		{Mesh: "default", Service: "web app"},
		{Mesh: "default", Tags: map[string]string{"version": ""}},
		{Mesh: "default", Tags: map[string]string{"-bad": "v1"}},
		{Mesh: "default", Name: "Web_1"},
	} {
		if _, err := d.Issue(ctx, bad, 0); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("issue %+v: %v, want ErrInvalidArgument", bad, err)
		}
	}
	if _, err := d.Issue(ctx, DataplaneClaims{Mesh: "default"}, -time.Hour); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("negative validity: %v", err)
	}
	want := DataplaneClaims{Mesh: "default", Service: "web", Tags: map[string]string{"version": "v1"}, Name: "web-1"}
	tok, err := d.Issue(ctx, want, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.Verify(ctx, tok)
	if err != nil || c.Mesh != "default" || c.Service != "web" || c.Tags["version"] != "v1" || len(c.Tags) != 1 || c.Name != "web-1" {
		t.Fatalf("verify: %+v %v", c, err)
	}
	if d := time.Until(c.ExpiresAt); d < 59*time.Minute || d > time.Hour {
		t.Errorf("expires in %s, want an hour", d)
	}
	later := NewDataplaneIssuer(st)
	later.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	if _, err := later.Verify(ctx, tok); !errors.Is(err, ErrTokenExpired) || !strings.Contains(err.Error(), "expired at") {
		t.Fatalf("expired: %v", err)
	}

	// Forgeries: unsigned, altered, signed by another key, by another
	// mesh's key, of another kind.
	none := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"mesh": "default", "sub": "dataplane", "exp": time.Now().Add(time.Hour).Unix()})
	none.Header["kid"] = "default"
	unsigned, _ := none.SignedString(jwt.UnsafeAllowNoneSignatureType)
	altered := []byte(tok)
	// Another base64url letter: a flipped bit may leave the alphabet, which
	// is malformed rather than a bad signature.
	if altered[len(altered)-5] == 'A' {
		altered[len(altered)-5] = 'B'
	} else {
		altered[len(altered)-5] = 'A'
	}
	_, stranger, _ := ed25519.GenerateKey(rand.Reader)
	future := jwt.NewNumericDate(time.Now().Add(time.Hour))
	otherKey := sign(t, jwt.SigningMethodEdDSA, stranger, "default", dpClaims{Mesh: "default", RegisteredClaims: jwt.RegisteredClaims{Subject: "dataplane", ExpiresAt: future}})
	if _, err := d.Issue(ctx, DataplaneClaims{Mesh: "other"}, 0); err != nil {
		t.Fatal(err)
	}
	otherPriv, err := d.key(ctx, "other", false)
	if err != nil {
		t.Fatal(err)
	}
	crossMesh := sign(t, jwt.SigningMethodEdDSA, otherPriv, "other", dpClaims{Mesh: "default", RegisteredClaims: jwt.RegisteredClaims{Subject: "dataplane", ExpiresAt: future}})
	defaultPriv, _ := d.key(ctx, "default", false)
	ingressKind := sign(t, jwt.SigningMethodEdDSA, defaultPriv, "default", dpClaims{Mesh: "default", RegisteredClaims: jwt.RegisteredClaims{Subject: "ingress", ExpiresAt: future}})
	noExp := sign(t, jwt.SigningMethodEdDSA, defaultPriv, "default", dpClaims{Mesh: "default", RegisteredClaims: jwt.RegisteredClaims{Subject: "dataplane"}})
	badTags := sign(t, jwt.SigningMethodEdDSA, defaultPriv, "default", jwt.MapClaims{"mesh": "default", "sub": "dataplane", "exp": future.Unix(), "tags": []int{1}})
	for _, tt := range []struct {
		name, token string
		want        error
	}{
		{"empty", "  ", ErrTokenMissing},
		{"unsigned", unsigned, ErrTokenSignature},
		{"altered", string(altered), ErrTokenSignature},
		{"another key", otherKey, ErrTokenSignature},
		{"another mesh's key", crossMesh, ErrTokenMalformed},
		{"an ingress token's subject", ingressKind, ErrTokenMalformed},
		{"no exp", noExp, ErrTokenMalformed},
		{"tags of the wrong type", badTags, ErrTokenMalformed},
		{"too long", strings.Repeat("a", MaxTokenSize+1), ErrTokenMalformed},
	} {
		if _, err := d.Verify(ctx, tt.token); !errors.Is(err, tt.want) || !IsInvalid(err) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}

	// Deleting the mesh's key revokes its tokens: through another
	// replica, once the key this one read is keyMemory old; through this
	// one, at once.
	if err := st.Delete(ctx, api.Key{Type: "GlobalSecret", Name: DataplaneKeyPrefix + "default"}, 0); err != nil {
		t.Fatal(err)
	}
	clk.Advance(keyMemory)
	if _, err := d.Verify(ctx, tok); !errors.Is(err, ErrTokenSignature) {
		t.Fatalf("after the key is gone: %v", err)
	}
	if tok, err = d.Issue(ctx, want, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Verify(ctx, tok); err != nil {
		t.Fatalf("a token of the mesh's new key: %v", err)
	}
	if err := d.Revoke(ctx, "default"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Verify(ctx, tok); !errors.Is(err, ErrTokenSignature) {
		t.Fatalf("right after Revoke: %v", err)
	}
}

// TestDataplaneTokenStoreDown: a store that cannot be read is not a verdict
// on the token.
func TestDataplaneTokenStoreDown(t *testing.T) {
	ctx := context.Background()
	st := &faultyStore{Store: zoneStore(t)}
	d, clk, tok := clockedIssuer(t, st)
	st.set(true, false)
	clk.Advance(keyMemory) // past what was read when it was issued
	if _, err := d.Verify(ctx, tok); err == nil || IsInvalid(err) || !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("store down: %v, want store.ErrUnavailable and no verdict", err)
	}
	st.set(false, false) // not remembered: read again
	if _, err := d.Verify(ctx, tok); err != nil {
		t.Fatalf("store back: %v", err)
	}
}

func TestDataplaneClaimsCover(t *testing.T) {
	dp := func(name string, inbound ...map[string]string) *api.Dataplane {
		d := &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: name}}
		for i, tags := range inbound {
			d.Networking.Inbound = append(d.Networking.Inbound, api.Inbound{Port: 10000 + i, Tags: tags})
		}
		return d
	}
	web := map[string]string{api.TagService: "web", "version": "v1"}
	billing := map[string]string{api.TagService: "billing", "version": "v1"}
	webV2 := map[string]string{api.TagService: "web", "version": "v2"}
	for _, tt := range []struct {
		name   string
		claims DataplaneClaims
		dp     *api.Dataplane
		want   string // "" covered, else part of the error
	}{
		{"mesh only", DataplaneClaims{Mesh: "default"}, dp("billing-1", billing), ""},
		{"other mesh", DataplaneClaims{Mesh: "other"}, dp("web-1", web), "token is for mesh other, dataplane web-1 is in mesh default"},
		{"its service", DataplaneClaims{Mesh: "default", Service: "web"}, dp("web-1", web, webV2), ""},
		{"another service", DataplaneClaims{Mesh: "default", Service: "web"}, dp("billing-1", billing), "token is for service web, dataplane billing-1 runs billing"},
		{"one inbound of another service", DataplaneClaims{Mesh: "default", Service: "web"}, dp("web-1", web, billing), "dataplane web-1 runs billing (inbound port 10001)"},
		{"no inbound", DataplaneClaims{Mesh: "default", Service: "web"}, dp("web-1"), ""},
		{"its name", DataplaneClaims{Mesh: "default", Name: "web-1"}, dp("web-1", web), ""},
		{"another name", DataplaneClaims{Mesh: "default", Name: "web-1"}, dp("web-2", web), "token is for dataplane web-1, this is dataplane web-2"},
		{"its tags", DataplaneClaims{Mesh: "default", Tags: map[string]string{"version": "v1"}}, dp("x", web, billing), ""},
		{"another tag value", DataplaneClaims{Mesh: "default", Tags: map[string]string{"version": "v1"}}, dp("web-1", web, webV2), "token requires tag version=v1, dataplane web-1's inbound port 10001 has version=v2"},
		{"a tag missing", DataplaneClaims{Mesh: "default", Tags: map[string]string{"team": "a"}}, dp("web-1", web), "inbound port 10000 has no team tag"},
	} {
		err := tt.claims.Covers(tt.dp)
		if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
}

func TestIngressTokens(t *testing.T) {
	ctx := context.Background()
	st := zoneStore(t)
	i := NewIngressIssuer(st, "zone-1")
	for _, zone := range []string{"", "Zone_1", "zone-2"} {
		if _, err := i.Issue(ctx, zone, 0); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("issue for %q: %v, want ErrInvalidArgument", zone, err)
		}
	}
	tok, err := i.Issue(ctx, "zone-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := i.Verify(ctx, tok); err != nil || c.Zone != "zone-1" {
		t.Fatalf("verify: %+v %v", c, err)
	}
	if UnverifiedSubject(tok) != SubjectIngress {
		t.Fatalf("subject %q", UnverifiedSubject(tok))
	}
	// A dataplane token is no ingress token, and the other way round.
	d := NewDataplaneIssuer(st)
	dpTok, err := d.Issue(ctx, DataplaneClaims{Mesh: "default"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := i.Verify(ctx, dpTok); !IsInvalid(err) {
		t.Fatalf("a dataplane token verified as an ingress token: %v", err)
	}
	if _, err := d.Verify(ctx, tok); !IsInvalid(err) {
		t.Fatalf("an ingress token verified as a dataplane token: %v", err)
	}
	// Even signed with the ingress key, a token of another subject is
	// refused.
	priv, err := newLocalKeys(st, time.Now).get(ctx, IngressKeyName, false)
	if err != nil {
		t.Fatal(err)
	}
	future := jwt.NewNumericDate(time.Now().Add(time.Hour))
	wrongSub := sign(t, jwt.SigningMethodEdDSA, priv, "ingress", ingClaims{Zone: "zone-1", RegisteredClaims: jwt.RegisteredClaims{Subject: "dataplane", ExpiresAt: future}})
	if _, err := i.Verify(ctx, wrongSub); !errors.Is(err, ErrTokenMalformed) {
		t.Fatalf("another subject: %v", err)
	}
	later := NewIngressIssuer(st, "zone-1")
	later.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	if _, err := later.Verify(ctx, tok); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("expired: %v", err)
	}
	// Another zone's key does not verify this zone's tokens.
	other := NewIngressIssuer(zoneStore(t), "zone-1")
	if _, err := other.Issue(ctx, "zone-1", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Verify(ctx, tok); !errors.Is(err, ErrTokenSignature) {
		t.Fatalf("another store's key: %v", err)
	}
}

// TestRevokeProxyTokens: revoking a mesh's dataplane tokens, or the zone's
// ingress tokens, refuses every one issued before (as invalid: a proxy
// that shows one is refused, not asked to try again), and only those; the
// next token issued verifies.
func TestRevokeProxyTokens(t *testing.T) {
	ctx := context.Background()
	st := zoneStore(t)
	d, i := NewDataplaneIssuer(st), NewIngressIssuer(st, "zone-1")
	issue := func() (dp, ing string) {
		dp, err := d.Issue(ctx, DataplaneClaims{Mesh: "default"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		ing, err = i.Issue(ctx, "zone-1", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return dp, ing
	}
	oldDP, oldIng := issue()
	if err := d.Revoke(ctx, "default"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Verify(ctx, oldDP); !IsInvalid(err) {
		t.Fatalf("a revoked dataplane token: %v, want it invalid", err)
	}
	if _, err := i.Verify(ctx, oldIng); err != nil {
		t.Fatalf("an ingress token, after the dataplane tokens were revoked: %v", err)
	}
	if err := i.Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := i.Verify(ctx, oldIng); !IsInvalid(err) {
		t.Fatalf("a revoked ingress token: %v, want it invalid", err)
	}
	newDP, newIng := issue()
	if _, err := d.Verify(ctx, newDP); err != nil {
		t.Fatalf("a dataplane token issued after the revocation: %v", err)
	}
	if _, err := i.Verify(ctx, newIng); err != nil {
		t.Fatalf("an ingress token issued after the revocation: %v", err)
	}
	if _, err := d.Verify(ctx, oldDP); !IsInvalid(err) {
		t.Fatalf("a revoked dataplane token, once a new key signs: %v", err)
	}
	// Twice: nothing more to do, no error. A mesh that does not exist is
	// refused (a misspelt one would revoke nothing and say it had).
	if err := d.Revoke(ctx, "default"); err != nil {
		t.Fatal(err)
	}
	if err := d.Revoke(ctx, "nope"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("a mesh that does not exist: %v", err)
	}
	if err := d.Revoke(ctx, "Bad_Mesh"); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("a mesh name that is none: %v", err)
	}
}
