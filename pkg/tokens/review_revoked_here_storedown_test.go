package tokens

import (
	"context"
	"errors"
	"testing"
)

// TestReviewRevokedHereIsAVerdictWhenListFails: the replica that revoked a
// token knows it is revoked (revocations.added; a revocation is never
// undone before its token expires). When the revocations then cannot be
// listed (the moment the API handler's Reverify runs, say), its check
// answers a store error, which Reverify takes as "cannot check now" and
// keeps the revoked proxy's stream until the next sweep.
func TestReviewRevokedHereIsAVerdictWhenListFails(t *testing.T) {
	ctx := context.Background()
	st := &faultyStore{Store: zoneStore(t)}
	d, clk, tok := clockedIssuer(t, st)
	if _, err := d.RevokeToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	st.mu.Lock()
	st.failList = true
	st.mu.Unlock()
	clk.Advance(keyMemory)
	if _, err := d.Verify(ctx, tok); !errors.Is(err, ErrTokenRevoked) {
		t.Fatalf("a token revoked through this replica, revocations unreadable: %v, want ErrTokenRevoked", err)
	}
}
