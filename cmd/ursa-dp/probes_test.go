package main

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/proxy/tproxy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// TestAppProbes: a listed probe is made of the app at 127.0.0.1 with the
// kubelet's headers and answered with the app's status; anything else is a
// 404, so the admin port reaches nothing of the app but its probes.
func TestAppProbes(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/ready" && r.Header.Get("X-Probe") == "1":
			w.Write([]byte("ok"))
		case r.URL.Path == "/sick":
			http.Error(w, "sick", http.StatusInternalServerError)
		case r.URL.Path == "/moved": // a redirect is the answer, not followed
			http.Redirect(w, r, "http://127.0.0.2:1/elsewhere", http.StatusFound)
		default:
			http.Error(w, "secret", http.StatusTeapot)
		}
	}))
	defer app.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(app.URL, "http://"))
	tlsApp := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer tlsApp.Close()
	_, tlsPort, _ := net.SplitHostPort(strings.TrimPrefix(tlsApp.URL, "https://"))
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, closedPort, _ := net.SplitHostPort(closed.Addr().String())
	closed.Close()
	h, err := appProbes(port+"/ready,"+port+"/sick,"+port+"/moved,https:"+tlsPort+"/,tcp:"+port+",tcp:"+closedPort, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]int{
		"/probes/https:" + tlsPort + "/": http.StatusOK,
		"/probes/tcp:" + port:            http.StatusOK,
		"/probes/tcp:" + closedPort:      http.StatusServiceUnavailable,
		"/probes/tcp:" + tlsPort:         http.StatusNotFound,
		"/probes/" + port + "/ready":     http.StatusOK,
		"/probes/" + port + "/sick":      http.StatusInternalServerError,
		"/probes/" + port + "/moved":     http.StatusFound,
		"/probes/" + port + "/secret":    http.StatusNotFound,
		"/probes/" + port + "/ready?x=1": http.StatusNotFound,
		"/probes/1/ready":                http.StatusNotFound,
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.Header.Set("X-Probe", "1")
		h.ServeHTTP(rec, req)
		if rec.Code != want {
			t.Errorf("GET %s: %d %s, want %d", path, rec.Code, rec.Body, want)
		}
	}
	if _, err := appProbes("80/x", "$(POD_IP)"); err == nil {
		t.Error("a host that is no IP accepted")
	}
	for _, bad := range []string{"ready", "0/ready", "x/y", "", "tcp:x", "https:ready", "udp:53"} {
		if _, err := appProbes(bad, "127.0.0.1"); err == nil {
			t.Errorf("--app-probes %q accepted", bad)
		}
	}
}

// noIptables keeps the iptables binaries from a test that runs an
// install: were it to go past what it checks, it fails for the want of
// them instead of changing the test machine's own rules.
func noIptables(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
}

// TestInstallTransparentProxyRefuses: install-transparent-proxy says what
// is wrong before it touches anything: no sidecar user, a bad user or port
// list, a --dns-addr the redirection would not reach, and what would keep
// the sidecar of a unit's environment from starting.
func TestInstallTransparentProxyRefuses(t *testing.T) {
	noIptables(t)
	for want, args := range map[string][]string{
		"--exclude-outbound-uids: required":              {},
		`--exclude-outbound-uids: user "no-such-user-x"`: {"--exclude-outbound-uids", "5678,no-such-user-x"},
		`--exclude-outbound-uids: "a b" is neither`:      {"--exclude-outbound-uids", "a b"},
		"--dataplane-file: open /nonexistent":            {"--exclude-outbound-uids", "5678", "--dataplane-file", "/nonexistent/billing.yaml"},
		"--inbound-ports: with --dataplane-name only":    {"--exclude-outbound-uids", "5678", "--dataplane-file", "/nonexistent/billing.yaml", "--inbound-ports", "8080"},
		"--token-file: open /nonexistent":                {"--exclude-outbound-uids", "5678", "--cp-address", "grpcs://127.0.0.1:5678", "--token-file", "/nonexistent/web.token"},
		"--ca-cert-file":                                 {"--exclude-outbound-uids", "5678", "--cp-address", "grpcs://127.0.0.1:5678", "--ca-cert-file", "/nonexistent/ca.pem"},
		"--cp-address":                                   {"--exclude-outbound-uids", "5678", "--cp-address", "ftp://x"},
		`--proxy "envoy"`:                                {"--exclude-outbound-uids", "5678", "--proxy", "envoy"},
		"--inbound-ports":                                {"--exclude-outbound-uids", "5678", "--inbound-ports", "8080,0"},
		"--redirect-dns-port":                            {"--exclude-outbound-uids", "5678", "--dns-addr", "127.0.0.1:5353"},
	} {
		cmd := newInstallTransparentProxy()
		cmd.SetArgs(args)
		cmd.SilenceUsage, cmd.SilenceErrors = true, true
		if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: %v, want an error about %q", args, err, want)
		}
	}
}

