package xds

import (
	"flag"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/xds/xdstest"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// stateFrom reads a multi-document YAML of resources into the state of zone
// "zone-1", and returns the first Dataplane and ZoneIngress of the file.
func stateFrom(t *testing.T, file string) (*State, *api.Dataplane, *api.ZoneIngress) {
	t.Helper()
	rs := xdstest.Inputs(t, file)
	var dp *api.Dataplane
	var ing *api.ZoneIngress
	for _, r := range rs {
		switch r := r.(type) {
		case *api.Dataplane:
			if dp == nil {
				dp = r
			}
		case *api.ZoneIngress:
			if ing == nil {
				ing = r
			}
		}
	}
	s := NewState(catalog.FromResources("zone-1", rs), nil)
	if s.Mesh("default") == nil {
		t.Fatalf("%s has no Mesh default", file)
	}
	return s, dp, ing
}

// TestProxylessGolden runs the proxyless generator on each case under
// testdata/proxyless and compares with its golden file; every generated
// resource must pass Validate.
func TestProxylessGolden(t *testing.T) {
	inputs, _ := filepath.Glob("testdata/proxyless/*.input.yaml")
	if len(inputs) == 0 {
		t.Fatal("no test cases")
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".input.yaml")
		t.Run(name, func(t *testing.T) {
			s, dp, _ := stateFrom(t, in)
			r, err := Proxyless(s, Proxy{Kind: KindProxyless, Dataplane: dp})
			if err != nil {
				t.Fatal(err)
			}
			if err := Validate(r); err != nil {
				t.Fatalf("generated resources do not validate: %v", err)
			}
			xdstest.Golden(t, strings.TrimSuffix(in, ".input.yaml")+".golden.yaml", xdstest.Render(t, r), *update)
		})
	}
}

// TestSidecarGolden runs the sidecar generator on each case under
// testdata/sidecar; the first Dataplane of a case is the proxy.
func TestSidecarGolden(t *testing.T) {
	inputs, _ := filepath.Glob("testdata/sidecar/*.input.yaml")
	if len(inputs) == 0 {
		t.Fatal("no test cases")
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), ".input.yaml")
		t.Run(name, func(t *testing.T) {
			s, dp, _ := stateFrom(t, in)
			r, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp})
			if err != nil {
				t.Fatal(err)
			}
			if err := Validate(r); err != nil {
				t.Fatalf("generated resources do not validate: %v", err)
			}
			xdstest.Golden(t, strings.TrimSuffix(in, ".input.yaml")+".golden.yaml", xdstest.Render(t, r), *update)
		})
	}
}

func TestSecretsGolden(t *testing.T) {
	r := Secrets(mtls.Identity{CertPEM: []byte("-----BEGIN CERTIFICATE-----\nWORKLOAD\n-----END CERTIFICATE-----\n"),
		KeyPEM: []byte("-----BEGIN PRIVATE KEY-----\nTEST KEY\n-----END PRIVATE KEY-----\n")},
		"-----BEGIN CERTIFICATE-----\nMESH CA\n-----END CERTIFICATE-----\n")
	if err := Validate(r); err != nil {
		t.Fatal(err)
	}
	xdstest.Golden(t, "testdata/secrets.golden.yaml", xdstest.Render(t, r), *update)

	// For a proxy that sent a CSR: the chain (leaf, then the issuer's
	// chain) and no key.
	r = Secrets(mtls.Identity{CertPEM: []byte("-----BEGIN CERTIFICATE-----\nWORKLOAD\n-----END CERTIFICATE-----\n" +
		"-----BEGIN CERTIFICATE-----\nZONE CA\n-----END CERTIFICATE-----\n")}, "-----BEGIN CERTIFICATE-----\nMESH CA\n-----END CERTIFICATE-----\n")
	if err := Validate(r); err != nil {
		t.Fatal(err)
	}
	xdstest.Golden(t, "testdata/secrets-csr.golden.yaml", xdstest.Render(t, r), *update)
}

