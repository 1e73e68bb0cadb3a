package tokens

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
)

func newUsers(t *testing.T, st store.Store, c *clock) *UserTokens {
	t.Helper()
	u := NewUserIssuer(st, zaptest.NewLogger(t))
	if c != nil {
		u.now = c.Now
	}
	if err := u.EnsureKey(context.Background()); err != nil {
		t.Fatal(err)
	}
	return u
}

// userClaimsFor are the claims of a valid token for name in group.
func userClaimsFor(name, group string) userClaims {
	now := time.Now()
	return userClaims{Name: name, Group: group, RegisteredClaims: jwt.RegisteredClaims{
		Subject: name, IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)), ID: "test",
	}}
}

func TestUserTokenIssueAndVerify(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	u := newUsers(t, store.NewMemory(0), c)
	for _, tt := range []struct {
		name, group string
		validFor    time.Duration
		want        time.Duration
	}{
		{"alice", "admin", 0, DefaultUserValidity},
		{"bob@example.com", "readonly", time.Hour, time.Hour},
		{"ci_bot.1", "readonly", MaxValidity, MaxValidity},
	} {
		token, err := u.Issue(ctx, tt.name, tt.group, tt.validFor)
		if err != nil {
			t.Fatal(err)
		}
		got, err := u.Verify(ctx, "\n"+token+" ")
		if err != nil {
			t.Fatal(err)
		}
		if got.Name != tt.name || got.Group != tt.group || got.KeySerial != 1 || got.ID == "" || got.ExpiresAt.Sub(got.IssuedAt) != tt.want {
			t.Errorf("claims = %+v; want %s in %s, key 1, valid for %s", got, tt.name, tt.group, tt.want)
		}
		user, err := u.Authenticate(ctx, token)
		if err != nil || user.Name != tt.name || user.Group != tt.group {
			t.Errorf("authenticate = %+v, %v", user, err)
		}
	}
	// A user token's key is not a zone token's: each ring signs its own.
	zoneTok, err := NewIssuer(u.ring.store).IssueZoneToken(ctx, "zone-1", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := u.Verify(ctx, zoneTok); !errors.Is(err, ErrTokenSignature) {
		t.Errorf("a zone token as a user token: %v, want ErrTokenSignature", err)
	}
	userTok, _ := u.Issue(ctx, "alice", "admin", 0)
	if _, err := NewIssuer(u.ring.store).VerifyZoneToken(ctx, userTok); !errors.Is(err, ErrTokenSignature) {
		t.Errorf("a user token as a zone token: %v, want ErrTokenSignature", err)
	}
}

func TestUserTokenRefused(t *testing.T) {
	ctx := context.Background()
	c := newClock()
	st := store.NewMemory(0)
	u := newUsers(t, st, c)
	key, err := u.ring.load(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	good, err := u.Issue(ctx, "alice", "readonly", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	badGroup := userClaimsFor("alice", "root")
	otherSub := userClaimsFor("alice", "admin")
	otherSub.Subject = "root"
	noName := userClaimsFor("", "admin")
	tests := []struct {
		name    string
		token   string
		advance time.Duration
		want    error
		message string
	}{
		{"empty", "", 0, ErrTokenMissing, "no token was given"},
		{"expired", good, 2 * time.Hour, ErrTokenExpired, "expired at"},
		{"flipped signature", flip(t, good), 0, ErrTokenSignature, "signature does not match"},
		{"group raised", withPayload(good, `{"name":"alice","sub":"alice","group":"admin","exp":4102444800}`), 0, ErrTokenSignature, "signature does not match"},
		{"alg none", sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "1", userClaimsFor("alice", "admin")), 0, ErrTokenSignature, `algorithm "none" is refused`},
		{"unknown group", sign(t, jwt.SigningMethodEdDSA, key, "1", badGroup), 0, ErrTokenMalformed, `group claim: "root" is not a group`},
		{"sub differs", sign(t, jwt.SigningMethodEdDSA, key, "1", otherSub), 0, ErrTokenMalformed, `sub "root" differs from name "alice"`},
		{"no name", sign(t, jwt.SigningMethodEdDSA, key, "1", noName), 0, ErrTokenMalformed, "name claim: required"},
		{"unknown kid", sign(t, jwt.SigningMethodEdDSA, key, "7", userClaimsFor("alice", "admin")), 0, ErrTokenSignature, "kid 7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.Advance(tt.advance)
			defer c.Advance(-tt.advance)
			_, err := u.Verify(ctx, tt.token)
			if !errors.Is(err, tt.want) || !IsInvalid(err) || !strings.Contains(err.Error(), tt.message) {
				t.Fatalf("verify = %v; want %q saying %q", err, tt.want, tt.message)
			}
			_, err = u.Authenticate(ctx, tt.token)
			if !errors.Is(err, tt.want) || !strings.HasPrefix(err.Error(), "user token refused: ") || strings.Contains(err.Error(), "verify user token") {
				t.Errorf("authenticate = %v; want a refusal wrapping %q", err, tt.want)
			}
		})
	}
}

func TestUserTokenIssueRefusesBadArguments(t *testing.T) {
	u := newUsers(t, store.NewMemory(0), nil)
	tests := []struct {
		name, group string
		validFor    time.Duration
		message     string
	}{
		{"", "admin", 0, "name: required"},
		{"-alice", "admin", 0, "is not a user name"},
		{"al ice", "admin", 0, "is not a user name"},
		{strings.Repeat("a", 254), "admin", 0, "is not a user name"},
		{"alice", "", 0, "group: required: admin or readonly"},
		{"alice", "Admin", 0, `"Admin" is not a group`},
		{"alice", "admin", -time.Second, "is negative"},
		{"alice", "admin", MaxValidity + time.Second, "longer than the maximum"},
	}
	for _, tt := range tests {
		token, err := u.Issue(context.Background(), tt.name, tt.group, tt.validFor)
		if token != "" || !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tt.message) {
			t.Errorf("issue(%.20q, %q, %s) = %q, %v; want ErrInvalidArgument saying %q", tt.name, tt.group, tt.validFor, token, err, tt.message)
		}
	}
}

