package zone

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/xds"
)

// Presence timings. A replica renews its heartbeat every heartbeatEvery; a
// replica whose heartbeat the leader has not seen renewed for heartbeatTTL
// is gone, and the leader marks its proxies offline.
const (
	heartbeatEvery = 5 * time.Second
	heartbeatTTL   = 15 * time.Second
	// heartbeatRetry is how soon a heartbeat that could not be written is
	// tried again.
	heartbeatRetry = 500 * time.Millisecond
	// reconnectGrace is how long after a process starts its sweep leaves
	// alone what a previous process under its instance name left
	// connected: those proxies are reconnecting (a restart), and until
	// they have, their endpoints stay where their callers reach them. It
	// is the reaper's wait for a replica that stopped, so a restarted
	// replica and a stopped one give their proxies the same time.
	reconnectGrace = heartbeatTTL
	// ackFlushEvery bounds how often a proxy's ACKed versions and NACKs are
	// written (every push changes every proxy's ACKs: written at once, a
	// push to 10k proxies would be 10k more writes), and how often the
	// store is checked for insights that no longer say what this replica
	// knows; connects and disconnects are written at once. Kuma's default
	// is 10 s.
	ackFlushEvery = 5 * time.Second
)

// Presence writes what the xDS server observes on its streams to the store:
// one DataplaneInsight (ZoneIngressInsight for an ingress) per proxy,
// connected or not, to which replica, the versions it ACKed, its last NACK.
// Every replica of the zone reads the same insights, so all agree which
// proxies are online. It also keeps this replica's heartbeat, from which
// the leader tells the proxies of a replica that died.
//
// An insight belongs to the proxy's latest connection (its ConnectedSince):
// a replica writes one only while it holds that connection or a later one,
// and every write is conditional on the version it decided from, so a
// replica whose stream went stale (the proxy reconnected elsewhere) never
// overwrites the newer connection's insight, and a disconnection is written
// only over the very connection that closed. Each flush also repairs what
// the store says of the connections held here, should another writer (the
// leader's reaper, say) have got it wrong.
//
// Observe (called on the streams' goroutines) only records; Start writes,
// coalescing: a burst of connections is one store transaction.
type Presence struct {
	st       store.Store
	mirror   ViewSource
	instance string
	log      *zap.Logger
	now      func() time.Time
	// flushEvery is ackFlushEvery (tests shorten it).
	flushEvery time.Duration

	mu    sync.Mutex
	nodes map[string]*nodePresence // by node id: connected here, or gone and not yet written
	dirty map[string]struct{}      // nodes to write
	// registered are the nodes registered here (by when) and not yet
	// connected: their fresh insight is no previous process's.
	registered map[string]time.Time
	kick       chan struct{}
	// started is when this process's first sweep ran (sweepPrevious'
	// goroutine alone touches it).
	started time.Time
	// run is Start's context: once it is done, the replica is stopping
	// and the streams it ends are not the proxies leaving.
	run atomic.Pointer[context.Context]
}

// stopping reports whether Start's context is done: the process is
// stopping, and a stream that ends now (its gRPC server stopped, say) is
// not the proxy leaving.
func (p *Presence) stopping() bool {
	c := p.run.Load()
	return c != nil && (*c).Err() != nil
}

// ViewSource is the zone's store mirror.
type ViewSource interface {
	Current() (*store.View, <-chan struct{})
}

// nodePresence is one proxy's status as this replica last observed it.
type nodePresence struct {
	kind   xds.Kind
	status api.ProxyStatus
	// gone: disconnected, to be written (conditionally) and then
	// forgotten.
	gone bool
}

// NewPresence returns the presence of this replica (instance), writing to
// st and reading what is stored from mirror; the xDS server is given it
// with SetPresence, and Start runs it.
func NewPresence(st store.Store, mirror ViewSource, instance string, log *zap.Logger) *Presence {
	return &Presence{st: st, mirror: mirror, instance: instance, log: log, now: time.Now, flushEvery: ackFlushEvery,
		nodes: map[string]*nodePresence{}, dirty: map[string]struct{}{}, registered: map[string]time.Time{}, kick: make(chan struct{}, 1)}
}

