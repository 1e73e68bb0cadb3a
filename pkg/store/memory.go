package store

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/ursamesh/ursa/pkg/api"
)

// DefaultLogRetention is how many changes a store keeps for watchers that
// resume from a revision.
const DefaultLogRetention = 100_000

// Memory is a Store held in process memory: the default for a laptop CP and
// for zone CPs that need no persistence. Its zero value is not ready; use
// NewMemory.
type Memory struct {
	mu        sync.RWMutex
	items     map[api.Key]api.Resource // owned copies
	rev       int64
	log       []Event // the last retention changes; log[i].Revision == logStart+i
	logStart  int64
	retention int
	// changed is closed and replaced on every write: a broadcast to watchers.
	changed chan struct{}
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty memory store that keeps the last retention
// changes for watchers (DefaultLogRetention when retention <= 0).
func NewMemory(retention int) *Memory {
	if retention <= 0 {
		retention = DefaultLogRetention
	}
	return &Memory{
		items:     map[api.Key]api.Resource{},
		retention: retention,
		logStart:  1,
		changed:   make(chan struct{}),
	}
}

// record appends a change; the caller holds mu for writing.
func (m *Memory) record(op Op, r api.Resource) {
	m.rev++
	m.log = append(m.log, Event{Revision: m.rev, Op: op, Resource: r})
	if over := len(m.log) - m.retention; over > 0 {
		m.log = slices.Delete(m.log, 0, over)
		m.logStart += int64(over)
	}
	close(m.changed)
	m.changed = make(chan struct{})
}

// seal ends a transaction whose first change took revision from: each of
// its changes but the last is marked More. The caller holds mu for
// writing throughout the transaction, so no watcher saw them unmarked.
func (m *Memory) seal(from int64) {
	for rev := max(from, m.logStart); rev < m.rev; rev++ {
		m.log[rev-m.logStart].More = true
	}
}

func (m *Memory) checkMesh(r api.Resource) error {
	meta := r.GetMeta()
	if d, ok := api.Lookup(meta.Type); ok && d.Scope == api.ScopeMesh {
		if _, ok := m.items[api.Key{Type: "Mesh", Name: meta.Mesh}]; !ok {
			return fmt.Errorf("create %s: %w: %q", api.KeyOf(r), ErrMeshNotFound, meta.Mesh)
		}
	}
	return nil
}

// Create implements Store.
func (m *Memory) Create(ctx context.Context, r api.Resource) (api.Resource, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r = Clone(r)
	key := api.KeyOf(r)
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.items[key]; ok {
		return nil, fmt.Errorf("create %s: %w", key, ErrAlreadyExists)
	}
	if err := m.checkMesh(r); err != nil {
		return nil, err
	}
	meta := r.GetMeta()
	now := Now()
	meta.Version, meta.CreationTime, meta.ModificationTime = 1, now, now
	m.items[key] = r
	m.record(OpCreate, r)
	return Clone(r), nil
}

// Update implements Store.
func (m *Memory) Update(ctx context.Context, r api.Resource) (api.Resource, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r = Clone(r)
	key := api.KeyOf(r)
	m.mu.Lock()
	defer m.mu.Unlock()
	old, ok := m.items[key]
	if !ok {
		return nil, fmt.Errorf("update %s: %w", key, ErrNotFound)
	}
	meta, oldMeta := r.GetMeta(), old.GetMeta()
	if meta.Version != oldMeta.Version {
		return nil, fmt.Errorf("update %s: %w: version %d given, %d stored", key, ErrConflict, meta.Version, oldMeta.Version)
	}
	meta.Version = oldMeta.Version + 1
	meta.CreationTime, meta.ModificationTime = oldMeta.CreationTime, Now()
	m.items[key] = r
	m.record(OpUpdate, r)
	return Clone(r), nil
}

// Delete implements Store.
func (m *Memory) Delete(ctx context.Context, key api.Key, version int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	old, ok := m.items[key]
	if !ok {
		return fmt.Errorf("delete %s: %w", key, ErrNotFound)
	}
	if version != 0 && version != old.GetMeta().Version {
		return fmt.Errorf("delete %s: %w: version %d given, %d stored", key, ErrConflict, version, old.GetMeta().Version)
	}
	defer m.seal(m.rev + 1)
	m.deleteLocked(key, old)
	return nil
}

// deleteLocked deletes old, and everything in it when it is a Mesh, and
// returns how many resources went. The caller holds mu.
func (m *Memory) deleteLocked(key api.Key, old api.Resource) int {
	n := 1
	if key.Type == "Mesh" {
		var inside []api.Key
		for k := range m.items {
			if k.Mesh == key.Name {
				inside = append(inside, k)
			}
		}
		slices.SortFunc(inside, compareKeys)
		for _, k := range inside {
			m.record(OpDelete, m.items[k])
			delete(m.items, k)
		}
		n += len(inside)
	}
	delete(m.items, key)
	m.record(OpDelete, old)
	return n
}

func compareKeys(a, b api.Key) int {
	return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.Mesh, b.Mesh), cmp.Compare(a.Name, b.Name))
}

