package zone

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// zoneMetrics are the zone CP's own metrics, beside those of its parts
// (store, API, xDS server, DNS, KDS): how its proxies' configurations are
// generated and whether this replica leads.
type zoneMetrics struct {
	rounds    prometheus.Histogram
	generated prometheus.Counter
	leader    prometheus.Gauge
}

func newZoneMetrics(reg prometheus.Registerer) (*zoneMetrics, error) {
	m := &zoneMetrics{
		rounds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "ursa_xds_generation_duration_seconds",
			Help: "Time of a round of generation that published at least one proxy's configuration (a change of the catalogue or of the connected proxies).",
			// 1 ms to 16 s: a proxy alone, to a full push to 10k proxies.
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
		generated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ursa_xds_generated_total",
			Help: "Proxies' configurations generated and published (those whose inputs did not change are not counted).",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ursa_leader",
			Help: "1 while this replica leads its zone (the jobs only one replica runs: VIPs, KDS, insights, the pod controller), else 0.",
		}),
	}
	for _, c := range []prometheus.Collector{m.rounds, m.generated, m.leader} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// synced is Generation's OnSync.
func (m *zoneMetrics) synced(generated, _ int, took time.Duration) {
	if generated > 0 {
		m.rounds.Observe(took.Seconds())
		m.generated.Add(float64(generated))
	}
}

// leading is called as this replica starts leading and stops.
func (m *zoneMetrics) leading(on bool) {
	if on {
		m.leader.Set(1)
	} else {
		m.leader.Set(0)
	}
}
