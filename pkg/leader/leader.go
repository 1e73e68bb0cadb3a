// Package leader elects one replica of a control plane, through a Lease in
// the store, to do work only one replica may do.
package leader

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// Elector runs a function while this replica holds a lease.
type Elector struct {
	Store store.Store
	// Lease names the lease ("vip-allocator").
	Lease string
	// Identity names this replica; unique among replicas.
	Identity string
	// Duration is how long a lease lasts without renewal; it is renewed
	// every Duration/3.
	Duration time.Duration
	Log      *zap.Logger
}

// Start competes for the lease until ctx ends, and runs lead with a context
// that ends as soon as the lease may have been lost. lead returning early
// releases nothing: the replica keeps the lease and runs lead again.
func (e *Elector) Start(ctx context.Context, lead func(ctx context.Context) error) error {
	tick := time.NewTicker(e.Duration / 3)
	defer tick.Stop()
	for {
		held, err := e.tryAcquire(ctx)
		if err != nil && ctx.Err() == nil {
			e.Log.Warn("cannot read or renew the lease", zap.String("lease", e.Lease), zap.Error(err))
		}
		if held {
			e.Log.Info("took the lease: leading", zap.String("lease", e.Lease))
			if err := e.lead(ctx, tick, lead); err != nil && ctx.Err() == nil {
				e.Log.Warn("lost the lease", zap.String("lease", e.Lease), zap.Error(err))
			}
			if ctx.Err() != nil {
				e.release()
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// lead runs lead while renewing; it returns when a renewal fails.
func (e *Elector) lead(ctx context.Context, tick *time.Ticker, lead func(context.Context) error) error {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		for lctx.Err() == nil {
			if err := lead(lctx); err != nil && lctx.Err() == nil {
				e.Log.Warn("leader work failed; restarting it", zap.Error(err))
				select {
				case <-lctx.Done():
				case <-time.After(time.Second):
				}
			}
		}
		done <- nil
	}()
	defer func() { cancel(); <-done }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		held, err := e.tryAcquire(ctx)
		if err != nil {
			return err
		}
		if !held {
			return errors.New("another replica holds it")
		}
	}
}

// tryAcquire takes or renews the lease and reports whether this replica
// holds it.
func (e *Elector) tryAcquire(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, e.Duration/3)
	defer cancel()
	key := api.Key{Type: "Lease", Name: e.Lease}
	now := store.Now()
	want := &api.Lease{Meta: api.Meta{Type: "Lease", Name: e.Lease}, Holder: e.Identity, RenewTime: now,
		Duration: max(1, int(e.Duration.Seconds()))}
	cur, err := e.Store.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		_, err = e.Store.Create(ctx, want)
		if errors.Is(err, store.ErrAlreadyExists) {
			return false, nil
		}
		return err == nil, err
	}
	if err != nil {
		return false, fmt.Errorf("read lease %s: %w", e.Lease, err)
	}
	l := cur.(*api.Lease)
	expired := now.After(l.RenewTime.Add(time.Duration(l.Duration) * time.Second))
	if l.Holder != e.Identity && !expired {
		return false, nil
	}
	want.Version = l.Version
	if _, err := e.Store.Update(ctx, want); err != nil {
		if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
			return false, nil
		}
		return false, fmt.Errorf("renew lease %s: %w", e.Lease, err)
	}
	return true, nil
}

// release gives the lease up on a clean stop, so that another replica takes
// over at once rather than when it expires.
func (e *Elector) release() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	cur, err := e.Store.Get(ctx, api.Key{Type: "Lease", Name: e.Lease})
	if err != nil || cur.(*api.Lease).Holder != e.Identity {
		return
	}
	if err := e.Store.Delete(ctx, api.KeyOf(cur), cur.GetMeta().Version); err == nil {
		e.Log.Info("released the lease", zap.String("lease", e.Lease))
	}
}
