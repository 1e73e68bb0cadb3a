package servingcert

import (
	"crypto/x509"
	"net/netip"
	"strings"
	"testing"
)

// FuzzCheckSAN: CheckSAN never panics, and what it accepts a certificate can
// name and a client verify: an IP address as such, a DNS name (or a host
// under a wildcard) through x509's own host name check.
func FuzzCheckSAN(f *testing.F) {
	for _, s := range []string{"localhost", "cp.example.com", "*.example.com", "10.0.0.1", "::1", "fe80::1%eth0", "",
		"a..b", "-a", "1.2.3", "::ffff:10.0.0.1", "A.B.C", "*", "*.*.com", "x_y.z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if CheckSAN(s) != nil {
			return
		}
		a, err := parseSAN(s)
		if err != nil {
			t.Fatalf("%q: CheckSAN accepted what parseSAN refuses: %v", s, err)
		}
		cert := &x509.Certificate{}
		host := s
		if a.IsValid() {
			cert.IPAddresses = Names{IP: []netip.Addr{a}}.IPs()
			host = a.String()
		} else {
			cert.DNSNames = []string{s}
			if rest, ok := strings.CutPrefix(s, "*."); ok {
				host = "x." + rest
			}
		}
		if err := cert.VerifyHostname(host); err != nil {
			t.Fatalf("%q accepted but a certificate naming it does not verify %q: %v", s, host, err)
		}
	})
}
