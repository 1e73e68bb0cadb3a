// Package leader elects one replica of a control plane, through a lease, to
// do work only one replica may do. The lease lives where Leases says: in
// Ursa's store (StoreLeases, an api.Lease) or in a Kubernetes cluster
// (KubeLeases, a coordination.k8s.io/v1 Lease).
package leader

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/store"
)

// Record is a lease as the Elector sees it, whichever backend holds it.
type Record struct {
	// Holder is the identity of the replica holding it; "" when released.
	Holder string
	// Duration is how long the lease lasts without renewal (whole seconds
	// in both backends).
	Duration time.Duration
	// AcquireTime is when Holder took it, RenewTime when it last renewed.
	// Only for people reading the lease: replicas' clocks may disagree, so
	// the Elector never compares them with its own (see Elector).
	AcquireTime, RenewTime time.Time
	// Transitions counts changes of holder.
	Transitions int
	// Version is the backend's opaque version of the record (the store's
	// revision, Kubernetes' resourceVersion). It changes on every write.
	Version string
}

// Errors a Leases returns; the Elector treats both as "not acquired".
var (
	ErrNotFound = errors.New("lease not found")
	ErrConflict = errors.New("lease changed concurrently")
)

// Leases is where leases live: what an Elector needs of a backend. Methods
// are safe for concurrent use.
type Leases interface {
	// Get returns the named lease, or an error wrapping ErrNotFound.
	Get(ctx context.Context, name string) (Record, error)
	// Create creates it (r.Version is ignored); ErrConflict when the name
	// is taken.
	Create(ctx context.Context, name string, r Record) error
	// Update replaces it if its version is still r.Version; ErrConflict
	// when it changed or is gone.
	Update(ctx context.Context, name string, r Record) error
	// Release gives up a lease this replica read as r, so that another
	// replica may take it at once; it leaves a lease changed since alone.
	Release(ctx context.Context, name string, r Record) error
}

// Elector runs a function while this replica holds a lease.
//
// Expiry is judged as client-go's leaderelection judges it, without
// comparing another replica's RenewTime with the local clock: a lease held
// by another replica is expired when this replica has seen no change to it
// (no new Version) for its Duration, by its own monotonic clock. So a
// replica that just started waits one Duration before taking a lease its
// previous holder abandoned, and clock skew between replicas does not
// matter. A released lease (Holder "") or a missing one is taken at once.
type Elector struct {
	// Leases holds the lease; when nil, StoreLeases{Store}.
	Leases Leases
	// Store is the Ursa store, used when Leases is nil.
	Store store.Store
	// Lease names the lease ("vip-allocator").
	Lease string
	// Identity names this replica; unique among replicas.
	Identity string
	// Duration is how long a lease lasts without renewal; it is renewed
	// every Duration/3.
	Duration time.Duration
	Log      *zap.Logger

	// observed is the lease as last read, observedAt when this replica
	// first saw that version. Only Start's goroutine touches them.
	observed   Record
	observedAt time.Time
}

func (e *Elector) leases() Leases {
	if e.Leases != nil {
		return e.Leases
	}
	return StoreLeases{Store: e.Store}
}

// Start competes for the lease until ctx ends, and runs lead with a context
// that ends as soon as the lease may have been lost. lead returning early
// releases nothing: the replica keeps the lease and runs lead again.
func (e *Elector) Start(ctx context.Context, lead func(ctx context.Context) error) error {
	tick := time.NewTicker(e.Duration / 3)
	defer tick.Stop()
	for {
		at := time.Now()
		held, err := e.tryAcquire(ctx)
		if err != nil && !errors.Is(err, ErrConflict) && ctx.Err() == nil {
			e.Log.Warn("cannot read or renew the lease", zap.String("lease", e.Lease), zap.Error(err))
		}
		if held {
			e.Log.Info("took the lease: leading", zap.String("lease", e.Lease))
			if err := e.lead(ctx, tick, lead, at); err != nil && ctx.Err() == nil {
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

// renewDeadline is how long after the start of its last successful renewal
// a leader whose renewals fail (an error, a timeout, a concurrent write:
// a slow or overloaded API server) goes on leading while it tries again,
// as client-go's RenewDeadline. Another replica takes the lease only once
// it has seen it unchanged for a whole Duration, which began no earlier
// than that renewal: stopping a third of a Duration sooner leaves the
// margin for the leader's work to notice its context ending.
func (e *Elector) renewDeadline() time.Duration { return e.Duration * 2 / 3 }

// lead runs lead while renewing, the lease last renewed by an attempt that
// started at renewed; it returns once another replica is seen holding the
// lease, or renewals have failed until renewDeadline.
func (e *Elector) lead(ctx context.Context, tick *time.Ticker, lead func(context.Context) error, renewed time.Time) error {
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
	failing := false
	for {
		// Renewed every Duration/3; after a failure, tried again sooner,
		// so that several attempts fit before the deadline.
		next := tick.C
		if failing {
			next = time.After(e.Duration / 10)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-next:
		}
		at := time.Now()
		// No attempt outlives the deadline.
		actx, acancel := context.WithDeadline(ctx, renewed.Add(e.renewDeadline()))
		held, err := e.tryAcquire(actx)
		acancel()
		failing = err != nil
		switch {
		case held:
			renewed = at
		case err == nil:
			return errors.New("another replica holds it")
		case ctx.Err() != nil:
			return nil
		case time.Since(renewed) >= e.renewDeadline():
			return fmt.Errorf("not renewed for %s: %w", time.Since(renewed).Round(time.Millisecond), err)
		default:
			e.Log.Warn("cannot renew the lease; trying again", zap.String("lease", e.Lease), zap.Error(err),
				zap.Duration("leading_for_at_most", renewed.Add(e.renewDeadline()).Sub(time.Now())))
		}
	}
}

// tryAcquire takes or renews the lease and reports whether this replica
// holds it: false with a nil error when another replica holds it, with an
// error wrapping ErrConflict when another write raced this one.
func (e *Elector) tryAcquire(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, e.Duration/3)
	defer cancel()
	leases := e.leases()
	now := time.Now()
	dur := time.Duration(max(1, int(e.Duration.Seconds()))) * time.Second
	cur, err := leases.Get(ctx, e.Lease)
	if errors.Is(err, ErrNotFound) {
		err = leases.Create(ctx, e.Lease, Record{Holder: e.Identity, Duration: dur, AcquireTime: now, RenewTime: now})
		if err != nil {
			return false, fmt.Errorf("create lease %s: %w", e.Lease, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read lease %s: %w", e.Lease, err)
	}
	if cur.Version != e.observed.Version || cur.Holder != e.observed.Holder || e.observedAt.IsZero() {
		e.observed, e.observedAt = cur, now
	}
	held := cur.Holder == e.Identity
	expired := cur.Holder == "" || now.Sub(e.observedAt) > cur.Duration
	if !held && !expired {
		return false, nil
	}
	want := cur
	want.Holder, want.Duration, want.RenewTime = e.Identity, dur, now
	if !held {
		want.AcquireTime = now
		want.Transitions++
	}
	if err := leases.Update(ctx, e.Lease, want); err != nil {
		if errors.Is(err, ErrNotFound) {
			err = fmt.Errorf("%w (deleted)", ErrConflict)
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
	leases := e.leases()
	cur, err := leases.Get(ctx, e.Lease)
	if err != nil || cur.Holder != e.Identity {
		return
	}
	if err := leases.Release(ctx, e.Lease, cur); err == nil {
		e.Log.Info("released the lease", zap.String("lease", e.Lease))
	}
}
