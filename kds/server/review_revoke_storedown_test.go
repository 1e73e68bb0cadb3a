package server_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/kds/server"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/tokens"
)

// revocationsDown is a store whose reads of TokenRevocations fail
// (store.ErrUnavailable) while down is set.
type revocationsDown struct {
	store.Store
	down   atomic.Bool
	failed atomic.Int64
}

func (s *revocationsDown) Get(ctx context.Context, k api.Key) (api.Resource, error) {
	if k.Type == "TokenRevocation" && s.down.Load() {
		s.failed.Add(1)
		return nil, fmt.Errorf("get %s: %w", k, store.ErrUnavailable)
	}
	return s.Store.Get(ctx, k)
}

// TestReviewRecheckStoreErrorIsNoRevocation: a TokenRevocation event (an
// admin revoking zone B's token, or the expirer deleting an old
// revocation) makes the global check every connected zone's token again.
// When the revocations cannot be read at that moment, that is no verdict
// (xDS's Reverify keeps such streams, and a new stream gets Unavailable):
// zone A, whose token was never revoked, must stay connected.
func TestReviewRecheckStoreErrorIsNoRevocation(t *testing.T) {
	ctx := context.Background()
	st := &revocationsDown{Store: store.NewMemory(0)}
	issuer := tokens.NewIssuer(st)
	if err := issuer.EnsureKey(ctx); err != nil {
		t.Fatal(err)
	}
	m, err := kds.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	g := startGlobalWith(t, st, server.Deps{Verifier: issuer, Metrics: m})
	tokA, _ := issuer.IssueZoneToken(ctx, "zone-a", time.Hour)
	tokB, _ := issuer.IssueZoneToken(ctx, "zone-b", time.Hour)
	if _, err := st.Apply(ctx, []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "one"}}}, nil); err != nil {
		t.Fatal(err)
	}
	a := startZone(t, g, "zone-a", tokA)
	testutil.Until(t, 30*time.Second, "zone A connected", func() bool {
		return a.client.Connected() && has(a.store, api.Key{Type: "Mesh", Name: "one"})
	})
	// Both of its streams: its ingress reaches the global.
	if _, err := a.store.Create(ctx, ingress("zone-a", "ingress")); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 30*time.Second, "zone A's ingress at the global", func() bool {
		return has(st, api.Key{Type: "ZoneIngress", Name: "zone-a.ingress"})
	})

	// Zone B's token is revoked while the revocations cannot be read (the
	// revocation itself is written: the write path is up).
	claimsB, err := issuer.VerifyZoneTokenClaims(ctx, tokB)
	if err != nil {
		t.Fatal(err)
	}
	st.down.Store(true)
	if _, err := st.Create(ctx, &api.TokenRevocation{Meta: api.Meta{Type: "TokenRevocation", Name: api.RevocationName(claimsB.ID)},
		ID: claimsB.ID, Token: api.TokenKindZone, Subject: "zone zone-b", ExpiresAt: claimsB.ExpiresAt}); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 10*time.Second, "the global to recheck the tokens", func() bool { return st.failed.Load() > 0 })
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if !a.client.Connected() {
			t.Fatal("zone A, whose token was not revoked, was cut off because the revocations could not be read")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
