package zone

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/xds"
)

// Presence timings. A replica renews its heartbeat every heartbeatEvery; a
// replica whose heartbeat is older than heartbeatTTL is gone, and the
// leader marks its proxies offline.
const (
	heartbeatEvery = 5 * time.Second
	heartbeatTTL   = 15 * time.Second
	// ackFlushEvery bounds how often a proxy's ACKed versions and NACKs are
	// written (every push changes every proxy's ACKs: written at once, a
	// push to 10k proxies would be 10k more writes); connects and
	// disconnects are written at once. Kuma's default is 10 s.
	ackFlushEvery = 5 * time.Second
)

// Presence writes what the xDS server observes on its streams to the store:
// one DataplaneInsight (ZoneIngressInsight for an ingress) per proxy,
// connected or not, to which replica, the versions it ACKed, its last NACK.
// Every replica of the zone reads the same insights, so all agree which
// proxies are online. It also keeps this replica's heartbeat, from which
// the leader tells the proxies of a replica that died.
//
// Observe (called on the streams' goroutines) only records; Start writes,
// coalescing: a burst of connections is one store transaction.
type Presence struct {
	st       store.Store
	mirror   ViewSource
	instance string
	log      *zap.Logger
	now      func() time.Time

	mu    sync.Mutex
	nodes map[string]*nodePresence // by node id, connected here or not yet written as gone
	kick  chan struct{}
}

// ViewSource is the zone's store mirror.
type ViewSource interface {
	Current() (*store.View, <-chan struct{})
}

// nodePresence is one proxy's status as this replica last observed it.
type nodePresence struct {
	kind   xds.Kind
	status api.ProxyStatus
	// dirty: not written since it changed; gone: disconnected, to be
	// written (conditionally) and then forgotten.
	dirty, gone bool
}

// NewPresence returns the presence of this replica (instance), writing to
// st and reading what it needs (which meshes exist) from mirror; the xDS
// server is given it with SetPresence, and Start runs it.
func NewPresence(st store.Store, mirror ViewSource, instance string, log *zap.Logger) *Presence {
	return &Presence{st: st, mirror: mirror, instance: instance, log: log, now: time.Now,
		nodes: map[string]*nodePresence{}, kick: make(chan struct{}, 1)}
}

// Observe records a stream event (xds.Presence).
func (p *Presence) Observe(e xds.StreamEvent) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.nodes[e.Node]
	urgent := false
	switch e.Op {
	case xds.OpConnected:
		n = &nodePresence{kind: e.Kind, status: api.ProxyStatus{Connected: true, Instance: p.instance,
			Proxyless: e.Kind == xds.KindProxyless, ConnectedSince: e.At.UTC(), Acked: map[string]string{}}}
		p.nodes[e.Node] = n
		urgent = true
	case xds.OpDisconnected:
		if n == nil {
			return
		}
		n.status.Connected, n.status.DisconnectedAt, n.gone = false, e.At.UTC(), true
		urgent = true
	case xds.OpAcked:
		if n == nil || n.gone {
			return
		}
		n.status.Acked[internTypeURL(e.TypeURL)] = e.Version
	case xds.OpNacked:
		if n == nil || n.gone {
			return
		}
		n.status.Nacks++
		n.status.LastNack, n.status.LastNackType = e.Reason, e.TypeURL
	}
	n.dirty = true
	if urgent {
		select {
		case p.kick <- struct{}{}:
		default:
		}
	}
}

// internTypeURL returns the package's own copy of a known xDS type URL, so
// that 10k proxies' insights do not each hold the strings their requests
// were decoded into.
func internTypeURL(u string) string {
	for _, t := range [...]string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType, resource.SecretType} {
		if u == t {
			return t
		}
	}
	return u
}

