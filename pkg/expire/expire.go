// Package expire deletes resources once the time in their ursa.io/expires
// label has passed: a drill's drains, revocations of tokens that have
// expired anyway.
package expire

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

// Run deletes each resource of types whose ursa.io/expires label (Unix
// seconds) has passed, waking at the next expiry or when the resources
// change, until ctx ends. Every replica of a control plane runs it: a
// delete conditioned on the version seen makes a second replica's delete,
// or one racing a renewal (a drill's drain renewed), a no-op. The global
// runs it over the policies a timed operation writes and the revocations
// of tokens; a zone over its own revocations.
func Run(ctx context.Context, st store.Store, src Source, types []string, log *zap.Logger) error {
	return (&Expirer{Store: st, Source: src, Types: types, Log: log}).Run(ctx)
}

// Source is where the expirer reads the expiring resources from: a view
// that holds types, and a channel closed when a newer one is there (a
// store.Mirror).
type Source interface {
	Current() (*store.View, <-chan struct{})
}

// Expirer is Run's loop, with its clock injectable for tests.
type Expirer struct {
	Store  store.Store
	Source Source
	Types  []string
	// Skip, when set, leaves the resources it reports alone (a zone's
	// copies of what the global deletes itself).
	Skip func(api.Resource) bool
	Log  *zap.Logger
	// Now reads the clock and WakeAt returns a channel that receives once
	// the clock reads t or later. nil means the real clock for either.
	Now    func() time.Time
	WakeAt func(t time.Time) <-chan time.Time
}

func (e *Expirer) clock() time.Time {
	if e.Now != nil {
		return e.Now()
	}
	return time.Now()
}

func (e *Expirer) timer(at time.Time) <-chan time.Time {
	if e.WakeAt != nil {
		return e.WakeAt(at)
	}
	return time.After(time.Until(at))
}

// Run runs the loop until ctx ends.
func (e *Expirer) Run(ctx context.Context) error {
	for {
		view, changed := e.Source.Current()
		// One reading per pass: the timer below is then set from the
		// same instant the expiries were compared with, so a clock that
		// jumps meanwhile (a test's) cannot make it miss the next one.
		now := e.clock()
		var next time.Time
		for _, typ := range e.Types {
			items, err := view.Items(typ)
			if err != nil {
				return fmt.Errorf("expire: %w", err)
			}
			for key, r := range items {
				at, ok := expiresAt(r)
				if !ok || e.Skip != nil && e.Skip(r) {
					continue
				}
				if !at.After(now) {
					err := e.Store.Delete(ctx, key, r.GetMeta().Version)
					if err == nil {
						e.Log.Info("expired; deleted", zap.String("type", typ), zap.String("mesh", key.Mesh), zap.String("name", key.Name))
						continue
					}
					if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) {
						continue // another replica deleted it, or it was renewed: the change wakes us
					}
					e.Log.Warn("cannot delete an expired resource; trying again", zap.String("name", key.Name), zap.Error(err))
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