// Get implements Store.
func (m *Memory) Get(ctx context.Context, key api.Key) (api.Resource, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.RLock()
	r, ok := m.items[key]
	m.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("get %s: %w", key, ErrNotFound)
	}
	return Clone(r), nil
}

// List implements Store.
func (m *Memory) List(ctx context.Context, opts ListOptions) (ListResult, error) {
	if err := ctx.Err(); err != nil {
		return ListResult{}, err
	}
	m.mu.RLock()
	res := m.listLocked(opts)
	m.mu.RUnlock()
	return res.sortedCopy(), nil
}

// ListTypes implements Snapshotter.
func (m *Memory) ListTypes(ctx context.Context, types []string) ([]ListResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := make([]ListResult, len(types))
	m.mu.RLock()
	for i, t := range types {
		out[i] = m.listLocked(ListOptions{Type: t})
	}
	m.mu.RUnlock()
	for i := range out {
		out[i] = out[i].sortedCopy()
	}
	return out, nil
}

// listLocked is what List returns, not yet sorted or copied; the caller
// holds mu for reading.
func (m *Memory) listLocked(opts ListOptions) ListResult {
	var matched []api.Resource
	for k, r := range m.items {
		if k.Type == opts.Type && opts.Matches(r) {
			matched = append(matched, r)
		}
	}
	return ListResult{Items: matched, Revision: m.rev}
}

// sortedCopy is res in List's order, with copies of its items (the
// caller's own). The stored items are never modified, so this needs no
// lock.
func (res ListResult) sortedCopy() ListResult {
	slices.SortFunc(res.Items, func(a, b api.Resource) int { return compareKeys(api.KeyOf(a), api.KeyOf(b)) })
	for i, r := range res.Items {
		res.Items[i] = Clone(r)
	}
	return res
}

// Watch implements Store.
func (m *Memory) Watch(ctx context.Context, since int64, fn func(Event) error) error {
	const batch = 256
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		m.mu.RLock()
		if since > m.rev || (since+1 < m.logStart && since < m.rev) {
			rev, start := m.rev, m.logStart
			m.mu.RUnlock()
			return fmt.Errorf("watch from revision %d (store at %d, log from %d): %w", since, rev, start, ErrCompacted)
		}
		from := int(since + 1 - m.logStart)
		to := min(len(m.log), from+batch)
		var pending []Event
		if from < to {
			pending = slices.Clone(m.log[from:to])
		}
		changed := m.changed
		m.mu.RUnlock()

		for _, e := range pending {
			e.Resource = Clone(e.Resource)
			if err := fn(e); err != nil {
				return err
			}
			since = e.Revision
		}
		if len(pending) == batch {
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// Apply implements Store.
func (m *Memory) Apply(ctx context.Context, puts []api.Resource, deletes []api.Key) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	puts = SortPuts(puts)
	m.mu.Lock()
	defer m.mu.Unlock()
	// Check everything first, so that a refused batch writes nothing.
	meshes := map[string]bool{}
	for _, r := range puts {
		meta := r.GetMeta()
		if meta.Type == "Mesh" {
			meshes[meta.Name] = true
			continue
		}
		if d, ok := api.Lookup(meta.Type); ok && d.Scope == api.ScopeMesh && !meshes[meta.Mesh] {
			if _, ok := m.items[api.Key{Type: "Mesh", Name: meta.Mesh}]; !ok {
				return 0, fmt.Errorf("apply %s: %w: %q", api.KeyOf(r), ErrMeshNotFound, meta.Mesh)
			}
		}
	}
	for _, r := range puts {
		if v := r.GetMeta().Version; v != 0 {
			if old, ok := m.items[api.KeyOf(r)]; !ok || old.GetMeta().Version != v {
				return 0, fmt.Errorf("apply %s at version %d: %w", api.KeyOf(r), v, ErrConflict)
			}
		}
	}
	changes := 0
	defer m.seal(m.rev + 1)
	for _, r := range puts {
		r = Clone(r)
		key, meta, now := api.KeyOf(r), r.GetMeta(), Now()
		old, exists := m.items[key]
		switch {
		case exists && api.SameContent(old, r):
			continue
		case exists:
			meta.Version, meta.CreationTime, meta.ModificationTime = old.GetMeta().Version+1, old.GetMeta().CreationTime, now
			m.items[key] = r
			m.record(OpUpdate, r)
		default:
			meta.Version, meta.CreationTime, meta.ModificationTime = 1, now, now
			m.items[key] = r
			m.record(OpCreate, r)
		}
		changes++
	}
	for _, key := range deletes {
		old, ok := m.items[key]
		if !ok {
			continue
		}
		changes += m.deleteLocked(key, old)
	}
	return changes, nil
}
