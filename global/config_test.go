package global

import (
	"strings"
	"testing"
)

func TestKDSTLSSANConfig(t *testing.T) {
	c := DefaultConfig()
	c.KDS.TLSSAN = []string{"kds.example.com", "203.0.113.7"}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	c.KDS.TLSSAN = append(c.KDS.TLSSAN, "kds example")
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), `kds.tlsSan: "kds example" is neither a DNS name nor an IP address`) {
		t.Fatalf("a bad SAN: %v", err)
	}
	c.KDS.TLSSAN = []string{"kds.example.com"}
	c.KDS.TLSCert, c.KDS.TLSKey = "c.pem", "k.pem"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "served as it is") {
		t.Fatalf("SANs with a given pair: %v", err)
	}
}