// Observe records a stream event (xds.Presence).
func (p *Presence) Observe(e xds.StreamEvent) {
	at := e.At.UTC().Truncate(time.Microsecond) // as the store keeps times
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.nodes[e.Node]
	urgent := false
	switch e.Op {
	case xds.OpConnected:
		delete(p.registered, e.Node)
		n = &nodePresence{kind: e.Kind, status: api.ProxyStatus{Connected: true, Instance: p.instance,
			Proxyless: e.Kind == xds.KindProxyless, ConnectedSince: at, Acked: map[string]string{}}}
		p.nodes[e.Node] = n
		urgent = true
	case xds.OpDisconnected:
		if n == nil || e.Stopping || p.stopping() {
			// A stream this replica's stop ended: the proxy reconnects
			// (shutdown). The xDS server says so of the streams its
			// context ended; stopping covers those a stop of the
			// process's components cut.
			return
		}
		n.status.Connected, n.status.DisconnectedAt, n.gone = false, at, true
		urgent = true
	case xds.OpAcked:
		typ := internTypeURL(e.TypeURL)
		if n == nil || n.gone || typ == "" {
			return
		}
		n.status.Acked[typ] = clean(e.Version, 128)
	case xds.OpNacked:
		if n == nil || n.gone {
			return
		}
		n.status.Nacks++
		n.status.LastNack, n.status.LastNackType = clean(e.Reason, 1024), clean(e.TypeURL, 128)
	}
	p.dirty[e.Node] = struct{}{}
	if urgent {
		select {
		case p.kick <- struct{}{}:
		default:
		}
	}
}

// registering is told of a registration here, which the start-up sweep
// spares until the stream's connection is observed (or for a minute).
func (p *Presence) registering(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	for other, at := range p.registered {
		if now.Sub(at) > time.Minute {
			delete(p.registered, other)
		}
	}
	p.registered[id] = now
}

// connectedSince returns when the connection held here to a proxy began,
// and whether one is held.
func (p *Presence) connectedSince(id string) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := p.nodes[id]; n != nil && !n.gone {
		return n.status.ConnectedSince, true
	}
	return time.Time{}, false
}

// internTypeURL returns the package's own copy of a known xDS type URL, so
// that 10k proxies' insights do not each hold the strings their requests
// were decoded into; "" for any other.
func internTypeURL(u string) string {
	for _, t := range [...]string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType, resource.SecretType} {
		if u == t {
			return t
		}
	}
	return ""
}

// clean makes a string a proxy sent fit to store: valid UTF-8 without NUL
// (PostgreSQL's jsonb refuses it), at most max bytes.
func clean(s string, max int) string {
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
	if len(s) > max {
		s = strings.ToValidUTF8(s[:max], "")
	}
	return s
}

// Start writes the heartbeat and the insights until ctx ends; then it
// writes what is pending and leaves (shutdown). Before its first flush, and
// at every tick, it marks offline what a previous process under this
// instance name (once it has had reconnectGrace to reconnect), or a
// registration here whose stream was refused, left connected.
func (p *Presence) Start(ctx context.Context) error {
	p.run.Store(&ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { p.beat(ctx) }) // apart, so that a long flush never delays it
	if r, ok := p.mirror.(interface{ Ready() <-chan struct{} }); ok {
		select {
		case <-ctx.Done():
			return nil
		case <-r.Ready():
		}
	}
	p.sweepPrevious(ctx)
	flush := time.NewTicker(p.flushEvery)
	defer flush.Stop()
	for {
		select {
		case <-ctx.Done():
			p.shutdown()
			return nil
		case <-p.kick:
			p.flush(ctx)
		case <-flush.C:
			// Every tick, not only until done: a registration whose stream
			// was refused (its write's answer lost, say) leaves an insight
			// connected here that nobody holds, which the reaper cannot
			// mark offline, this instance's heartbeat being alive.
			p.sweepPrevious(ctx)
			p.repair()
			p.flush(ctx)
		}
	}
}

