package zone

import (
	"context"
	"errors"
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/xds"
)

// A token covers what its proxy registers and what that registration
// replaces: web's token cannot turn the registered billing-1 into a web
// Dataplane, even while the mirror the stream was admitted on has not seen
// billing-1 yet. The registration is judged on the store.
func TestRegistrationCannotReplaceAnotherServicesDataplane(t *testing.T) {
	ctx := context.Background()
	st := store.NewMemory(0)
	billing := dp("default", "billing-1", "billing", 0)
	if _, err := st.Apply(ctx, []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}, billing}, nil); err != nil {
		t.Fatal(err)
	}
	doc, err := api.EncodeJSON(dp("default", "billing-1", "web", 0))
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: "default.billing-1", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		api.MetadataDataplane: structpb.NewStringValue(string(doc))}}}
	web := &xds.Claims{Kind: xds.TokenDataplane, Mesh: "default", Service: "web"}
	reg := registrar{st: st, zone: "zone-1", instance: "cp-a"}
	err = reg.Register(ctx, node, web)
	if err == nil || !strings.Contains(err.Error(), "would replace the registered dataplane billing-1") {
		t.Fatalf("web's token replaced billing-1: %v", err)
	}
	if !errors.Is(err, xds.ErrNotCovered) {
		t.Errorf("refused as %v; want a not-covered refusal (counted as such)", err)
	}
	cur, err := st.Get(ctx, api.KeyOf(billing))
	if err != nil {
		t.Fatal(err)
	}
	if got := cur.(*api.Dataplane).Networking.Inbound[0].Tags[api.TagService]; got != "billing" {
		t.Fatalf("billing-1 now runs %q", got)
	}
	// A token that covers both (a mesh-wide one) may re-register it.
	if err := reg.Register(ctx, node, &xds.Claims{Kind: xds.TokenDataplane, Mesh: "default"}); err != nil {
		t.Fatalf("a mesh-wide token: %v", err)
	}
}

// A proxy may not register an address that names no one host: sidecars and
// ingresses would dial their own host's loopback services for whoever holds
// a token. A zone that allows it (single-host setups) registers it.
func TestRegistrationRefusesHostOnlyAddresses(t *testing.T) {
	ctx := context.Background()
	for _, addr := range []string{"127.0.0.1", "127.240.0.9", "::1", "0.0.0.0", "169.254.169.254", "fe80::1", "::ffff:127.0.0.1", "localhost", "db.localhost", "224.0.0.1"} {
		t.Run(addr, func(t *testing.T) {
			st := store.NewMemory(0)
			if _, err := st.Apply(ctx, []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}}, nil); err != nil {
				t.Fatal(err)
			}
			web := dp("default", "web-1", "web", 0)
			web.Networking.Address = addr
			doc, err := api.EncodeJSON(web)
			if err != nil {
				t.Fatal(err)
			}
			node := &core.Node{Id: "default.web-1", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
				api.MetadataDataplane: structpb.NewStringValue(string(doc))}}}
			claims := &xds.Claims{Kind: xds.TokenDataplane, Mesh: "default", Service: "web"}
			err = registrar{st: st, zone: "zone-1", instance: "cp-a"}.Register(ctx, node, claims)
			if err == nil || !strings.Contains(err.Error(), "networking.address") || !strings.Contains(err.Error(), "--xds-allow-loopback-dataplanes") {
				t.Fatalf("registered %s: %v", addr, err)
			}
			if _, err := st.Get(ctx, api.KeyOf(web)); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("the refused Dataplane is stored: %v", err)
			}
			if err := (registrar{st: st, zone: "zone-1", instance: "cp-a", allowLoopback: true}).Register(ctx, node, claims); err != nil {
				t.Fatalf("with loopback allowed: %v", err)
			}
		})
	}
	for _, addr := range []string{"10.0.0.7", "192.0.2.1", "2001:db8::7", "billing.internal"} {
		if err := hostOnly(addr); err != nil {
			t.Errorf("%s refused: %v", addr, err)
		}
	}
}

// An ingress may not register a host-only address either, as its address
// or its advertised one (which other zones dial); the error names the field.
func TestIngressRegistrationRefusesHostOnlyAddresses(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct{ address, advertised, field string }{
		{"127.0.0.1", "", "networking.address:"},
		{"10.0.0.9", "::1", "networking.advertisedAddress:"},
		{"0.0.0.0", "127.0.0.1", "networking.address:"},
	} {
		st := store.NewMemory(0)
		ing := &api.ZoneIngress{Meta: api.Meta{Type: "ZoneIngress", Name: "ingress"}, Zone: "zone-1",
			Networking: api.ZoneIngressNetworking{Address: tt.address, Port: 10001}}
		if tt.advertised != "" {
			ing.Networking.AdvertisedAddress, ing.Networking.AdvertisedPort = tt.advertised, 10001
		}
		doc, err := api.EncodeJSON(ing)
		if err != nil {
			t.Fatal(err)
		}
		node := &core.Node{Id: "ingress", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			api.MetadataIngress:     structpb.NewStringValue("true"),
			api.MetadataZoneIngress: structpb.NewStringValue(string(doc))}}}
		claims := &xds.Claims{Kind: xds.TokenIngress}
		err = registrar{st: st, zone: "zone-1", instance: "cp-a"}.Register(ctx, node, claims)
		if err == nil || !strings.Contains(err.Error(), tt.field) || !strings.Contains(err.Error(), "--xds-allow-loopback-dataplanes") {
			t.Fatalf("registered %s / %s: %v, want a refusal naming %s", tt.address, tt.advertised, err, tt.field)
		}
		if _, err := st.Get(ctx, api.KeyOf(ing)); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("the refused ZoneIngress is stored: %v", err)
		}
		if err := (registrar{st: st, zone: "zone-1", instance: "cp-a", allowLoopback: true}).Register(ctx, node, claims); err != nil {
			t.Fatalf("%s / %s with loopback allowed: %v", tt.address, tt.advertised, err)
		}
	}
}
