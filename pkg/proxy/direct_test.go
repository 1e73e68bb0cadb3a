package proxy

import (
	"bufio"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/mtls"
	"github.com/ursamesh/ursa/pkg/xds"
	"github.com/ursamesh/ursa/pkg/xds/xdstest"
)

// TestGeneratedDirectChains: the built-in proxy runs what the zone sends a
// transparent sidecar with mTLS (xds testdata transparent/direct): a
// connection headed to one of billing's instances at its inbound port takes
// the chain to direct:billing, an original-destination cluster that
// originates mTLS with billing's SNI and checks that the server is billing;
// one to the same address at another port is passed through. An instance
// of the proxy's own service is reached the same way (its peers call each
// other by address).
func TestGeneratedDirectChains(t *testing.T) {
	rs := xdstest.Inputs(t, "../xds/testdata/transparent/direct.input.yaml")
	state := xds.NewState(catalog.FromResources("zone-1", rs), nil)
	web := state.Mesh("default").Registered["web-1"]
	res, err := xds.Sidecar(state, xds.Proxy{Kind: xds.KindSidecar, Dataplane: web, TransparentProxy: "15001"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := translateGenerated(t, res)
	c := cfg.Clusters[xds.DirectCluster("billing")]
	if c == nil || !c.OriginalDst || !c.TLS || c.Warming || c.SNI != catalog.SNI("default", map[string]string{api.TagService: "billing"}) ||
		len(c.ServerSANs) != 1 || !c.ServerSANs[0]("spiffe://default/billing") || c.ServerSANs[0]("spiffe://default/web") {
		t.Fatalf("cluster direct:billing: %+v", c)
	}
	out := cfg.Listeners[xds.TransparentListener]
	for dst, want := range map[string]string{
		"10.0.0.7:10011":  "direct:billing",
		"10.0.0.8:10011":  "direct:billing",
		"10.0.0.12:10011": "direct:billing", // billing-4, offline
		"10.0.0.9:10012":  "direct:billing",
		"10.0.0.11:7000":  "direct:ledger",
		"10.0.0.10:7000":  "billing", // the explicit outbound's
		"10.0.0.7:10012":  xds.PassthroughCluster,
		"10.0.0.6:10010":  "direct:web", // web-2: an instance of the proxy's own service, over mTLS too
		"240.0.0.3:9000":  "search",
		"192.0.2.1:10011": xds.PassthroughCluster,
	} {
		chain, ok := out.matchDst(netip.MustParseAddrPort(dst))
		if !ok || len(chain.Routes) != 1 || chain.Routes[0].Cluster != want || chain.TLS {
			t.Errorf("%s → %+v; want %s", dst, chain, want)
		}
	}
}

// TestOriginalDstTLS: an original-destination cluster with TLS connects to
// exactly the destination it is given, presents the proxy's identity (the
// server, a sidecar's inbound, requires it), and refuses and counts a
// server whose certificate names another service or chains through a
// revoked intermediate; the passthrough (no TLS) still connects plainly.
func TestOriginalDstTLS(t *testing.T) {
	now := time.Now()
	root, cas := zoneCAs(t, now, "zone-1", "zone-2")
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(root.CertPEM))

	// inbound runs a sidecar's inbound with identity, to an app answering
	// as name.
	inbound := func(id *api.ZoneCA, service, name string) netip.AddrPort {
		p := newProxy(t)
		if err := p.Apply(&Config{Identity: issueFrom(t, id, service, now), Roots: roots, Revoked: revocations(t, root),
			Listeners: map[string]*Listener{"in": {Name: "in", Addr: anyPort, TLS: true, Routes: []Route{{Cluster: "app", Weight: 1}}}},
			Clusters:  map[string]*Cluster{"app": {Name: "app", ConnectTimeout: time.Second, Overprovisioning: 140, Endpoints: []Endpoint{{Addr: echoServer(t, name), Weight: 1}}}},
		}); err != nil {
			t.Fatal(err)
		}
		return netip.MustParseAddrPort(boundAddr(t, p, "in"))
	}
	billing1, billing2, impostor := inbound(cas["zone-1"], "billing", "billing-1"), inbound(cas["zone-2"], "billing", "billing-2"), inbound(cas["zone-1"], "web", "web")

	reg := prometheus.NewRegistry()
	web, err := New(zaptest.NewLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	defer web.Close()
	exact, _ := compileMatcher(exactMatcher("spiffe://default/billing"))
	direct := &Cluster{Name: "direct:billing", OriginalDst: true, TLS: true, SNI: "billing-x.default.ursa", ConnectTimeout: time.Second,
		ServerSANs: []stringMatch{exact}, WantSANs: []string{"spiffe://default/billing"}}
	cfg := &Config{Identity: issueFrom(t, cas["zone-1"], "web", now), Roots: roots, Revoked: revocations(t, root)}
	call := func(cfg *Config, c *Cluster, dst netip.AddrPort) (string, error) {
		up, err := web.connectOriginal(cfg, c, dst)
		if err != nil {
			return "", err
		}
		defer up.Close()
		up.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintln(up, "hi")
		line, err := bufio.NewReader(up).ReadString('\n')
		return strings.TrimSuffix(line, "\n"), err
	}

	for dst, want := range map[netip.AddrPort]string{billing1: "billing-1 hi", billing2: "billing-2 hi"} {
		if got, err := call(cfg, direct, dst); err != nil || got != want {
			t.Errorf("direct to %s: %q, %v; want %q", dst, got, err, want)
		}
	}
	_, err = call(cfg, direct, impostor)
	var wrong *wrongPeerError
	if !errors.As(err, &wrong) || !strings.Contains(err.Error(), "spiffe://default/web") {
		t.Errorf("direct:billing to a server that is web: %v", err)
	}
	if got := counterValue(t, reg, "ursa_dp_upstream_tls_failures_total", "wrong_identity"); got != 1 {
		t.Errorf("wrong_identity counted %v times, want 1", got)
	}
	// Without TLS, the passthrough reaches the inbound but speaks no TLS:
	// the inbound refuses it.
	plain, err := web.connectOriginal(cfg, &Cluster{Name: "passthrough", OriginalDst: true, ConnectTimeout: time.Second}, billing1)
	if err != nil {
		t.Fatalf("passthrough to billing-1: %v", err)
	}
	plain.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintln(plain, "GET / HTTP/1.0")
	if line, err := bufio.NewReader(plain).ReadString('\n'); err == nil || strings.Contains(line, "billing") {
		t.Errorf("plaintext through an mTLS inbound: %q, %v", line, err)
	}
	plain.Close()
	// Without an identity yet, nothing is counted against the server.
	if _, err := call(&Config{}, direct, billing1); !errors.Is(err, errNoIdentity) {
		t.Errorf("without an identity: %v", err)
	}

	// zone-2's intermediate revoked: its billing is refused.
	puts, _, _, err := mtls.Timing{}.Plan(root, cas, map[string]bool{"zone-1": true}, now.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Revoked = revocations(t, puts[0].(*api.MeshCA))
	if _, err := call(cfg, direct, billing2); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Errorf("direct to a billing whose intermediate is revoked: %v", err)
	}
	if got, err := call(cfg, direct, billing1); err != nil || got != "billing-1 hi" {
		t.Errorf("direct to zone-1's billing after zone-2's revocation: %q, %v", got, err)
	}
	if got := counterValue(t, reg, "ursa_dp_upstream_tls_failures_total", "handshake"); got != 1 {
		t.Errorf("handshake failures counted %v times, want 1", got)
	}
}
