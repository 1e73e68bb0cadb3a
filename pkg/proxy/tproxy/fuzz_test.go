package tproxy

import (
	"strings"
	"testing"
)

func FuzzParsePorts(f *testing.F) {
	for _, s := range []string{"", "22", "22,8080", " 1 , 65535", "0", "22,,", "-5", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ports, err := ParsePorts(s)
		if err != nil {
			return
		}
		for _, p := range ports {
			if p < 1 || p > 65535 {
				t.Fatalf("ParsePorts(%q) gave port %d", s, p)
			}
		}
	})
}

// FuzzRemoval feeds iptables-save output, which another program writes: only
// lines naming our chains may come back, and only as deletions.
func FuzzRemoval(f *testing.F) {
	f.Add("*nat\n:URSA_OUTPUT - [0:0]\n-A OUTPUT -j URSA_OUTPUT\n-A URSA_OUTPUT -j RETURN\nCOMMIT\n")
	f.Add("-A\n-A X -j\n:URSA_\n:\n-A OUTPUT -p tcp -j DOCKER\n")
	f.Fuzz(func(t *testing.T, saved string) {
		for _, l := range removal([]byte(saved)) {
			switch {
			case strings.HasPrefix(l, "-D ") && jumpsToOurs(strings.Fields(l)):
			case strings.HasPrefix(l, ":"+ChainPrefix) && strings.HasSuffix(l, " - [0:0]"):
			case strings.HasPrefix(l, "-X "+ChainPrefix):
			default:
				t.Fatalf("removal(%q) gave %q", saved, l)
			}
		}
	})
}

func jumpsToOurs(f []string) bool {
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" && strings.HasPrefix(f[i+1], ChainPrefix) {
			return true
		}
	}
	return false
}