// TestUserTokenRotation: rotating revokes every older user token and leaves
// zone tokens alone (their ring is their own).
func TestUserTokenRotation(t *testing.T) {
	forEachBackend(t, func(t *testing.T, a, b store.Store) {
		ctx := context.Background()
		ua, ub := newUsers(t, a, nil), NewUserIssuer(b, zap.NewNop())
		zones := newIssuer(t, a, nil)
		zoneTok, err := zones.IssueZoneToken(ctx, "zone-1", 0)
		if err != nil {
			t.Fatal(err)
		}
		old, err := ua.Issue(ctx, "alice", "admin", 0)
		if err != nil {
			t.Fatal(err)
		}
		serial, err := ub.RotateKey(ctx)
		if err != nil || serial != 2 {
			t.Fatalf("rotate = %d, %v", serial, err)
		}
		if _, err := ua.Verify(ctx, old); !errors.Is(err, ErrTokenSignature) || !strings.Contains(err.Error(), "rotated") {
			t.Errorf("a token of the rotated key at the other replica: %v", err)
		}
		fresh, err := ua.Issue(ctx, "alice", "admin", 0)
		if err != nil {
			t.Fatal(err)
		}
		if c, err := ub.Verify(ctx, fresh); err != nil || c.KeySerial != 2 {
			t.Errorf("a token of the new key = %+v, %v", c, err)
		}
		if _, err := zones.VerifyZoneToken(ctx, zoneTok); err != nil {
			t.Errorf("a zone token after the user key's rotation: %v", err)
		}
		if got, _ := ua.ring.serials(ctx); !slices.Equal(got, []int{2}) {
			t.Errorf("user keys = %v, want [2]", got)
		}
		if got := serials(t, zones); !slices.Equal(got, []int{1}) {
			t.Errorf("zone keys = %v, want [1]", got)
		}
	})
}

