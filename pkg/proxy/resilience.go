package proxy

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// resilience is the proxy's cluster resilience: circuit breakers, outlier
// detection and active health checks, kept in step with the applied
// configuration.
type resilience struct {
	breakers   breakers
	outliers   outliers
	health     healthChecks
	ejections  *prometheus.CounterVec
	hcFailures *prometheus.CounterVec
	// after is the health checks' clock: it fires once d has passed.
	// Tests replace it before the first Apply.
	after func(d time.Duration) <-chan time.Time
}

// init makes the state and registers its metrics.
func (r *resilience) init(reg prometheus.Registerer) error {
	r.breakers = breakers{open: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ursa_dp_circuit_breaker_open_total",
		Help: "Connections, requests, pending requests and retries refused because a cluster's circuit breaker threshold was reached (response flag UO), by cluster and kind."},
		[]string{"cluster", "kind"})}
	r.ejections = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ursa_dp_outlier_ejections_total",
		Help: "Endpoints ejected by outlier detection, by cluster."}, []string{"cluster"})
	r.hcFailures = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ursa_dp_health_check_failures_total",
		Help: "Active health checks of an endpoint that failed, by cluster."}, []string{"cluster"})
	r.after = time.After
	for _, c := range []prometheus.Collector{r.breakers.open, r.ejections, r.hcFailures} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register resilience metrics: %w", err)
		}
	}
	return nil
}

// syncResilience brings breakers, outlier detection and health checkers
// in step with cfg, the configuration just applied.
func (p *Proxy) syncResilience(cfg *Config) {
	p.resil.breakers.sync(cfg.Clusters)
	p.resil.outliers.sync(cfg.Clusters, p.now())
	p.resil.health.sync(p, cfg.Clusters)
}

// available reports whether an endpoint may take new connections and
// requests as far as outlier detection and health checks go. It takes no
// lock for a cluster that has neither.
func (r *resilience) available(cluster, addr string, now func() time.Time) bool {
	return r.health.healthy(cluster, addr) && !r.outliers.ejected(cluster, addr, now)
}

// translateResilience reads a cluster's circuit breakers, outlier
// detection and health checks into out.
func translateResilience(c *cluster.Cluster, out *Cluster) error {
	var err error
	if out.Breaker, err = translateBreakers(c.GetCircuitBreakers()); err != nil {
		return fmt.Errorf("cluster %q: %w", c.Name, err)
	}
	if out.Outlier, err = translateOutlier(c.GetOutlierDetection()); err != nil {
		return fmt.Errorf("cluster %q: %w", c.Name, err)
	}
	if out.HealthCheck, err = translateHealthChecks(c.GetHealthChecks()); err != nil {
		return fmt.Errorf("cluster %q: %w", c.Name, err)
	}
	return nil
}

// defaultPanicThreshold is Envoy's healthy_panic_threshold when a
// cluster sets none.
const defaultPanicThreshold = 50

// translateLB reads a cluster's common_lb_config: its panic threshold.
func translateLB(lb *cluster.Cluster_CommonLbConfig, out *Cluster) error {
	if lb == nil {
		return nil
	}
	if err := unsupportedFields(lb, "common_lb_config", "healthy_panic_threshold"); err != nil {
		return err
	}
	if t := lb.GetHealthyPanicThreshold(); t != nil {
		if v := t.GetValue(); v < 0 || v > 100 || math.IsNaN(v) {
			return fmt.Errorf("common_lb_config.healthy_panic_threshold: %v is not a percentage", v)
		}
		out.PanicThreshold = math.Round(t.GetValue()) // whole percent, as Envoy reads it
	}
	return nil
}

// maxDuration bounds the durations of outlier detection and health checks,
// so that sums and products of them cannot overflow.
const maxDuration = 366 * 24 * time.Hour

// unsupportedFields names the fields set in m, other than allowed, as
// fields the built-in proxy does not implement: it refuses what it cannot
// honour rather than ignore it. where is m's path in the cluster.
func unsupportedFields(m proto.Message, where string, allowed ...string) error {
	var bad []string
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if !slices.Contains(allowed, string(fd.Name())) {
			bad = append(bad, where+"."+string(fd.Name()))
		}
		return true
	})
	if len(bad) == 0 {
		return nil
	}
	slices.Sort(bad)
	return fmt.Errorf("%s: not supported by the built-in proxy", strings.Join(bad, ", "))
}
