package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
)

// reportTraffic prints one line per service in the drill's scope: its
// instances per zone, as the zones' ingresses offer them.
func (a *app) reportTraffic(ctx context.Context, s drainScope, elapsed time.Duration) error {
	ings, err := a.client.List(ctx, "ZoneIngress", "")
	if err != nil {
		return err
	}
	perService := map[string]map[string]int{}
	for _, r := range ings {
		ing := r.(*api.ZoneIngress)
		for _, as := range ing.AvailableServices {
			svc := as.Tags[api.TagService]
			if (s.mesh != "" && as.Mesh != s.mesh) || (s.service != "" && svc != s.service) {
				continue
			}
			key := as.Mesh + "/" + svc
			if perService[key] == nil {
				perService[key] = map[string]int{}
			}
			perService[key][ing.Zone] += as.Instances
		}
	}
	for _, key := range sortedZones(perService) {
		var parts []string
		for _, z := range sortedZones(perService[key]) {
			parts = append(parts, fmt.Sprintf("%s %d", z, perService[key][z]))
		}
		fmt.Fprintf(a.stdout, "%6s  %s  instances: %s\n", elapsed.Round(time.Second), key, strings.Join(parts, ", "))
	}
	return nil
}