// TestPublishedUserKeys runs the global's publisher over a store and a
// federated zone's verifier over a copy of what it publishes, as KDS would
// carry it: the zone accepts the global's tokens, refuses a rotated key's as
// soon as the newer key arrives, and never holds a private key.
func TestPublishedUserKeys(t *testing.T) {
	forEachBackend(t, func(t *testing.T, st, _ store.Store) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		global := newUsers(t, st, nil)
		mirror := store.NewMirror(st, []string{"GlobalSecret", "UserTokenPublicKey"}, zap.NewNop())
		done := make(chan error, 2)
		go func() { done <- mirror.Start(ctx) }()
		go func() { done <- PublishUserKeys(ctx, st, mirror, zaptest.NewLogger(t)) }()
		t.Cleanup(func() {
			cancel()
			for range 2 {
				if err := <-done; err != nil {
					t.Error(err)
				}
			}
		})

		published := func(want ...int) func() bool {
			return func() bool {
				res, err := st.List(ctx, store.ListOptions{Type: "UserTokenPublicKey"})
				if err != nil {
					return false
				}
				var got []int
				for _, r := range res.Items {
					n, _ := ParseUserSigningKeyName(r.GetMeta().Name)
					got = append(got, n)
				}
				slices.Sort(got)
				return slices.Equal(got, want)
			}
		}
		testutil.Until(t, 10*time.Second, "key 1 published", published(1))

		zoneStore := store.NewMemory(0)
		carry := func() { copyPublicKeys(t, st, zoneStore) }
		zone := NewUserVerifier(zoneStore, "grpcs://global:5685", zap.NewNop())
		old, err := global.Issue(ctx, "alice", "readonly", 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := zone.Verify(ctx, old); !errors.Is(err, ErrTokenSignature) || !strings.Contains(err.Error(), "not among the keys this zone has") {
			t.Errorf("before the key reached the zone: %v", err)
		}
		carry()
		if c, err := zone.Verify(ctx, old); err != nil || c.Name != "alice" || c.Group != "readonly" {
			t.Fatalf("the zone verifying the global's token: %+v, %v", c, err)
		}

		if _, err := global.RotateKey(ctx); err != nil {
			t.Fatal(err)
		}
		testutil.Until(t, 10*time.Second, "key 2 published and key 1 unpublished", published(2))
		// The zone gets the new key before the old one goes: the old
		// key's tokens are refused from then on.
		k2, err := st.Get(ctx, publicKeyKey(2))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := zoneStore.Create(ctx, api.DeepCopy(k2)); err != nil {
			t.Fatal(err)
		}
		if _, err := zone.Verify(ctx, old); !errors.Is(err, ErrTokenSignature) || !strings.Contains(err.Error(), "kid 1 has been rotated") {
			t.Errorf("the rotated key's token at the zone: %v", err)
		}
		carry()
		fresh, _ := global.Issue(ctx, "alice", "admin", 0)
		if c, err := zone.Verify(ctx, fresh); err != nil || c.KeySerial != 2 {
			t.Errorf("the new key's token at the zone: %+v, %v", c, err)
		}
		if _, err := zone.Verify(ctx, old); !errors.Is(err, ErrTokenSignature) {
			t.Errorf("the rotated key's token once its public key is gone: %v", err)
		}

		// A federated zone neither issues nor rotates.
		if _, err := zone.Issue(ctx, "bob", "admin", 0); !errors.Is(err, ErrNotIssuedHere) || !strings.Contains(err.Error(), "grpcs://global:5685") {
			t.Errorf("issue at a federated zone: %v", err)
		}
		if _, err := zone.RotateKey(ctx); !errors.Is(err, ErrNotIssuedHere) {
			t.Errorf("rotate at a federated zone: %v", err)
		}
		if res, _ := zoneStore.List(ctx, store.ListOptions{Type: "GlobalSecret"}); len(res.Items) != 0 {
			t.Errorf("the zone holds %d GlobalSecrets", len(res.Items))
		}

		// A public key published by a stale replica for a rotated key is
		// taken back.
		k1 := &api.UserTokenPublicKey{Meta: api.Meta{Type: "UserTokenPublicKey", Name: UserSigningKeyName(1)},
			PublicKeyPEM: k2.(*api.UserTokenPublicKey).PublicKeyPEM}
		if _, err := st.Create(ctx, k1); err != nil {
			t.Fatal(err)
		}
		testutil.Until(t, 10*time.Second, "the stale key 1 unpublished", published(2))
	})
}

// copyPublicKeys makes to's UserTokenPublicKeys those of from, as KDS does.
func copyPublicKeys(t *testing.T, from, to store.Store) {
	t.Helper()
	ctx := context.Background()
	want, err := from.List(ctx, store.ListOptions{Type: "UserTokenPublicKey"})
	if err != nil {
		t.Fatal(err)
	}
	have, err := to.List(ctx, store.ListOptions{Type: "UserTokenPublicKey"})
	if err != nil {
		t.Fatal(err)
	}
	var deletes []api.Key
	for _, r := range have.Items {
		deletes = append(deletes, api.KeyOf(r))
	}
	var puts []api.Resource
	for _, r := range want.Items {
		c := api.DeepCopy(r)
		c.GetMeta().Version = 0
		puts = append(puts, c)
	}
	if _, err := to.Apply(ctx, nil, deletes); err != nil {
		t.Fatal(err)
	}
	if _, err := to.Apply(ctx, puts, nil); err != nil {
		t.Fatal(err)
	}
}

