package main

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// reportTraffic prints one line per service in the drill's scope: its
// instances per zone and, per callers' zone, where their traffic goes now,
// from the proxies' load reports.
func (a *app) reportTraffic(ctx context.Context, s drainScope, elapsed time.Duration) error {
	views, err := a.client.Services(ctx, s.mesh, s.service, a.now())
	if err != nil {
		return err
	}
	for _, v := range views {
		var inst []string
		for _, z := range sortedZones(v.Instances) {
			inst = append(inst, fmt.Sprintf("%s:%d", orDefault(z, "?"), v.Instances[z]))
		}
		var traffic []string
		for _, c := range v.Callers {
			traffic = append(traffic, fmt.Sprintf("from %s: %s", c.Zone, c))
		}
		if len(traffic) == 0 {
			if s.service == "" {
				continue // a service nobody calls says nothing about the drill
			}
			traffic = []string{"no callers reported"}
		}
		fmt.Fprintf(a.stdout, "%6s  %s/%s  instances %s  %s\n", elapsed.Round(time.Second), v.Mesh, v.Service,
			strings.Join(inst, ","), strings.Join(traffic, "; "))
	}
	return nil
}
