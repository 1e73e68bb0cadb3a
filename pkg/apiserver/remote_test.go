package apiserver_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/apiserver"
	"github.com/ursamesh/ursa/pkg/run"
	"github.com/ursamesh/ursa/pkg/servingcert"
	"github.com/ursamesh/ursa/pkg/store"
)

// untouchable is a request body that records being read.
type untouchable struct{ read *atomic.Bool }

func (u untouchable) Read([]byte) (int, error) {
	u.read.Store(true)
	return 0, io.EOF
}

// TestPlainPortRefusesOtherHosts: on the plain port, a caller from another
// host is refused 403 naming the HTTPS address, before its token is checked
// or its body read; the open paths still answer it, loopback callers keep
// everything, and the same request over HTTPS is served.
func TestPlainPortRefusesOtherHosts(t *testing.T) {
	var checked atomic.Int32
	users := apiserver.AuthenticatorFunc(func(context.Context, string) (apiserver.User, error) {
		checked.Add(1)
		return apiserver.User{Name: "ada", Group: apiserver.GroupAdmin}, nil
	})
	newHandler := func(allowRemote bool) http.Handler {
		st := store.NewMemory(0)
		if _, err := st.Create(context.Background(), &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}); err != nil {
			t.Fatal(err)
		}
		h, err := apiserver.New(apiserver.Deps{Store: st, Log: zaptest.NewLogger(t), Registry: prometheus.NewRegistry(),
			Mode: apiserver.ModeGlobal, Users: users, TLSAddr: "[::]:7443", AllowRemoteHTTP: allowRemote,
			Extra: map[string]http.Handler{"GET /api/ca.pem": http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				io.WriteString(w, "-----BEGIN CERTIFICATE-----\n")
			})}})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	h := newHandler(false)
	type result struct {
		code    int
		details string
		read    bool
	}
	call := func(h http.Handler, method, path, from, host string, overTLS bool) result {
		t.Helper()
		var read atomic.Bool
		var body io.Reader = untouchable{&read}
		if overTLS {
			body = strings.NewReader(meshBody)
		}
		req := httptest.NewRequest(method, path, body)
		req.RemoteAddr, req.Host = from, host
		if local, err := net.ResolveTCPAddr("tcp", host); err == nil {
			// Where it arrived, as an http.Server says.
			req = req.WithContext(context.WithValue(req.Context(), http.LocalAddrContextKey, local))
		}
		req.Header.Set("Authorization", "Bearer secret-token")
		if overTLS {
			req.TLS = &tls.ConnectionState{HandshakeComplete: true}
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var e struct {
			Details string `json:"details"`
		}
		json.Unmarshal(rec.Body.Bytes(), &e)
		return result{rec.Code, e.Details, read.Load()}
	}

	for _, tt := range []struct{ method, path string }{
		{"GET", "/meshes"}, {"PUT", "/meshes/default"}, {"DELETE", "/meshes/default"}, {"POST", "/tokens/user"},
		{"GET", "/nope"}, {"POST", "/healthz"}, {"PUT", "/api/ca.pem"},
	} {
		checked.Store(0)
		r := call(h, tt.method, tt.path, remote, "10.0.0.5:5681", false)
		if r.code != 403 || !strings.Contains(r.details, "use https://10.0.0.5:7443 and verify it with the CA certificate served at /api/ca.pem") ||
			!strings.Contains(r.details, "consider it exposed") {
			t.Errorf("%s %s from another host on the plain port: %d %q", tt.method, tt.path, r.code, r.details)
		}
		if checked.Load() != 0 || r.read {
			t.Errorf("%s %s from another host on the plain port: token checked %d times, body read %v; want neither",
				tt.method, tt.path, checked.Load(), r.read)
		}
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/api/ca.pem"} {
		if r := call(h, "GET", path, remote, "10.0.0.5:5681", false); r.code != 200 {
			t.Errorf("open %s from another host on the plain port: %d %q", path, r.code, r.details)
		}
	}
	// The Host header is the caller's: only a name or address is echoed.
	if r := call(h, "GET", "/meshes", remote, `x"<b>:5681`, false); !strings.Contains(r.details, "use https://HOST:7443") {
		t.Errorf("a bad Host header: %q", r.details)
	}
	if r := call(h, "GET", "/meshes", "[2001:db8::7]:40000", "[2001:db8::1]:5681", false); !strings.Contains(r.details, "https://[2001:db8::1]:7443") {
		t.Errorf("an IPv6 caller: %d %q", r.code, r.details)
	}

	checked.Store(0)
	if r := call(h, "PUT", "/meshes/default", remote, "10.0.0.5:5682", true); r.code != 200 || checked.Load() != 1 {
		t.Errorf("PUT from another host over HTTPS with an admin token: %d %q, token checked %d times", r.code, r.details, checked.Load())
	}
	checked.Store(0)
	if r := call(h, "GET", "/meshes", loopback, "127.0.0.1:5681", false); r.code != 200 || checked.Load() != 1 {
		t.Errorf("GET from loopback on the plain port: %d %q, token checked %d times", r.code, r.details, checked.Load())
	}
	if r := call(newHandler(true), "GET", "/meshes", remote, "10.0.0.5:5681", false); r.code != 200 {
		t.Errorf("GET from another host on the plain port with AllowRemoteHTTP: %d %q", r.code, r.details)
	}
}

