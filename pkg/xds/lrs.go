package xds

import (
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	lrs "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Bounds on one load report: what exceeds them is refused, not stored.
const (
	MaxReportClusters      = 1024
	MaxClusterLocalities   = 64
	MaxReportedPerLocality = 1 << 32 // more in one interval is not a real proxy's count
)

// DefaultLoadReportingInterval is how often proxies are asked to report.
const DefaultLoadReportingInterval = time.Second

// LoadReporting is the zone CP's Load Reporting Service (LRS): proxies
// (the built-in one, Envoy, grpc-go) stream the counts of their EDS
// clusters, per locality, and the counts go into a Loads aggregate.
//
// A stream must come from a proxy connected over ADS to the same Server,
// with the same token rules; each cluster reported must be one of the
// proxy's current EDS clusters and each locality a zone of its load
// assignment. What does not fit is refused and counted in
// ursa_lrs_rejected_total, by reason; a stream is closed only when its
// node is refused.
type LoadReporting struct {
	lrs.UnimplementedLoadReportingServiceServer

	xds      *Server
	loads    *Loads
	interval time.Duration
	log      *zap.Logger
	now      func() time.Time

	reports  prometheus.Counter
	rejected *prometheus.CounterVec
}

// NewLoadReporting returns an LRS server that admits the proxies srv
// serves and records their reports in loads; it asks for a report every
// interval (DefaultLoadReportingInterval when 0). Its metrics go to reg.
func NewLoadReporting(srv *Server, loads *Loads, interval time.Duration, log *zap.Logger, reg prometheus.Registerer) (*LoadReporting, error) {
	if interval <= 0 {
		interval = DefaultLoadReportingInterval
	}
	l := &LoadReporting{
		xds: srv, loads: loads, interval: interval, log: log, now: time.Now,
		reports: prometheus.NewCounter(prometheus.CounterOpts{Name: "ursa_lrs_reports_total",
			Help: "Load reports received from proxies."}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ursa_lrs_rejected_total",
			Help: "Load report streams, reports or parts of reports refused, by reason."}, []string{"reason"}),
	}
	for _, c := range []prometheus.Collector{l.reports, l.rejected} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// Register adds the LRS service to g, which should be the xDS server's so
// that proxies report on the connection they get their configuration on.
func (l *LoadReporting) Register(g *grpc.Server) { lrs.RegisterLoadReportingServiceServer(g, l) }

// refuse counts a refusal and returns it as a gRPC status.
func (l *LoadReporting) refuse(reason string, code codes.Code, format string, args ...any) error {
	l.rejected.WithLabelValues(reason).Inc()
	err := status.Errorf(code, format, args...)
	l.log.Warn("refused a load report stream", zap.String("reason", reason), zap.Error(err))
	return err
}

// StreamLoadStats implements the LRS service.
func (l *LoadReporting) StreamLoadStats(stream lrs.LoadReportingService_StreamLoadStatsServer) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if err != nil {
		return nil
	}
	node := first.GetNode()
	id := node.GetId()
	claims, token, r := l.xds.authenticate(ctx, headerToken(ctx), node)
	if r != nil {
		return l.refuse("token", r.st.Code(), "%s", r.st.Message())
	}
	// Checked at each report: its token admitted the node's ADS stream.
	held := func() error {
		if l.xds.holdsToken(id, token) {
			return nil
		}
		return l.refuse("token", codes.Unauthenticated, "node %q has no ADS stream admitted with this stream's token (it expired, was revoked, or the node reconnected with another): reopen with the node's current token", id)
	}
	mesh, _, err := ParseNodeID(id)
	if err != nil {
		return l.refuse("node_id", codes.InvalidArgument, "%v", err)
	}
	if r := l.xds.covers(claims, node); r != nil {
		return l.refuse("token", r.st.Code(), "%s", r.st.Message())
	}
	if n, ok := l.xds.connected(id); !ok {
		return l.refuse("not_connected", codes.FailedPrecondition, "node %q is not connected over ADS: connect there first", id)
	} else if n.Kind == KindIngress {
		return l.refuse("ingress", codes.InvalidArgument, "node %q is an ingress, which has no callers to report", id)
	} else if KindOf(node) != n.Kind {
		// The token was judged for the kind this stream says it is (an
		// ingress token against ZoneIngresses only): it covers nothing of
		// a node connected as another kind.
		return l.refuse("token", codes.PermissionDenied, "node %q is connected as a %s; a stream that says it is a %s does not report its loads", id, n.Kind, KindOf(node))
	}
	if err := held(); err != nil {
		return err
	}
	if err := stream.Send(&lrs.LoadStatsResponse{SendAllClusters: true, LoadReportingInterval: durationpb.New(l.interval)}); err != nil {
		return nil
	}
	log := l.log.With(zap.String("proxy", id))
	log.Debug("load reporting started")
	known := &knownClusters{}
	for req := first; ; {
		if n := req.GetNode(); n != nil && n.GetId() != id {
			return l.refuse("node_changed", codes.InvalidArgument, "the stream's node was %q, now %q", id, n.GetId())
		}
		if len(req.GetClusterStats()) > 0 {
			if _, ok := l.xds.connected(id); ok {
				if err := held(); err != nil {
					return err
				}
			}
			l.record(id, mesh, known, req)
		}
		req, err = stream.Recv()
		if errors.Is(err, io.EOF) || ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("receive load report from %s: %w", id, err)
		}
	}
}

