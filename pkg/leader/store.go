package leader

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// StoreLeases keeps leases as api.Lease resources in an Ursa store (memory
// or PostgreSQL). Record.Version is the store's Version in decimal; a
// released lease is deleted. AcquireTime and Transitions are not kept.
type StoreLeases struct {
	Store store.Store
}

var _ Leases = StoreLeases{}

// Get implements Leases.
func (s StoreLeases) Get(ctx context.Context, name string) (Record, error) {
	r, err := s.Store.Get(ctx, api.Key{Type: "Lease", Name: name})
	if errors.Is(err, store.ErrNotFound) {
		return Record{}, fmt.Errorf("lease %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return Record{}, err
	}
	l, ok := r.(*api.Lease)
	if !ok {
		return Record{}, fmt.Errorf("lease %s: the store holds a %T", name, r)
	}
	return Record{Holder: l.Holder, RenewTime: l.RenewTime, Duration: secs(l.Duration),
		Version: strconv.FormatInt(l.Version, 10)}, nil
}

// Create implements Leases.
func (s StoreLeases) Create(ctx context.Context, name string, r Record) error {
	_, err := s.Store.Create(ctx, s.lease(name, r, 0))
	if errors.Is(err, store.ErrAlreadyExists) {
		return fmt.Errorf("create lease %s: %w", name, ErrConflict)
	}
	return err
}

// Update implements Leases.
func (s StoreLeases) Update(ctx context.Context, name string, r Record) error {
	v, err := strconv.ParseInt(r.Version, 10, 64)
	if err != nil {
		return fmt.Errorf("update lease %s: version %q: %w", name, r.Version, err)
	}
	_, err = s.Store.Update(ctx, s.lease(name, r, v))
	if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("update lease %s: %w", name, ErrConflict)
	}
	return err
}

// Release implements Leases: it deletes the lease if unchanged.
func (s StoreLeases) Release(ctx context.Context, name string, r Record) error {
	v, err := strconv.ParseInt(r.Version, 10, 64)
	if err != nil {
		return fmt.Errorf("release lease %s: version %q: %w", name, r.Version, err)
	}
	return s.Store.Delete(ctx, api.Key{Type: "Lease", Name: name}, v)
}

func (StoreLeases) lease(name string, r Record, version int64) *api.Lease {
	return &api.Lease{Meta: api.Meta{Type: "Lease", Name: name, Version: version}, Holder: r.Holder,
		RenewTime: store.Now(), Duration: max(1, int(r.Duration.Seconds()))}
}

func secs(n int) time.Duration { return time.Duration(n) * time.Second }
