package proxy

import (
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/xds"
	"github.com/ursamesh/ursa/pkg/xds/xdstest"
)

func resilientCluster() *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 "billing",
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		CircuitBreakers: &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
			MaxConnections: wrapperspb.UInt32(2), MaxRequests: wrapperspb.UInt32(5),
			RetryBudget: &cluster.CircuitBreakers_Thresholds_RetryBudget{BudgetPercent: &typev3.Percent{Value: 30}},
		}}},
		OutlierDetection: &cluster.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(3), Interval: durationpb.New(2 * time.Second),
			BaseEjectionTime: durationpb.New(5 * time.Second), MaxEjectionPercent: wrapperspb.UInt32(50)},
		HealthChecks: []*core.HealthCheck{{Timeout: durationpb.New(time.Second), Interval: durationpb.New(3 * time.Second),
			UnhealthyThreshold: wrapperspb.UInt32(2), HealthyThreshold: wrapperspb.UInt32(1),
			HealthChecker: &core.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &core.HealthCheck_HttpHealthCheck{
				Path: "/health", ExpectedStatuses: []*typev3.Int64Range{{Start: 200, End: 400}}}}}},
		CommonLbConfig: &cluster.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{Value: 25}},
	}
}

// TestTranslateResilience: the contract's fields, with Envoy's defaults
// for the rest.
func TestTranslateResilience(t *testing.T) {
	cfg, err := translate(nil, []*cluster.Cluster{resilientCluster()}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Clusters["billing"]
	if want := (&Thresholds{MaxConnections: 2, MaxPendingRequests: 1024, MaxRequests: 5, MaxRetries: 3,
		RetryBudget: &RetryBudget{BudgetPercent: 30, MinRetryConcurrency: 3}}); !reflect.DeepEqual(c.Breaker, want) {
		t.Errorf("thresholds %+v, want %+v", c.Breaker, want)
	}
	if want := (OutlierDetection{Consecutive5xx: 3, Enforcing5xx: 100, ConsecutiveGateway: 5, EnforcingGateway: 0,
		Interval: 2 * time.Second, BaseEjectionTime: 5 * time.Second, MaxEjectionTime: 300 * time.Second,
		MaxEjectionPercent: 50, UnejectOnHealthCheck: true,
		SuccessRate:       RateDetection{Enforcing: 100, MinimumHosts: 5, RequestVolume: 100, StdevFactor: 1900},
		FailurePercentage: RateDetection{Enforcing: 0, MinimumHosts: 5, RequestVolume: 50, Threshold: 85}}); c.Outlier == nil || *c.Outlier != want {
		t.Errorf("outlier detection %+v, want %+v", c.Outlier, want)
	}
	if want := (&HealthCheck{Timeout: time.Second, Interval: 3 * time.Second, UnhealthyThreshold: 2, HealthyThreshold: 1,
		NoTrafficInterval: time.Minute, NoTrafficHealthyInterval: time.Minute, UnhealthyInterval: 3 * time.Second,
		UnhealthyEdgeInterval: 3 * time.Second, HealthyEdgeInterval: 3 * time.Second, ReuseConnection: true,
		HTTP: &HTTPCheck{Path: "/health", Method: "GET", Expected: []StatusRange{{200, 400}}}}); !reflect.DeepEqual(c.HealthCheck, want) {
		t.Errorf("health check %+v, want %+v", c.HealthCheck, want)
	}
	plain, err := translate(nil, []*cluster.Cluster{{Name: "tcp", ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		HealthChecks: []*core.HealthCheck{{Timeout: durationpb.New(time.Second), Interval: durationpb.New(time.Second),
			UnhealthyThreshold: wrapperspb.UInt32(1), HealthyThreshold: wrapperspb.UInt32(1),
			HealthChecker: &core.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &core.HealthCheck_TcpHealthCheck{}}}}}}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c := plain.Clusters["tcp"]; c.Breaker != nil || c.Outlier != nil || c.HealthCheck == nil || c.HealthCheck.HTTP != nil {
		t.Errorf("a TCP check alone: %+v", c)
	}
	if got := c.PanicThreshold; got != 25 {
		t.Errorf("panic threshold %v, want 25", got)
	}
	if got := plain.Clusters["tcp"].PanicThreshold; got != 50 {
		t.Errorf("panic threshold %v without common_lb_config, want Envoy's 50", got)
	}
	low := resilientCluster()
	low.CommonLbConfig.HealthyPanicThreshold.Value = 0.4
	if cfg, err := translate(nil, []*cluster.Cluster{low}, nil, nil, nil); err != nil || cfg.Clusters["billing"].PanicThreshold != 0 {
		t.Errorf("a panic threshold of 0.4 %%: %v, want 0 (Envoy rounds it)", err)
	}
}

// TestTranslateResilienceRefuses: what the built-in proxy does not
// implement is refused, naming the field, so that it NACKs.
func TestTranslateResilienceRefuses(t *testing.T) {
	hc := func(c *cluster.Cluster) *core.HealthCheck { return c.HealthChecks[0] }
	httpCheck := func(c *cluster.Cluster) *core.HealthCheck_HttpHealthCheck { return hc(c).GetHttpHealthCheck() }
	for _, tc := range []struct {
		want   string
		mutate func(*cluster.Cluster)
	}{
		{"HIGH", func(c *cluster.Cluster) { c.CircuitBreakers.Thresholds[0].Priority = core.RoutingPriority_HIGH }},
		{"common_lb_config.update_merge_window", func(c *cluster.Cluster) { c.CommonLbConfig.UpdateMergeWindow = durationpb.New(time.Second) }},
		{"common_lb_config.zone_aware_lb_config", func(c *cluster.Cluster) {
			c.CommonLbConfig.LocalityConfigSpecifier = &cluster.Cluster_CommonLbConfig_ZoneAwareLbConfig_{ZoneAwareLbConfig: &cluster.Cluster_CommonLbConfig_ZoneAwareLbConfig{}}
		}},
		{"Cluster_CommonLbConfig.HealthyPanicThreshold", func(c *cluster.Cluster) { c.CommonLbConfig.HealthyPanicThreshold.Value = 120 }},
		{"healthy_panic_threshold: NaN", func(c *cluster.Cluster) { c.CommonLbConfig.HealthyPanicThreshold.Value = math.NaN() }},
		{"two thresholds", func(c *cluster.Cluster) {
			c.CircuitBreakers.Thresholds = append(c.CircuitBreakers.Thresholds, &cluster.CircuitBreakers_Thresholds{})
		}},
		{"circuit_breakers.per_host_thresholds", func(c *cluster.Cluster) {
			c.CircuitBreakers.PerHostThresholds = []*cluster.CircuitBreakers_Thresholds{{}}
		}},
		{"thresholds.max_connection_pools", func(c *cluster.Cluster) { c.CircuitBreakers.Thresholds[0].MaxConnectionPools = wrapperspb.UInt32(1) }},
		{"retry_budget.budget_interval", func(c *cluster.Cluster) {
			c.CircuitBreakers.Thresholds[0].RetryBudget.BudgetInterval = durationpb.New(time.Second)
		}},
		{"RetryBudget", func(c *cluster.Cluster) { c.CircuitBreakers.Thresholds[0].RetryBudget.BudgetPercent.Value = 120 }},
		{"outlier_detection.enforcing_local_origin_success_rate", func(c *cluster.Cluster) {
			c.OutlierDetection.EnforcingLocalOriginSuccessRate = wrapperspb.UInt32(3)
		}},
		{"outlier_detection.split_external_local_origin_errors", func(c *cluster.Cluster) { c.OutlierDetection.SplitExternalLocalOriginErrors = true }},
		{"OutlierDetection.FailurePercentageThreshold", func(c *cluster.Cluster) {
			c.OutlierDetection.FailurePercentageThreshold = wrapperspb.UInt32(120)
		}},
		{"OutlierDetection.EnforcingSuccessRate", func(c *cluster.Cluster) {
			c.OutlierDetection.EnforcingSuccessRate = wrapperspb.UInt32(101)
		}},
		{"OutlierDetection.Interval", func(c *cluster.Cluster) { c.OutlierDetection.Interval = durationpb.New(0) }},
		{"OutlierDetection.BaseEjectionTime", func(c *cluster.Cluster) { c.OutlierDetection.BaseEjectionTime = durationpb.New(-time.Second) }},
		{"2 health checks", func(c *cluster.Cluster) { c.HealthChecks = append(c.HealthChecks, c.HealthChecks[0]) }},
		{"grpc_health_check", func(c *cluster.Cluster) {
			hc(c).HealthChecker = &core.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &core.HealthCheck_GrpcHealthCheck{}}
		}},
		{"HealthCheck.HealthChecker", func(c *cluster.Cluster) { hc(c).HealthChecker = nil }},
		{"health_checks.event_log_path", func(c *cluster.Cluster) { hc(c).EventLogPath = "/tmp/hc.log" }},
		{"health_checks.tls_options", func(c *cluster.Cluster) {
			hc(c).TlsOptions = &core.HealthCheck_TlsOptions{AlpnProtocols: []string{"h2"}}
		}},
		{"health_checks.transport_socket_match_criteria", func(c *cluster.Cluster) { hc(c).TransportSocketMatchCriteria = structOf(t) }},
		{"required", func(c *cluster.Cluster) { hc(c).Timeout = nil }},
		{"required", func(c *cluster.Cluster) { hc(c).HealthyThreshold = nil }},
		{"HealthCheck.Interval", func(c *cluster.Cluster) { hc(c).Interval = durationpb.New(0) }},
		{"health_checks.interval: seconds:31700000", func(c *cluster.Cluster) { hc(c).Interval = &durationpb.Duration{Seconds: 31700000} }},
		{"http_health_check.codec_client_type", func(c *cluster.Cluster) { httpCheck(c).CodecClientType = typev3.CodecClientType_HTTP3 }},
		{"http_health_check.send", func(c *cluster.Cluster) {
			httpCheck(c).Send = &core.HealthCheck_Payload{Payload: &core.HealthCheck_Payload_Text{Text: "00"}}
		}},
		{"http_health_check.service_name_matcher", func(c *cluster.Cluster) { httpCheck(c).ServiceNameMatcher = exactMatcher("x") }},
		{"http_health_check.path", func(c *cluster.Cluster) { httpCheck(c).Path = "health" }},
		{"HealthCheck_HttpHealthCheck.Path", func(c *cluster.Cluster) { httpCheck(c).Path = "/a\nb" }},
		{"expected_statuses", func(c *cluster.Cluster) { httpCheck(c).ExpectedStatuses = []*typev3.Int64Range{{Start: 600, End: 700}} }},
		{"retriable_statuses", func(c *cluster.Cluster) {
			httpCheck(c).RetriableStatuses = []*typev3.Int64Range{{Start: 503, End: 503}}
		}},
		{"CONNECT", func(c *cluster.Cluster) { httpCheck(c).Method = core.RequestMethod_CONNECT }},
		{"literal values", func(c *cluster.Cluster) {
			httpCheck(c).RequestHeadersToAdd = []*core.HeaderValueOption{{Header: &core.HeaderValue{Key: "x", Value: "%HOSTNAME%"}}}
		}},
		{"tcp_health_check.send", func(c *cluster.Cluster) {
			hc(c).HealthChecker = &core.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &core.HealthCheck_TcpHealthCheck{
				Send: &core.HealthCheck_Payload{Payload: &core.HealthCheck_Payload_Text{Text: "00"}}}}
		}},
	} {
		c := resilientCluster()
		tc.mutate(c)
		_, err := translate(nil, []*cluster.Cluster{c}, nil, nil, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `cluster "billing"`) {
			t.Errorf("want an error naming %q and the cluster, got %v", tc.want, err)
		}
	}
}

