// Package store keeps resources: the Store interface, its memory
// implementation, change events and the instrumentation shared by every
// implementation. The PostgreSQL implementation lives in store/postgres.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
)

// Errors every implementation returns, wrapped with context. Callers test
// them with errors.Is; they become HTTP and gRPC codes only at the edges.
var (
	ErrNotFound      = errors.New("not found")
	ErrAlreadyExists = errors.New("already exists")
	// ErrConflict means the version given no longer matches: someone else
	// changed the resource first.
	ErrConflict = errors.New("version conflict")
	// ErrMeshNotFound means a mesh-scoped resource names a mesh that does
	// not exist.
	ErrMeshNotFound = errors.New("mesh not found")
	// ErrUnavailable means the backing database cannot be reached. The
	// operation may or may not have been applied only if it was a commit
	// whose answer was lost; every other case changed nothing.
	ErrUnavailable = errors.New("store unavailable")
	// ErrCompacted means a watch asked to resume from a revision older than
	// the change log still holds, or newer than the store has ever had. The
	// caller must list again and watch from the list's revision.
	ErrCompacted = errors.New("revision compacted or unknown")
	// ErrTooLarge means a resource is larger than the store can hold (a
	// Kubernetes Secret's 1 MiB of data). The write it came in changed
	// nothing.
	ErrTooLarge = errors.New("resource too large for the store")
)

// Store keeps resources and tells watchers about every change.
//
// Every successful write advances the store's revision by exactly one; the
// revision orders all changes in commit order and is the point from which a
// watcher resumes. Implementations are safe for concurrent use, and every
// resource they return is the caller's own copy.
type Store interface {
	// Create stores a new resource and returns it with Version 1 and its
	// times set. ErrAlreadyExists if the key is taken; ErrMeshNotFound if
	// a mesh-scoped resource names a missing mesh.
	Create(ctx context.Context, r api.Resource) (api.Resource, error)
	// Update replaces a resource whose stored Version equals r's Version,
	// and returns it with the next Version. ErrConflict when the versions
	// differ, ErrNotFound when there is nothing to update.
	Update(ctx context.Context, r api.Resource) (api.Resource, error)
	// Delete removes a resource; version 0 deletes whatever version is
	// stored, any other value must match (ErrConflict). Deleting a Mesh
	// deletes everything in it, each deletion its own change event.
	Delete(ctx context.Context, key api.Key, version int64) error
	// Get returns one resource or ErrNotFound.
	Get(ctx context.Context, key api.Key) (api.Resource, error)
	// List returns the resources matching opts, ordered by mesh and name,
	// with the store revision they reflect.
	List(ctx context.Context, opts ListOptions) (ListResult, error)
	// Apply makes the store hold each resource of puts with that content,
	// creating it or replacing it whatever version is stored, then removes
	// each key of deletes that exists, in one transaction: every write
	// happens or none does. A put that carries a Version is conditional: it
	// replaces only that version of the resource, and if another (or none)
	// is stored the whole Apply changes nothing and returns ErrConflict. A put whose content equals what is stored
	// (api.SameContent) changes nothing and emits no event. A mesh-scoped
	// put needs its mesh in the store or among the puts (ErrMeshNotFound);
	// deleting a Mesh deletes everything in it. It returns how many changes
	// it made; each is one event, puts first, in the order given, Meshes
	// before what is in them.
	Apply(ctx context.Context, puts []api.Resource, deletes []api.Key) (int, error)
	// Watch calls fn with every change whose revision is greater than
	// since, in revision order, until ctx ends (returning ctx.Err()), fn
	// returns an error (returned as is), or the changes after since are
	// no longer known (ErrCompacted). A watcher that falls behind is never
	// skipped ahead: it gets every change or ErrCompacted. Watch survives
	// database outages by retrying; it does not return ErrUnavailable.
	Watch(ctx context.Context, since int64, fn func(Event) error) error
}

// Snapshotter is a Store that lists several types as of one revision:
// what one transaction wrote shows in all of them or in none. The memory
// and PostgreSQL stores are; a store whose writes are one change each
// (Kubernetes) need not be.
type Snapshotter interface {
	// ListTypes lists every resource of each of types, one ListResult per
	// type in that order, all with the same Revision.
	ListTypes(ctx context.Context, types []string) ([]ListResult, error)
}

