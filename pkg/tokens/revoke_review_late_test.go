package tokens

import (
	"context"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// TestReviewLateRevocationGoneBeforeZoneRefusesToken: the global deletes a
// revocation when its own clock reaches the token's exp (ursa.io/expires,
// global/expire.go: deleted once !at.After(now)), and KDS then deletes it
// in every zone. A zone whose clock is a couple of seconds behind the
// global's still takes the token as unexpired then: the revoked token is
// accepted again there until the zone's clock reaches exp.
func TestReviewLateRevocationGoneBeforeZoneRefusesToken(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory(0)
	globalClock := newClock()
	u := newUsers(t, st, globalClock)
	ada, err := u.Issue(ctx, "ada", "admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := u.Revoke(ctx, ada)
	if err != nil {
		t.Fatal(err)
	}
	// The zone: the global's public key, as KDS carries it.
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
	zoneStore := store.NewMemory(0)
	copyPublicKeys(t, st, zoneStore)
	zone := NewUserVerifier(zoneStore, "grpcs://global:5685", zap.NewNop())

	res, err := st.List(ctx, store.ListOptions{Type: "UserTokenRevocation"})
	if err != nil || len(res.Items) != 1 {
		t.Fatalf("revocations: %v %v", res.Items, err)
	}
	rev := res.Items[0]
	sec, _ := strconv.ParseInt(rev.GetMeta().Labels[api.LabelExpires], 10, 64)
	deletedAt := time.Unix(sec, 0) // the global's expirer deletes it at its clock's reading of this
	// At that moment the zone's clock reads 2 s less: the revocation is
	// gone from the zone (KDS), the token not yet expired there.
	zone.now = func() time.Time { return deletedAt.Add(-2 * time.Second) }
	// (The zone holds no revocation after the global deleted it: KDS
	// mirrors the global's set.)
	if _, err := zone.Verify(ctx, ada); err == nil {
		t.Errorf("ada's revoked token (exp %v) is accepted by a zone whose clock is 2 s behind the global's once the global deleted its revocation at %v (ursa.io/expires = exp, no margin)", c.ExpiresAt, deletedAt)
	}
}
