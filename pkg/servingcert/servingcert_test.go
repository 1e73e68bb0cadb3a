package servingcert

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/pgtest"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/postgres"
)

// The PostgreSQL cluster starts on first use, so that a fuzz run does not
// wait for it.
var (
	clusterOnce sync.Once
	cluster     *pgtest.Cluster
	clusterErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if cluster != nil {
		cluster.Close()
	}
	os.Exit(code)
}

// backends open two stores over the same data, as two processes (a restart,
// or two replicas) would.
var backends = []struct {
	name string
	open func(t *testing.T) (store.Store, store.Store)
}{
	{"memory", func(t *testing.T) (store.Store, store.Store) {
		st := store.NewMemory(0)
		return st, st
	}},
	{"postgres", func(t *testing.T) (store.Store, store.Store) {
		clusterOnce.Do(func() { cluster, clusterErr = pgtest.Start() })
		if clusterErr != nil {
			t.Fatal(clusterErr)
		}
		ctx := context.Background()
		dsn, err := cluster.NewDatabase(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := postgres.MigrateUp(ctx, dsn); err != nil {
			t.Fatal(err)
		}
		open := func() store.Store {
			s, err := postgres.Open(ctx, dsn, postgres.Options{Log: zaptest.NewLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(s.Close)
			return s
		}
		return open(), open()
	}},
}

func opts(sans ...string) Options {
	return Options{Secret: "xds-server-tls", CommonName: "test CA", Listen: "127.0.0.1:0", SANs: sans}
}

func load(t *testing.T, st Store, o Options) *Serving {
	t.Helper()
	s, err := Load(context.Background(), st, o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// verify checks that s's leaf verifies for host against the CA clients are
// given.
func verify(t *testing.T, s *Serving, host string) error {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(s.CAPEM()) {
		t.Fatalf("CAPEM holds no certificate: %q", s.CAPEM())
	}
	cert, err := s.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	return err
}

func TestLeafNamesItsSANs(t *testing.T) {
	s := load(t, store.NewMemory(0), opts("cp.example.com", "10.1.2.3", "*.zone.example", "2001:db8::7"))
	for _, host := range []string{"localhost", "127.0.0.1", "::1", "cp.example.com", "10.1.2.3", "a.zone.example", "2001:db8::7"} {
		if err := verify(t, s, host); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
	if h, _ := os.Hostname(); CheckSAN(h) == nil {
		if err := verify(t, s, h); err != nil {
			t.Errorf("host name %s: %v", h, err)
		}
	}
	for _, host := range []string{"other.example.com", "10.1.2.4"} {
		if err := verify(t, s, host); err == nil {
			t.Errorf("%s verified, though not named", host)
		}
	}
}

func TestNamesFor(t *testing.T) {
	ifaces := func() ([]net.Addr, error) {
		return []net.Addr{
			&net.IPNet{IP: net.ParseIP("127.0.0.1"), Mask: net.CIDRMask(8, 32)},
			&net.IPNet{IP: net.ParseIP("192.168.7.20"), Mask: net.CIDRMask(24, 32)},
			&net.IPNet{IP: net.ParseIP("fe80::1"), Mask: net.CIDRMask(64, 128)},
		}, nil
	}
	for _, tt := range []struct {
		listen string
		want   []string
	}{
		{":5678", []string{"localhost", "host-1", "127.0.0.1", "192.168.7.20", "::1", "fe80::1", "10.0.0.9"}},
		{"0.0.0.0:5678", []string{"localhost", "host-1", "127.0.0.1", "192.168.7.20", "::1", "fe80::1", "10.0.0.9"}},
		{"[::]:5678", []string{"localhost", "host-1", "127.0.0.1", "192.168.7.20", "::1", "fe80::1", "10.0.0.9"}},
		{"10.0.0.5:5678", []string{"localhost", "host-1", "10.0.0.5", "10.0.0.9", "127.0.0.1", "::1"}},
		{"cp.internal:5678", []string{"localhost", "cp.internal", "host-1", "10.0.0.9", "127.0.0.1", "::1"}},
	} {
		n, err := namesFor(tt.listen, []string{"10.0.0.9"}, "host-1", ifaces)
		if err != nil {
			t.Fatalf("%s: %v", tt.listen, err)
		}
		got, want := n.Strings(), slices.Clone(tt.want)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: names %v, want %v", tt.listen, got, want)
		}
	}
	if _, err := namesFor("nope", nil, "h", ifaces); err == nil {
		t.Error("a listen address without a port was accepted")
	}
	n, err := namesFor(":1", nil, "not a name", ifaces)
	if err != nil || slices.Contains(n.DNS, "not a name") {
		t.Errorf("a host name that is no DNS name: %v %v", n, err)
	}
}

func TestCheckSAN(t *testing.T) {
	for _, s := range []string{"localhost", "cp.example.com", "CP-1.Example.com", "*.example.com", "10.0.0.1", "::1", "2001:db8::1", "a1", "xn--bcher-kva.example"} {
		if err := CheckSAN(s); err != nil {
			t.Errorf("%q refused: %v", s, err)
		}
	}
	for _, s := range []string{"", "cp example", "cp_1.example", "-cp.example", "cp-.example", "a..b", "a.b.", ".a", "*", "*.com",
		"a.*.example", "1.2.3", "300.1.1.1", "fe80::1%eth0", "http://cp", "cp:5678", strings.Repeat("a", 64) + ".example",
		strings.Repeat("abcdefghi.", 26) + "com"} {
		err := CheckSAN(s)
		if err == nil {
			t.Errorf("%q accepted", s)
		} else if !strings.Contains(err.Error(), "neither a DNS name nor an IP address") {
			t.Errorf("%q: unclear error %v", s, err)
		}
	}
	if _, err := Load(context.Background(), store.NewMemory(0), opts("good.example", "bad name")); err == nil || !strings.Contains(err.Error(), `"bad name"`) {
		t.Fatalf("a bad SAN: %v", err)
	}
}

// TestCAPersists: two processes over the same store (a restart, or two
// replicas) serve different leaves from one CA, so a client holding the
// first's ca.pem verifies the second.
func TestCAPersists(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			a, b := be.open(t)
			first, second := load(t, a, opts()), load(t, b, opts("second.example"))
			if string(first.CAPEM()) != string(second.CAPEM()) {
				t.Fatal("the second process made another CA")
			}
			c1, _ := first.Certificate()
			c2, _ := second.Certificate()
			if string(c1.Certificate[0]) == string(c2.Certificate[0]) {
				t.Fatal("both processes serve the same leaf; each should make its own")
			}
			if err := verify(t, second, "second.example"); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(first.CAPEM()), "PRIVATE KEY") {
				t.Fatal("CAPEM carries the private key")
			}
		})
	}
}

func TestRacingStartsAgreeOnOneCA(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			a, b := be.open(t)
			var wg sync.WaitGroup
			pems := make([]string, 8)
			errs := make([]error, 8)
			for i := range pems {
				st := a
				if i%2 == 1 {
					st = b
				}
				wg.Go(func() {
					s, err := Load(context.Background(), st, opts())
					errs[i] = err
					if err == nil {
						pems[i] = string(s.CAPEM())
					}
				})
			}
			wg.Wait()
			for i := range pems {
				if errs[i] != nil {
					t.Fatal(errs[i])
				}
				if pems[i] != pems[0] {
					t.Fatal("racing starts disagree on the CA")
				}
			}
		})
	}
}

