package kds

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ursamesh/ursa/pkg/api"
)

// Metrics are KDS's Prometheus metrics. A nil *Metrics records nothing.
type Metrics struct {
	responses  *prometheus.CounterVec
	stalls     *prometheus.CounterVec
	violations *prometheus.CounterVec
}

// NewMetrics registers KDS's metrics on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ursa_kds_responses_total",
			Help: "KDS responses by direction, resource type and result (sent, ack, nack).",
		}, []string{"direction", "type", "result"}),
		stalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ursa_kds_stalls_total",
			Help: "KDS streams restarted because the peer left changes unacknowledged past the deadline.",
		}, []string{"direction"}),
		violations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ursa_kds_zone_violations_total",
			Help: "Messages refused because a zone tried to write what does not belong to it.",
		}, []string{"zone"}),
	}
	// Series read by dashboards and alerts are there from the start, at
	// zero (responses once a stream starts, violations once a zone
	// connects): a counter that appears only when it first counts reads as
	// "no data", and rate() over it misses its first step.
	for _, d := range []string{"global_to_zone", "zone_to_global"} {
		m.stalls.WithLabelValues(d)
	}
	for _, c := range []prometheus.Collector{m.responses, m.stalls, m.violations} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// streaming makes a sender's series, at zero.
func (m *Metrics) streaming(direction string, types []api.Descriptor) {
	if m != nil {
		for _, d := range types {
			for _, result := range []string{"sent", "ack", "nack"} {
				m.responses.WithLabelValues(direction, d.Type, result)
			}
		}
	}
}

// Connected makes zone's series, at zero.
func (m *Metrics) Connected(zone string) {
	if m != nil {
		m.violations.WithLabelValues(zone)
	}
}

func (m *Metrics) response(direction, typ, result string) {
	if m != nil {
		m.responses.WithLabelValues(direction, typ, result).Inc()
	}
}

func (m *Metrics) stall(direction string) {
	if m != nil {
		m.stalls.WithLabelValues(direction).Inc()
	}
}

// Violation counts a refused message from zone.
func (m *Metrics) Violation(zone string) {
	if m != nil {
		m.violations.WithLabelValues(zone).Inc()
	}
}
