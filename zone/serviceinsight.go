package zone

import (
	"context"
	"math"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/xds"
)

// loadSource is what the ServiceInsight writer reads: the aggregate of the
// proxies' load reports.
type loadSource interface {
	Services(now time.Time) []xds.ServiceLoad
}

// writeServiceInsights keeps, every tick, one ServiceInsight per mesh and
// service that this zone's proxies report traffic to: it writes those whose
// content changed, all in one Apply, so at most once per tick per service,
// and nothing while no traffic changes them (the rate falls to 0 once, then
// they are left alone). KDS carries them to the global. It runs until ctx
// ends.
func writeServiceInsights(ctx context.Context, st store.Store, src ViewSource, loads loadSource, zone string, every time.Duration, log *zap.Logger) error {
	written := map[api.Key]*api.ServiceInsight{}
	warned := map[api.Key]bool{}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		view, _ := src.Current()
		var puts []api.Resource
		for _, si := range serviceInsights(loads.Services(time.Now()), zone) {
			k := api.KeyOf(si)
			if _, ok, _ := store.Get[*api.Mesh](view, "", si.Mesh); !ok {
				continue // the mesh is gone, or has not reached the zone yet
			}
			if err := api.Validate(si); err != nil {
				if !warned[k] {
					warned[k] = true
					log.Warn("cannot keep a service's insight", zap.String("mesh", si.Mesh), zap.String("service", si.Service), zap.Error(err))
				}
				continue
			}
			if prev, ok := written[k]; ok && api.SameContent(prev, si) {
				continue
			}
			puts = append(puts, si)
		}
		if len(puts) == 0 {
			continue
		}
		if _, err := st.Apply(ctx, puts, nil); err != nil {
			if ctx.Err() == nil {
				log.Warn("cannot write service insights", zap.Int("count", len(puts)), zap.Error(err))
			}
			continue
		}
		for _, r := range puts {
			written[api.KeyOf(r)] = r.(*api.ServiceInsight)
		}
	}
}

// serviceInsights turns the aggregate into ServiceInsights of this zone,
// rates rounded to a tenth so that noise alone does not cause writes.
func serviceInsights(loads []xds.ServiceLoad, zone string) []*api.ServiceInsight {
	out := make([]*api.ServiceInsight, 0, len(loads))
	for _, sl := range loads {
		si := &api.ServiceInsight{Meta: api.Meta{Type: "ServiceInsight", Mesh: sl.Mesh, Name: sl.Service},
			Zone: zone, Service: sl.Service, Traffic: map[string]api.ZoneTraffic{}}
		for z, zl := range sl.Zones {
			si.Traffic[z] = api.ZoneTraffic{Connections: clampInt(zl.Successful), Errors: clampInt(zl.Errors),
				PerSecond: math.Round(zl.PerSecond*10) / 10}
		}
		out = append(out, si)
	}
	return out
}

func clampInt(n uint64) int64 {
	if n > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(n)
}
