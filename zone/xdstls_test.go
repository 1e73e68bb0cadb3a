package zone

import (
	"strings"
	"testing"
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
