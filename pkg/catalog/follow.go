package catalog

import (
	"context"
	"sync"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/store"
)

// Source is the zone's store mirror.
type Source interface {
	Current() (*store.View, <-chan struct{})
}

// Follower builds the zone's catalogue once per change of the mirror's
// View, and publishes it when its hash changed: a change that no catalogue
// reader can see (a proxy's ACKed versions in its insight, a lease renewal)
// wakes nobody. Readers take the current Catalog and a channel closed when
// a newer one is published, as they would from the mirror.
type Follower struct {
	zone string
	src  Source
	log  *zap.Logger

	mu      sync.Mutex
	cur     *Catalog
	view    *store.View
	changed chan struct{}
	ready   chan struct{}
	once    sync.Once
}

// NewFollower returns a Follower of src for zone; Start runs it. Until the
// first catalogue is built, Current returns an empty one.
func NewFollower(zone string, src Source, log *zap.Logger) *Follower {
	return &Follower{zone: zone, src: src, log: log, cur: build(zone, 0, inputs{}), changed: make(chan struct{}), ready: make(chan struct{})}
}

// Current returns the latest catalogue, the View it was built from, and a
// channel closed when a newer catalogue is published.
func (f *Follower) Current() (*Catalog, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur, f.changed
}

// CurrentView is Current with the View the catalogue was built from.
func (f *Follower) CurrentView() (*Catalog, *store.View, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur, f.view, f.changed
}

// Ready is closed once the first catalogue is published.
func (f *Follower) Ready() <-chan struct{} { return f.ready }

// sameInputs reports whether two views of the mirror hold the same
// resources of every type a catalogue is built from (a lease renewal, say,
// changes neither).
func (f *Follower) sameInputs(last, view *store.View) bool {
	if last == nil {
		return false
	}
	for _, t := range Types() {
		if !view.Same(last, t) {
			return false
		}
	}
	return true
}

// Start follows the mirror until ctx ends. A View the catalogue cannot be
// built from (the mirror does not follow one of its types) is a wiring
// mistake: Start returns the error.
func (f *Follower) Start(ctx context.Context) error {
	var last *store.View
	for {
		view, changed := f.src.Current()
		if f.sameInputs(last, view) {
			select {
			case <-ctx.Done():
				return nil
			case <-changed:
				continue
			}
		}
		last = view
		cat, err := Build(f.zone, view)
		if err != nil {
			return err
		}
		f.mu.Lock()
		publish := cat.Hash != f.cur.Hash || f.view == nil
		f.view = view
		if publish {
			f.cur = cat
			close(f.changed)
			f.changed = make(chan struct{})
		}
		f.mu.Unlock()
		if publish {
			f.once.Do(func() { close(f.ready) })
			f.log.Debug("catalogue", zap.Stringer("catalog", cat))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}
