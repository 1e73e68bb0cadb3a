package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"weak"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// snapshotTypes are the types a proxy's snapshot can hold, in the order
// their versions are listed.
var snapshotTypes = [...]resource.Type{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType, resource.SecretType}

// snapshot is one proxy's published resources, as snapshotCache serves
// them.
//
// Each type has its own version, which changes exactly when that type's
// resources do: a change to a proxy's listeners resends its listeners,
// not its clusters, load assignments and secrets as well (in state of the
// world, every type whose version changed is resent whole). The delta
// protocol's per-resource versions are the resources' hashes. Each
// resource comes with its facts, which hold it encoded as it is sent, so
// that serving it does not encode it again. Proxies whose resources of a
// type are the same (same version) share one part. A snapshot and its
// parts are immutable.
type snapshot struct {
	types [len(snapshotTypes)]*snapshotPart
}

// snapshotPart is the resources of one type.
type snapshotPart struct {
	version string
	entries []partEntry // by name
	// anys are the resources as a state-of-the-world response carries
	// them, in the order of entries; responses share the slice.
	anys []*anypb.Any
}

// partEntry is one resource of a part.
type partEntry struct {
	name  string
	res   types.Resource
	facts *facts
}

// newSnapshot validates r, as Validate does, and versions it, from its
// resources' facts; it takes each type's part from parts when another
// proxy has the same. Validation errors wrap ErrInvalid.
func newSnapshot(r Resources, known *resourceFacts, parts *snapshotParts) (*snapshot, error) {
	var errs []error
	for typ := range r {
		if !slices.Contains(snapshotTypes[:], typ) {
			errs = append(errs, fmt.Errorf("unknown resource type %s", typ))
		}
	}
	s := &snapshot{}
	total := 0
	for _, list := range r {
		total += len(list)
	}
	checked := make([]*facts, 0, total)       // for the references, once every name is known
	var names [len(snapshotTypes)][]partEntry // by name
	var buf []byte
	for i, typ := range snapshotTypes {
		list, ok := r[typ]
		if !ok {
			continue // no version: a proxy asking for the type waits
		}
		entries := make([]partEntry, 0, len(list))
		fs := checked[len(checked) : len(checked)+len(list)]
		known.ofAll(typ, list, fs)
		checked = checked[:len(checked)+len(list)]
		for j, f := range fs {
			if f.hashErr != nil {
				errs = append(errs, f.hashErr)
				continue
			}
			errs = append(errs, f.check.errs...)
			entries = append(entries, partEntry{name: f.name, res: list[j], facts: f})
		}
		// Generators mostly list resources by name already.
		if byName := func(a, b partEntry) int { return strings.Compare(a.name, b.name) }; !slices.IsSortedFunc(entries, byName) {
			slices.SortFunc(entries, byName)
		}
		if need := len(entries) * 64; cap(buf) < need { // names are short
			buf = make([]byte, 0, need)
		}
		buf = buf[:0]
		for j, e := range entries {
			if j > 0 && entries[j-1].name == e.name {
				errs = append(errs, fmt.Errorf("%s %q twice", shortType(typ), e.name))
			}
			buf = append(append(append(buf, e.name...), 0), e.facts.version...)
		}
		names[i] = entries
		if len(errs) > 0 {
			continue // it will not be published
		}
		sum := sha256.Sum256(buf)
		version := hex.EncodeToString(sum[:10])
		s.types[i] = parts.get(typ, version, func() *snapshotPart {
			return newSnapshotPart(version, entries)
		})
	}
	for _, f := range checked {
		for _, ref := range f.check.refs {
			i := slices.Index(snapshotTypes[:], ref.typ)
			if _, found := slices.BinarySearchFunc(names[i], ref.name, func(e partEntry, name string) int {
				return strings.Compare(e.name, name)
			}); !found {
				errs = append(errs, fmt.Errorf("%s refers to %s %q, which is not there", ref.from, shortType(ref.typ), ref.name))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return s, nil
}

// newSnapshotPart holds entries, sorted by name.
func newSnapshotPart(version string, entries []partEntry) *snapshotPart {
	p := &snapshotPart{version: version, entries: entries, anys: make([]*anypb.Any, len(entries))}
	for i, e := range entries {
		p.anys[i] = e.facts.any
	}
	return p
}

// len is the number of resources; 0 for no part.
func (p *snapshotPart) len() int {
	if p == nil {
		return 0
	}
	return len(p.entries)
}

// lookup returns the entry of a name, nil if there is none.
func (p *snapshotPart) lookup(name string) *partEntry {
	if p == nil {
		return nil
	}
	i, found := slices.BinarySearchFunc(p.entries, name, func(e partEntry, name string) int { return strings.Compare(e.name, name) })
	if !found {
		return nil
	}
	return &p.entries[i]
}

// hasAnyOf reports whether the part holds one of names that is not in
// known.
func (p *snapshotPart) hasAnyOf(names map[string]struct{}, known map[string]string) bool {
	for name := range names {
		if _, ok := known[name]; !ok && p.lookup(name) != nil {
			return true
		}
	}
	return false
}

// snapshotParts lets proxies whose resources of a type are the same share
// one snapshotPart, for as long as a snapshot holds it: the table holds
// parts weakly. It is safe for concurrent use; the zero value is ready.
type snapshotParts struct {
	m sync.Map // [2]string{type, version} → weak.Pointer[snapshotPart]
}

// get returns the part of typ at version, built by build unless a live
// one is known.
func (c *snapshotParts) get(typ resource.Type, version string, build func() *snapshotPart) *snapshotPart {
	key := [2]string{typ, version}
	if v, ok := c.m.Load(key); ok {
		if p := v.(weak.Pointer[snapshotPart]).Value(); p != nil {
			return p
		}
	}
	p := build()
	wp := weak.Make(p)
	for {
		v, loaded := c.m.LoadOrStore(key, wp)
		if loaded {
			if q := v.(weak.Pointer[snapshotPart]).Value(); q != nil {
				return q // built by another goroutine meanwhile
			}
			if !c.m.CompareAndSwap(key, v, wp) {
				continue
			}
		}
		runtime.AddCleanup(p, func(wp weak.Pointer[snapshotPart]) { c.m.CompareAndDelete(key, wp) }, wp)
		return p
	}
}

func (s *snapshot) get(typeURL string) *snapshotPart {
	if s == nil {
		return nil
	}
	if i := slices.Index(snapshotTypes[:], typeURL); i >= 0 {
		return s.types[i]
	}
	return nil
}

// sameAs reports whether every type has the same version in s and o.
func (s *snapshot) sameAs(o *snapshot) bool {
	if s == nil || o == nil {
		return s == o
	}
	for i := range s.types {
		if s.types[i].getVersion() != o.types[i].getVersion() {
			return false
		}
	}
	return true
}

// getVersion is the part's version; empty for no part.
func (p *snapshotPart) getVersion() string {
	if p == nil {
		return ""
	}
	return p.version
}

// GetVersion is the version of a type's resources; empty when the snapshot
// has none of the type.
func (s *snapshot) GetVersion(typeURL string) string { return s.get(typeURL).getVersion() }

// resources returns a type's resources, in the order of their names.
func (s *snapshot) resources(typeURL string) []partEntry {
	if p := s.get(typeURL); p != nil {
		return p.entries
	}
	return nil
}
