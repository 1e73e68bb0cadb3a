package kube

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testCA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

func testKubeconfig(cluster, user string) string {
	return `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
` + cluster + `
users:
- name: u
  user:
` + user + `
contexts:
- name: ctx
  context:
    cluster: c
    user: u
    namespace: ursa-system
current-context: ctx
`
}

func TestParseKubeconfig(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), []byte(testCA), 0o600); err != nil {
		t.Fatal(err)
	}
	caData := base64.StdEncoding.EncodeToString([]byte(testCA))

	cfg, err := ParseKubeconfig([]byte(testKubeconfig("    server: https://127.0.0.1:6443\n    certificate-authority-data: "+caData, "    token: abc")), dir)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Server != "https://127.0.0.1:6443" || string(cfg.CAPEM) != testCA || cfg.Token != "abc" || cfg.Namespace != "ursa-system" {
		t.Fatalf("parsed %+v", cfg)
	}
	cfg, err = ParseKubeconfig([]byte(testKubeconfig("    server: https://k:6443\n    certificate-authority: ca.crt", "    tokenFile: tok")), dir)
	if err != nil {
		t.Fatal(err)
	}
	if string(cfg.CAPEM) != testCA || cfg.TokenFile != filepath.Join(dir, "tok") {
		t.Fatalf("relative files not resolved against the kubeconfig's folder: %+v", cfg)
	}

	bad := []struct{ name, cfg, want string }{
		{"not yaml", "{", "parse kubeconfig"},
		{"no current context", "clusters: []", "no current-context"},
		{"unknown context", "current-context: x", `no context "x"`},
		{"plain http", testKubeconfig("    server: http://k:8080\n    certificate-authority-data: "+caData, "    token: a"), "must be https"},
		{"insecure", testKubeconfig("    server: https://k\n    insecure-skip-tls-verify: true", "    token: a"), "insecure-skip-tls-verify"},
		{"no CA", testKubeconfig("    server: https://k", "    token: a"), "no certificate authority"},
		{"missing CA file", testKubeconfig("    server: https://k\n    certificate-authority: nope.crt", "    token: a"), "nope.crt"},
		{"bad base64", testKubeconfig("    server: https://k\n    certificate-authority-data: '%%%'", "    token: a"), "not base64"},
		{"no credentials", testKubeconfig("    server: https://k\n    certificate-authority-data: "+caData, "    {}"), "no credentials"},
		{"exec plugin", testKubeconfig("    server: https://k\n    certificate-authority-data: "+caData, "    exec: {command: aws}"), "exec"},
		{"cert without key", testKubeconfig("    server: https://k\n    certificate-authority-data: "+caData, "    client-certificate-data: "+caData), "without its key"},
		{"wrong types", testKubeconfig("    server: [1]", "    token: a"), "parse kubeconfig"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseKubeconfig([]byte(tt.cfg), dir)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestInClusterOutsideACluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := InCluster(); err == nil || !strings.Contains(err.Error(), "not in a cluster") {
		t.Fatalf("InCluster outside a pod: %v", err)
	}
}

func TestNewRefusesAnUnusableCA(t *testing.T) {
	_, err := New(&Config{Server: "https://k", CAPEM: []byte("not pem"), Token: "a"})
	if err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("New with a garbage CA: %v", err)
	}
}

func FuzzParseKubeconfig(f *testing.F) {
	caData := base64.StdEncoding.EncodeToString([]byte(testCA))
	f.Add(testKubeconfig("    server: https://127.0.0.1:6443\n    certificate-authority-data: "+caData, "    token: abc"))
	f.Add(testKubeconfig("    server: https://k\n    insecure-skip-tls-verify: true", "    exec: {command: x}"))
	f.Add("current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\nclusters: [{name: c}]\nusers: [{name: u}]")
	f.Fuzz(func(t *testing.T, s string) {
		cfg, err := ParseKubeconfig([]byte(s), "")
		if err == nil && cfg.Validate() != nil {
			t.Fatalf("accepted an invalid config: %+v", cfg)
		}
	})
}
