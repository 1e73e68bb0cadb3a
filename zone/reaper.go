package zone

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/run"
	"github.com/ursamesh/ursa/pkg/store"
)

// reaper marks offline, every few seconds while this replica leads, the
// proxies whose insight says they are connected to a replica whose
// heartbeat it has not seen renewed for heartbeatTTL (it died without
// saying so). It judges by its own clock when it saw each heartbeat's
// version change, so replicas' clocks may disagree. Every replica watches
// the heartbeats (watch), so that a new leader judges at once from what it
// has seen while another led.
type reaper struct {
	st     store.Store
	mirror ViewSource
	now    func() time.Time
	log    *zap.Logger
	// self is this replica's instance: its own heartbeat, which it knows
	// it renews, tells whether the view is current (a store outage or a
	// stalled mirror changes no heartbeat, not even its own).
	self string

	mu    sync.Mutex
	since time.Time            // when it started watching
	seen  map[string]heartbeat // by holder
}

// newReaper returns the reaper of replica self.
func newReaper(st store.Store, mirror ViewSource, now func() time.Time, self string, log *zap.Logger) *reaper {
	return &reaper{st: st, mirror: mirror, now: now, log: log, self: self, since: now(), seen: map[string]heartbeat{}}
}

// watch follows the heartbeats every few seconds until ctx ends. Every
// replica.
func (r *reaper) watch(ctx context.Context) error {
	return run.Every(ctx, heartbeatEvery, func(context.Context) error {
		view, _ := r.mirror.Current()
		if _, err := r.dead(view); err != nil {
			r.log.Warn("cannot read heartbeats", zap.Error(err))
		}
		return nil
	})
}

// heartbeat is when the reaper last saw a replica's heartbeat change, and
// the renewal time it then held.
type heartbeat struct {
	version int64
	at      time.Time
	renew   time.Time
}

// lead reaps every few seconds until ctx ends. Leader only.
func (r *reaper) lead(ctx context.Context) error {
	return run.Every(ctx, heartbeatEvery, func(ctx context.Context) error {
		view, _ := r.mirror.Current()
		if err := r.reap(ctx, view); err != nil && ctx.Err() == nil {
			r.log.Warn("cannot mark dead replicas' proxies offline", zap.Error(err))
		}
		return nil
	})
}

// reap marks the dead replicas' proxies in view offline.
func (r *reaper) reap(ctx context.Context, view *store.View) error {
	dead, err := r.dead(view)
	if err != nil {
		return err
	}
	r.forgetHeartbeats(ctx, view)
	if len(dead) == 0 {
		return nil
	}
	var puts []api.Resource
	now := r.now().UTC().Truncate(time.Microsecond) // as the store keeps times
	for _, in := range dead {
		next := api.DeepCopy(in) // carries its version: written only over what was judged
		st := api.StatusOf(next)
		st.Connected, st.DisconnectedAt = false, now
		puts = append(puts, next)
	}
	if _, err := r.st.Apply(ctx, puts, nil); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return nil // some changed meanwhile: judged again at the next tick
		}
		return err
	}
	for _, in := range dead {
		r.log.Info("proxy offline: its zone CP replica stopped renewing its heartbeat", zap.Stringer("insight", api.KeyOf(in)), zap.String("instance", api.StatusOf(in).Instance))
	}
	return nil
}

// forgetHeartbeats deletes the heartbeats of replicas gone for long (a
// Deployment's pods come and go under new names), each conditional on the
// version it saw last.
func (r *reaper) forgetHeartbeats(ctx context.Context, view *store.View) {
	const after = 10 * heartbeatTTL
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if now.Sub(r.since) < after {
		return
	}
	leases, err := store.All[*api.Lease](view)
	if err != nil {
		return
	}
	for _, l := range leases {
		h, ok := r.seen[l.Holder]
		if l.Name != heartbeatName(l.Holder) || l.Holder == r.self || !ok || now.Sub(h.at) < after {
			continue
		}
		if err := r.st.Delete(ctx, api.KeyOf(l), l.Version); err != nil && !errors.Is(err, store.ErrConflict) && !errors.Is(err, store.ErrNotFound) {
			r.log.Warn("cannot delete a gone replica's heartbeat", zap.String("instance", l.Holder), zap.Error(err))
		}
	}
}

// dead lists the insights in view that say connected to a replica whose
// heartbeat has not changed for heartbeatTTL, as this reaper saw; none
// until it has watched for that long.
func (r *reaper) dead(view *store.View) ([]api.Resource, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	leases, err := store.All[*api.Lease](view)
	if err != nil {
		return nil, err
	}
	present := map[string]bool{}
	// outage: this replica's own heartbeat was renewed after a gap in
	// which nobody could renew theirs (the store was away): the others'
	// next renewals are still to come. Judged by the renewals' own times
	// (this replica's clock, heartbeatEvery apart while writes succeed),
	// not by when the reaper happened to look.
	outage := false
	for _, l := range leases {
		if l.Name != heartbeatName(l.Holder) {
			continue // not a heartbeat
		}
		present[l.Holder] = true
		if h, ok := r.seen[l.Holder]; !ok || h.version != l.Version {
			if l.Holder == r.self && ok && !h.renew.IsZero() && l.RenewTime.Sub(h.renew) > heartbeatEvery+heartbeatEvery/2 {
				outage = true
			}
			r.seen[l.Holder] = heartbeat{version: l.Version, at: now, renew: l.RenewTime}
		}
	}
	for holder := range r.seen {
		if !present[holder] {
			delete(r.seen, holder)
		}
	}
	if own, ok := r.seen[r.self]; r.self != "" && (outage || !ok || now.Sub(own.at) > 2*heartbeatEvery+heartbeatEvery/2) {
		// The view is stale, or was until now: judge nobody by it, and
		// start again.
		for holder, h := range r.seen {
			h.at = now
			r.seen[holder] = h
		}
		r.since = now
		return nil, nil
	}
	if now.Sub(r.since) < heartbeatTTL {
		return nil, nil
	}
	alive := func(instance string) bool {
		h, ok := r.seen[instance]
		return ok && now.Sub(h.at) < heartbeatTTL
	}
	var out []api.Resource
	for _, typ := range []string{"DataplaneInsight", "ZoneIngressInsight"} {
		items, err := view.Items(typ)
		if err != nil {
			return nil, err
		}
		for _, in := range items {
			if st := api.StatusOf(in); st.Connected && !alive(st.Instance) {
				out = append(out, in)
			}
		}
	}
	return out, nil
}
