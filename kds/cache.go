package kds

import (
	"context"
	"errors"
	"maps"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
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
}

// Cache follows a store — list once, then watch — and publishes snapshots of
// the resources of its types that include admits, encoded for the wire. One
// Cache serves every stream of a process.
type Cache struct {
	st      store.Store
	types   []api.Descriptor
	include func(api.Resource) bool
	log     *zap.Logger

	mu      sync.Mutex
	snap    *Snapshot
	changed chan struct{}
	ready   chan struct{}
	once    sync.Once
}

// NewCache returns a cache of the given types; include (nil: everything)
// picks the resources to keep. Start runs it.
func NewCache(st store.Store, types []api.Descriptor, include func(api.Resource) bool, log *zap.Logger) *Cache {
	if include == nil {
		include = func(api.Resource) bool { return true }
	}
	snap := &Snapshot{Types: map[string]*TypeSet{}}
	for _, d := range types {
		snap.Types[TypeURL(d.Type)] = &TypeSet{Entries: map[string]*Entry{}}
	}
	return &Cache{st: st, types: types, include: include, log: log, snap: snap,
		changed: make(chan struct{}), ready: make(chan struct{})}
}

// Current implements Source.
func (c *Cache) Current() (*Snapshot, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.snap, c.changed
}

// Ready is closed once the cache has loaded the store.
func (c *Cache) Ready() <-chan struct{} { return c.ready }

// Start follows the store until ctx ends. It lists again when the store no
// longer has the changes it needs, and retries while the store is down.
func (c *Cache) Start(ctx context.Context) error {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = 50*time.Millisecond, 5*time.Second
	for {
		err := c.follow(ctx, b)
		if ctx.Err() != nil {
			return nil
		}
		delay := b.NextBackOff()
		if errors.Is(err, store.ErrCompacted) {
			delay = 0
		}
		c.log.Warn("cache lost the store's change stream; listing again", zap.Error(err), zap.Duration("retry_in", delay))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
	}
}

func (c *Cache) follow(ctx context.Context, b *backoff.ExponentialBackOff) error {
	listed := map[string]int64{}
	sets := map[string]map[string]*Entry{}
	since := int64(-1)
	for _, d := range c.types {
		res, err := c.st.List(ctx, store.ListOptions{Type: d.Type})
		if err != nil {
			return err
		}
		entries := map[string]*Entry{}
		for _, r := range res.Items {
			if e := c.entry(r); e != nil {
				entries[e.Name] = e
			}
		}
		url := TypeURL(d.Type)
		sets[url], listed[d.Type] = entries, res.Revision
		if since < 0 || res.Revision < since {
			since = res.Revision
		}
	}
	rev := since
	for _, r := range listed {
		rev = max(rev, r)
	}
	snap := &Snapshot{Revision: rev, Types: map[string]*TypeSet{}}
	for url, entries := range sets {
		snap.Types[url] = &TypeSet{Entries: entries}
	}
	c.publish(snap)
	b.Reset()
	return c.st.Watch(ctx, since, func(e store.Event) error {
		typ := e.Resource.GetMeta().Type
		lr, ok := listed[typ]
		if !ok || e.Revision <= lr {
			return nil // not ours, or already in what we listed
		}
		c.apply(e)
		return nil
	})
}

// entry encodes r, or returns nil when the cache does not keep it.
func (c *Cache) entry(r api.Resource) *Entry {
	if !c.include(r) {
		return nil
	}
	e, err := NewEntry(WireName(api.KeyOf(r)), r, r.GetMeta().Labels[api.LabelZone])
	if err != nil {
		c.log.Error("cannot encode resource; it is not synced", zap.String("resource", api.KeyOf(r).String()), zap.Error(err))
		return nil
	}
	return e
}

func (c *Cache) apply(ev store.Event) {
	url := TypeURL(ev.Resource.GetMeta().Type)
	name := WireName(api.KeyOf(ev.Resource))
	var e *Entry
	if ev.Op != store.OpDelete {
		e = c.entry(ev.Resource)
	}
	c.mu.Lock()
	old := c.snap
	c.mu.Unlock()
	prev := old.Types[url]
	if _, had := prev.Entries[name]; !had && e == nil {
		c.publish(&Snapshot{Revision: ev.Revision, Types: old.Types})
		return
	}
	entries := maps.Clone(prev.Entries)
	if e == nil {
		delete(entries, name)
	} else {
		entries[name] = e
	}
	types := maps.Clone(old.Types)
	types[url] = &TypeSet{Entries: entries}
	c.publish(&Snapshot{Revision: ev.Revision, Types: types})
}

func (c *Cache) publish(s *Snapshot) {
	c.mu.Lock()
	c.snap = s
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	c.once.Do(func() { close(c.ready) })
}