// TestTrustWithCRLsGolden: the validation context of a mesh whose zones
// have intermediates carries their revocation lists.
func TestTrustWithCRLsGolden(t *testing.T) {
	r := Resources{}
	r.Add(resource.SecretType, TrustSecret("-----BEGIN CERTIFICATE-----\nMESH CA\n-----END CERTIFICATE-----\n",
		"-----BEGIN X509 CRL-----\nROOT\n-----END X509 CRL-----\n-----BEGIN X509 CRL-----\nZONE-1\n-----END X509 CRL-----\n"))
	if err := Validate(r); err != nil {
		t.Fatal(err)
	}
	xdstest.Golden(t, "testdata/trust-crl.golden.yaml", xdstest.Render(t, r), *update)
}

// TestSidecarTransparentGolden: a sidecar whose outbound TCP is redirected
// to it gets, besides its usual resources, the original-destination
// listener (a filter chain per VIP and port, none for its loopback
// outbound) and the passthrough cluster. Its input is sidecar/local's with
// the VIPs of a real zone (240.0.0.0/4, on no interface): a sidecar that is
// not transparent gets no listener on those.
func TestSidecarTransparentGolden(t *testing.T) {
	s, dp, _ := stateFrom(t, "testdata/sidecar-transparent.input.yaml")
	r, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp, TransparentProxy: "15001"})
	if err != nil {
		t.Fatal(err)
	}
	if err := Validate(r); err != nil {
		t.Fatalf("generated resources do not validate: %v", err)
	}
	xdstest.Golden(t, "testdata/sidecar-transparent.golden.yaml", xdstest.Render(t, r), *update)
	for _, bad := range []string{"0", "65536", "x", "-1"} {
		if _, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp, TransparentProxy: bad}); err == nil || !strings.Contains(err.Error(), "transparent proxy port") {
			t.Errorf("transparent proxy port %q: %v", bad, err)
		}
	}
}

// TestSidecarTransparentInboundGolden: a sidecar whose inbound TCP is
// redirected to it gets ursa:inbound, an original-destination listener
// with a filter chain per inbound (the Dataplane's address at the
// inbound's port; mTLS and RBAC as on an inbound listener, to the app),
// and no listener per inbound: the app binds its port itself.
func TestSidecarTransparentInboundGolden(t *testing.T) {
	s, dp, _ := stateFrom(t, "testdata/transparent-inbound.input.yaml")
	r, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp, TransparentProxy: "15001", TransparentInbound: "15006"})
	if err != nil {
		t.Fatal(err)
	}
	if err := Validate(r); err != nil {
		t.Fatalf("generated resources do not validate: %v", err)
	}
	xdstest.Golden(t, "testdata/transparent-inbound.golden.yaml", xdstest.Render(t, r), *update)
	for _, l := range r[resource.ListenerType] {
		if name := cache.GetResourceName(l); strings.HasPrefix(name, "inbound:") {
			t.Errorf("listener %s beside ursa:inbound: it would bind the app's port", name)
		}
	}

	// Each chain is the inbound listener's chain, matched by destination.
	plain, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp})
	if err != nil {
		t.Fatal(err)
	}
	var in *listener.Listener
	for _, l := range r[resource.ListenerType] {
		if cache.GetResourceName(l) == InboundListener {
			in = l.(*listener.Listener)
		}
	}
	if in == nil || len(in.FilterChains) != 2 || in.DefaultFilterChain != nil || !in.GetUseOriginalDst().GetValue() {
		t.Fatalf("ursa:inbound: %v", in)
	}
	for i, l := range plain[resource.ListenerType] {
		if i >= len(in.FilterChains) {
			break
		}
		want := proto.Clone(l.(*listener.Listener).FilterChains[0]).(*listener.FilterChain)
		got := proto.Clone(in.FilterChains[i]).(*listener.FilterChain)
		if got.Name != cache.GetResourceName(l) || got.FilterChainMatch.GetDestinationPort().GetValue() != uint32(dp.Networking.Inbound[i].Port) {
			t.Errorf("chain %d: %s, port %d, for listener %s", i, got.Name, got.FilterChainMatch.GetDestinationPort().GetValue(), cache.GetResourceName(l))
		}
		got.Name, got.FilterChainMatch = "", nil
		if !proto.Equal(got, want) {
			t.Errorf("chain %d differs from listener %s's", i, cache.GetResourceName(l))
		}
	}
	for _, bad := range []string{"0", "65536", "x"} {
		if _, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp, TransparentInbound: bad}); err == nil || !strings.Contains(err.Error(), "transparent proxy port") {
			t.Errorf("inbound port %q: %v", bad, err)
		}
	}
}