// ListTypes lists every resource of each of types: as of one revision when
// st is a Snapshotter (whole says so), else one List after another.
func ListTypes(ctx context.Context, st Store, types []string) (res []ListResult, whole bool, err error) {
	if sn, ok := st.(Snapshotter); ok {
		res, err := sn.ListTypes(ctx, types)
		if !errors.Is(err, errNoSnapshots) {
			return res, err == nil, err
		}
	}
	for _, t := range types {
		r, err := st.List(ctx, ListOptions{Type: t})
		if err != nil {
			return nil, false, err
		}
		res = append(res, r)
	}
	return res, false, nil
}

// errNoSnapshots is a wrapper's ListTypes over a store that is not a
// Snapshotter: ListTypes lists one type after another instead.
var errNoSnapshots = errors.New("store lists no snapshots")

// ListOptions filters a List. Type is required.
type ListOptions struct {
	Type string
	// Mesh restricts a mesh-scoped type to one mesh; empty means all.
	Mesh string
	// Labels selects resources whose labels contain all of these.
	Labels map[string]string
}

// Matches reports whether r passes the mesh and label filters.
func (o ListOptions) Matches(r api.Resource) bool {
	m := r.GetMeta()
	if m.Type != o.Type || (o.Mesh != "" && m.Mesh != o.Mesh) {
		return false
	}
	for k, v := range o.Labels {
		if got, ok := m.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// ListResult is the answer to a List.
type ListResult struct {
	Items []api.Resource
	// Revision is the store revision the items reflect: watching from it
	// misses nothing and repeats nothing.
	Revision int64
}

// Op is the kind of a change.
type Op int

const (
	OpCreate Op = iota + 1
	OpUpdate
	OpDelete
)

func (o Op) String() string {
	switch o {
	case OpCreate:
		return "create"
	case OpUpdate:
		return "update"
	case OpDelete:
		return "delete"
	}
	return "unknown"
}

// Event is one change. Resource is the state after the change, or for a
// delete the last state before it.
type Event struct {
	Revision int64
	Op       Op
	Resource api.Resource
	// More is set on every change of a transaction but its last (an Apply
	// of several changes, a Mesh deleted with what is in it): the store
	// holds the state after an event without it, never the one between
	// two of a transaction's events, and a List's Revision is always such
	// a state. A reader that must not act on half a transaction (a Mirror)
	// waits for the event without it, which Watch delivers whatever its
	// type, as it delivers every change. A store whose writes are one
	// change each (Kubernetes) never sets it.
	More bool
}

// Clone returns a deep copy of r.
func Clone(r api.Resource) api.Resource { return api.DeepCopy(r) }

// DecodeStored decodes a document the store itself wrote: its type is known
// and it was valid when written, so it skips the strict checks of api.Decode.
func decodeStored(typ string, doc []byte) (api.Resource, error) {
	r, ok := api.New(typ)
	if !ok {
		return nil, fmt.Errorf("decode stored resource: unknown type %q", typ)
	}
	if err := json.Unmarshal(doc, r); err != nil {
		return nil, fmt.Errorf("decode stored %s: %w", typ, err)
	}
	return r, nil
}

// DecodeStored is decodeStored for implementations in other packages.
func DecodeStored(typ string, doc []byte) (api.Resource, error) { return decodeStored(typ, doc) }

// Now is the store clock's reading of t: UTC, at the microsecond precision
// PostgreSQL keeps, so every implementation returns the same times it stores.
func Now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// SortPuts orders a batch of puts so that Meshes come first, keeping the
// given order otherwise; of several puts of one key, the last wins.
func SortPuts(puts []api.Resource) []api.Resource {
	last := map[api.Key]int{}
	for i, r := range puts {
		last[api.KeyOf(r)] = i
	}
	out := make([]api.Resource, 0, len(last))
	for _, meshes := range []bool{true, false} {
		for i, r := range puts {
			if (r.GetMeta().Type == "Mesh") == meshes && last[api.KeyOf(r)] == i {
				out = append(out, r)
			}
		}
	}
	return out
}
