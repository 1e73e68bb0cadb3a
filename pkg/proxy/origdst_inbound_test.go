package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/proxy/tproxy"
	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/xds"
	"github.com/ursamesh/ursa/pkg/xds/xdstest"
)

// TestInboundTLSOnOriginalDst: the zone CP's ursa:inbound for billing-1
// (testdata transparent-inbound: mTLS, web allowed, admin denied), run by
// the proxy in a throwaway namespace whose redirection sends 10.0.0.7's
// ports to it, terminates mTLS and applies RBAC per filter chain exactly
// as an inbound listener does: a mesh client allowed by the
// TrafficPermissions reaches the app, a plaintext client, one of another
// CA, a forbidden identity and a port without a chain are refused, each
// counted under its reason. (The namespace's outbound redirection stands
// in for the inbound one, which sees no local traffic: both lead to the
// listener with the connection's original destination.)
func TestInboundTLSOnOriginalDst(t *testing.T) {
	rs := xdstest.Inputs(t, "../xds/testdata/transparent-inbound.input.yaml")
	state := xds.NewState(catalog.FromResources("zone-1", rs), nil)
	res, err := xds.Sidecar(state, xds.Proxy{Kind: xds.KindSidecar, Dataplane: state.Mesh("default").Registered["billing-1"], TransparentInbound: "15006"})
	if err != nil {
		t.Fatal(err)
	}
	var listeners []*listener.Listener
	for _, r := range res[resource.ListenerType] {
		if l := r.(*listener.Listener); l.Name == xds.InboundListener {
			listeners = append(listeners, l)
		}
	}
	var clusters []*cluster.Cluster
	for _, r := range res[resource.ClusterType] {
		if c := r.(*cluster.Cluster); c.GetType() == cluster.Cluster_STATIC {
			clusters = append(clusters, c)
		}
	}
	cfg, err := translate(listeners, clusters, nil, nil, nil)
	if err != nil {
		t.Fatalf("the built-in proxy refuses the generated ursa:inbound: %v", err)
	}
	l := cfg.Listeners[xds.InboundListener]
	if l == nil || !l.OriginalDst || len(l.DstChains) != 2 || !l.DstChains[0].TLS || l.DstChains[0].RBAC == nil {
		t.Fatalf("ursa:inbound translated to %+v", l)
	}
	if !inNamespace(t) {
		return
	}

	ctx := context.Background()
	log := zaptest.NewLogger(t)
	if err := tproxy.Install(ctx, log, tproxy.Config{OutboundPort: 15006}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tproxy.Remove(ctx, log, "") })
	echoOn(t, "127.0.0.1:8080", "billing")

	signer, roots := testSigner(t, "default")
	other, _ := testSigner(t, "other")
	cfg.Identity, cfg.Roots = workload(t, signer, "default", "billing"), roots
	reg := prometheus.NewRegistry()
	p, err := New(log, reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	p.Mark = tproxy.DefaultMark
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}

	call := func(addr string, cert *tls.Certificate) (string, error) {
		var c net.Conn
		var err error
		if cert == nil {
			c, err = net.DialTimeout("tcp", addr, 2*time.Second)
		} else {
			c, err = tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr,
				&tls.Config{Certificates: []tls.Certificate{*cert}, RootCAs: roots, InsecureSkipVerify: true})
		}
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintln(c, "hi")
		if cert == nil { // no handshake comes: let the proxy see the end now
			c.(*net.TCPConn).CloseWrite()
		}
		return bufio.NewReader(c).ReadString('\n')
	}
	web := workload(t, signer, "default", "web")
	if got, err := call("10.0.0.7:8080", web); err != nil || got != "billing hi\n" {
		t.Fatalf("web over mTLS: %q %v; want billing's answer", got, err)
	}
	for _, tc := range []struct {
		name, addr string
		cert       *tls.Certificate
		reason     string
	}{
		{"plaintext", "10.0.0.7:8080", nil, "tls"},
		{"web of another mesh's CA", "10.0.0.7:8080", workload(t, other, "default", "web"), "tls"},
		{"admin (denied)", "10.0.0.7:8080", workload(t, signer, "default", "admin"), "rbac"},
		{"search (not allowed)", "10.0.0.7:8080", workload(t, signer, "default", "search"), "rbac"},
		{"web to billing-admin (not allowed)", "10.0.0.7:9090", web, "rbac"},
		{"a port without a chain", "10.0.0.7:7777", web, "no_filter_chain"},
	} {
		before := counterValue(t, reg, "ursa_dp_refused_total", tc.reason)
		if got, err := call(tc.addr, tc.cert); err == nil {
			t.Errorf("%s: answered %q; want refused", tc.name, got)
		}
		// The proxy counts the refusal after the client may have seen
		// it (a TLS 1.3 client's handshake ends before the server has
		// checked its certificate): polled.
		testutil.Eventually(t, 10*time.Second, tc.name+": one more refusal for "+tc.reason, func() error {
			if after := counterValue(t, reg, "ursa_dp_refused_total", tc.reason); after != before+1 {
				return fmt.Errorf("refusals went %v → %v", before, after)
			}
			return nil
		})
	}
}
