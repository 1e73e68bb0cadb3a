package zone

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/tokens"
	"github.com/ursamesh/ursa/zone/kubernetes"
)

// TestRevokeServiceAccountTokenSaysWhy: on a Kubernetes zone a
// pod's service-account token admits its proxy (TokenReview). An admin who
// leaked one and runs `ursactl revoke dataplane-token` is told the token "is
// refused already" (400), while the zone goes on admitting it: the answer
// must not claim the token is refused, it must say that this kind of token
// is not revoked here, and what revokes it.
func TestRevokeServiceAccountTokenSaysWhy(t *testing.T) {
	ctx := context.Background()
	managed := map[string]string{kubernetes.LabelManagedBy: kubernetes.ManagedByController, kubernetes.LabelPodUID: "uid-1"}
	dp := &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: "web-1.shop", Labels: managed},
		Networking: api.DataplaneNetworking{Address: "10.0.0.7", Inbound: []api.Inbound{{Port: 8080, Tags: map[string]string{api.TagService: "web"}}}}}
	view := store.NewView([]api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}, dp}, "Mesh", "Dataplane", "ZoneIngress")

	st := store.NewMemory(0)
	if _, err := st.Create(ctx, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}); err != nil {
		t.Fatal(err)
	}
	dps, ings := tokens.NewDataplaneIssuer(st), tokens.NewIngressIssuer(st, "zone-1")
	dps.Foreign = foreignProxyToken // as a zone on Kubernetes wires it
	leaked := saToken("leaked")
	rev := &kubernetes.TokenReviewer{Client: fakeReviews{leaked: "shop/web-1@uid-1"}}
	auth := kubeProxyAuth(proxyAuth("zone-1", dps, ings, fixedView{view}, false), rev, "zone-1", "ursa-system", fixedView{view})

	if _, err := auth.Verify(ctx, leaked); err != nil {
		t.Fatalf("the pod's token before: %v", err)
	}
	_, revokeErr := dps.RevokeToken(ctx, leaked)
	if _, err := auth.Verify(ctx, leaked); err != nil {
		t.Fatalf("the zone refuses the token it cannot revoke: %v", err)
	}
	if !errors.Is(revokeErr, tokens.ErrInvalidArgument) || !strings.Contains(revokeErr.Error(), "service-account token") ||
		!strings.Contains(revokeErr.Error(), "delete the pod") {
		t.Fatalf("revoking a service-account token answered %v, want why this zone cannot and what to do", revokeErr)
	}
}
