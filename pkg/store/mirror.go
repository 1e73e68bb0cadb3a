package store

import (
	"context"
	"errors"
	"maps"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
)

// View is an immutable copy of some types of a store as of a revision.
// Nobody modifies a View or what it holds.
type View struct {
	Revision int64
	byType   map[string]map[api.Key]api.Resource
}

// Items returns the resources of one type, by key. The map must not be
// modified.
func (v *View) Items(typ string) map[api.Key]api.Resource { return v.byType[typ] }

// Mirror keeps a View of some types of a store up to date: it lists them,
// then follows the store's changes, and lists again if it falls behind.
// Readers take the current View and a channel closed when a newer one is
// published.
type Mirror struct {
	st    Store
	types []string
	log   *zap.Logger

	mu      sync.Mutex
	view    *View
	changed chan struct{}
	ready   chan struct{}
	once    sync.Once
}

// NewMirror returns a Mirror of types; Start runs it.
func NewMirror(st Store, types []string, log *zap.Logger) *Mirror {
	v := &View{byType: map[string]map[api.Key]api.Resource{}}
	for _, t := range types {
		v.byType[t] = map[api.Key]api.Resource{}
	}
	return &Mirror{st: st, types: types, log: log, view: v, changed: make(chan struct{}), ready: make(chan struct{})}
}

// Current returns the latest View and a channel closed when it is replaced.
func (m *Mirror) Current() (*View, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.view, m.changed
}

// Ready is closed once the first View of the store is published.
func (m *Mirror) Ready() <-chan struct{} { return m.ready }

// Start follows the store until ctx ends.
func (m *Mirror) Start(ctx context.Context) error {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = 50*time.Millisecond, 5*time.Second
	for {
		err := m.follow(ctx, b)
		if ctx.Err() != nil {
			return nil
		}
		delay := b.NextBackOff()
		if errors.Is(err, ErrCompacted) {
			delay = 0
		}
		m.log.Warn("mirror lost the store's change stream; listing again", zap.Error(err), zap.Duration("retry_in", delay))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
	}
}

func (m *Mirror) follow(ctx context.Context, b *backoff.ExponentialBackOff) error {
	listed := map[string]int64{}
	v := &View{byType: map[string]map[api.Key]api.Resource{}}
	since := int64(-1)
	for _, t := range m.types {
		res, err := m.st.List(ctx, ListOptions{Type: t})
		if err != nil {
			return err
		}
		items := make(map[api.Key]api.Resource, len(res.Items))
		for _, r := range res.Items {
			items[api.KeyOf(r)] = r
		}
		v.byType[t], listed[t] = items, res.Revision
		if since < 0 || res.Revision < since {
			since = res.Revision
		}
		v.Revision = max(v.Revision, res.Revision)
	}
	m.publish(v)
	b.Reset()
	return m.st.Watch(ctx, since, func(e Event) error {
		typ := e.Resource.GetMeta().Type
		if lr, ok := listed[typ]; !ok || e.Revision <= lr {
			return nil
		}
		m.mu.Lock()
		old := m.view
		m.mu.Unlock()
		items := maps.Clone(old.byType[typ])
		if e.Op == OpDelete {
			delete(items, api.KeyOf(e.Resource))
		} else {
			items[api.KeyOf(e.Resource)] = e.Resource
		}
		byType := maps.Clone(old.byType)
		byType[typ] = items
		m.publish(&View{Revision: e.Revision, byType: byType})
		return nil
	})
}

func (m *Mirror) publish(v *View) {
	m.mu.Lock()
	m.view = v
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
	m.once.Do(func() { close(m.ready) })
}
