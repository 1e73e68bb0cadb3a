package zone

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	xdsgrpc "google.golang.org/grpc/xds"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
	"github.com/ursamesh/ursa/pkg/tokens"
	"github.com/ursamesh/ursa/pkg/xds"
)

// callCredsEnv turns on grpc-go's call credentials in xDS bootstraps (gRFC
// A97); grpc-go reads it once, when the process starts.
const callCredsEnv = "GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS"

// TestProxylessTokens: real grpc-go xDS clients, dialing xds:///billing
// over TLS to an xDS server that authenticates like a zone's, are served
// with their dataplane token given either as JWT call credentials from
// their bootstrap (call_creds jwt_token_file) or in their node metadata
// (ursa.io/token); without a token, or with another service's, they are
// refused and the refusals counted.
func TestProxylessTokens(t *testing.T) {
	if os.Getenv(callCredsEnv) != "true" {
		// Run in a process that has the variable from its start.
		cmd := exec.Command(os.Args[0], "-test.run=^TestProxylessTokens$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), callCredsEnv+"=true")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestProxylessTokens") {
			t.Fatalf("TestProxylessTokens with %s=true: %v\n%s", callCredsEnv, err, out)
		}
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()

	// A billing backend, and the zone's view: web-1…web-4 proxyless, billing-1.
	backendLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	backend := grpc.NewServer()
	healthpb.RegisterHealthServer(backend, health.NewServer())
	go backend.Serve(backendLn)
	defer backend.Stop()
	dataplane := func(name, service string, port int) *api.Dataplane {
		return &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: name},
			Networking: api.DataplaneNetworking{Address: "127.0.0.1", Inbound: []api.Inbound{{Port: port, Tags: map[string]string{api.TagService: service, api.TagZone: "zone-1"}}}}}
	}
	rs := []api.Resource{&api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}},
		dataplane("billing-1", "billing", backendLn.Addr().(*net.TCPAddr).Port)}
	for i := 1; i <= 4; i++ {
		rs = append(rs, dataplane(fmt.Sprintf("web-%d", i), "web", 9000+i))
	}
	st := store.NewMemory(0)
	if _, err := st.Apply(ctx, rs, nil); err != nil {
		t.Fatal(err)
	}
	dpTokens := tokens.NewDataplaneIssuer(st)
	token := func(service string) string {
		tok, err := dpTokens.Issue(ctx, tokens.DataplaneClaims{Mesh: "default", Service: service}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}

	// The xDS server, over TLS, authenticating as a zone does.
	reg := prometheus.NewRegistry()
	srv, err := xds.NewServer(zaptest.NewLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	view := fixedView{store.NewView(rs, mirroredTypes()...)}
	srv.SetAuth(proxyAuth("zone-1", dpTokens, tokens.NewIngressIssuer(st, "zone-1"), view, false))
	lrs, err := xds.NewLoadReporting(srv, xds.NewLoads(time.Second), time.Second, zaptest.NewLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	cert, caFile := selfSigned(t, dir)
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})))
	srv.Register(ctx, g)
	lrs.Register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	defer g.Stop()
	state := xds.NewState(catalog.FromResources("zone-1", rs), nil)
	for i := 1; i <= 4; i++ {
		name := fmt.Sprintf("web-%d", i)
		r, err := xds.Proxyless(state, xds.Proxy{Kind: xds.KindProxyless, Dataplane: rs[1+i].(*api.Dataplane)})
		if err == nil {
			err = srv.SetResources(ctx, "default."+name, r)
		}
		if err != nil {
			t.Fatal(err)
		}
	}

	// dial returns a client of billing whose bootstrap is node name's with
	// the given call_creds and node metadata.
	dial := func(name, callCreds, metadata string) healthpb.HealthClient {
		bootstrap := fmt.Sprintf(`{
  "xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "tls", "config": {"ca_certificate_file": %q}}],
    "call_creds": [%s], "server_features": ["xds_v3", "ignore_resource_deletion"]}],
  "node": {"id": "default.%s", "metadata": {"ursa.io/proxyless": "true"%s}}
}`, ln.Addr().String(), caFile, callCreds, name, metadata)
		resolver, err := xdsgrpc.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
		if err != nil {
			t.Fatal(err)
		}
		cc, err := grpc.NewClient("xds:///billing", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(resolver))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return healthpb.NewHealthClient(cc)
	}
	check := func(c healthpb.HealthClient, timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		_, err := c.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	tokenFile := filepath.Join(dir, "web.jwt")
	if err := os.WriteFile(tokenFile, []byte(token("web")), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		how, name, callCreds, metadata string
	}{
		{"JWT call credentials", "web-1", fmt.Sprintf(`{"type": "jwt_token_file", "config": {"jwt_token_file": %q}}`, tokenFile), ""},
		{"node metadata", "web-2", "", fmt.Sprintf(`, %q: %q`, api.MetadataToken, token("web"))},
	} {
		c := dial(tt.name, tt.callCreds, tt.metadata)
		testutil.Until(t, 15*time.Second, "a call with the token as "+tt.how, func() bool { return check(c, time.Second) == nil })
	}
	if n := refusals(t, reg); n != 0 {
		t.Fatalf("%v proxies refused before any was meant to be", n)
	}

	// Refused: no token; billing's token for web-4.
	noToken := dial("web-3", "", "")
	otherService := dial("web-4", "", fmt.Sprintf(`, %q: %q`, api.MetadataToken, token("billing")))
	testutil.Until(t, 15*time.Second, "both refused and counted", func() bool {
		// A channel connects on its first call.
		for name, c := range map[string]healthpb.HealthClient{"no token": noToken, "billing's token": otherService} {
			if err := check(c, 100*time.Millisecond); err == nil {
				t.Fatalf("a proxyless client with %s called billing", name)
			}
		}
		return refusalsFor(t, reg, xds.RefusedNoToken) > 0 && refusalsFor(t, reg, xds.RefusedNotCovered) > 0
	})
}

// refusals is the sum of ursa_xds_refused_total.
func refusals(t *testing.T, reg *prometheus.Registry) float64 { return refusalsFor(t, reg, "") }

// refusalsFor is ursa_xds_refused_total for reason (any, when empty).
func refusalsFor(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != "ursa_xds_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && (reason == "" || l.GetValue() == reason) {
					n += m.GetCounter().GetValue()
				}
			}
		}
	}
	return n
}

// selfSigned makes a certificate for 127.0.0.1 and localhost and writes it,
// as its own CA, to a PEM file in dir.
func selfSigned(t *testing.T, dir string) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "zone-1 xds"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "xds-ca.pem")
	if err := os.WriteFile(file, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, file
}
