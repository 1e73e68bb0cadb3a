package dns

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
)

func apply(current map[string]*api.VirtualIPs, updates []*api.VirtualIPs) {
	for _, u := range updates {
		current[u.Mesh] = u
	}
}

func ipOf(t *testing.T, current map[string]*api.VirtualIPs, mesh, svc string) string {
	t.Helper()
	e, ok := current[mesh].Entries[svc]
	if !ok {
		t.Fatalf("%s/%s has no VIP", mesh, svc)
	}
	return e.IP
}

func TestReconcile(t *testing.T) {
	a := Allocator{CIDR: netip.MustParsePrefix("240.0.0.0/29"), HoldBack: 10 * time.Minute}
	now := time.Unix(1_000_000, 0)
	cur := map[string]*api.VirtualIPs{}
	want := map[string]map[string]bool{"default": {"billing": true, "web": true}, "other": {"billing": true}}
	up, err := a.Reconcile(cur, want, now)
	if err != nil || len(up) != 2 {
		t.Fatalf("first pass: %d updates, %v", len(up), err)
	}
	apply(cur, up)
	got := []string{ipOf(t, cur, "default", "billing"), ipOf(t, cur, "default", "web"), ipOf(t, cur, "other", "billing")}
	if strings.Join(got, " ") != "240.0.0.1 240.0.0.2 240.0.0.3" {
		t.Fatalf("VIPs %v: want the lowest free, unique across meshes", got)
	}
	// Nothing changed: nothing to write.
	if up, _ := a.Reconcile(cur, want, now); len(up) != 0 {
		t.Fatalf("a stable set produced %d updates", len(up))
	}
	// web goes away: released, still reserved; a new service does not get
	// its VIP within the hold-back.
	want = map[string]map[string]bool{"default": {"billing": true, "payments": true}, "other": {"billing": true}}
	up, _ = a.Reconcile(cur, want, now.Add(time.Minute))
	apply(cur, up)
	if cur["default"].Entries["web"].ReleasedAt.IsZero() {
		t.Fatal("web was not released")
	}
	if ip := ipOf(t, cur, "default", "payments"); ip == "240.0.0.2" {
		t.Fatalf("payments got web's VIP %s within the hold-back", ip)
	}
	// web comes back within the hold-back: same VIP.
	want["default"]["web"] = true
	up, _ = a.Reconcile(cur, want, now.Add(2*time.Minute))
	apply(cur, up)
	if e := cur["default"].Entries["web"]; e.IP != "240.0.0.2" || !e.ReleasedAt.IsZero() {
		t.Fatalf("web came back as %+v, want its old VIP", e)
	}
	// Released again and past the hold-back: forgotten, and its VIP is
	// free for the next service.
	delete(want["default"], "web")
	apply(cur, mustReconcile(t, a, cur, want, now.Add(3*time.Minute)))
	apply(cur, mustReconcile(t, a, cur, want, now.Add(14*time.Minute)))
	if _, ok := cur["default"].Entries["web"]; ok {
		t.Fatal("web still reserved after the hold-back")
	}
	want["default"]["search"] = true
	apply(cur, mustReconcile(t, a, cur, want, now.Add(15*time.Minute)))
	if ip := ipOf(t, cur, "default", "search"); ip != "240.0.0.2" {
		t.Fatalf("search got %s, want the freed 240.0.0.2", ip)
	}
	// The /29 holds 6 usable addresses (network and broadcast excluded).
	for _, s := range []string{"a", "b", "c"} {
		want["other"][s] = true
	}
	up, err = a.Reconcile(cur, want, now.Add(16*time.Minute))
	if err == nil || !strings.Contains(err.Error(), "full") {
		t.Fatalf("over-full range: %v", err)
	}
	apply(cur, up)
	seen := map[string]bool{}
	for _, v := range cur {
		for _, e := range v.Entries {
			if seen[e.IP] || e.IP == "240.0.0.7" || e.IP == "240.0.0.0" {
				t.Fatalf("VIP %s handed out twice or outside the usable range", e.IP)
			}
			seen[e.IP] = true
		}
	}
}

func TestReconcileIPv6(t *testing.T) {
	a := Allocator{CIDR: netip.MustParsePrefix("fd00:abcd::/64"), HoldBack: time.Minute}
	up, err := a.Reconcile(map[string]*api.VirtualIPs{}, map[string]map[string]bool{"default": {"billing": true}}, time.Now())
	if err != nil || up[0].Entries["billing"].IP != "fd00:abcd::1" {
		t.Fatalf("IPv6: %+v %v", up, err)
	}
}

// TestReconcileNewRange: a zone restarted with another --vip-cidr gives
// the services whose stored VIPs are outside it new ones inside it, and
// forgets released ones outside it; those inside stay.
func TestReconcileNewRange(t *testing.T) {
	a := Allocator{CIDR: netip.MustParsePrefix("127.240.0.0/16"), HoldBack: time.Minute}
	cur := map[string]*api.VirtualIPs{"default": {Meta: api.Meta{Type: "VirtualIPs", Mesh: "default", Name: vipsName}, Entries: map[string]api.VirtualIP{
		"billing": {IP: "240.0.0.1"}, "web": {IP: "127.240.0.9"}, "gone": {IP: "240.0.0.2", ReleasedAt: time.Now()}}}}
	up := mustReconcile(t, a, cur, map[string]map[string]bool{"default": {"billing": true, "web": true}}, time.Now())
	if len(up) != 1 {
		t.Fatalf("updates %+v", up)
	}
	got := up[0].Entries
	if ip := netip.MustParseAddr(got["billing"].IP); !a.CIDR.Contains(ip) || got["billing"].IP == "127.240.0.9" {
		t.Errorf("billing's VIP %s: want a free one in %s", ip, a.CIDR)
	}
	if got["web"].IP != "127.240.0.9" {
		t.Errorf("web's VIP, in the range, changed to %s", got["web"].IP)
	}
	if _, ok := got["gone"]; ok {
		t.Errorf("a released VIP outside the range is kept: %+v", got["gone"])
	}
}

func mustReconcile(t *testing.T, a Allocator, cur map[string]*api.VirtualIPs, want map[string]map[string]bool, now time.Time) []*api.VirtualIPs {
	t.Helper()
	up, err := a.Reconcile(cur, want, now)
	if err != nil {
		t.Fatal(err)
	}
	return up
}
