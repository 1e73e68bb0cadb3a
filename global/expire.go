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
// write with an expiry.
func expiringTypes() []string { return []string{"Failover", "TrafficRoute", "TrafficPermission"} }

// expire deletes each resource whose ursa.io/expires label (Unix seconds)
// has passed, waking at the next expiry or when the resources change, until
// ctx ends. Every replica runs it: a delete conditioned on the version seen
// makes a second replica's delete, or one racing a renewed drain, a no-op.
func expire(ctx context.Context, st store.Store, src interface {
	Current() (*store.View, <-chan struct{})
}, now func() time.Time, log *zap.Logger) error {
	for {
		view, changed := src.Current()
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
				if !at.After(now()) {
					err := st.Delete(ctx, key, r.GetMeta().Version)
					if err == nil {
						log.Info("expired; deleted", zap.String("type", typ), zap.String("mesh", key.Mesh), zap.String("name", key.Name))
						continue
					}
					if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) {
						continue // another replica deleted it, or it was renewed: the change wakes us
					}
					log.Warn("cannot delete an expired resource; trying again", zap.String("name", key.Name), zap.Error(err))
					at = now().Add(time.Second)
				}
				if next.IsZero() || at.Before(next) {
					next = at
				}
			}
		}
		var timer <-chan time.Time
		if !next.IsZero() {
			timer = time.After(max(next.Sub(now()), 10*time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-timer:
		}
	}
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
