package zone

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/xds"
)

// TestProxylessIdentity: a proxyless node of an mTLS mesh gets its workload
// identity as a sidecar does (for `ursa-dp proxyless` to write for the
// application's certificate provider), certifying the key of the CSR it
// presents; without mTLS it gets none.
func TestProxylessIdentity(t *testing.T) {
	out := &secretsOut{last: map[string]*tlsv3.Secret{}}
	g := NewGeneration(GenerationDeps{Out: out, CertTTL: time.Hour, Log: zaptest.NewLogger(t)})
	now := time.Now()
	ca, _ := mtls.NewCA("default", now)
	ca.Version = 1
	key, csr, err := mtls.NewKeyAndCSR("default.web-1")
	if err != nil {
		t.Fatal(err)
	}
	nodes := []xds.Node{{ID: "default.web-1", Kind: xds.KindProxyless, Since: now, CSR: string(csr)}}
	mesh := &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default", Version: 1}, MTLS: &api.MeshMTLS{Enabled: true}}
	g.state = xds.NewState(catalog.FromResources("zone-1", []api.Resource{mesh, ca, dp("default", "web-1", "web", 1)}), nil)
	g.generate(context.Background(), g.state, nodes, now)
	leaf, s := out.leaf(t, "default.web-1")
	if !mtls.SameKey(leaf, key) || len(s.GetTlsCertificate().GetPrivateKey().GetInlineBytes()) != 0 {
		t.Fatal("a proxyless node's CSR: its own key must be certified, and no key sent")
	}
	if want := "[spiffe://default/web ursa://ursa.io/service/web]"; sans(leaf) != want {
		t.Fatalf("web-1 names %s, want %s", sans(leaf), want)
	}

	plain := &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default", Version: 2}}
	out = &secretsOut{last: map[string]*tlsv3.Secret{}}
	g = NewGeneration(GenerationDeps{Out: out, CertTTL: time.Hour, Log: zaptest.NewLogger(t)})
	g.state = xds.NewState(catalog.FromResources("zone-1", []api.Resource{plain, dp("default", "web-1", "web", 1)}), nil)
	g.generate(context.Background(), g.state, nodes, now)
	if s := out.last["default.web-1"]; s != nil {
		t.Fatal("a proxyless node of a mesh without mTLS got an identity")
	}
}