func structOf(t *testing.T) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(map[string]any{"tls": "off"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// FuzzTranslateResilience: any cluster the control plane could send is
// translated or refused (its resilience and its common_lb_config), never
// a crash, and what is translated is sane.
func FuzzTranslateResilience(f *testing.F) {
	for _, c := range []*cluster.Cluster{resilientCluster(), {Name: "x", CircuitBreakers: &cluster.CircuitBreakers{}},
		{Name: "y", HealthChecks: []*core.HealthCheck{{}}}, {Name: "z", CommonLbConfig: &cluster.Cluster_CommonLbConfig{}}} {
		b, err := proto.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := &cluster.Cluster{}
		if proto.Unmarshal(data, c) != nil {
			return
		}
		out := &Cluster{PanicThreshold: defaultPanicThreshold}
		if err := translateResilience(c, out); err != nil {
			return
		}
		if err := translateLB(c.GetCommonLbConfig(), out); err != nil {
			return
		}
		if out.PanicThreshold < 0 || out.PanicThreshold > 100 {
			t.Fatalf("panic threshold %v", out.PanicThreshold)
		}
		if od := out.Outlier; od != nil && (od.Interval <= 0 || od.MaxEjectionPercent > 100 || od.SuccessRate.Enforcing > 100 ||
			od.FailurePercentage.Enforcing > 100 || od.FailurePercentage.Threshold > 100) {
			t.Fatalf("outlier detection %+v", od)
		}
		if hc := out.HealthCheck; hc != nil {
			if hc.Timeout <= 0 || hc.Interval <= 0 || hc.NoTrafficInterval <= 0 {
				t.Fatalf("health check %+v", hc)
			}
			if hc.HTTP != nil && (!strings.HasPrefix(hc.HTTP.Path, "/") || len(hc.HTTP.Expected) == 0) {
				t.Fatalf("HTTP check %+v", hc.HTTP)
			}
		}
	})
}

// TestGeneratedResilience: what the sidecar generator makes of a
// CircuitBreaker and a HealthCheck (testdata l7-resilience: an HTTP check
// and limits with outlier detection on billing, a TCP check and
// max_connections on ledger) is taken by the built-in proxy as meant.
func TestGeneratedResilience(t *testing.T) {
	rs := xdstest.Inputs(t, "../xds/testdata/sidecar/l7-resilience.input.yaml")
	state := xds.NewState(catalog.FromResources("zone-1", rs), nil)
	res, err := xds.Sidecar(state, xds.Proxy{Kind: xds.KindSidecar, Dataplane: state.Mesh("default").Registered["web-1"]})
	if err != nil {
		t.Fatal(err)
	}
	cfg := translateGenerated(t, res)
	billing, ledger := cfg.Clusters["billing"], cfg.Clusters["ledger"]
	if billing == nil || ledger == nil {
		t.Fatalf("clusters %v", cfg.Clusters)
	}
	if want := (&Thresholds{MaxConnections: 100, MaxPendingRequests: 10, MaxRequests: 50, MaxRetries: 3}); !reflect.DeepEqual(billing.Breaker, want) {
		t.Errorf("billing's thresholds %+v, want %+v", billing.Breaker, want)
	}
	if od := billing.Outlier; od == nil || od.Consecutive5xx != 3 || od.Interval != 5*time.Second || od.BaseEjectionTime != 30*time.Second ||
		od.SuccessRate != (RateDetection{Enforcing: 100, MinimumHosts: 3, RequestVolume: 100, StdevFactor: 1500}) ||
		od.FailurePercentage != (RateDetection{Enforcing: 100, MinimumHosts: 5, RequestVolume: 50, Threshold: 60}) {
		t.Errorf("billing's outlier detection %+v", od)
	}
	hc := billing.HealthCheck
	if hc == nil || hc.HTTP == nil || hc.HTTP.Path != "/healthz" || hc.Interval != time.Second || hc.Timeout != 500*time.Millisecond ||
		hc.UnhealthyThreshold != 2 || !reflect.DeepEqual(hc.HTTP.Expected, []StatusRange{{200, 201}, {204, 205}}) {
		t.Errorf("billing's health check %+v (HTTP %+v)", hc, hc.HTTP)
	}
	if want := (&Thresholds{MaxConnections: 20, MaxPendingRequests: 1024, MaxRequests: 1024, MaxRetries: 3}); !reflect.DeepEqual(ledger.Breaker, want) {
		t.Errorf("ledger's thresholds %+v, want %+v", ledger.Breaker, want)
	}
	if ledger.Outlier != nil || ledger.HealthCheck == nil || ledger.HealthCheck.HTTP != nil {
		t.Errorf("ledger: outlier detection %+v, health check %+v; want none and a TCP check", ledger.Outlier, ledger.HealthCheck)
	}
	// The HealthChecks' panic thresholds: billing's 25, ledger's 0 (off),
	// greeter's Envoy's default.
	for name, want := range map[string]float64{"billing": 25, "ledger": 0, "greeter": 50} {
		if c := cfg.Clusters[name]; c == nil || c.PanicThreshold != want {
			t.Errorf("%s's panic threshold: %+v, want %v", name, c, want)
		}
	}
}
