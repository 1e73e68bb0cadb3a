package kds

import (
	"context"
	"fmt"
	"maps"
	"sync"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// Snapshot is an immutable view of a Cache: every entry of every type, as of
// a store revision. Readers share it; nobody modifies it.
type Snapshot struct {
	Revision int64
	// Types holds one set per type URL. A set is replaced, never changed,
	// so a Sender can tell an unchanged type by pointer.
	Types map[string]*TypeSet
}

// TypeSet is the entries of one type, by wire name.
type TypeSet struct {
	Entries map[string]*Entry
}

// Source is what a Sender sends from.
type Source interface {
	// Current returns the latest snapshot and a channel closed when a newer
	// one is published.
	Current() (*Snapshot, <-chan struct{})
	// Ready is closed once the snapshots hold the store: before, Current's
	// is empty, which is not the store's state (a sender diffing a peer
	// against it would tell the peer to delete all it holds).
	Ready() <-chan struct{}
}

// Cache follows a store through a store.Mirror and publishes snapshots of
// the resources of its types that include admits, encoded for the wire. One
// Cache serves every stream of a process; a resource the Mirror did not
// change keeps its encoded Entry, so a change costs one encoding.
type Cache struct {
	mirror *store.Mirror
	// ownMirror: Start runs the mirror too.
	ownMirror bool
	types     []api.Descriptor
	byType    map[string]api.Descriptor
	include   func(api.Resource) bool
	// transform, when set, is what is sent of a resource (a summary), and
	// sameSent whether two resources send the same.
	transform func(api.Resource) api.Resource
	sameSent  func(a, b api.Resource) bool
	log       *zap.Logger
	// zoneGate, when set (SendEnabledZonesOnly), leaves out the
	// ZoneIngresses of zones not registered and enabled in the mirror;
	// enabled are those zones, as of the last rebuild.
	zoneGate bool
	enabled  map[string]bool

	mu      sync.Mutex
	snap    *Snapshot
	changed chan struct{}
	ready   chan struct{}
	once    sync.Once
}

// NewCache returns a cache of the given types, following a mirror of its
// own; include (nil: everything) picks the resources to keep. Start runs
// it, and its mirror.
func NewCache(st store.Store, types []api.Descriptor, include func(api.Resource) bool, log *zap.Logger) *Cache {
	names := make([]string, len(types))
	for i, d := range types {
		names[i] = d.Type
	}
	c := NewCacheOf(store.NewMirror(st, names, log), types, include, log)
	c.ownMirror = true
	return c
}

// NewCacheOf is NewCache following the process's mirror, which must follow
// every type of types and which the caller runs.
func NewCacheOf(mirror *store.Mirror, types []api.Descriptor, include func(api.Resource) bool, log *zap.Logger) *Cache {
	if include == nil {
		include = func(api.Resource) bool { return true }
	}
	snap := &Snapshot{Types: map[string]*TypeSet{}}
	byType := map[string]api.Descriptor{}
	for _, d := range types {
		snap.Types[TypeURL(d.Type)] = &TypeSet{Entries: map[string]*Entry{}}
		byType[d.Type] = d
	}
	return &Cache{mirror: mirror, types: types, byType: byType, include: include, log: log, snap: snap,
		changed: make(chan struct{}), ready: make(chan struct{})}
}

// SetTransform makes the cache send fn(r) of each resource r instead of r:
// a summary. fn must not modify r. same, when set, tells whether two
// resources give the same summary, so that a change the summary leaves out
// costs no encoding. Call it before Start.
func (c *Cache) SetTransform(fn func(api.Resource) api.Resource, same func(a, b api.Resource) bool) {
	c.transform = fn
	c.sameSent = func(a, b api.Resource) bool { return a != nil && same != nil && same(a, b) }
}

// SendEnabledZonesOnly makes the cache leave out the ZoneIngresses of zones
// that are not registered (a Zone in the mirror, which must follow Zones)
// and enabled: the global then offers other zones no ingress of a disabled
// or deleted zone, and they send it no traffic. Call it before Start.
func (c *Cache) SendEnabledZonesOnly() { c.zoneGate = true }

// Current implements Source.
func (c *Cache) Current() (*Snapshot, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.snap, c.changed
}

// Ready is closed once the cache has loaded the store.
func (c *Cache) Ready() <-chan struct{} { return c.ready }

// Start follows the store until ctx ends.
func (c *Cache) Start(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c.ownMirror {
		wg.Go(func() { c.mirror.Start(ctx) })
	}
	select {
	case <-ctx.Done():
		return nil
	case <-c.mirror.Ready():
	}
	seen := map[string]map[api.Key]api.Resource{} // by type: what the current entries were built from
	var last *store.View
	for {
		view, changed := c.mirror.Current()
		// A shared mirror changes for types the cache does not keep too:
		// those wake nobody.
		if !c.unchanged(last, view) {
			if err := c.rebuild(view, seen); err != nil {
				return err
			}
			last = view
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// unchanged reports whether every type the cache keeps is the same in both
// views of its mirror.
func (c *Cache) unchanged(last, view *store.View) bool {
	if last == nil {
		return false
	}
	for _, d := range c.types {
		if !view.Same(last, d.Type) {
			return false
		}
	}
	return !c.zoneGate || view.Same(last, "Zone")
}

// enabledZones returns the zones registered and enabled in view.
func enabledZones(view *store.View) (map[string]bool, error) {
	zones, err := view.Items("Zone")
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for k, r := range zones {
		if z, ok := r.(*api.Zone); ok && z.IsEnabled() {
			out[k.Name] = true
		}
	}
	return out, nil
}

// rebuild publishes a snapshot of view, re-encoding only what changed.
func (c *Cache) rebuild(view *store.View, seen map[string]map[api.Key]api.Resource) error {
	c.mu.Lock()
	old := c.snap
	c.mu.Unlock()
	types := map[string]*TypeSet{}
	zonesChanged := false
	if c.zoneGate {
		enabled, err := enabledZones(view)
		if err != nil {
			return fmt.Errorf("kds cache: %w", err)
		}
		zonesChanged = !maps.Equal(enabled, c.enabled)
		c.enabled = enabled
	}
	for _, d := range c.types {
		url := TypeURL(d.Type)
		items, err := view.Items(d.Type)
		if err != nil {
			return fmt.Errorf("kds cache: %w", err)
		}
		gated := c.zoneGate && d.Type == "ZoneIngress"
		prev := seen[d.Type]
		same := len(items) == len(prev) && !(gated && zonesChanged)
		for k, r := range items {
			if prev[k] != r {
				same = false
				break
			}
		}
		if same && old.Types[url] != nil {
			types[url] = old.Types[url]
			continue
		}
		entries := make(map[string]*Entry, len(items))
		for k, r := range items {
			name := WireName(k)
			if ing, ok := r.(*api.ZoneIngress); ok && gated && !c.enabled[ing.Zone] {
				continue
			}
			if e, ok := old.Types[url].Entries[name]; ok && (prev[k] == r || (c.sameSent != nil && c.sameSent(prev[k], r))) {
				entries[name] = e
			} else if e := c.entry(r); e != nil {
				entries[name] = e
			}
		}
		types[url], seen[d.Type] = &TypeSet{Entries: entries}, items
	}
	c.publish(&Snapshot{Revision: view.Revision, Types: types})
	return nil
}

// entry encodes r as its type's sync rules say, or returns nil when the
// cache does not keep it.
func (c *Cache) entry(r api.Resource) *Entry {
	if !c.include(r) {
		return nil
	}
	d := c.byType[r.GetMeta().Type]
	var to string
	if d.KDS == api.SyncGlobalToOwnZone {
		z, ok := r.(api.Zoned)
		if !ok || z.OwnerZone() == "" {
			c.log.Error("resource names no zone to send it to; it is not synced", zap.String("resource", api.KeyOf(r).String()))
			return nil
		}
		to = z.OwnerZone()
	}
	if d.Redact != nil {
		r = d.Redact(r)
	}
	if c.transform != nil {
		r = c.transform(r)
	}
	e, err := NewEntry(WireName(api.KeyOf(r)), r, r.GetMeta().Labels[api.LabelZone])
	if err != nil {
		c.log.Error("cannot encode resource; it is not synced", zap.String("resource", api.KeyOf(r).String()), zap.Error(err))
		return nil
	}
	e.For = to
	return e
}

func (c *Cache) publish(s *Snapshot) {
	c.mu.Lock()
	c.snap = s
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	c.once.Do(func() { close(c.ready) })
}