// TestServeTLS runs both ports on loopback sockets: the HTTPS one is
// verified with the CA from /api/ca.pem (which holds no key), refused
// without it, and a second start over the same store serves the same CA.
func TestServeTLS(t *testing.T) {
	st := store.NewMemory(0)
	cfg := apiserver.DefaultConfig()
	cfg.Addr, cfg.TLSAddr = "127.0.0.1:0", "127.0.0.1:0"
	cert, err := apiserver.Certificate(context.Background(), st, cfg, "test API CA")
	if err != nil {
		t.Fatal(err)
	}
	lns, err := apiserver.Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h, err := apiserver.New(apiserver.Deps{Store: st, Log: zaptest.NewLogger(t), Registry: prometheus.NewRegistry(),
		TLSAddr: lns.TLS.Addr().String(), Extra: map[string]http.Handler{"GET /api/ca.pem": cert.CAHandler()}})
	if err != nil {
		t.Fatal(err)
	}
	r := run.New(zap.NewNop())
	// Not the test's logger: the server logs a handshake a client gave up
	// on (the last call below) from its own goroutine, which may run on
	// after the test has ended.
	apiserver.Serve(r, lns, h, cert, 0, zap.NewNop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	plain, secure := "http://"+lns.Plain.Addr().String(), "https://"+lns.TLS.Addr().String()
	resp, err := http.Get(plain + "/api/ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(caPEM), "BEGIN CERTIFICATE") || strings.Contains(string(caPEM), "PRIVATE KEY") {
		t.Fatalf("GET /api/ca.pem: %d %s", resp.StatusCode, caPEM)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	trusting := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err = trusting.Get(secure + "/healthz")
	if err != nil {
		t.Fatalf("GET over HTTPS with the CA of /api/ca.pem: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /healthz over HTTPS from loopback: %d", resp.StatusCode)
	}
	// The HTTPS port takes no loopback caller for this host's: what passes
	// TLS through (a zone ingress) arrives from loopback too.
	resp, err = trusting.Get(secure + "/meshes")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("GET /meshes over HTTPS from loopback without a token: %d, want 401", resp.StatusCode)
	}
	if resp, err = http.Get(plain + "/meshes"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /meshes on the plain port from loopback: %v %v, want 200", resp, err)
	}
	resp.Body.Close()
	_, err = http.Get(secure + "/meshes")
	var verr *tls.CertificateVerificationError
	if !errors.As(err, &verr) {
		t.Fatalf("GET over HTTPS with the system roots: %v, want a verification error", err)
	}

	again, err := apiserver.Certificate(context.Background(), st, cfg, "test API CA")
	if err != nil || string(again.CAPEM()) != string(caPEM) {
		t.Fatalf("a second start over the same store: %v, same CA %v", err, string(again.CAPEM()) == string(caPEM))
	}
	if _, err := st.Get(context.Background(), api.Key{Type: "GlobalSecret", Name: apiserver.CASecret}); err != nil {
		t.Fatalf("the CA in the store: %v", err)
	}
}

// TestCertificateFromFiles: a given pair is served, and a file holding both
// certificate and key publishes only the certificate.
func TestCertificateFromFiles(t *testing.T) {
	st := store.NewMemory(0)
	cfg := apiserver.DefaultConfig()
	cfg.TLSAddr = "127.0.0.1:0"
	made, err := apiserver.Certificate(context.Background(), st, cfg, "made")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := made.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	both := filepath.Join(t.TempDir(), "both.pem")
	data := append(pemBlock("CERTIFICATE", leaf.Certificate[0]), pemBlock("PRIVATE KEY", key)...)
	if err := os.WriteFile(both, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.TLSCert, cfg.TLSKey = both, both
	given, err := apiserver.Certificate(context.Background(), store.NewMemory(0), cfg, "unused")
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	given.CAHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/api/ca.pem", nil))
	if body := rec.Body.String(); !strings.Contains(body, "BEGIN CERTIFICATE") || strings.Contains(body, "PRIVATE KEY") {
		t.Fatalf("/api/ca.pem of a combined file: %s", body)
	}
}

func TestConfigTLS(t *testing.T) {
	for _, tt := range []struct {
		name string
		edit func(*apiserver.Config)
		want string
	}{
		{"defaults", func(*apiserver.Config) {}, ""},
		{"bad address", func(c *apiserver.Config) { c.TLSAddr = "5682" }, `api.tlsAddr: "5682" is not host:port`},
		{"same as plain", func(c *apiserver.Config) { c.TLSAddr = c.Addr }, "api.tlsAddr: \":5681\" is api.addr too"},
		{"cert without key", func(c *apiserver.Config) { c.TLSCert = "/c.pem" }, "api.tlsCert and api.tlsKey: give both or neither"},
		{"san with a given cert", func(c *apiserver.Config) { c.TLSCert, c.TLSKey, c.TLSSAN = "/c", "/k", []string{"a.b"} }, "api.tlsSan: names only the self-signed"},
		{"bad san", func(c *apiserver.Config) { c.TLSSAN = []string{"a b"} }, `api.tlsSan: "a b" is neither a DNS name nor an IP address`},
	} {
		c := apiserver.DefaultConfig()
		tt.edit(&c)
		err := c.Validate()
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
	if c := apiserver.DefaultConfig(); c.TLSAddr != ":5682" {
		t.Errorf("default api.tlsAddr %q, want :5682", c.TLSAddr)
	}
	if _, port, _ := net.SplitHostPort(apiserver.DefaultConfig().Addr); port != "5681" {
		t.Errorf("default api.addr port %s, want 5681", port)
	}
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// FuzzPlainRefusalHost: whatever Host a caller on the plain port sends, it
// is refused 403, and the HTTPS address named holds only a DNS name or an
// IP address from it, or the placeholder HOST.
func FuzzPlainRefusalHost(f *testing.F) {
	for _, s := range []string{"10.0.0.5:5681", "cp.example.com", "[2001:db8::1]:5681", `x"<b>`, "", ":", "[::1", "a b:1"} {
		f.Add(s)
	}
	h, err := apiserver.New(apiserver.Deps{Store: store.NewMemory(0), Log: zap.NewNop(), Registry: prometheus.NewRegistry(), TLSAddr: "[::]:5682"})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, host string) {
		req := httptest.NewRequest("GET", "/meshes", nil)
		req.RemoteAddr, req.Host = remote, host
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var e struct {
			Details string `json:"details"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &e); rec.Code != 403 || err != nil {
			t.Fatalf("Host %q: %d %s", host, rec.Code, rec.Body)
		}
		_, rest, ok := strings.Cut(e.Details, "use https://")
		named, _, _ := strings.Cut(rest, " ")
		name, port, err := net.SplitHostPort(named)
		if !ok || err != nil || port != "5682" || (name != "HOST" && servingcert.CheckSAN(name) != nil) {
			t.Fatalf("Host %q: named %q in %q", host, named, e.Details)
		}
	})
}
