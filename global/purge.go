package global

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// purgeZones deletes what a zone sent the global (its Dataplanes,
// ZoneIngresses and their insights, labelled ursa.io/origin=zone and
// ursa.io/zone=Z, and its ZoneInsight) once the Zone Z is gone: a deleted
// zone whose control plane is stopped would otherwise stay in every other
// zone, its ingress above all, through which they would go on sending its
// share of the traffic. It purges the zones that disappear from src, and,
// as it starts, those whose Zone went while no replica ran it, and tries a
// purge that failed again. A zone's control plane that connects again is
// registered anew once nothing it sent is left (the KDS server waits for
// the purge), and sends it all again. Every replica runs it: a delete
// conditioned on the version listed makes a second replica's a no-op.
func purgeZones(ctx context.Context, st store.Store, src zoneSource, log *zap.Logger) error {
	select {
	case <-ctx.Done():
		return nil
	case <-src.Ready(): // an empty view before it would name no zone at all
	}
	view, changed := src.Current()
	zones, err := view.Items("Zone")
	if err != nil {
		return fmt.Errorf("purge zones: %w", err)
	}
	known := zoneNames(zones)
	// What the store holds, not the view, which may not have a zone
	// registered a moment ago yet.
	registered, err := st.List(ctx, store.ListOptions{Type: "Zone"})
	if err != nil {
		return fmt.Errorf("purge zones: %w", err)
	}
	holding, err := zonesHolding(ctx, st)
	if err != nil {
		return fmt.Errorf("purge zones: %w", err)
	}
	pending := map[string]bool{} // zones to purge, a failed purge's again
	for _, z := range holding {
		if !slices.ContainsFunc(registered.Items, func(r api.Resource) bool { return r.GetMeta().Name == z }) {
			pending[z] = true
		}
	}
	for {
		for _, z := range slices.Sorted(maps.Keys(pending)) {
			if purgeZone(ctx, st, z, log) == nil {
				delete(pending, z)
			}
		}
		var retry <-chan time.Time
		if len(pending) > 0 {
			retry = time.After(purgeRetry)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-retry:
		}
		view, changed = src.Current()
		zones, err := view.Items("Zone")
		if err != nil {
			return fmt.Errorf("purge zones: %w", err)
		}
		now := zoneNames(zones)
		for z := range known {
			if !now[z] {
				pending[z] = true
			}
		}
		known = now
	}
}

// zoneSource is where purgeZones follows the Zones: a mirror's view, a
// channel closed when a newer one is there, and one closed once the first
// view is complete.
type zoneSource interface {
	Current() (*store.View, <-chan struct{})
	Ready() <-chan struct{}
}

// purgeRetry is how long a purge that failed waits to try again (the
// zone's control plane cannot register it again until it is done).
const purgeRetry = 5 * time.Second

func zoneNames(zones map[api.Key]api.Resource) map[string]bool {
	names := map[string]bool{}
	for k := range zones {
		names[k.Name] = true
	}
	return names
}

// zonesHolding lists the zones the global holds resources of.
func zonesHolding(ctx context.Context, st store.Store) ([]string, error) {
	seen := map[string]bool{}
	for _, d := range kds.ZoneToGlobalTypes() {
		res, err := st.List(ctx, store.ListOptions{Type: d.Type, Labels: map[string]string{api.LabelOrigin: api.OriginZone}})
		if err != nil {
			return nil, err
		}
		for _, r := range res.Items {
			if z := r.GetMeta().Labels[api.LabelZone]; z != "" {
				seen[z] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(seen)), nil
}

// purgeZone deletes what zone sent, unless its Zone is back. The KDS server
// registers a zone again only once nothing it sent is left, so nothing
// purged here is a registered zone's. A failure is logged and returned:
// the caller tries again.
func purgeZone(ctx context.Context, st store.Store, zone string, log *zap.Logger) error {
	deleted := 0
	var failed error
	for _, d := range kds.ZoneToGlobalTypes() {
		if _, err := st.Get(ctx, api.Key{Type: "Zone", Name: zone}); err == nil {
			log.Info("zone registered again: its resources stay", zap.String("zone", zone))
			return nil
		}
		res, err := st.List(ctx, store.ListOptions{Type: d.Type, Labels: kds.SentBy(zone)})
		if err != nil {
			log.Warn("cannot list a deleted zone's resources", zap.String("zone", zone), zap.String("type", d.Type), zap.Error(err))
			return err
		}
		for _, r := range res.Items {
			err := st.Delete(ctx, api.KeyOf(r), r.GetMeta().Version)
			switch {
			case err == nil:
				deleted++
			case errors.Is(err, store.ErrNotFound), errors.Is(err, store.ErrConflict):
				// Another replica's purge, or a write of the zone's just
				// before it was deleted: the next pass takes it.
				if errors.Is(err, store.ErrConflict) {
					failed = err
				}
			default:
				log.Warn("cannot delete a deleted zone's resource", zap.String("zone", zone), zap.Stringer("resource", api.KeyOf(r)), zap.Error(err))
				failed = err
			}
		}
	}
	if _, err := st.Get(ctx, api.Key{Type: "Zone", Name: zone}); errors.Is(err, store.ErrNotFound) {
		if err := st.Delete(ctx, api.Key{Type: "ZoneInsight", Name: zone}, 0); err != nil && !errors.Is(err, store.ErrNotFound) {
			log.Warn("cannot delete a deleted zone's insight", zap.String("zone", zone), zap.Error(err))
		}
	}
	log.Info("zone deleted: what it sent is deleted too", zap.String("zone", zone), zap.Int("resources", deleted))
	return failed
}
