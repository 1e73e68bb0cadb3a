package store

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
)

// ErrNotMirrored means a View was asked for a type its Mirror does not
// follow: a wiring mistake, which must not read as "there are none".
var ErrNotMirrored = errors.New("type not mirrored")

// View is an immutable copy of some types of a store as of a revision.
// Nobody modifies a View or what it holds.
type View struct {
	Revision int64
	byType   map[string]map[api.Key]api.Resource
}

// NewView returns a View holding rs, for tests and tools that build one
// without a store; types lists the types it holds (those of rs are added).
func NewView(rs []api.Resource, types ...string) *View {
	v := &View{byType: map[string]map[api.Key]api.Resource{}}
	for _, t := range types {
		v.byType[t] = map[api.Key]api.Resource{}
	}
	for _, r := range rs {
		t := r.GetMeta().Type
		if v.byType[t] == nil {
			v.byType[t] = map[api.Key]api.Resource{}
		}
		v.byType[t][api.KeyOf(r)] = r
	}
	return v
}

// Items returns the resources of one type, by key; ErrNotMirrored when the
// view does not hold the type. The map must not be modified.
func (v *View) Items(typ string) (map[api.Key]api.Resource, error) {
	m, ok := v.byType[typ]
	if !ok {
		return nil, fmt.Errorf("%s: %w", typ, ErrNotMirrored)
	}
	return m, nil
}

// Holds reports whether the view holds typ.
func (v *View) Holds(typ string) bool {
	_, ok := v.byType[typ]
	return ok
}

// Same reports whether v and o hold the same resources of typ (both
// views of one Mirror: a type no event touched keeps its map).
func (v *View) Same(o *View, typ string) bool {
	if v == nil || o == nil {
		return false
	}
	a, b := v.byType[typ], o.byType[typ]
	return a != nil && b != nil && reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

// typeName is the API type of T, a pointer to a resource struct: the
// struct's name is the type's name (*api.Dataplane → "Dataplane").
func typeName[T api.Resource]() string {
	return reflect.TypeFor[T]().Elem().Name()
}

// All returns the view's resources of type T, sorted by key (mesh, then
// name); ErrNotMirrored when the view does not hold the type.
func All[T api.Resource](v *View) ([]T, error) {
	typ := typeName[T]()
	m, err := v.Items(typ)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(m))
	for _, r := range m {
		out = append(out, r.(T))
	}
	slices.SortFunc(out, func(a, b T) int {
		am, bm := a.GetMeta(), b.GetMeta()
		if c := strings.Compare(am.Mesh, bm.Mesh); c != 0 {
			return c
		}
		return strings.Compare(am.Name, bm.Name)
	})
	return out, nil
}

// Get returns the view's resource of type T in mesh (empty for global
// types) named name, and whether there is one; ErrNotMirrored when the view
// does not hold the type.
func Get[T api.Resource](v *View, mesh, name string) (T, bool, error) {
	var zero T
	typ := typeName[T]()
	m, err := v.Items(typ)
	if err != nil {
		return zero, false, err
	}
	r, ok := m[api.Key{Type: typ, Mesh: mesh, Name: name}]
	if !ok {
		return zero, false, nil
	}
	return r.(T), true, nil
}

// Mirror keeps a View of some types of a store up to date: it lists them,
// then follows the store's changes, and lists again if it falls behind.
// Readers take the current View and a channel closed when a newer one is
// published. A burst of changes is published as one View: each event
// updates a working copy, and a View is cut from it as soon as the last
// one is published, copying only the types that changed. A View is never
// cut in the middle of a transaction (Event.More): a reader sees all of a
// transaction's changes or none. So is the first View after a listing of
// a store that lists its types as of one revision (a Snapshotter); of
// another, the first View comes from one List per type, and a write
// between two of them shows in the later type only until its events
// arrive (such a store, Kubernetes, has no transactions either).
type Mirror struct {
	st    Store
	types []string
	log   *zap.Logger

	mu      sync.Mutex
	view    *View
	changed chan struct{}
	ready   chan struct{}
	once    sync.Once

	// work is the state after every event applied so far; dirty are the
	// types changed since the last published View; open is set while work
	// holds part of a transaction, when no View may be cut from it, and
	// owed when a cut was refused for that (the transaction's end cuts at
	// once: waiting for the publisher again could find the next one open,
	// and so on for as long as transactions come back to back). Guarded by
	// wmu.
	wmu   sync.Mutex
	work  map[string]map[api.Key]api.Resource
	dirty map[string]bool
	open  bool
	owed  bool
	rev   int64
	kick  chan struct{}
}