// TestRevokeOneUserToken: revoking one user token refuses it, here and in a
// zone that holds the revocation, and leaves every other token valid (a
// key rotation revokes them all); a second revocation is no error, a token
// refused already cannot be revoked, the revocation goes once the token
// would have expired (its ursa.io/expires), and a federated zone revokes
// nothing itself.
func TestRevokeOneUserToken(t *testing.T) {
	forEachBackend(t, func(t *testing.T, st, _ store.Store) {
		ctx := context.Background()
		u := newUsers(t, st, nil)
		ada, _ := u.Issue(ctx, "ada", "admin", time.Hour)
		bob, _ := u.Issue(ctx, "bob", "admin", time.Hour)
		c, err := u.Revoke(ctx, ada)
		if err != nil || c.Name != "ada" || c.ID == "" {
			t.Fatalf("revoke ada's token: %+v %v", c, err)
		}
		if _, err := u.Verify(ctx, ada); !errors.Is(err, ErrTokenRevoked) || !IsInvalid(err) {
			t.Errorf("ada's revoked token: %v, want ErrTokenRevoked", err)
		}
		if _, err := u.Authenticate(ctx, ada); err == nil || !strings.Contains(err.Error(), "revoked") {
			t.Errorf("authenticating with ada's revoked token: %v", err)
		}
		if c, err := u.Verify(ctx, bob); err != nil || c.Name != "bob" {
			t.Errorf("bob's token after ada's was revoked: %+v %v", c, err)
		}
		if _, err := u.Revoke(ctx, ada); err != nil {
			t.Errorf("revoking ada's token again: %v", err)
		}
		if _, err := u.Revoke(ctx, "not.a.token"); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("revoking garbage: %v, want ErrInvalidArgument", err)
		}
		res, err := st.List(ctx, store.ListOptions{Type: "UserTokenRevocation"})
		if err != nil || len(res.Items) != 1 {
			t.Fatalf("revocations: %v %v, want one", res.Items, err)
		}
		rev := res.Items[0].(*api.UserTokenRevocation)
		if rev.User != "ada" || rev.ID != c.ID || rev.Labels[api.LabelExpires] != strconv.FormatInt(c.ExpiresAt.Add(revocationSkew).Unix(), 10) {
			t.Errorf("the revocation: %+v, want ada's, expiring with her token (%v)", rev, c.ExpiresAt)
		}
		// A zone that has the global's key and the revocation (as KDS
		// carries them) refuses the token too, and revokes nothing itself.
		zoneStore := store.NewMemory(0)
		mirror := store.NewMirror(st, []string{"GlobalSecret", "UserTokenPublicKey"}, zap.NewNop())
		pctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 2)
		go func() { done <- mirror.Start(pctx) }()
		go func() { done <- PublishUserKeys(pctx, st, mirror, zap.NewNop()) }()
		testutil.Until(t, 10*time.Second, "key 1 published", func() bool {
			_, err := st.Get(ctx, publicKeyKey(1))
			return err == nil
		})
		cancel()
		<-done
		<-done
		copyPublicKeys(t, st, zoneStore)
		zone := NewUserVerifier(zoneStore, "grpcs://global:5685", zap.NewNop())
		if _, err := zone.Verify(ctx, ada); err != nil {
			t.Fatalf("the zone before the revocation reached it: %v", err)
		}
		carried := api.DeepCopy(rev)
		carried.GetMeta().Version = 0
		if _, err := zoneStore.Create(ctx, carried); err != nil {
			t.Fatal(err)
		}
		if _, err := zone.Verify(ctx, ada); !errors.Is(err, ErrTokenRevoked) {
			t.Errorf("the zone with the revocation: %v, want ErrTokenRevoked", err)
		}
		if _, err := zone.Verify(ctx, bob); err != nil {
			t.Errorf("bob's token at the zone: %v", err)
		}
		if _, err := zone.Revoke(ctx, bob); !errors.Is(err, ErrNotIssuedHere) {
			t.Errorf("revoking at a federated zone: %v, want ErrNotIssuedHere", err)
		}
	})
}
