package dns

import (
	"context"
	"net/netip"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/catalog"
	"github.com/ursamesh/ursa/pkg/store"
)

// Source gives the zone's current catalogue.
type Source interface {
	Current() (*catalog.Catalog, <-chan struct{})
}

// Allocate keeps VIPs assigned as services come and go. It is leader-only:
// with several zone CP replicas, run it under a leader.Elector. It returns
// when ctx ends.
func Allocate(ctx context.Context, st store.Store, src Source, a Allocator, log *zap.Logger) error {
	expiry := time.NewTicker(max(a.HoldBack/4, time.Second))
	defer expiry.Stop()
	for {
		cat, changed := src.Current()
		for mesh, v := range cat.VirtualIPs {
			for svc, e := range v.Entries {
				if ip, err := netip.ParseAddr(e.IP); err != nil || !a.CIDR.Contains(ip) {
					log.Warn("a VIP outside --vip-cidr: the service gets a new one (every replica of a zone CP must run with the same --vip-cidr)",
						zap.String("mesh", mesh), zap.String("service", svc), zap.String("vip", e.IP), zap.Stringer("vip_cidr", a.CIDR))
				}
			}
		}
		updates, err := a.Reconcile(cat.VirtualIPs, cat.Wanted(), store.Now())
		if err != nil {
			log.Error("cannot give every service a VIP", zap.Error(err))
		}
		if len(updates) > 0 {
			puts := make([]api.Resource, len(updates))
			for i, u := range updates {
				puts[i] = u
			}
			if _, err := st.Apply(ctx, puts, nil); err != nil && ctx.Err() == nil {
				log.Warn("cannot store VIPs; retrying", zap.Error(err))
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(time.Second):
				}
				continue
			}
			// Our own write comes back through the catalogue; wait for it
			// rather than reconcile against the stale one.
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-expiry.C:
		}
	}
}

// Resolver keeps the lookup table current from the view.
type Resolver struct {
	table atomic.Pointer[Table]
}

// NewResolver returns a resolver with an empty table.
func NewResolver() *Resolver {
	r := &Resolver{}
	r.table.Store(&Table{byName: map[string]netip.Addr{}, vips: map[MeshService]netip.Addr{}})
	return r
}

// Table returns the current table.
func (r *Resolver) Table() *Table { return r.table.Load() }

// Follow rebuilds the table whenever the catalogue changes, until ctx ends.
func (r *Resolver) Follow(ctx context.Context, src Source) error {
	for {
		cat, changed := src.Current()
		r.table.Store(NewTable(cat))
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}