// beat renews the heartbeat until ctx ends.
func (p *Presence) beat(ctx context.Context) {
	// A fixed rate (the renewals' times are heartbeatEvery apart, whatever
	// a write takes: the reaper reads a longer gap as an outage), and
	// after a failed write again soon, so that once the store is back
	// every replica renews at once, before anyone judges it gone.
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	for {
		wait := t.C
		if err := p.heartbeat(ctx); err != nil && ctx.Err() == nil {
			p.log.Warn("cannot write this replica's heartbeat", zap.Error(err))
			retry := time.NewTimer(heartbeatRetry)
			select {
			case <-ctx.Done():
				retry.Stop()
				return
			case <-retry.C:
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-wait:
		}
	}
}

// shutdown writes what is pending, and leaves this replica's proxies
// connected and its heartbeat to expire. A replica going away is no sign
// that its proxies are: marked offline, they would lose their endpoints at
// every caller until each had reconnected (to another replica, or to this
// one restarted), so that a zone CP's restart cost traffic. Each proxy that
// reconnects is written connected by the replica it reaches; the rest are
// marked offline heartbeatTTL after the last heartbeat, by the leader's
// reaper, or by this instance restarted (sweepPrevious), as after a crash.
func (p *Presence) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p.flush(ctx)
}

// heartbeatPrefix starts the name of every replica's heartbeat Lease; no
// leader election's lease does.
const heartbeatPrefix = "heartbeat-"

// heartbeatName is the Lease a replica renews while it runs: named after a
// hash of its exact instance name (which it holds), so no two replicas'
// names collide however their instance names are spelled.
func heartbeatName(instance string) string {
	sum := sha256.Sum256([]byte(instance))
	return heartbeatPrefix + hex.EncodeToString(sum[:8])
}

func (p *Presence) heartbeat(ctx context.Context) error {
	l := &api.Lease{Meta: api.Meta{Type: "Lease", Name: heartbeatName(p.instance)}, Holder: p.instance,
		RenewTime: p.now().UTC().Truncate(time.Microsecond), Duration: int(heartbeatTTL / time.Second)}
	_, err := p.st.Apply(ctx, []api.Resource{l}, nil)
	return err
}

// insightOf is the resource that records a proxy's status.
func insightOf(id string, kind xds.Kind, status api.ProxyStatus) (api.Resource, error) {
	status.Acked = maps.Clone(status.Acked)
	if kind == xds.KindIngress {
		return &api.ZoneIngressInsight{Meta: api.Meta{Type: "ZoneIngressInsight", Name: id}, ProxyStatus: status}, nil
	}
	mesh, name, err := xds.ParseNodeID(id)
	if err != nil {
		return nil, err
	}
	return &api.DataplaneInsight{Meta: api.Meta{Type: "DataplaneInsight", Mesh: mesh, Name: name}, ProxyStatus: status}, nil
}

// pending is one insight to write.
type pending struct {
	id   string
	want api.Resource // what this replica would store
	gone bool
}

// decide returns the put that writes want over cur (nil: nothing stored),
// conditional on cur's version, or nil when it must not be written: a later
// connection (elsewhere) holds the proxy, or the connection that closed is
// no longer the one the store records.
func (p *Presence) decide(want api.Resource, gone bool, cur api.Resource) api.Resource {
	mine := api.StatusOf(want)
	var st *api.ProxyStatus
	if cur != nil {
		st = api.StatusOf(cur)
	}
	switch {
	case gone && (st == nil || !st.Connected || st.Instance != p.instance || st.ConnectedSince.After(mine.ConnectedSince)):
		// Written only over a connection of this replica's that is not
		// later than the one that closed: those are all closed (a proxy
		// that flapped before a flush leaves its first connection stored).
		return nil
	case !gone && laterElsewhere(st, p.instance, mine.ConnectedSince):
		return nil // the proxy connected again since, elsewhere
	case cur != nil && api.SameContent(cur, want):
		return nil
	}
	put := api.DeepCopy(want)
	if cur != nil {
		put.GetMeta().Version = cur.GetMeta().Version
	}
	return put
}