// NewMirror returns a Mirror of types; Start runs it.
func NewMirror(st Store, types []string, log *zap.Logger) *Mirror {
	v := &View{byType: map[string]map[api.Key]api.Resource{}}
	for _, t := range types {
		v.byType[t] = map[api.Key]api.Resource{}
	}
	return &Mirror{st: st, types: types, log: log, view: v, changed: make(chan struct{}), ready: make(chan struct{}),
		kick: make(chan struct{}, 1)}
}

// Types returns the types the mirror follows.
func (m *Mirror) Types() []string { return slices.Clone(m.types) }

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
	pubCtx, stop := context.WithCancel(ctx)
	defer stop()
	go m.publishLoop(pubCtx)
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
	work := map[string]map[api.Key]api.Resource{}
	since, rev := int64(-1), int64(0)
	lists, _, err := ListTypes(ctx, m.st, m.types)
	if err != nil {
		return err
	}
	for i, t := range m.types {
		res := lists[i]
		items := make(map[api.Key]api.Resource, len(res.Items))
		for _, r := range res.Items {
			items[api.KeyOf(r)] = r
		}
		work[t], listed[t] = items, res.Revision
		if since < 0 || res.Revision < since {
			since = res.Revision
		}
		rev = max(rev, res.Revision)
	}
	m.wmu.Lock()
	m.work, m.rev, m.dirty, m.open, m.owed = work, rev, map[string]bool{}, false, false
	for _, t := range m.types {
		m.dirty[t] = true
	}
	m.wmu.Unlock()
	m.cut()
	b.Reset()
	return m.st.Watch(ctx, since, func(e Event) error {
		typ := e.Resource.GetMeta().Type
		m.wmu.Lock()
		// A transaction's last change ends it, and the View is the
		// store's as of it, even when it is a change this mirror skips (a
		// type it does not follow, or one listed after it).
		m.open = e.More
		m.rev = max(m.rev, e.Revision)
		if lr, ok := listed[typ]; ok && e.Revision > lr {
			if e.Op == OpDelete {
				delete(m.work[typ], api.KeyOf(e.Resource))
			} else {
				m.work[typ][api.KeyOf(e.Resource)] = e.Resource
			}
			m.dirty[typ] = true
		}
		kick := !m.open && len(m.dirty) > 0
		if kick && m.owed {
			m.cutLocked()
			kick = false
		}
		m.wmu.Unlock()
		if kick {
			select {
			case m.kick <- struct{}{}:
			default:
			}
		}
		return nil
	})
}

// publishLoop cuts a View whenever events arrived since the last one.
func (m *Mirror) publishLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.kick:
			m.cut()
		}
	}
}

// cut publishes a View of the working copy, sharing the maps of the types
// that did not change, unless it holds half a transaction (the event that
// ends it cuts then). It holds wmu throughout, so cuts are serial and
// each starts from the View the previous one published.
func (m *Mirror) cut() {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	m.cutLocked()
}

// cutLocked is cut, its caller holding wmu.
func (m *Mirror) cutLocked() {
	if len(m.dirty) == 0 {
		return
	}
	if m.open {
		m.owed = true
		return
	}
	m.owed = false
	m.mu.Lock()
	old := m.view
	m.mu.Unlock()
	byType := maps.Clone(old.byType)
	for t := range m.dirty {
		byType[t] = maps.Clone(m.work[t])
	}
	clear(m.dirty)
	m.publish(&View{Revision: m.rev, byType: byType})
}

func (m *Mirror) publish(v *View) {
	m.mu.Lock()
	m.view = v
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
	m.once.Do(func() { close(m.ready) })
}
