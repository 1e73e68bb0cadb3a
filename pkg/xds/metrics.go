package xds

import (
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// The xDS server's metrics. Every series a dashboard or an alert reads is
// there from the start, at zero: a counter that appears only once it first
// counts reads as "no data", and rate() over it misses its first step.
func (s *Server) newMetrics() []prometheus.Collector {
	s.nacks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ursa_xds_nacks_total",
		Help: "xDS responses proxies rejected, by type.",
	}, []string{"type_url"})
	for _, t := range []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType, resource.SecretType} {
		s.nacks.WithLabelValues(t)
	}
	s.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ursa_xds_refused_total",
		Help: "Proxies refused, by reason: no_token, invalid_token, not_covered (their token does not cover what they present or are registered as), unverifiable, registration.",
	}, []string{"reason"})
	for _, r := range []string{RefusedNoToken, RefusedInvalidToken, RefusedNotCovered, RefusedUnverifiable, RefusedRegistration} {
		s.refusals.WithLabelValues(r)
	}
	proxies := proxiesCollector{s: s, desc: prometheus.NewDesc("ursa_xds_proxies",
		"Proxies with an open xDS stream to this replica, by kind: sidecar, ingress, proxyless.", []string{"kind"}, nil)}
	return []prometheus.Collector{s.nacks, s.refusals, proxies}
}

// proxiesCollector counts the server's connected proxies when scraped, so
// the gauge cannot drift from the streams.
type proxiesCollector struct {
	s    *Server
	desc *prometheus.Desc
}

func (c proxiesCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c proxiesCollector) Collect(ch chan<- prometheus.Metric) {
	var n [KindIngress + 1]int
	c.s.mu.Lock()
	for _, node := range c.s.nodes {
		if node.Kind >= 0 && int(node.Kind) < len(n) {
			n[node.Kind]++
		}
	}
	c.s.mu.Unlock()
	for k, count := range n {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(count), Kind(k).String())
	}
}