// laterElsewhere reports whether st records a connection to another replica
// that is still open and began after since: only that may keep a
// connection held here from being written. A record that says
// disconnected never does, whatever its times say (replicas' clocks may
// disagree).
func laterElsewhere(st *api.ProxyStatus, self string, since time.Time) bool {
	if st == nil || !st.Connected || st.Instance == self {
		return false
	}
	// Equal times (microseconds, two clocks) go to the greater instance
	// name, or the two would overwrite each other for ever.
	return st.ConnectedSince.After(since) || (st.ConnectedSince.Equal(since) && st.Instance > self)
}

// flush writes the dirty statuses, each conditional on what the store held
// when it was decided, in one transaction; when another writer got in
// between (a conflict), it decides again from what the store holds now.
func (p *Presence) flush(ctx context.Context) {
	view, _ := p.mirror.Current()
	// Copied under the lock, worked out without it: Observe waits on it,
	// and the xDS server's callbacks on Observe.
	type dirtyNode struct {
		id     string
		kind   xds.Kind
		status api.ProxyStatus
		gone   bool
	}
	var dirty []dirtyNode
	p.mu.Lock()
	for id := range p.dirty {
		delete(p.dirty, id)
		n := p.nodes[id]
		if n == nil {
			continue
		}
		st := n.status
		st.Acked = maps.Clone(st.Acked)
		dirty = append(dirty, dirtyNode{id, n.kind, st, n.gone})
		if n.gone {
			delete(p.nodes, id) // written now, or put back by redirty
		}
	}
	p.mu.Unlock()
	var todo, later []pending
	var dropped []string
	for _, d := range dirty {
		r, err := insightOf(d.id, d.kind, d.status)
		if err == nil {
			err = api.Validate(r)
		}
		if err != nil {
			p.log.Warn("a proxy's insight cannot be stored; it is left out", zap.String("proxy", d.id), zap.Error(err))
			dropped = append(dropped, d.id)
			continue
		}
		if m := r.GetMeta().Mesh; m != "" && !d.gone { // a gone one is decided from the store below
			if _, ok, _ := store.Get[*api.Mesh](view, "", m); !ok {
				later = append(later, pending{id: d.id, want: r}) // the mesh has not reached this zone yet
				continue
			}
		}
		todo = append(todo, pending{id: d.id, want: r, gone: d.gone})
	}
	if len(dropped) > 0 || len(later) > 0 {
		p.mu.Lock()
		for _, id := range dropped {
			delete(p.nodes, id)
		}
		for _, t := range later {
			if _, ok := p.nodes[t.id]; ok {
				p.dirty[t.id] = struct{}{}
			}
		}
		p.mu.Unlock()
	}
	if len(todo) == 0 {
		return
	}
	// What is stored, as the mirror has it; what the mirror does not have
	// (yet) is read from the store, or a write could not be conditional on
	// it.
	inMirror := func(r api.Resource) (api.Resource, bool) {
		m, err := view.Items(r.GetMeta().Type)
		if err != nil {
			return nil, false
		}
		cur, ok := m[api.KeyOf(r)]
		return cur, ok
	}
	held := func(r api.Resource) api.Resource { cur, _ := inMirror(r); return cur }
	fromStore := false
	fromTheStore := func() bool {
		stored, err := p.stored(ctx, todo)
		if err != nil {
			p.log.Warn("cannot read proxies' insights; will retry", zap.Error(err))
			p.redirty(todo)
			return false
		}
		held, fromStore = func(r api.Resource) api.Resource { return stored[api.KeyOf(r)] }, true
		return true
	}
	for _, t := range todo {
		if _, ok := inMirror(t.want); !ok {
			if !fromTheStore() {
				return
			}
			break
		}
	}
	for attempt := 0; ; attempt++ {
		var puts []api.Resource
		skipped := false
		for _, t := range todo {
			if put := p.decide(t.want, t.gone, held(t.want)); put != nil {
				puts = append(puts, put)
			} else if t.gone {
				skipped = true
			}
		}
		if skipped && !fromStore {
			// A disconnection is forgotten once decided: decide it from
			// the store, not from a mirror that may not have this
			// replica's last write yet.
			if !fromTheStore() {
				return
			}
			continue
		}
		if len(puts) == 0 {
			return
		}
		err := p.apply(ctx, puts)
		if err == nil {
			return
		}
		if ctx.Err() != nil || !errors.Is(err, store.ErrConflict) || attempt == 3 {
			if ctx.Err() == nil {
				p.log.Warn("cannot write proxies' insights; will retry", zap.Int("count", len(puts)), zap.Error(err))
			}
			p.redirty(todo)
			return
		}
		// Decide again from the store itself (the mirror may lag).
		if !fromTheStore() {
			return
		}
	}
}