// TestInstallTransparentProxyOff: with --transparent-proxy=false (a host's
// other sidecars, URSA_TRANSPARENT_PROXY=false in a unit's environment)
// install-transparent-proxy installs nothing and succeeds, whatever else
// it is given.
func TestInstallTransparentProxyOff(t *testing.T) {
	noIptables(t)
	cmd := newInstallTransparentProxy()
	cmd.SetArgs([]string{"--transparent-proxy=false", "--log-level", "error"})
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
}

// TestIngressNode: an ingress runs the ZoneIngress of a file, presented, or
// one already registered by name; not both, not neither, not a bad name.
func TestIngressNode(t *testing.T) {
	id, meta, err := ingressNode(ingressConfig{ZoneIngressName: "ingress-1.ursa-system"})
	if err != nil || id != "ingress-1.ursa-system" || meta[api.MetadataIngress] != "true" || meta[api.MetadataZoneIngress] != "" {
		t.Errorf("by name: %s %v %v", id, meta, err)
	}
	for want, cfg := range map[string]ingressConfig{
		"not both":                  {ZoneIngressName: "a", ZoneIngressFile: "f"},
		"give --zone-ingress-file":  {},
		`--zone-ingress-name "A_B"`: {ZoneIngressName: "A_B"},
	} {
		if _, _, err := ingressNode(cfg); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%+v: %v, want an error about %q", cfg, err, want)
		}
	}
}

// TestInstalledRulesPassThisUser: a sidecar told the rules were installed
// for users that are not its own refuses to start: its own connections
// would be sent back to it.
func TestInstalledRulesPassThisUser(t *testing.T) {
	other := "5678"
	if os.Getuid() == 5678 {
		other = "5679"
	}
	cfg := runConfig{proxyConfig: proxyConfig{CPAddress: "grpcs://127.0.0.1:1", Proxy: "builtin", AdminAddr: "127.0.0.1:0"},
		TransparentProxy: true, TransparentProxyInstalled: true, ExcludeOutboundUIDs: other, RedirectOutboundPort: tproxy.DefaultOutboundPort}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second) // a start that went ahead ends
	defer cancel()
	err := runProxy(ctx, cfg, "default.web", map[string]string{})
	if err == nil || !strings.Contains(err.Error(), "not this proxy's own user") {
		t.Fatalf("%v; want a refusal naming the proxy's user", err)
	}
}

// TestAppProbesGRPC: grpc:PORT[/SERVICE] is a plaintext grpc.health.v1
// Check of the app, as the kubelet's gRPC probe makes it: SERVING is 200,
// any other status or no answer 503, and only the listed pairs answer.
func TestAppProbesGRPC(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("warming", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(ln)
	defer srv.Stop()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	h, err := appProbes("grpc:"+port+",grpc:"+port+"/warming,grpc:"+port+"/unknown,grpc:1", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]int{
		"/probes/grpc:" + port:              http.StatusOK,
		"/probes/grpc:" + port + "/warming": http.StatusServiceUnavailable,
		"/probes/grpc:" + port + "/unknown": http.StatusServiceUnavailable,
		"/probes/grpc:1":                    http.StatusServiceUnavailable,
		"/probes/grpc:" + port + "/other":   http.StatusNotFound,
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != want {
			t.Errorf("GET %s: %d %s, want %d", path, rec.Code, rec.Body, want)
		}
	}
	if _, err := appProbes("grpc:x", "127.0.0.1"); err == nil {
		t.Error("grpc:x accepted")
	}
}
