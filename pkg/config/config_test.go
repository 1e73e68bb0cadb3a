package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

type testConfig struct {
	Store string `json:"store" usage:"where"`
	API   struct {
		Addr      string `json:"addr"`
		BodyLimit int64  `json:"bodyLimit"`
	} `json:"api"`
	KDS struct {
		TLSCert string `json:"tlsCert"`
	} `json:"kds"`
	Names   []string `json:"names"`
	Grace   Duration `json:"shutdownGrace"`
	Verbose bool     `json:"verbose"`
}

func defaults() *testConfig {
	c := &testConfig{Store: "memory", Grace: Duration{10 * time.Second}}
	c.API.Addr = ":5681"
	c.API.BodyLimit = 1024
	return c
}

func TestPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(file, []byte("store: postgres://file\napi: {addr: ':1', bodyLimit: 7}\nkds: {tlsCert: /f}\nshutdownGrace: 3s\n"), 0o600)
	t.Setenv("URSA_API_ADDR", ":2")
	t.Setenv("URSA_KDS_TLS_CERT", "/env")
	cfg := defaults()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	Bind(fs, cfg)
	if err := fs.Parse([]string{"--kds-tls-cert=/flag", "--verbose"}); err != nil {
		t.Fatal(err)
	}
	if err := Load(fs, cfg, file); err != nil {
		t.Fatal(err)
	}
	if cfg.Store != "postgres://file" || cfg.API.Addr != ":2" || cfg.API.BodyLimit != 7 || cfg.KDS.TLSCert != "/flag" ||
		cfg.Grace.Duration != 3*time.Second || !cfg.Verbose {
		t.Fatalf("got %+v", cfg)
	}
}

func TestDefaultsAndErrors(t *testing.T) {
	cfg := defaults()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	Bind(fs, cfg)
	if err := Load(fs, cfg, ""); err != nil || cfg.API.Addr != ":5681" || cfg.Grace.Duration != 10*time.Second {
		t.Fatalf("defaults: %+v %v", cfg, err)
	}
	if f := fs.Lookup("api-body-limit"); f == nil || !strings.Contains(f.Usage, "URSA_API_BODY_LIMIT") {
		t.Fatalf("flag api-body-limit missing or without its env name")
	}
	file := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(file, []byte("api: {adress: x}\n"), 0o600)
	if err := Load(fs, defaults(), file); err == nil || !strings.Contains(err.Error(), `unknown field "adress"`) {
		t.Fatalf("unknown key: %v", err)
	}
	t.Setenv("URSA_SHUTDOWN_GRACE", "soon")
	if err := Load(fs, defaults(), ""); err == nil || !strings.Contains(err.Error(), "URSA_SHUTDOWN_GRACE") {
		t.Fatalf("bad env: %v", err)
	}
}

// TestLists: a list is one comma-separated value or a repeated flag; the
// flags replace what the file and the environment said.
func TestLists(t *testing.T) {
	for _, tt := range []struct {
		env  string
		args []string
		want []string
	}{
		{"", nil, nil},
		{"a, b,,c", nil, []string{"a", "b", "c"}},
		{"a", []string{"--names", "x", "--names", "y,z", "--names", " "}, []string{"x", "y", "z"}},
	} {
		if tt.env != "" {
			t.Setenv("URSA_NAMES", tt.env)
		}
		cfg := defaults()
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		Bind(fs, cfg)
		if err := fs.Parse(tt.args); err != nil {
			t.Fatal(err)
		}
		if err := Load(fs, cfg, ""); err != nil {
			t.Fatal(err)
		}
		if strings.Join(cfg.Names, "|") != strings.Join(tt.want, "|") {
			t.Errorf("env %q args %q: %q, want %q", tt.env, tt.args, cfg.Names, tt.want)
		}
	}
}

// TestEmbedded: an embedded struct's fields are its container's, as flags,
// variables and file keys (as encoding/json reads them), so that two
// commands share what they have in common and nothing else.
func TestEmbedded(t *testing.T) {
	type common struct {
		Addr string `json:"addr" usage:"where"`
	}
	type cmd struct {
		common
		Name string `json:"name"`
	}
	file := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(file, []byte("addr: ':1'\nname: file\n"), 0o600)
	t.Setenv("URSA_NAME", "env")
	cfg := &cmd{common: common{Addr: ":0"}}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	Bind(fs, cfg)
	if f := fs.Lookup("addr"); f == nil || f.DefValue != ":0" || !strings.Contains(f.Usage, "URSA_ADDR") {
		t.Fatalf("the embedded field's flag: %+v", f)
	}
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := Load(fs, cfg, file); err != nil {
		t.Fatal(err)
	}
	if cfg.Addr != ":1" || cfg.Name != "env" {
		t.Fatalf("loaded %+v, want addr from the file and name from the environment", cfg)
	}
}