// apply writes puts in one transaction. When the store refuses the batch
// for another reason than a conflict or being unavailable, it halves it to
// find the insights it refuses on their own; those it logs and drops, so
// that one proxy's bad status cannot keep every other from being written.
// If the store refuses every one of them, the fault is not theirs: nothing
// is dropped and the error returned, to try again.
func (p *Presence) apply(ctx context.Context, puts []api.Resource) error {
	_, err := p.st.Apply(ctx, puts, nil)
	if err == nil || errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrUnavailable) || ctx.Err() != nil || len(puts) == 1 {
		return err
	}
	var refused []api.Resource
	written := 0
	var split func(puts []api.Resource) error
	split = func(puts []api.Resource) error {
		_, err := p.st.Apply(ctx, puts, nil)
		switch {
		case err == nil:
			written += len(puts)
			return nil
		case errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrUnavailable) || ctx.Err() != nil:
			return err
		case len(puts) == 1:
			refused = append(refused, puts[0])
			return nil
		}
		half := len(puts) / 2
		return errors.Join(split(puts[:half]), split(puts[half:]))
	}
	half := len(puts) / 2
	if err := errors.Join(split(puts[:half]), split(puts[half:])); err != nil {
		return err
	}
	if written == 0 {
		return err // refused whole and in every part: the store's fault
	}
	for _, r := range refused {
		p.log.Warn("the store refuses a proxy's insight; it is left out", zap.Stringer("insight", api.KeyOf(r)), zap.Error(err))
	}
	return nil
}

// stored reads the insights of todo from the store: one by one when they
// are few, else all of their types at once.
func (p *Presence) stored(ctx context.Context, todo []pending) (map[api.Key]api.Resource, error) {
	out := map[api.Key]api.Resource{}
	if len(todo) <= 64 {
		for _, t := range todo {
			r, err := p.st.Get(ctx, api.KeyOf(t.want))
			switch {
			case err == nil:
				out[api.KeyOf(r)] = r
			case !errors.Is(err, store.ErrNotFound):
				return nil, err
			}
		}
		return out, nil
	}
	types := map[string]bool{}
	for _, t := range todo {
		types[t.want.GetMeta().Type] = true
	}
	for typ := range types {
		res, err := p.st.List(ctx, store.ListOptions{Type: typ})
		if err != nil {
			return nil, err
		}
		for _, r := range res.Items {
			out[api.KeyOf(r)] = r
		}
	}
	return out, nil
}

// redirty marks what could not be written to be written again; a
// disconnection that could not be written is kept to try again.
func (p *Presence) redirty(todo []pending) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range todo {
		if _, ok := p.nodes[t.id]; !ok && t.gone {
			mine := api.StatusOf(t.want)
			kind := xds.KindSidecar
			if t.want.GetMeta().Type == "ZoneIngressInsight" {
				kind = xds.KindIngress
			}
			p.nodes[t.id] = &nodePresence{kind: kind, status: *mine, gone: true}
		}
		if _, ok := p.nodes[t.id]; ok {
			p.dirty[t.id] = struct{}{}
		}
	}
}

