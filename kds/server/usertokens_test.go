package server_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/tokens"
)

// TestZoneVerifiesUserTokensOfTheGlobal wires a global and a zone over real
// KDS on loopback, the global publishing its user-token keys as the global CP
// does: the zone accepts a token the global signed, refuses it once the
// global rotates the key, accepts the new key's tokens, and its store never
// holds a private key.
func TestZoneVerifiesUserTokensOfTheGlobal(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	bg := background(t, cancel)
	gst := store.NewMemory(0)
	users := tokens.NewUserIssuer(gst, zap.NewNop())
	mirror := store.NewMirror(gst, []string{"GlobalSecret"}, zap.NewNop())
	bg.Go(func() { mirror.Start(ctx) })
	bg.Go(func() { tokens.PublishUserKeys(ctx, gst, mirror, zaptest.NewLogger(t)) })
	g := startGlobal(t, gst, 5*time.Second)
	z := startZone(t, g, "zone-a", "zone:zone-a")
	verifier := tokens.NewUserVerifier(z.store, g.addr, zap.NewNop())

	old, err := users.Issue(ctx, "alice", "readonly", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 30*time.Second, "the global's token accepted in the zone", func() bool {
		u, err := verifier.Authenticate(ctx, old)
		return err == nil && u.Name == "alice" && u.Group == "readonly"
	})
	r, err := z.store.Get(ctx, api.Key{Type: "UserTokenPublicKey", Name: tokens.UserSigningKeyName(1)})
	if err != nil || r.GetMeta().Labels[api.LabelOrigin] != api.OriginGlobal {
		t.Fatalf("the public key in the zone: %v, %v", r, err)
	}

	if _, err := users.RotateKey(ctx); err != nil {
		t.Fatal(err)
	}
	fresh, err := users.Issue(ctx, "alice", "admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 30*time.Second, "the rotated key's token refused and the new one's accepted in the zone", func() bool {
		_, errOld := verifier.Verify(ctx, old)
		c, errNew := verifier.Verify(ctx, fresh)
		return errors.Is(errOld, tokens.ErrTokenSignature) && errNew == nil && c.KeySerial == 2
	})
	testutil.Until(t, 30*time.Second, "the rotated public key gone from the zone", func() bool {
		res, err := z.store.List(ctx, store.ListOptions{Type: "UserTokenPublicKey"})
		return err == nil && len(res.Items) == 1 && res.Items[0].GetMeta().Name == tokens.UserSigningKeyName(2)
	})
	if res, err := z.store.List(ctx, store.ListOptions{Type: "GlobalSecret"}); err != nil || len(res.Items) != 0 {
		t.Fatalf("the zone holds GlobalSecrets: %v, %v", res.Items, err)
	}
}
