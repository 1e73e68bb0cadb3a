package zone

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// TestReviewFederatedZoneKeepsStandaloneUserRevocations: a zone that ran
// standalone revoked user tokens of its own (UserTokenRevocations without
// ursa.io/origin=global). Once it federates, the global never deletes these
// (it does not hold them: KDS deletes only what it sent), so the zone's
// expirer must: an expired one of the zone's own goes, while the global's
// copies are left to the global.
func TestReviewFederatedZoneKeepsStandaloneUserRevocations(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := store.NewMemory(0)
	log := zaptest.NewLogger(t)
	past := time.Now().Add(-time.Hour)
	labels := func(origin string) map[string]string {
		l := map[string]string{api.LabelExpires: strconv.FormatInt(past.Unix(), 10)}
		if origin != "" {
			l[api.LabelOrigin] = origin
		}
		return l
	}
	for _, r := range []api.Resource{
		&api.UserTokenRevocation{Meta: api.Meta{Type: "UserTokenRevocation", Name: api.RevocationName("standalone"), Labels: labels("")},
			ID: "standalone", User: "ada", ExpiresAt: past},
		&api.TokenRevocation{Meta: api.Meta{Type: "TokenRevocation", Name: api.RevocationName("dp"), Labels: labels("")},
			ID: "dp", Token: api.TokenKindDataplane, Subject: "mesh default", ExpiresAt: past},
		&api.UserTokenRevocation{Meta: api.Meta{Type: "UserTokenRevocation", Name: api.RevocationName("globals"), Labels: labels(api.OriginGlobal)},
			ID: "globals", User: "bob", ExpiresAt: past},
	} {
		if _, err := st.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	mirror := store.NewMirror(st, mirroredTypes(), log)
	go mirror.Start(ctx)
	done := make(chan struct{})
	go func() { defer close(done); newExpirer(st, mirror, log).Run(ctx) }()
	defer func() { cancel(); <-done }()
	gone := func(typ, id string) bool {
		_, err := st.Get(ctx, api.Key{Type: typ, Name: api.RevocationName(id)})
		return errors.Is(err, store.ErrNotFound)
	}
	testutil.Until(t, 10*time.Second, "the expired token revocation deleted", func() bool { return gone("TokenRevocation", "dp") })
	deadline := time.Now().Add(2 * time.Second)
	for !gone("UserTokenRevocation", "standalone") {
		if time.Now().After(deadline) {
			t.Fatal("an expired user-token revocation the zone wrote while standalone is never deleted once it federates")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if gone("UserTokenRevocation", "globals") {
		t.Fatal("the zone deleted its copy of the global's revocation, which the global deletes")
	}
}