// oldKDSPair is what kds/server made before this package: a self-signed
// ServerAuth certificate with IsCA and CertSign.
func oldKDSPair(t *testing.T) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(7),
		Subject:               pkix.Name{CommonName: "ursa global control plane (KDS)"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return append(out, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})...)
}

// TestOldKDSPairSignsTheLeaf: a global upgraded from the self-signed KDS pair
// keeps it as its CA, so the ca.pem its zones hold verifies the new leaf,
// which now names more than the old certificate did.
func TestOldKDSPairSignsTheLeaf(t *testing.T) {
	st := store.NewMemory(0)
	old := oldKDSPair(t)
	if _, err := st.Create(context.Background(), &api.GlobalSecret{Meta: api.Meta{Type: "GlobalSecret", Name: "kds-server-tls"}, Data: old}); err != nil {
		t.Fatal(err)
	}
	o := opts("kds.example.com", "203.0.113.7")
	o.Secret = "kds-server-tls"
	s := load(t, st, o)
	oldCert, _ := pem.Decode(old)
	if got, _ := pem.Decode(s.CAPEM()); got == nil || string(got.Bytes) != string(oldCert.Bytes) {
		t.Fatal("the old pair was not kept as the CA")
	}
	for _, host := range []string{"127.0.0.1", "kds.example.com", "203.0.113.7"} {
		if err := verify(t, s, host); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
}

func TestStoredNonCAIsRefused(t *testing.T) {
	st := store.NewMemory(0)
	data, err := newCA("x")
	if err != nil {
		t.Fatal(err)
	}
	s := load(t, st, Options{Secret: "ca", Listen: ":0"})
	leaf, _ := s.Certificate()
	keyDER, _ := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	notCA := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})...)
	st.Create(context.Background(), &api.GlobalSecret{Meta: api.Meta{Type: "GlobalSecret", Name: "leaf"}, Data: notCA})
	if _, err := Load(context.Background(), st, Options{Secret: "leaf", Listen: ":0"}); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Fatalf("a stored leaf as CA: %v", err)
	}
	st.Create(context.Background(), &api.GlobalSecret{Meta: api.Meta{Type: "GlobalSecret", Name: "garbled"}, Data: data[:len(data)/2]})
	if _, err := Load(context.Background(), st, Options{Secret: "garbled", Listen: ":0"}); err == nil || !strings.Contains(err.Error(), "garbled") {
		t.Fatalf("a garbled stored CA: %v", err)
	}
}

func TestStoreDownIsAnError(t *testing.T) {
	if _, err := Load(context.Background(), downStore{}, opts()); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("store down: %v", err)
	}
}

type downStore struct{}