// Start writes the heartbeat and the insights until ctx ends; then it marks
// this replica's proxies offline, so that other replicas see them go at
// once rather than when the heartbeat expires.
func (p *Presence) Start(ctx context.Context) error {
	if err := p.heartbeat(ctx); err != nil && ctx.Err() == nil {
		p.log.Warn("cannot write this replica's heartbeat", zap.Error(err))
	}
	beat := time.NewTicker(heartbeatEvery)
	defer beat.Stop()
	flush := time.NewTicker(ackFlushEvery)
	defer flush.Stop()
	for {
		select {
		case <-ctx.Done():
			p.shutdown()
			return nil
		case <-beat.C:
			if err := p.heartbeat(ctx); err != nil && ctx.Err() == nil {
				p.log.Warn("cannot write this replica's heartbeat", zap.Error(err))
			}
		case <-p.kick:
			p.flush(ctx)
		case <-flush.C:
			p.flush(ctx)
		}
	}
}

// shutdown writes every proxy connected here as gone, and removes the
// heartbeat.
func (p *Presence) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	now := p.now().UTC()
	p.mu.Lock()
	for _, n := range p.nodes {
		if !n.gone {
			n.status.Connected, n.status.DisconnectedAt, n.gone, n.dirty = false, now, true, true
		}
	}
	p.mu.Unlock()
	p.flush(ctx)
	if err := p.st.Delete(ctx, api.Key{Type: "Lease", Name: heartbeatName(p.instance)}, 0); err != nil && !errors.Is(err, store.ErrNotFound) {
		p.log.Warn("cannot remove this replica's heartbeat", zap.Error(err))
	}
}

var nonName = regexp.MustCompile(`[^a-z0-9-]+`)

// heartbeatName is the Lease a replica renews while it runs.
func heartbeatName(instance string) string {
	n := strings.Trim(nonName.ReplaceAllString(strings.ToLower(instance), "-"), "-")
	if len(n) > 50 {
		n = n[:50]
	}
	return "presence-" + n
}

func (p *Presence) heartbeat(ctx context.Context) error {
	l := &api.Lease{Meta: api.Meta{Type: "Lease", Name: heartbeatName(p.instance)}, Holder: p.instance,
		RenewTime: store.Now(), Duration: int(heartbeatTTL / time.Second)}
	_, err := p.st.Apply(ctx, []api.Resource{l}, nil)
	return err
}

// insightOf is the resource that records a proxy's status.
func insightOf(id string, n *nodePresence) (api.Resource, error) {
	status := n.status
	status.Acked = maps.Clone(status.Acked)
	if n.kind == xds.KindIngress {
		return &api.ZoneIngressInsight{Meta: api.Meta{Type: "ZoneIngressInsight", Name: id}, ProxyStatus: status}, nil
	}
	mesh, name, err := xds.ParseNodeID(id)
	if err != nil {
		return nil, err
	}
	return &api.DataplaneInsight{Meta: api.Meta{Type: "DataplaneInsight", Mesh: mesh, Name: name}, ProxyStatus: status}, nil
}

// flush writes what changed: the statuses of proxies connected here in one
// transaction, each disconnection on its own and only if the insight is
// still this replica's (the proxy may have reconnected to another one
// meanwhile, which wrote its own).
func (p *Presence) flush(ctx context.Context) {
	view, _ := p.mirror.Current()
	var puts []api.Resource
	var putIDs []string
	type goneNode struct {
		id  string
		res api.Resource
	}
	var gone []goneNode
	p.mu.Lock()
	for id, n := range p.nodes {
		if !n.dirty {
			continue
		}
		r, err := insightOf(id, n)
		if err != nil {
			delete(p.nodes, id) // a malformed node id is refused by its Dataplane lookup anyway
			continue
		}
		if m := r.GetMeta().Mesh; m != "" {
			if _, ok, _ := store.Get[*api.Mesh](view, "", m); !ok {
				if n.gone {
					delete(p.nodes, id) // never written, nothing to undo
				}
				continue // the mesh has not reached this zone yet; kept dirty
			}
		}
		n.dirty = false
		if n.gone {
			gone = append(gone, goneNode{id, r})
			delete(p.nodes, id)
			continue
		}
		puts, putIDs = append(puts, r), append(putIDs, id)
	}
	p.mu.Unlock()
	if len(puts) > 0 {
		if _, err := p.st.Apply(ctx, puts, nil); err != nil {
			p.log.Warn("cannot write proxies' insights; will retry", zap.Int("count", len(puts)), zap.Error(err))
			p.redirty(putIDs)
		}
	}
	for _, g := range gone {
		if err := p.writeGone(ctx, g.res); err != nil && ctx.Err() == nil {
			p.log.Warn("cannot write a proxy's disconnection", zap.String("proxy", g.id), zap.Error(err))
		}
	}
}

