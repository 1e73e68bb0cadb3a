package zone

import (
	"strings"
	"testing"
	"time"
)

func TestXDSTLSConfig(t *testing.T) {
	for _, tt := range []struct {
		name string
		set  func(*Config)
		want string // "" when valid
	}{
		{"defaults", func(*Config) {}, ""},
		{"SANs", func(c *Config) { c.XDS.TLSSAN = []string{"cp.example.com", "10.0.0.7", "*.zone.example"} }, ""},
		{"files", func(c *Config) { c.XDS.TLSCert, c.XDS.TLSKey = "c.pem", "k.pem" }, ""},
		{"insecure", func(c *Config) { c.XDS.Insecure = true }, ""},
		{"bad SAN", func(c *Config) { c.XDS.TLSSAN = []string{"ok.example", "not a name"} }, `xds.tlsSan: "not a name" is neither a DNS name nor an IP address`},
		{"cert without key", func(c *Config) { c.XDS.TLSCert = "c.pem" }, "xds.tlsCert and xds.tlsKey: give both or neither"},
		{"SANs with files", func(c *Config) {
			c.XDS.TLSCert, c.XDS.TLSKey, c.XDS.TLSSAN = "c.pem", "k.pem", []string{"a.example"}
		}, "a given xds.tlsCert is served as it is"},
		{"insecure with files", func(c *Config) { c.XDS.Insecure, c.XDS.TLSCert, c.XDS.TLSKey = true, "c.pem", "k.pem" }, "xds.insecure: serves plaintext"},
	} {
		c := DefaultConfig()
		c.Zone = "zone-1"
		tt.set(&c)
		err := c.Validate()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: %v, want an error saying %q", tt.name, err, tt.want)
		}
	}
}

// TestCAPublishDelayConfig: the test-only CA publishing delay is a
// standalone zone's (it makes its meshes' CAs); a federated zone, whose
// CAs its global makes, refuses it rather than ignore it.
func TestCAPublishDelayConfig(t *testing.T) {
	c := DefaultConfig()
	c.Zone = "zone-1"
	c.MTLS.CAPublishDelay.Duration = 2 * time.Second
	if err := c.Validate(); err != nil {
		t.Errorf("a standalone zone's delay: %v", err)
	}
	c.Global.KDS.Address = "grpcs://127.0.0.1:5685"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "mtls.caPublishDelay: a federated zone's CAs are made by its global") {
		t.Errorf("a federated zone's delay: %v, want it refused", err)
	}
	c.Global.KDS.Address, c.MTLS.CAPublishDelay.Duration = "", -time.Second
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "mtls.caPublishDelay: must not be negative") {
		t.Errorf("a negative delay: %v, want it refused", err)
	}
}
