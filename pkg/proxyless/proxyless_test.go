package proxyless

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/mtls"
)

func TestBootstrap(t *testing.T) {
	dir := t.TempDir()
	b, err := Bootstrap(BootstrapOptions{CPAddress: "127.0.0.1:5678", CACertFile: "/etc/ursa/xds-ca.pem", NodeID: "default.web-1",
		Metadata: map[string]string{api.MetadataProxyless: "true"}, CertDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		XDSServers []struct {
			ServerURI    string `json:"server_uri"`
			ChannelCreds []struct {
				Type   string            `json:"type"`
				Config map[string]string `json:"config"`
			} `json:"channel_creds"`
			ServerFeatures []string `json:"server_features"`
		} `json:"xds_servers"`
		Node struct {
			ID       string            `json:"id"`
			Metadata map[string]string `json:"metadata"`
		} `json:"node"`
		Providers map[string]struct {
			Plugin string            `json:"plugin_name"`
			Config map[string]string `json:"config"`
		} `json:"certificate_providers"`
		Template string `json:"server_listener_resource_name_template"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	s := got.XDSServers[0]
	if s.ServerURI != "127.0.0.1:5678" || s.ChannelCreds[0].Type != "tls" || s.ChannelCreds[0].Config["ca_certificate_file"] != "/etc/ursa/xds-ca.pem" ||
		strings.Join(s.ServerFeatures, ",") != "xds_v3,ignore_resource_deletion" {
		t.Errorf("xds server: %+v", s)
	}
	if got.Node.ID != "default.web-1" || got.Node.Metadata[api.MetadataProxyless] != "true" {
		t.Errorf("node: %+v", got.Node)
	}
	p := got.Providers[api.ProxylessCertProvider]
	if p.Plugin != "file_watcher" || p.Config["certificate_file"] != filepath.Join(dir, CertFile) ||
		p.Config["private_key_file"] != filepath.Join(dir, KeyFile) || p.Config["ca_certificate_file"] != filepath.Join(dir, CAFile) {
		t.Errorf("certificate provider: %+v", p)
	}
	if got.Template != "grpc/server?xds.resource.listening_address=%s" {
		t.Errorf("template %q", got.Template)
	}
	b, err = Bootstrap(BootstrapOptions{CPAddress: "127.0.0.1:5678", CACertFile: "/etc/ursa/xds-ca.pem", NodeID: "default.web-1",
		CertDir: dir, JWTTokenFile: "/etc/ursa/web.token"})
	if err != nil || !strings.Contains(string(b), `"call_creds": [`) || !strings.Contains(string(b), `"jwt_token_file": "/etc/ursa/web.token"`) {
		t.Errorf("with a JWT token file: %v\n%s", err, b)
	}
	if _, err := Bootstrap(BootstrapOptions{CPAddress: "127.0.0.1:5678", NodeID: "default.web-1", CertDir: dir}); err == nil ||
		!strings.Contains(err.Error(), "CA file") {
		t.Errorf("TLS without a CA file: %v", err)
	}
}

// TestKeyKept: the agent's key is made once and read back, so that a
// restarted agent keeps certifying the key the application holds.
func TestKeyKept(t *testing.T) {
	dir := t.TempDir()
	k1, err := LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !k1.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(k2.Public()) {
		t.Fatal("a second start made another key")
	}
	if fi, _ := os.Stat(filepath.Join(dir, KeyFile)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", fi.Mode())
	}
	os.WriteFile(filepath.Join(dir, KeyFile), []byte("garbage"), 0o600)
	if _, err := LoadOrCreateKey(dir); err == nil || !strings.Contains(err.Error(), "remove it") {
		t.Fatalf("a garbled key: %v", err)
	}
}

// issued is an identity for key from a fresh mesh CA.
func issued(t testing.TB, key crypto.Signer) (chain, root []byte) {
	t.Helper()
	now := time.Now()
	ca, err := mtls.NewCA("default", now)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := mtls.SignerFromMeshCA(ca)
	if err != nil {
		t.Fatal(err)
	}
	id, err := signer.Issue(mtls.Subject{Mesh: "default", Services: []string{"web"}}, key.Public(), time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	return id.CertPEM, []byte(ca.CertPEM)
}

func secrets(chain, key, root []byte) []*tlsv3.Secret {
	tc := &tlsv3.TlsCertificate{CertificateChain: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: chain}}}
	if key != nil {
		tc.PrivateKey = &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: key}}
	}
	return []*tlsv3.Secret{
		{Name: "identity", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: tc}},
		{Name: "mesh-ca", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: root}}}}},
	}
}

// TestIdentityWritten: an identity for the agent's key is written whole; one
// for another key, or one the mesh's root does not verify, is refused and
// leaves the files as they were.
func TestIdentityWritten(t *testing.T) {
	dir := t.TempDir()
	key, err := LoadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	chain, root := issued(t, key)
	if _, ok, err := identityOf(secrets(chain, nil, root)[:1], key, time.Now()); ok || err != nil {
		t.Fatalf("without mesh-ca: ok %v, %v; want to wait", ok, err)
	}
	id, ok, err := identityOf(secrets(chain, nil, root), key, time.Now())
	if err != nil || !ok {
		t.Fatalf("identity: %v %v", ok, err)
	}
	if id.uri != "spiffe://default/web" {
		t.Errorf("uri %q", id.uri)
	}
	if err := id.write(dir); err != nil {
		t.Fatal(err)
	}
	for f, want := range map[string][]byte{CertFile: chain, CAFile: root} {
		if b, _ := os.ReadFile(filepath.Join(dir, f)); string(b) != string(want) {
			t.Errorf("%s: %q", f, b)
		}
	}

	other, _ := LoadOrCreateKey(t.TempDir())
	otherChain, _ := issued(t, other)
	if _, _, err := identityOf(secrets(otherChain, nil, root), key, time.Now()); err == nil || !strings.Contains(err.Error(), "another key") {
		t.Errorf("another key's certificate: %v", err)
	}
	if _, _, err := identityOf(secrets(chain, nil, []byte(strings.Repeat("x", 10))), key, time.Now()); err == nil {
		t.Error("a garbled root was taken")
	}
	_, otherRoot := issued(t, key)
	if _, _, err := identityOf(secrets(chain, nil, otherRoot), key, time.Now()); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Errorf("another mesh's root: %v", err)
	}
	// A certificate that comes with its key (the CP made it) is written
	// with it.
	der, _ := x509.MarshalPKCS8PrivateKey(other)
	otherKey := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	otherChain, otherRoot = issued(t, other)
	id, ok, err = identityOf(secrets(otherChain, otherKey, otherRoot), key, time.Now())
	if err != nil || !ok || string(id.key) != string(otherKey) {
		t.Fatalf("identity with its key: %v %v", ok, err)
	}
}

// FuzzIdentity: whatever the CP sends as the identity and the root, the
// agent returns an identity or an error, and never panics.
func FuzzIdentity(f *testing.F) {
	key, err := LoadOrCreateKey(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	chain, root := issued(f, key)
	f.Add(chain, []byte(nil), root)
	f.Add(chain, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), root)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), []byte(nil), []byte(""))
	f.Add(append(chain, root...), []byte(nil), append(root, "junk"...))
	f.Fuzz(func(t *testing.T, chain, k, root []byte) {
		if len(k) == 0 {
			k = nil
		}
		id, ok, err := identityOf(secrets(chain, k, root), key, time.Now())
		if ok && (err != nil || len(id.chain) == 0 || len(id.ca) == 0) {
			t.Fatalf("ok with %v, %d bytes of chain, %d of root", err, len(id.chain), len(id.ca))
		}
	})
}