// redirty marks nodes to be written again.
func (p *Presence) redirty(ids []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, id := range ids {
		if n := p.nodes[id]; n != nil {
			n.dirty = true
		}
	}
}

// writeGone writes a disconnection unless another replica holds the proxy
// now. A conflict means someone wrote in between: read again and decide
// again.
func (p *Presence) writeGone(ctx context.Context, r api.Resource) error {
	for range 3 {
		cur, err := p.st.Get(ctx, api.KeyOf(r))
		if errors.Is(err, store.ErrNotFound) {
			return nil // never written (it was gone before a flush), or removed with its Dataplane
		}
		if err != nil {
			return err
		}
		st := statusOf(cur)
		if st == nil || st.Instance != p.instance || !st.Connected {
			return nil
		}
		next := api.DeepCopy(r)
		next.GetMeta().Version = cur.GetMeta().Version
		if _, err := p.st.Update(ctx, next); err == nil || !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
	return fmt.Errorf("write %s: kept conflicting", api.KeyOf(r))
}

// statusOf returns an insight's status, nil for another type.
func statusOf(r api.Resource) *api.ProxyStatus {
	switch v := r.(type) {
	case *api.DataplaneInsight:
		return &v.ProxyStatus
	case *api.ZoneIngressInsight:
		return &v.ProxyStatus
	}
	return nil
}

// reapDeadReplicas marks offline, every few seconds until ctx ends, the
// proxies whose insight says they are connected to a replica whose
// heartbeat expired (it died without saying so). Leader only.
func reapDeadReplicas(ctx context.Context, st store.Store, mirror ViewSource, now func() time.Time, log *zap.Logger) error {
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		view, _ := mirror.Current()
		for _, r := range deadReplicasProxies(view, now()) {
			next := api.DeepCopy(r)
			s := statusOf(next)
			s.Connected, s.DisconnectedAt = false, now().UTC()
			if _, err := st.Update(ctx, next); err != nil && !errors.Is(err, store.ErrConflict) && ctx.Err() == nil {
				log.Warn("cannot mark a dead replica's proxy offline", zap.Stringer("insight", api.KeyOf(r)), zap.Error(err))
				continue
			}
			log.Info("proxy offline: its zone CP replica stopped renewing its heartbeat", zap.Stringer("insight", api.KeyOf(r)), zap.String("instance", s.Instance))
		}
	}
}

// deadReplicasProxies lists the insights that say connected to a replica
// whose heartbeat is older than its TTL, or missing and the insight older
// than the TTL.
func deadReplicasProxies(view *store.View, now time.Time) []api.Resource {
	alive := map[string]bool{}
	leases, _ := store.All[*api.Lease](view)
	for _, l := range leases {
		if strings.HasPrefix(l.Name, "presence-") && now.Before(l.RenewTime.Add(time.Duration(l.Duration)*time.Second)) {
			alive[l.Holder] = true
		}
	}
	var out []api.Resource
	check := func(r api.Resource, s api.ProxyStatus) {
		if s.Connected && !alive[s.Instance] && now.Sub(r.GetMeta().ModificationTime) > heartbeatTTL {
			out = append(out, r)
		}
	}
	dps, _ := store.All[*api.DataplaneInsight](view)
	for _, i := range dps {
		check(i, i.ProxyStatus)
	}
	ings, _ := store.All[*api.ZoneIngressInsight](view)
	for _, i := range ings {
		check(i, i.ProxyStatus)
	}
	return out
}