// TestSidecarTransparentDirectGolden: a transparent sidecar reaches other
// services' local instances called by their own address and port (see the
// input's comment). Sidecars that agree on their services and explicit
// outbounds share one listener message, which lists every instance.
func TestSidecarTransparentDirectGolden(t *testing.T) {
	s, dp, _ := stateFrom(t, "testdata/transparent/direct.input.yaml")
	r, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp, TransparentProxy: "15001"})
	if err != nil {
		t.Fatal(err)
	}
	if err := Validate(r); err != nil {
		t.Fatalf("generated resources do not validate: %v", err)
	}
	xdstest.Golden(t, "testdata/transparent/direct.golden.yaml", xdstest.Render(t, r), *update)
	// The explicit outbound at 10.0.0.10:7000 is ursa:outbound's chain
	// only: a listener there could not bind (the address is not the
	// host's), and the proxy would reject the update; at an address of the
	// host it would take other hosts' connections into the mesh.
	for _, res := range r[resource.ListenerType] {
		if l := res.(*listener.Listener); l.Name == "outbound:10.0.0.10:7000" {
			t.Errorf("a transparent sidecar got a listener for its explicit outbound at 10.0.0.10:7000: %v", l.GetAddress())
		}
	}

	transparent := func(name string) *listener.Listener {
		t.Helper()
		dp := s.Mesh("default").Registered[name]
		r, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp, TransparentProxy: "15001"})
		if err != nil {
			t.Fatal(err)
		}
		for _, res := range r[resource.ListenerType] {
			if l := res.(*listener.Listener); l.Name == TransparentListener {
				return l
			}
		}
		t.Fatalf("%s: no %s", name, TransparentListener)
		return nil
	}
	web1 := transparent("web-1")
	if again := transparent("web-1"); again != web1 {
		t.Error("web-1's transparent listener was built twice")
	}
	// billing-4 back online: its endpoints change, the listener does not.
	var online []api.Resource
	for _, r := range xdstest.Inputs(t, "testdata/transparent/direct.input.yaml") {
		if _, ok := r.(*api.DataplaneInsight); !ok {
			online = append(online, r)
		}
	}
	s2 := NewState(catalog.FromResources("zone-1", online), nil)
	r2, err := Sidecar(s2, Proxy{Kind: KindSidecar, Dataplane: dp, TransparentProxy: "15001"})
	if err != nil {
		t.Fatal(err)
	}
	for _, res := range r2[resource.ListenerType] {
		if l := res.(*listener.Listener); l.Name == TransparentListener && !proto.Equal(l, web1) {
			t.Error("a proxy that came online changed the transparent listener")
		}
	}
	if len(s2.Mesh("default").Service("billing").Local) != len(s.Mesh("default").Service("billing").Local)+1 {
		t.Fatal("billing-4 is not offline in the input")
	}

	// billing-1 has no explicit outbound: a listener of its own, with
	// billing's chains too (its VIP, which its application calls by name
	// as any other service's; its own service's members, which call each
	// other by address; its own address among them, which the transparent
	// proxy's rules take to its inbound listener) and web's and ledger's
	// whole chain.
	var chains []string
	for _, fc := range transparent("billing-1").FilterChains {
		chains = append(chains, fc.Name)
	}
	want := []string{"outbound:240.0.0.1:8080", "outbound:240.0.0.1:80", "outbound:240.0.0.3:9000", "outbound:240.0.0.3:80", "outbound:240.0.0.2:8000", "outbound:240.0.0.2:80",
		"direct:billing:10011", "direct:billing:10012", "direct:ledger:7000", "direct:web:10010"}
	if !slices.Equal(chains, want) {
		t.Errorf("billing-1's transparent chains = %q, want %q", chains, want)
	}
}

