package tokens

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// tokenKind is one kind of token that can be revoked on its own, as two
// replicas of the control plane that verifies it see it.
type tokenKind struct {
	kind string
	// issue returns a new token; verify and revoke act at replica 0 or 1.
	issue  func() (string, error)
	verify func(replica int, token string) error
	revoke func(replica int, token string) (RevokedToken, error)
}

func tokenKinds(t *testing.T, a, b store.Store, clk *clock) []tokenKind {
	ctx := context.Background()
	for _, st := range []store.Store{a} {
		if _, err := st.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}); err != nil {
			t.Fatal(err)
		}
	}
	dps := []*DataplaneIssuer{NewDataplaneIssuer(a), NewDataplaneIssuer(b)}
	ings := []*IngressIssuer{NewIngressIssuer(a, "zone-1"), NewIngressIssuer(b, "zone-1")}
	zones := []*Issuer{newIssuer(t, a, clk), newIssuer(t, b, clk)}
	for i := range 2 {
		dps[i].now, ings[i].now = clk.Now, clk.Now
	}
	return []tokenKind{
		{kind: api.TokenKindDataplane,
			issue: func() (string, error) {
				return dps[0].Issue(ctx, DataplaneClaims{Mesh: "default", Service: "web"}, time.Hour)
			},
			verify: func(r int, tok string) error { _, err := dps[r].Verify(ctx, tok); return err },
			revoke: func(r int, tok string) (RevokedToken, error) { return dps[r].RevokeToken(ctx, tok) }},
		{kind: api.TokenKindIngress,
			issue:  func() (string, error) { return ings[0].Issue(ctx, "zone-1", time.Hour) },
			verify: func(r int, tok string) error { _, err := ings[r].Verify(ctx, tok); return err },
			revoke: func(r int, tok string) (RevokedToken, error) { return ings[r].RevokeToken(ctx, tok) }},
		{kind: api.TokenKindZone,
			issue:  func() (string, error) { return zones[0].IssueZoneToken(ctx, "zone-1", time.Hour) },
			verify: func(r int, tok string) error { _, err := zones[r].VerifyZoneToken(ctx, tok); return err },
			revoke: func(r int, tok string) (RevokedToken, error) { return zones[r].RevokeZoneToken(ctx, tok) }},
	}
}

func issue(t *testing.T, k tokenKind) string {
	t.Helper()
	tok, err := k.issue()
	if err != nil {
		t.Fatalf("issue a %s token: %v", k.kind, err)
	}
	return tok
}

// TestRevokeOneToken: one zone, dataplane or ingress token revoked is
// refused at once by the replica that revoked it and, within keyMemory, by
// the other (at once for zone tokens); every other token of the same key
// stays valid; a second revocation is no error; a token refused already,
// or garbage, is not revoked but said to be refused; the revocation expires
// with the token, a quarter of an hour late.
func TestRevokeOneToken(t *testing.T) {
	forEachBackend(t, func(t *testing.T, a, b store.Store) {
		ctx := context.Background()
		clk := newClock()
		for _, k := range tokenKinds(t, a, b, clk) {
			t.Run(k.kind, func(t *testing.T) {
				one, other := issue(t, k), issue(t, k)
				for r := range 2 {
					if err := k.verify(r, one); err != nil {
						t.Fatalf("replica %d before the revocation: %v", r, err)
					}
				}
				got, err := k.revoke(0, one)
				if err != nil || got.Token != k.kind || got.ID == "" || got.Subject == "" || got.ExpiresAt.IsZero() {
					t.Fatalf("revoke: %+v %v", got, err)
				}
				if err := k.verify(0, one); !errors.Is(err, ErrTokenRevoked) || !IsInvalid(err) || !strings.Contains(err.Error(), "revoked") {
					t.Errorf("the revoked token at the replica that revoked it: %v, want ErrTokenRevoked", err)
				}
				if k.kind != api.TokenKindZone {
					clk.Advance(keyMemory)
				}
				if err := k.verify(1, one); !errors.Is(err, ErrTokenRevoked) {
					t.Errorf("the revoked token at the other replica: %v, want ErrTokenRevoked", err)
				}
				for r := range 2 {
					if err := k.verify(r, other); err != nil {
						t.Errorf("another token at replica %d: %v", r, err)
					}
				}
				if again, err := k.revoke(1, one); err != nil || again.ID != got.ID {
					t.Errorf("revoking it again: %+v %v", again, err)
				}
				if _, err := k.revoke(0, "not.a.token"); !errors.Is(err, ErrInvalidArgument) {
					t.Errorf("revoking garbage: %v, want ErrInvalidArgument", err)
				}
				rev, err := a.Get(ctx, api.Key{Type: "TokenRevocation", Name: api.RevocationName(got.ID)})
				if err != nil {
					t.Fatal(err)
				}
				r := rev.(*api.TokenRevocation)
				if r.Token != k.kind || r.ID != got.ID || r.Subject != got.Subject ||
					r.Labels[api.LabelExpires] != strconv.FormatInt(got.ExpiresAt.Add(revocationSkew).Unix(), 10) {
					t.Errorf("the revocation: %+v, want the token's, expiring a quarter of an hour after it (%v)", r, got.ExpiresAt)
				}
				if err := api.Validate(r); err != nil {
					t.Errorf("the revocation does not validate: %v", err)
				}
			})
		}
		// The kinds do not cross: a dataplane token is no zone token to
		// revoke.
		kinds := tokenKinds(t, store.NewMemory(0), store.NewMemory(0), clk)
		if _, err := kinds[2].revoke(0, issue(t, kinds[0])); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("a dataplane token revoked as a zone token: %v, want ErrInvalidArgument", err)
		}
	})
}

// TestRevocationsStoreDown: a store that cannot be read is not a verdict
// on the token.
func TestRevocationsStoreDown(t *testing.T) {
	ctx := context.Background()
	st := &faultyStore{Store: zoneStore(t)}
	d, clk, tok := clockedIssuer(t, st)
	if err := func() error { _, err := d.Verify(ctx, tok); return err }(); err != nil {
		t.Fatal(err)
	}
	// The key is read again and the revocations are not: no verdict.
	st.mu.Lock()
	st.failList = true
	st.mu.Unlock()
	clk.Advance(keyMemory)
	if _, err := d.Verify(ctx, tok); err == nil || IsInvalid(err) || !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("revocations unreadable: %v, want store.ErrUnavailable and no verdict", err)
	}
}
