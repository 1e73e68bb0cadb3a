package server_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/kds/server"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// TestRevokeOneZoneToken: revoking one zone's token cuts that zone off at
// once and refuses the token from then on, while a zone with another token
// of the same key stays connected and keeps receiving changes; a new token
// brings the zone back.
func TestRevokeOneZoneToken(t *testing.T) {
	ctx := context.Background()
	g := startSecured(t, server.Deps{})
	a := startZone(t, g.global, "zone-a", g.token(t, "zone-a"))
	b := startZone(t, g.global, "zone-b", g.token(t, "zone-b"))
	mesh := func(name string) {
		if _, err := g.store.Apply(ctx, []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: name}}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	mesh("one")
	for _, z := range []*zone{a, b} {
		testutil.Until(t, 30*time.Second, "mesh one in "+z.name, func() bool { return has(z.store, api.Key{Type: "Mesh", Name: "one"}) })
	}
	if _, err := g.issuer.RevokeZoneToken(ctx, a.client.Token); err != nil {
		t.Fatal(err)
	}
	testutil.Until(t, 30*time.Second, "zone A cut off by the revocation", func() bool { return !a.client.Connected() })
	mesh("two")
	testutil.Until(t, 30*time.Second, "mesh two in zone B", func() bool { return has(b.store, api.Key{Type: "Mesh", Name: "two"}) })
	if !b.client.Connected() {
		t.Fatal("zone B, whose token was not revoked, was cut off")
	}
	if has(a.store, api.Key{Type: "Mesh", Name: "two"}) {
		t.Fatal("a zone with a revoked token received a change")
	}
	err := openDown(t, g.global, kds.MetadataAuthorization, "Bearer "+a.client.Token, kds.MetadataZone, "zone-a")
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("the revoked token: %v, want Unauthenticated", err)
	}
	a2 := startZone(t, g.global, "zone-a", g.token(t, "zone-a"))
	testutil.Until(t, 30*time.Second, "mesh two in zone A with a new token", func() bool { return has(a2.store, api.Key{Type: "Mesh", Name: "two"}) })
}
