package global

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// expiringTypes are the policies a timed operation (a drill's drain) may
// write with an expiry, and the revocations of user tokens, which go once
// their tokens would have expired.
func expiringTypes() []string {
	return []string{"Failover", "TrafficRoute", "TrafficPermission", "UserTokenRevocation"}
}

// expire deletes each resource whose ursa.io/expires label (Unix seconds)
// has passed, waking at the next expiry or when the resources change, until
// ctx ends. Every replica runs it: a delete conditioned on the version seen
// makes a second replica's delete, or one racing a renewed drain, a no-op.
// It reads the time from now and sleeps on the real clock.
func expire(ctx context.Context, st store.Store, src expirySource, now func() time.Time, log *zap.Logger) error {
	return (&expirer{store: st, src: src, now: now, log: log}).run(ctx)
}

// expirySource is where the expirer reads the expiring resources from: a
// view, and a channel closed when a newer one is there.
type expirySource interface {
	Current() (*store.View, <-chan struct{})
}

// expirer is expire's loop, with its clock injectable for tests.
type expirer struct {
	store store.Store
	src   expirySource
	log   *zap.Logger
	// now reads the clock and wakeAt returns a channel that receives once
	// the clock reads t or later. nil means the real clock for either.
	now    func() time.Time
	wakeAt func(t time.Time) <-chan time.Time
}

func (e *expirer) clock() time.Time {
	if e.now != nil {
		return e.now()
	}
	return time.Now()
}

func (e *expirer) timer(at time.Time) <-chan time.Time {
	if e.wakeAt != nil {
		return e.wakeAt(at)
	}
	return time.After(time.Until(at))
}

func (e *expirer) run(ctx context.Context) error {
	for {
		view, changed := e.src.Current()
		// One reading per pass: the timer below is then set from the
		// same instant the expiries were compared with, so a clock that
		// jumps meanwhile (a test's) cannot make it miss the next one.
		now := e.clock()
		var next time.Time
		for _, typ := range expiringTypes() {
			items, err := view.Items(typ)
			if err != nil {
				return fmt.Errorf("expire: %w", err)
			}
			for key, r := range items {
				at, ok := expiresAt(r)
				if !ok {
					continue
				}
				if !at.After(now) {
					err := e.store.Delete(ctx, key, r.GetMeta().Version)
					if err == nil {
						e.log.Info("expired; deleted", zap.String("type", typ), zap.String("mesh", key.Mesh), zap.String("name", key.Name))
						continue
					}
					if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) {
						continue // another replica deleted it, or it was renewed: the change wakes us
					}
					e.log.Warn("cannot delete an expired resource; trying again", zap.String("name", key.Name), zap.Error(err))
					at = now.Add(time.Second)
				}
				if next.IsZero() || at.Before(next) {
					next = at
				}
			}
		}
		var timer <-chan time.Time
		if !next.IsZero() {
			// At least 10 ms from now, so that a retry never spins.
			timer = e.timer(maxTime(next, now.Add(10*time.Millisecond)))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-timer:
		}
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// expiresAt reads a resource's ursa.io/expires label.
func expiresAt(r api.Resource) (time.Time, bool) {
	v, ok := r.GetMeta().Labels[api.LabelExpires]
	if !ok {
		return time.Time{}, false
	}
	sec, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(sec, 0), true
}