// TestSidecarInboundPassthroughGolden: a sidecar whose inbound TCP to every
// port is redirected to it (api.MetadataInboundPassthrough) gets the same
// ursa:inbound chains per inbound, plus a default chain that passes what
// none takes through to where it was headed, by an ORIGINAL_DST cluster
// bound to 127.0.0.6, and chains without filters that close the inbounds'
// and their applications' ports at any other address (9000, the app of
// the 9090 inbound, at every address), which would otherwise reach the
// application around its inbound. Without the metadata, neither.
func TestSidecarInboundPassthroughGolden(t *testing.T) {
	s, dp, _ := stateFrom(t, "testdata/transparent-inbound.input.yaml")
	r, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp, TransparentProxy: "15001", TransparentInbound: "15006", InboundPassthrough: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := Validate(r); err != nil {
		t.Fatalf("generated resources do not validate: %v", err)
	}
	xdstest.Golden(t, "testdata/transparent-inbound-passthrough.golden.yaml", xdstest.Render(t, r), *update)

	var in *listener.Listener
	for _, l := range r[resource.ListenerType] {
		if cache.GetResourceName(l) == InboundListener {
			in = l.(*listener.Listener)
		}
	}
	if in == nil {
		t.Fatal("no ursa:inbound")
	}
	var chains []string
	for _, fc := range in.FilterChains {
		chains = append(chains, fc.Name)
	}
	if want := []string{"inbound:10.0.0.7:8080", "inbound:10.0.0.7:9090", "inbound:closed:8080", "inbound:closed:9000", "inbound:closed:9090", "inbound:closed:loopback"}; !slices.Equal(chains, want) {
		t.Errorf("ursa:inbound's chains %q; want %q", chains, want)
	}
	if d := in.GetDefaultFilterChain(); d.GetName() != InboundPassthroughCluster || len(d.GetFilters()) != 1 {
		t.Errorf("ursa:inbound's default chain %v; want the inbound passthrough", d)
	}
	var passthrough bool
	for _, c := range r[resource.ClusterType] {
		if cache.GetResourceName(c) == InboundPassthroughCluster {
			passthrough = true
		}
	}
	if !passthrough {
		t.Errorf("no %s cluster", InboundPassthroughCluster)
	}

	// Only the inbounds' ports redirected: no passthrough, as before.
	r, err = Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp, TransparentProxy: "15001", TransparentInbound: "15006"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range r[resource.ClusterType] {
		if cache.GetResourceName(c) == InboundPassthroughCluster {
			t.Errorf("%s without inbound passthrough", InboundPassthroughCluster)
		}
	}
}

// TestSidecarBindsOnlyLoopbackVIPs: a sidecar that is not transparent gets
// listeners on its mesh's VIPs when they are loopback addresses (a demo's
// 127.240.0.0/16), and none on VIPs of a real zone (240.0.0.0/4): on no
// interface of its host, it could not bind them and would refuse every
// configuration that named them. Its explicit outbounds stay.
func TestSidecarBindsOnlyLoopbackVIPs(t *testing.T) {
	for file, want := range map[string][]string{
		"testdata/sidecar/local.input.yaml":       {"outbound:127.0.0.1:10021", "outbound:127.240.0.1:80", "outbound:127.240.0.1:8080"},
		"testdata/sidecar-transparent.input.yaml": {"outbound:127.0.0.1:10021"},
	} {
		s, dp, _ := stateFrom(t, file)
		r, err := Sidecar(s, Proxy{Kind: KindSidecar, Dataplane: dp})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, res := range r[resource.ListenerType] {
			if name := res.(*listener.Listener).Name; strings.HasPrefix(name, "outbound:") {
				got = append(got, name)
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s: outbound listeners %q, want %q", file, got, want)
		}
	}
}
