package zone

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/xds"
	"github.com/ursamesh/ursa/zone/kubernetes"
)

// fakeReviews answers TokenReviews from a table: token → "namespace/pod"
// ("" is unauthenticated).
type fakeReviews map[string]string

func (f fakeReviews) Do(_ context.Context, _, _ string, in, out any) error {
	b, _ := json.Marshal(in)
	var req struct {
		Spec struct{ Token string } `json:"spec"`
	}
	json.Unmarshal(b, &req)
	pod, ok := f[req.Spec.Token]
	if !ok {
		return errors.New("apiserver down")
	}
	resp := map[string]any{"status": map[string]any{"authenticated": false, "error": "invalid bearer token"}}
	if ns, name, ok := strings.Cut(pod, "/"); ok {
		// ns/name, or ns/name@uid.
		extra := map[string][]string{}
		if n, uid, ok := strings.Cut(name, "@"); ok {
			name, extra["authentication.kubernetes.io/pod-uid"] = n, []string{uid}
		}
		extra["authentication.kubernetes.io/pod-name"] = []string{name}
		resp = map[string]any{"status": map[string]any{"authenticated": true, "audiences": []string{"ursa"}, "user": map[string]any{
			"username": "system:serviceaccount:" + ns + ":app", "extra": extra}}}
	}
	b, _ = json.Marshal(resp)
	return json.Unmarshal(b, out)
}

// saToken is a JWT-shaped token with a service account's subject; only the
// fake apiserver reads the rest.
func saToken(id string) string {
	enc := func(v any) string { b, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(b) }
	return enc(map[string]string{"alg": "RS256"}) + "." + enc(map[string]string{"sub": "system:serviceaccount:shop:app", "jti": id}) + ".c2ln"
}

// TestKubeProxyAuth: a service-account token bound to a pod claims exactly
// that pod's Dataplane, in the mesh it is in, not one made of another pod
// of the same name (a StatefulSet's, replaced); a refused token is an invalid
// token; an apiserver that cannot answer, or a Dataplane not made yet, is
// retried, not a refusal; other tokens go to the zone's own verifier.
func TestKubeProxyAuth(t *testing.T) {
	managed := map[string]string{kubernetes.LabelManagedBy: kubernetes.ManagedByController, kubernetes.LabelPodUID: "uid-1"}
	dp := &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "payments", Name: "web-1.shop", Labels: managed},
		Networking: api.DataplaneNetworking{Address: "10.0.0.7", Inbound: []api.Inbound{{Port: 8080, Tags: map[string]string{api.TagService: "web"}}}}}
	// Named like pod web-3's, registered by a VM's proxy.
	vm := &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: "web-3.shop"},
		Networking: api.DataplaneNetworking{Address: "10.0.0.8", Inbound: []api.Inbound{{Port: 8080, Tags: map[string]string{api.TagService: "web"}}}}}
	ing := &api.ZoneIngress{Meta: api.Meta{Type: "ZoneIngress", Name: "ingress-1.ursa-system", Labels: map[string]string{kubernetes.LabelPodUID: "uid-9"}}, Zone: "zone-1",
		Networking: api.ZoneIngressNetworking{Address: "10.0.0.9", Port: 10001}}
	view := store.NewView([]api.Resource{
		&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}, &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "payments"}}, dp, vm, ing,
	}, "Mesh", "Dataplane", "ZoneIngress")
	good, refused, down, early, ingress, squat := saToken("1"), saToken("2"), saToken("3"), saToken("4"), saToken("5"), saToken("6")
	// Tokens of the pods web-1 and ingress-1 were before they were made
	// again under their names; and a token from before pods had uids.
	oldPod, oldIngress, noUID := saToken("7"), saToken("8"), saToken("9")
	rev := &kubernetes.TokenReviewer{Client: fakeReviews{good: "shop/web-1@uid-1", refused: "", early: "shop/web-2", ingress: "ursa-system/ingress-1@uid-9",
		squat: "shop/web-3", oldPod: "shop/web-1@uid-0", oldIngress: "ursa-system/ingress-1@uid-8", noUID: "shop/web-1"}}
	base := xds.Auth{Verify: func(context.Context, string) (xds.Claims, error) {
		return xds.Claims{Kind: xds.TokenDataplane, Mesh: "m", Name: "from-the-zone"}, nil
	}}
	base.Check = func(*core.Node, xds.Claims) error { return nil }
	a := kubeProxyAuth(base, rev, "zone-1", "ursa-system", fixedView{view})
	ctx := context.Background()
	c, err := a.Verify(ctx, good)
	if err != nil || c.Kind != xds.TokenDataplane || c.Mesh != "payments" || c.Name != "web-1.shop" || c.Service != "" || c.Tags != nil {
		t.Fatalf("bound token: %+v, %v", c, err)
	}
	if _, err := a.Verify(ctx, refused); !errors.Is(err, xds.ErrInvalidToken) || !strings.Contains(err.Error(), "invalid bearer token") {
		t.Errorf("refused token: %v", err)
	}
	// A Dataplane named like the pod's that the pod controller did not
	// make is not the pod's to run.
	if _, err := a.Verify(ctx, squat); !errors.Is(err, xds.ErrInvalidToken) || !strings.Contains(err.Error(), "was not made by the pod controller") {
		t.Errorf("a pod's token for a Dataplane the controller did not make: %v", err)
	}
	for name, tok := range map[string]string{"apiserver down": down, "no Dataplane yet": early,
		"a replaced pod's token": oldPod, "a replaced ingress pod's token": oldIngress} {
		if _, err := a.Verify(ctx, tok); err == nil || errors.Is(err, xds.ErrInvalidToken) {
			t.Errorf("%s: %v, want an error to retry", name, err)
		} else if strings.Contains(name, "replaced") && !strings.Contains(err.Error(), "replaced under its name") {
			t.Errorf("%s: %v, want it to say the pod was replaced", name, err)
		}
	}
	if c, err := a.Verify(ctx, noUID); err != nil || c.Name != "web-1.shop" {
		t.Errorf("a token that names no pod uid: %+v, %v", c, err)
	}
	if c, err := a.Verify(ctx, "ursa-token"); err != nil || c.Name != "from-the-zone" {
		t.Errorf("a zone token: %+v, %v", c, err)
	}
	// An ingress pod of the control plane's namespace is its ZoneIngress,
	// that one alone.
	c, err = a.Verify(ctx, ingress)
	if err != nil || c.Kind != xds.TokenIngress || c.Zone != "zone-1" || c.Name != "ingress-1.ursa-system" {
		t.Fatalf("ingress pod's token: %+v, %v", c, err)
	}
	if err := a.Check(&core.Node{Id: "ingress-1.ursa-system"}, c); err != nil {
		t.Errorf("its own node: %v", err)
	}
	if err := a.Check(&core.Node{Id: "ingress-2.ursa-system"}, c); !errors.Is(err, xds.ErrNotCovered) {
		t.Errorf("another ingress's node: %v", err)
	}
}

// TestWebhookSettings names each bad webhook.* setting.
func TestWebhookSettings(t *testing.T) {
	if err := DefaultWebhookConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	c := WebhookConfig{Addr: "5443", URL: "http://x:1", ServicePort: 0}
	err := c.Validate()
	for _, want := range []string{"webhook.addr", "webhook.url", "webhook.servicePort"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: want %s named", err, want)
		}
	}
	if got := DefaultCPAddress("ursa-control-plane", "ursa-system", ":5678"); got != "grpcs://ursa-control-plane.ursa-system.svc:5678" {
		t.Errorf("default cp address %s", got)
	}
}
