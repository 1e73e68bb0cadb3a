package tproxy

import (
	"context"
	"net"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// dialAs connects from inside ns with sockets created under fsuid uid (what
// -m owner --uid-owner matches), from src when not "".
func dialAs(t *testing.T, ns string, uid int, src, addr string) {
	t.Helper()
	d := &net.Dialer{}
	if src != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
	}
	var c net.Conn
	mustIn(t, ns, func() (err error) {
		unix.Setfsuid(uid) // this thread only (in locks it)
		defer unix.Setfsuid(0)
		c, err = d.Dial("tcp", addr)
		return err
	})
	t.Cleanup(func() { c.Close() })
}

// whichGot says which of the listeners took the next connection.
func whichGot(t *testing.T, got map[string]chan net.Conn) string {
	t.Helper()
	for i := 0; i < 50; i++ {
		for name, ch := range got {
			select {
			case c := <-ch:
				c.Close()
				return name
			default:
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("no listener took the connection")
	return ""
}

// TestExcludedUIDsAreNeverRedirected: an excluded user that is not a
// sidecar's that cannot mark (a unit's ursa user, shared by the zone CP
// and the ingress, or one an operator lets around the mesh) reaches this
// host's address at an inbound port as it is, not the sidecar's inbound
// listener (mTLS only); the sidecar's own user reaches the inbound listener.
func TestExcludedUIDsAreNeverRedirected(t *testing.T) {
	ns := newNS(t)
	c := Config{OutboundPort: 15001, InboundPort: 15006, InboundPorts: []int{8080}, ExcludeUIDs: []int{5678, 1000}, SidecarUIDs: []int{5678}}
	mustIn(t, ns, func() error { return Install(context.Background(), zap.NewNop(), c) })
	got := map[string]chan net.Conn{
		"app (8080)":                listen(t, ns, "0.0.0.0:8080"),
		"inbound listener (15006)":  listen(t, ns, "0.0.0.0:15006"),
		"outbound listener (15001)": listen(t, ns, "0.0.0.0:15001"),
	}
	dialAs(t, ns, 1000, "", "240.0.0.9:8080")
	if w := whichGot(t, got); w != "app (8080)" {
		t.Errorf("excluded uid 1000 to this host's 240.0.0.9:8080 reached the %s; an excluded user is never redirected", w)
	}
	dialAs(t, ns, 5678, "", "240.0.0.9:8080")
	if w := whichGot(t, got); w != "inbound listener (15006)" {
		t.Errorf("the sidecar's user to this host's 240.0.0.9:8080 reached the %s, not its inbound listener", w)
	}
}

// TestProbeSourceIsTheSidecarsOnly: 127.0.0.6 lets the sidecar's probes
// reach the app at this host's address; any other user bound to it goes
// where the app's connections go (the outbound listener), not around the
// inbound listener's mTLS and TrafficPermissions.
func TestProbeSourceIsTheSidecarsOnly(t *testing.T) {
	ns := newNS(t)
	c := Config{OutboundPort: 15001, InboundPort: 15006, InboundPorts: []int{8080}, ExcludeUIDs: []int{5678}, SidecarUIDs: []int{5678}}
	mustIn(t, ns, func() error { return Install(context.Background(), zap.NewNop(), c) })
	got := map[string]chan net.Conn{
		"app (8080)":                listen(t, ns, "240.0.0.9:8080"),
		"inbound listener (15006)":  listen(t, ns, "0.0.0.0:15006"),
		"outbound listener (15001)": listen(t, ns, "0.0.0.0:15001"),
	}
	// The sidecar's probe: through.
	dialAs(t, ns, 5678, "127.0.0.6", "240.0.0.9:8080")
	if w := whichGot(t, got); w != "app (8080)" {
		t.Fatalf("the sidecar's probe reached the %s", w)
	}
	// Any other user from 127.0.0.6: around the sidecar.
	dialAs(t, ns, 1000, "127.0.0.6", "240.0.0.9:8080")
	if w := whichGot(t, got); w == "app (8080)" {
		t.Errorf("uid 1000 bound to 127.0.0.6 reached the app at 240.0.0.9:8080 directly, around the sidecar")
	}
}
