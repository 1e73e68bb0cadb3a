package proxy

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	lrs "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
)

// minLoadInterval bounds how often the proxy reports, whatever the CP asks.
const minLoadInterval = 100 * time.Millisecond

// reportLoad streams the proxy's upstream connection counts to the zone
// CP's Load Reporting Service over conn (the ADS connection), reopening the
// stream after a pause when it fails, until ctx (the ADS session's) ends.
func (c *Client) reportLoad(ctx context.Context, conn *grpc.ClientConn, node *core.Node) {
	for {
		err := c.loadSession(ctx, conn, node)
		if ctx.Err() != nil {
			return
		}
		c.Log.Debug("load reporting stream ended; reopening", zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}

// loadSession runs one LRS stream: it sends the node, then, every interval
// the CP asks for, the counts since the previous report of each cluster the
// CP wants, by locality zone.
func (c *Client) loadSession(ctx context.Context, conn *grpc.ClientConn, node *core.Node) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := lrs.NewLoadReportingServiceClient(conn).StreamLoadStats(ctx)
	if err != nil {
		return fmt.Errorf("open load reporting: %w", err)
	}
	if err := stream.Send(&lrs.LoadStatsRequest{Node: node}); err != nil {
		return fmt.Errorf("send node: %w", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return fmt.Errorf("load reporting refused: %w", err)
	}
	// The CP may change what it wants at any time: the latest answer
	// holds.
	var want atomic.Pointer[lrs.LoadStatsResponse]
	want.Store(resp)
	failed := make(chan error, 1)
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				failed <- err
				return
			}
			want.Store(resp)
		}
	}()
	// Reports continue from the last one sent, across streams, so that
	// nothing counted before a stream (re)opens is lost.
	last, lastAt := c.loadSent.counts, c.loadSent.at
	if lastAt.IsZero() {
		lastAt = c.started
	}
	for {
		interval := max(want.Load().GetLoadReportingInterval().AsDuration(), minLoadInterval)
		select {
		case <-ctx.Done():
			return nil
		case err := <-failed:
			return fmt.Errorf("load reporting: %w", err)
		case <-time.After(interval):
		}
		cur, now := c.Proxy.load.snapshot(), time.Now()
		current := map[string]bool{}
		for name := range c.Proxy.cfg.Load().Clusters {
			current[name] = true
		}
		req := loadReport(last, cur, now.Sub(lastAt), want.Load(), current)
		if len(req.ClusterStats) > 0 {
			if err := stream.Send(req); err != nil {
				return fmt.Errorf("send load report: %w", err)
			}
		}
		last, lastAt = cur, now
		c.loadSent.counts, c.loadSent.at = cur, now
	}
}

// loadReport is the report of what changed from last to cur, over
// interval, for the clusters want asks for among the current ones. Every
// cluster used is reported, with zeros when idle, so the CP sees a rate fall
// to zero.
func loadReport(last, cur map[loadKey]loadCounts, interval time.Duration, want *lrs.LoadStatsResponse, current map[string]bool) *lrs.LoadStatsRequest {
	wanted := map[string]bool{}
	for _, name := range want.GetClusters() {
		wanted[name] = true
	}
	byCluster := map[string]*endpoint.ClusterStats{}
	for _, k := range slices.SortedFunc(maps.Keys(cur), func(a, b loadKey) int {
		if a.cluster != b.cluster {
			return strings.Compare(a.cluster, b.cluster)
		}
		return strings.Compare(a.zone, b.zone)
	}) {
		// Only EDS clusters of the current configuration have zones.
		if k.zone == "" || !current[k.cluster] || (!want.GetSendAllClusters() && !wanted[k.cluster]) {
			continue
		}
		now, before := cur[k], last[k]
		cs, ok := byCluster[k.cluster]
		if !ok {
			cs = &endpoint.ClusterStats{ClusterName: k.cluster, LoadReportInterval: durationpb.New(interval)}
			byCluster[k.cluster] = cs
		}
		cs.UpstreamLocalityStats = append(cs.UpstreamLocalityStats, &endpoint.UpstreamLocalityStats{
			Locality:                &core.Locality{Zone: k.zone},
			TotalIssuedRequests:     now.issued - before.issued,
			TotalSuccessfulRequests: now.successful - before.successful,
			TotalErrorRequests:      now.errors - before.errors,
		})
	}
	req := &lrs.LoadStatsRequest{}
	for _, name := range slices.Sorted(maps.Keys(byCluster)) {
		req.ClusterStats = append(req.ClusterStats, byCluster[name])
	}
	return req
}
