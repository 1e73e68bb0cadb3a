package kubernetes

import (
	"context"
	"errors"
	"fmt"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// PartialError is an Apply that failed after some of its writes were made:
// Kubernetes has no transaction over several objects.
type PartialError struct {
	Done, Planned int // writes made, writes the batch needed
	Err           error
}

func (e *PartialError) Error() string {
	return fmt.Sprintf("apply stopped after %d of %d writes (they stay): %v", e.Done, e.Planned, e.Err)
}

func (e *PartialError) Unwrap() error { return e.Err }

// Apply implements store.Store: every check first (a resource too large for
// its object among them: ErrTooLarge), writing nothing when one fails, then
// the writes in order, each conditional on what was read (see
// the package doc: not atomic).
func (s *Store) Apply(ctx context.Context, puts []api.Resource, deletes []api.Key) (int, error) {
	puts = store.SortPuts(puts)
	what := fmt.Sprintf("apply %d puts, %d deletes", len(puts), len(deletes))
	type plan struct {
		r      api.Resource
		old    object
		exists bool
	}
	var plans []plan
	// uids are the uids of the meshes' objects, by name: "" for a mesh of
	// the batch until its write.
	uids := map[string]string{}
	find, err := s.lookup(ctx, puts)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	for _, r := range puts {
		r = store.Clone(r)
		key := api.KeyOf(r)
		d, err := descriptor(key.Type)
		if err != nil {
			return 0, fmt.Errorf("%s: %s: %w", what, key, err)
		}
		o, ok, err := find(key)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", what, err)
		}
		if !ok && o.rv != "" && o.loc == s.placements(d, r)[0] {
			return 0, fmt.Errorf("%s: %s: %w: the name is held by %s (Kubernetes names are unique per namespace and kind)", what, key, store.ErrAlreadyExists, o.holder())
		}
		if v := r.GetMeta().Version; v != 0 && (!ok || o.version != v) {
			return 0, fmt.Errorf("%s: %s at version %d: %w", what, key, v, store.ErrConflict)
		}
		// A Secret the API server would refuse for its size (1 MiB of
		// data) is refused here, before the batch's first write
		// (ErrTooLarge).
		if isSecret(d) {
			if _, err := s.encode(r, s.placements(d, r)[0], "", nil, 0); err != nil {
				return 0, fmt.Errorf("%s: %w", what, err)
			}
		}
		if key.Type == "Mesh" {
			uids[key.Name] = uidOf(o.obj)
		}
		plans = append(plans, plan{r: r, old: o, exists: ok})
	}
	for _, p := range plans {
		m := p.r.GetMeta()
		if _, ok := uids[m.Mesh]; ok {
			continue
		}
		if d, _ := api.Lookup(m.Type); d.Scope != api.ScopeMesh {
			continue
		}
		uid, err := s.meshUID(ctx, m.Mesh)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", what, err)
		}
		if uid == "" {
			return 0, fmt.Errorf("%s: %s: %w: %q", what, api.KeyOf(p.r), store.ErrMeshNotFound, m.Mesh)
		}
		uids[m.Mesh] = uid
	}
	var writes []func() (int, error)
	for _, p := range plans {
		d, _ := api.Lookup(p.r.GetMeta().Type)
		m, now := p.r.GetMeta(), store.Now()
		if !p.exists {
			m.Version, m.CreationTime, m.ModificationTime = 1, now, now
			writes = append(writes, func() (int, error) {
				var owners any
				if d.Scope == api.ScopeMesh {
					owners = meshOwner(m.Mesh, uids[m.Mesh])
				}
				_, uid, err := s.create(ctx, d, p.r, owners, true)
				if err != nil {
					return 0, err
				}
				if d.Type == "Mesh" {
					uids[m.Name] = uid
				}
				return 1, nil
			})
			continue
		}
		old, err := s.decode(p.old.obj)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", what, err)
		}
		if api.SameContent(old, p.r) {
			continue
		}
		m.Version, m.CreationTime, m.ModificationTime = p.old.version+1, old.GetMeta().CreationTime, now
		writes = append(writes, func() (int, error) {
			if _, err := s.put(ctx, d, p.r, p.old); err != nil {
				return 0, err
			}
			return 1, nil
		})
	}
	for _, key := range deletes {
		writes = append(writes, func() (int, error) {
			o, ok, err := s.read(ctx, key)
			if err != nil || !ok {
				return 0, err
			}
			n, err := s.remove(ctx, o)
			if errors.Is(err, store.ErrNotFound) {
				err = nil // deleted meanwhile: what was asked
			}
			return n, err
		})
	}
	done := 0
	for i, w := range writes {
		n, err := w()
		done += n
		if err != nil {
			if i == 0 && n == 0 {
				return 0, fmt.Errorf("%s: %w", what, err)
			}
			return done, fmt.Errorf("%s: %w", what, &PartialError{Done: i, Planned: len(writes), Err: err})
		}
	}
	return done, nil
}

// lookup returns a read (Store.read) of the stored objects of puts' keys:
// a type with several puts is listed once (one request, its objects at one
// revision), the others are read one key at a time.
func (s *Store) lookup(ctx context.Context, puts []api.Resource) (func(api.Key) (object, bool, error), error) {
	count := map[string]int{}
	for _, r := range puts {
		count[r.GetMeta().Type]++
	}
	type index struct {
		byKey map[api.Key]object
		byLoc map[location]object
	}
	listed := map[string]index{}
	for typ, n := range count {
		d, err := descriptor(typ)
		if n < 2 || err != nil {
			continue // an unknown type is refused by name below
		}
		objs, _, err := s.listObjects(ctx, d, nil)
		if err != nil {
			return nil, err
		}
		idx := index{byKey: map[api.Key]object{}, byLoc: map[location]object{}}
		for _, o := range objs {
			k := api.Key{Type: o.typ, Mesh: o.mesh, Name: o.name}
			if _, dup := idx.byKey[k]; !dup && o.typ == typ {
				idx.byKey[k] = o
			}
			idx.byLoc[o.loc] = o
		}
		listed[typ] = idx
	}
	return func(key api.Key) (object, bool, error) {
		idx, ok := listed[key.Type]
		if !ok {
			return s.read(ctx, key)
		}
		if o, ok := idx.byKey[key]; ok {
			return o, true, nil
		}
		d, _ := api.Lookup(key.Type)
		for _, loc := range s.candidates(d, key) {
			if o, ok := idx.byLoc[loc]; ok {
				return o, false, nil // held by another resource
			}
		}
		return object{}, false, nil
	}, nil
}
