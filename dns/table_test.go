package dns

import (
	"net/netip"
	"testing"
)

// Services whose names differ only in case answer the first by name, in
// every table, not whichever the VIPs' map order gave last.
func TestTableNamesSpelledAlike(t *testing.T) {
	view := viewOf(t, vips("default", map[string]string{"Web": "240.0.0.1", "web": "240.0.0.2"}))
	for range 20 {
		tb := NewTable(view)
		for _, name := range []string{"web", "web.default"} {
			if ip, _ := tb.Lookup(name); ip != netip.MustParseAddr("240.0.0.1") {
				t.Fatalf("%s: %v, want Web's 240.0.0.1", name, ip)
			}
		}
	}
}