// record checks a report and adds what passes to the aggregate.
func (l *LoadReporting) record(id, mesh string, known *knownClusters, req *lrs.LoadStatsRequest) {
	l.reports.Inc()
	if _, ok := l.xds.connected(id); !ok {
		l.rejected.WithLabelValues("not_connected").Inc()
		return
	}
	if err := known.refresh(l.xds, id); err != nil {
		l.rejected.WithLabelValues("no_configuration").Inc()
		return
	}
	samples, rejects := Samples(mesh, req, known.zones)
	for reason, n := range rejects {
		l.rejected.WithLabelValues(reason).Add(float64(n))
	}
	if len(samples) > 0 {
		l.loads.Add(id, samples, l.now())
	}
}

// knownClusters caches, per stream, the EDS clusters of the proxy's
// current configuration and the zones of each, rebuilt when it changes.
type knownClusters struct {
	version string
	zones   map[string]map[string]bool
}

func (k *knownClusters) refresh(s *Server, id string) error {
	snap := s.cache.snapshot(id)
	if snap == nil {
		return fmt.Errorf("no configuration for node %q", id)
	}
	if v := snap.GetVersion(resource.EndpointType); v == k.version && k.zones != nil {
		return nil
	}
	k.version = snap.GetVersion(resource.EndpointType)
	k.zones = map[string]map[string]bool{}
	for _, e := range snap.resources(resource.EndpointType) {
		cla, ok := e.res.(*endpoint.ClusterLoadAssignment)
		if !ok {
			continue
		}
		zones := map[string]bool{}
		for _, loc := range cla.GetEndpoints() {
			zones[loc.GetLocality().GetZone()] = true
		}
		k.zones[e.name] = zones
	}
	return nil
}

// zoneName is a zone as a locality may name it: a DNS-1123 label.
var zoneName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// Samples turns a load report of a proxy in mesh into samples, keeping
// only the clusters known lists (cluster name → its load assignment's
// zones) and their zones. It returns what it refused, counted by reason.
// It never panics, whatever the report holds.
func Samples(mesh string, req *lrs.LoadStatsRequest, known map[string]map[string]bool) ([]LoadSample, map[string]int) {
	rejects := map[string]int{}
	stats := req.GetClusterStats()
	if len(stats) > MaxReportClusters {
		rejects["too_many_clusters"]++
		return nil, rejects
	}
	var out []LoadSample
	for _, cs := range stats {
		name := cs.GetClusterName()
		if cs.GetClusterServiceName() != "" {
			name = cs.GetClusterServiceName()
		}
		zones, ok := known[name]
		if !ok {
			rejects["unknown_cluster"]++
			continue
		}
		service := ServiceOfCluster(name)
		if service == "" {
			rejects["unknown_cluster"]++
			continue
		}
		locs := cs.GetUpstreamLocalityStats()
		if len(locs) > MaxClusterLocalities {
			rejects["too_many_localities"]++
			continue
		}
		interval := cs.GetLoadReportInterval().AsDuration()
		for _, ls := range locs {
			zone := ls.GetLocality().GetZone()
			if !zones[zone] || !zoneName.MatchString(zone) {
				rejects["unknown_locality"]++
				continue
			}
			s := LoadSample{LoadKey: LoadKey{Mesh: mesh, Service: service, Zone: zone}, Interval: interval,
				Issued: ls.GetTotalIssuedRequests(), Successful: ls.GetTotalSuccessfulRequests(), Errors: ls.GetTotalErrorRequests()}
			if s.Issued == 0 && s.Successful == 0 && s.Errors == 0 {
				// An L4 Envoy cluster counts connections, not requests.
				fails := ls.GetTotalFailConnections()
				s.Issued, s.Errors = ls.GetTotalNewConnections(), fails
				s.Successful = s.Issued - min(fails, s.Issued)
			}
			if s.Issued > MaxReportedPerLocality || s.Successful > MaxReportedPerLocality || s.Errors > MaxReportedPerLocality {
				rejects["implausible_count"]++
				continue
			}
			out = append(out, s)
		}
	}
	return out, rejects
}

// ServiceOfCluster is the service an EDS cluster of a sidecar or proxyless
// client sends to, by Subset.ClusterName: the name up to "{". It is "" for
// a name that is not such a cluster's.
func ServiceOfCluster(name string) string {
	service, rest, subset := strings.Cut(name, "{")
	if subset && !strings.HasSuffix(rest, "}") {
		return ""
	}
	if service == "" || len(service) > 63 || strings.ContainsAny(service, ":/ {}") {
		return ""
	}
	return service
}

// holdsToken says whether an ADS stream of node id is open now, admitted with
// token ("" for none): a load report stream speaks for its node only while
// the node's configuration stream was admitted with the same token, which
// ends when that token expires or is revoked.
func (s *Server) holdsToken(id, token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for stream := range s.byNode[id] {
		if a := s.auths[stream]; a != nil && a.done && a.token == token {
			return true
		}
	}
	return false
}

// connected returns a proxy connected over ADS now.
func (s *Server) connected(id string) (Node, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[id]
	if !ok {
		return Node{}, false
	}
	return *n, true
}

// compile-time check.
var _ lrs.LoadReportingServiceServer = (*LoadReporting)(nil)
