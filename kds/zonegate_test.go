package kds

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// TestSendEnabledZonesOnly: the global's cache offers the ingresses of
// registered, enabled zones only, and follows the Zones: a disabled zone's
// ingress leaves the snapshot, and comes back when it is enabled again;
// a deleted zone's leaves too.
func TestSendEnabledZonesOnly(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := zaptest.NewLogger(t)
	st := store.NewMemory(0)
	ingress := func(zone string) *api.ZoneIngress {
		return &api.ZoneIngress{Meta: api.Meta{Type: "ZoneIngress", Name: zone + ".ingress",
			Labels: map[string]string{api.LabelOrigin: api.OriginZone, api.LabelZone: zone}}, Zone: zone,
			Networking: api.ZoneIngressNetworking{Address: "10.0.0.9", Port: 10001}}
	}
	off := false
	for _, r := range []api.Resource{
		&api.Zone{Meta: api.Meta{Type: "Zone", Name: "zone-a"}},
		&api.Zone{Meta: api.Meta{Type: "Zone", Name: "zone-b"}, Enabled: &off},
		ingress("zone-a"), ingress("zone-b"), ingress("zone-c"), // zone-c: no Zone
	} {
		if _, err := st.Create(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	d, _ := api.Lookup("ZoneIngress")
	mirror := store.NewMirror(st, []string{"Zone", "ZoneIngress"}, log)
	go mirror.Start(ctx)
	cache := NewCacheOf(mirror, []api.Descriptor{d}, nil, log)
	cache.SendEnabledZonesOnly()
	go cache.Start(ctx)
	offered := func(want ...string) {
		t.Helper()
		testutil.Eventually(t, 10*time.Second, fmt.Sprintf("the ingresses of %v", want), func() error {
			snap, _ := cache.Current()
			var got []string
			if set := snap.Types[TypeURL("ZoneIngress")]; set != nil {
				for name := range set.Entries {
					got = append(got, name)
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				return fmt.Errorf("offered %v", got)
			}
			return nil
		})
	}
	offered("zone-a.ingress")
	zoneB, err := st.Get(ctx, api.Key{Type: "Zone", Name: "zone-b"})
	if err != nil {
		t.Fatal(err)
	}
	on := true
	zoneB.(*api.Zone).Enabled = &on
	if _, err := st.Update(ctx, zoneB); err != nil {
		t.Fatal(err)
	}
	offered("zone-a.ingress", "zone-b.ingress")
	if err := st.Delete(ctx, api.Key{Type: "Zone", Name: "zone-a"}, 0); err != nil {
		t.Fatal(err)
	}
	offered("zone-b.ingress")
}