// repair marks dirty every proxy connected here whose stored insight does
// not say so while no later connection holds it: another writer (the
// reaper, after a long store outage) got it wrong, and only this replica
// can put it right.
func (p *Presence) repair() {
	view, _ := p.mirror.Current()
	type held struct {
		id    string
		kind  xds.Kind
		since time.Time
	}
	var connected []held
	p.mu.Lock()
	for id, n := range p.nodes {
		if !n.gone {
			connected = append(connected, held{id, n.kind, n.status.ConnectedSince})
		}
	}
	p.mu.Unlock()
	var wrong []string
	for _, h := range connected {
		r, err := insightOf(h.id, h.kind, api.ProxyStatus{})
		if err != nil {
			continue
		}
		m, err := view.Items(r.GetMeta().Type)
		if err != nil {
			continue
		}
		cur := m[api.KeyOf(r)]
		if cur == nil {
			wrong = append(wrong, h.id)
			continue
		}
		st := api.StatusOf(cur)
		if laterElsewhere(st, p.instance, h.since) {
			continue
		}
		if !st.Connected || st.Instance != p.instance || !st.ConnectedSince.Equal(h.since) {
			wrong = append(wrong, h.id)
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, id := range wrong {
		if n := p.nodes[id]; n != nil && !n.gone {
			p.dirty[id] = struct{}{}
		}
	}
}

// sweepPrevious marks offline the insights a previous process under this
// instance name left connected (a restart keeps a StatefulSet pod's name):
// their connections ended with that process, and those of their proxies
// that have not reconnected (here or elsewhere) within reconnectGrace of
// this process's start are gone. So too the insights this
// process's own registrations left connected for streams it never held
// (refused after their write, or gone before their connection was
// observed): nobody else would. Proxies connected to this process, or
// registered here within the minute, are left alone. Each write is
// conditional; on a conflict (a proxy reconnected elsewhere meanwhile) it
// reads the store and decides again. It reports whether it is done; Start
// calls it at every tick.
func (p *Presence) sweepPrevious(ctx context.Context) bool {
	view, _ := p.mirror.Current()
	source := func(typ string) ([]api.Resource, error) {
		items, err := view.Items(typ)
		if err != nil {
			return nil, err
		}
		out := make([]api.Resource, 0, len(items))
		for _, r := range items {
			out = append(out, r)
		}
		return out, nil
	}
	if p.started.IsZero() {
		p.started = p.now() // its monotonic reading times the grace
	}
	waiting := p.now().Sub(p.started) < reconnectGrace
	now := p.now().UTC().Truncate(time.Microsecond)
	for attempt := 0; attempt < 5 && ctx.Err() == nil; attempt++ {
		var puts []api.Resource
		for _, typ := range []string{"DataplaneInsight", "ZoneIngressInsight"} {
			items, err := source(typ)
			if err != nil {
				p.log.Warn("cannot read insights to mark a previous process's proxies offline", zap.Error(err))
				return false
			}
			for _, r := range items {
				st := api.StatusOf(r)
				if !st.Connected || st.Instance != p.instance || p.holdsInsight(r) {
					continue
				}
				if waiting && st.ConnectedSince.Before(p.started) {
					continue // a previous process's proxy, maybe reconnecting
				}
				next := api.DeepCopy(r) // carries its version: conditional
				ns := api.StatusOf(next)
				// Disconnected now, as far as anyone could tell: a replica
				// that holds the proxy by an earlier connection has deferred
				// to this one until now, and repairs it at its next flush,
				// which a disconnection dated back (to when this process
				// started, a minute or more ago) would leave the leader's
				// offline removal no time for.
				ns.Connected, ns.DisconnectedAt = false, now
				puts = append(puts, next)
			}
		}
		if len(puts) == 0 {
			return true
		}
		_, err := p.st.Apply(ctx, puts, nil)
		if err == nil {
			p.log.Info("marked offline the proxies a previous process of this instance, or a refused registration, left connected", zap.Int("count", len(puts)))
			return true
		}
		if !errors.Is(err, store.ErrConflict) {
			p.log.Warn("cannot mark a previous process's proxies offline; will retry", zap.Int("count", len(puts)), zap.Error(err))
			return false
		}
		source = func(typ string) ([]api.Resource, error) {
			res, err := p.st.List(ctx, store.ListOptions{Type: typ})
			return res.Items, err
		}
	}
	return false
}

// holdsInsight reports whether the proxy an insight is about is connected
// to this process.
func (p *Presence) holdsInsight(r api.Resource) bool {
	m := r.GetMeta()
	id := m.Name
	if m.Mesh != "" {
		id = xds.NodeID(m.Mesh, m.Name)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if at, ok := p.registered[id]; ok && p.now().Sub(at) <= time.Minute {
		return true // registered here just now: its insight is this process's
	}
	n, ok := p.nodes[id]
	return ok && !n.gone
}
