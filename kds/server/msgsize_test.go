package server_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ursamesh/ursa/kds/server"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// TestMessageSizesAgree: a global and a zone set to different message
// limits (1 MiB and 4 MiB, each way round) still sync megabytes each way: each
// side splits what it sends to fit the smaller limit, which the streams'
// metadata tell, instead of sending what its peer refuses, again and again.
func TestMessageSizesAgree(t *testing.T) {
	for _, tc := range []struct {
		name         string
		global, zone int
	}{{"global smaller", 1 << 20, 4 << 20}, {"zone smaller", 4 << 20, 1 << 20}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			gs := store.NewMemory(0)
			g := startGlobalWith(t, gs, server.Deps{AckTimeout: 5 * time.Second, Verifier: fakeTokens{}, MaxMessageSize: tc.global})
			mesh := &api.Mesh{Meta: api.Meta{Type: "Mesh", Name: "default"}}
			puts := []api.Resource{mesh}
			for i := range 4000 { // about 2.5 MB of routes, from the global
				puts = append(puts, &api.TrafficRoute{Meta: api.Meta{Type: "TrafficRoute", Mesh: "default", Name: fmt.Sprintf("r-%04d", i),
					Labels: map[string]string{"note": strings.Repeat("n", 60)}},
					Spec: api.TrafficRouteSpec{Destination: map[string]string{api.TagService: fmt.Sprintf("svc-%04d", i), "team": strings.Repeat("t", 60)},
						Split: []api.Split{{Weight: 100, Tags: map[string]string{"version": strings.Repeat("v", 60), "owner": strings.Repeat("o", 60)}}}}})
			}
			if _, err := gs.Apply(ctx, puts, nil); err != nil {
				t.Fatal(err)
			}
			zs := store.NewMemory(0)
			startZoneLimited(t, g, "zone-a", "zone:zone-a", zs, nil, tc.zone)
			testutil.Until(t, 30*time.Second, "the global's routes in the zone", func() bool {
				res, err := zs.List(ctx, store.ListOptions{Type: "TrafficRoute"})
				return err == nil && len(res.Items) == 4000
			})
			var dps []api.Resource
			for i := range 3000 { // about 3 MB of Dataplanes, from the zone
				dps = append(dps, &api.Dataplane{Meta: api.Meta{Type: "Dataplane", Mesh: "default", Name: fmt.Sprintf("web-%04d", i)},
					Networking: api.DataplaneNetworking{Address: "10.0.0.1", Inbound: []api.Inbound{{Port: 8080, Tags: map[string]string{
						api.TagService: "web", "team": strings.Repeat("t", 60), "owner": strings.Repeat("o", 60), "tier": strings.Repeat("x", 60)}}}}})
			}
			if _, err := zs.Apply(ctx, dps, nil); err != nil {
				t.Fatal(err)
			}
			testutil.Until(t, 30*time.Second, "the zone's Dataplanes at the global", func() bool {
				res, err := gs.List(ctx, store.ListOptions{Type: "Dataplane"})
				return err == nil && len(res.Items) == 3000
			})
		})
	}
}