func (downStore) Get(context.Context, api.Key) (api.Resource, error) {
	return nil, store.ErrUnavailable
}
func (downStore) Create(context.Context, api.Resource) (api.Resource, error) {
	return nil, store.ErrUnavailable
}

// TestFilesGivenAreUsed: a given pair is served as it is, and ca.pem is the
// certificate file's contents; the store is not touched.
func TestFilesGivenAreUsed(t *testing.T) {
	src := load(t, store.NewMemory(0), opts())
	leaf, _ := src.Certificate()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]})
	keyDER, _ := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	os.WriteFile(certFile, certPEM, 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)

	s, err := Load(context.Background(), downStore{}, Options{CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := s.Certificate()
	if string(got.Certificate[0]) != string(leaf.Certificate[0]) || string(s.CAPEM()) != string(certPEM) {
		t.Fatal("the given pair was not served as it is")
	}
	for _, o := range []Options{{CertFile: certFile}, {KeyFile: keyFile}, {CertFile: keyFile, KeyFile: certFile}, {CertFile: filepath.Join(dir, "none"), KeyFile: keyFile}} {
		if _, err := Load(context.Background(), downStore{}, o); err == nil || !strings.Contains(err.Error(), "serving certificate") {
			t.Errorf("%+v: %v", o, err)
		}
	}
}

func TestLeafIsRenewed(t *testing.T) {
	s := load(t, store.NewMemory(0), opts())
	first, _ := s.Certificate()
	s.mu.Lock()
	s.now = func() time.Time { return time.Now().Add(renewAfter + time.Minute) }
	s.mu.Unlock()
	second, _ := s.Certificate()
	if second == first || second.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 {
		t.Fatal("no renewal past renewAfter")
	}
	if again, _ := s.Certificate(); again != second {
		t.Fatal("renewed again at once")
	}
}

// TestHandshake: a TLS 1.3 client on loopback verifies the server with
// ca.pem, as served over HTTP.
func TestHandshake(t *testing.T) {
	s := load(t, store.NewMemory(0), opts())
	api := httptest.NewServer(s.CAHandler())
	defer api.Close()
	resp, err := http.Get(api.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	pool := x509.NewCertPool()
	body, err := io.ReadAll(resp.Body)
	if err != nil || !pool.AppendCertsFromPEM(body) {
		t.Fatalf("ca.pem: %v %q", err, body)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", s.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	other := load(t, store.NewMemory(0), opts())
	wrong := x509.NewCertPool()
	wrong.AppendCertsFromPEM(other.CAPEM())
	if _, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: wrong, ServerName: "127.0.0.1"}); err == nil {
		t.Fatal("another CA verified the server")
	}
}

// TestCombinedFileServesNoKey: a certificate file that also holds the key
// (one PEM file with both, as many tools write) is a valid --xds-tls-cert /
// --kds-tls-cert, and GET /xds/ca.pem (public) serves its certificates
// only, never the key.
func TestCombinedFileServesNoKey(t *testing.T) {
	src := load(t, store.NewMemory(0), opts())
	leaf, _ := src.Certificate()
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]})
	keyDER, _ := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	combined := filepath.Join(t.TempDir(), "tls.pem")
	if err := os.WriteFile(combined, append(append([]byte{}, keyPEM...), certPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Load(context.Background(), downStore{}, Options{CertFile: combined, KeyFile: combined})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	s.CAHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/xds/ca.pem", nil))
	for _, got := range [][]byte{rec.Body.Bytes(), s.CAPEM()} {
		if strings.Contains(string(got), "PRIVATE KEY") {
			t.Fatalf("ca.pem serves the private key:\n%s", got)
		}
		if string(got) != string(certPEM) {
			t.Fatalf("ca.pem = %q, want the certificate alone", got)
		}
	}
}

// TestBadSANIsRefusedBeforeTheCA: a SAN that is no name is an error that
// says so, and no CA is made for a start that cannot serve.
func TestBadSANIsRefusedBeforeTheCA(t *testing.T) {
	st := store.NewMemory(0)
	_, err := Load(context.Background(), st, opts("ok.example", "not a name"))
	if err == nil || !strings.Contains(err.Error(), `"not a name" is neither a DNS name nor an IP address`) {
		t.Fatalf("a bad SAN: %v", err)
	}
	if _, err := st.Get(context.Background(), api.Key{Type: "GlobalSecret", Name: "xds-server-tls"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a CA was stored for a refused start: %v", err)
	}
}

// TestExpiredCAKeepsTheLastLeaf: past the CA's expiry no leaf can be
// issued; the one made before is served still, and issuing says why.
func TestExpiredCAKeepsTheLastLeaf(t *testing.T) {
	s := load(t, store.NewMemory(0), opts())
	first, _ := s.Certificate()
	late := s.ca.NotAfter.Add(time.Hour)
	if _, err := s.issue(late); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("issue past the CA's expiry: %v", err)
	}
	s.mu.Lock()
	s.now = func() time.Time { return late }
	s.mu.Unlock()
	if got, err := s.Certificate(); err != nil || got != first {
		t.Fatalf("past the CA's expiry: %v, %v; want the last leaf", got, err)
	}
}
