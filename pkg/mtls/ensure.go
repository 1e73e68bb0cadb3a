package mtls

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// Source gives the current view of a store.
type Source interface {
	Current() (*store.View, <-chan struct{})
}

// EnsureCAs gives every mesh that turns mTLS on its built-in CA, once,
// until ctx ends. Replicas racing to create it are harmless: the store keeps
// the first, and KDS carries it to every zone.
func EnsureCAs(ctx context.Context, st store.Store, mirror Source, log *zap.Logger) error {
	for {
		view, changed := mirror.Current()
		meshes, err := store.All[*api.Mesh](view)
		if err != nil {
			return fmt.Errorf("ensure mesh CAs: %w", err)
		}
		for _, m := range meshes {
			if !m.MTLSEnabled() {
				continue
			}
			if _, ok, err := store.Get[*api.MeshCA](view, m.Name, CAName); err != nil {
				return fmt.Errorf("ensure mesh CAs: %w", err)
			} else if ok {
				continue
			}
			ca, err := NewCA(m.Name, store.Now())
			if err != nil {
				log.Error("cannot make a mesh CA", zap.String("mesh", m.Name), zap.Error(err))
				continue
			}
			if _, err := st.Create(ctx, ca); err != nil && !errors.Is(err, store.ErrAlreadyExists) {
				log.Warn("cannot store a mesh CA; will retry on the next change", zap.String("mesh", m.Name), zap.Error(err))
				continue
			}
			log.Info("created the mesh's built-in CA", zap.String("mesh", m.Name))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}
