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
	"sync/atomic"
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
	// refTypes has bit i set when a resource of the part refers to one of
	// snapshotTypes[i].
	refTypes uint8
	// refsFound are the versions of the parts every reference was last
	// found in (see checkRefs).
	refsFound atomic.Pointer[refTargets]
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
//
// Most of a proxy's resources are shared with other proxies, whose
// snapshots share the parts too: the work per proxy is kept to what cannot
// be shared (a lookup of each resource's facts, the type's version, and
// the resources that are new), and allocates little more than what is new.
func newSnapshot(r Resources, known *resourceFacts, parts *snapshotParts, prev *snapshot) (*snapshot, error) {
	var errs []error
	for typ := range r {
		if !slices.Contains(snapshotTypes[:], typ) {
			errs = append(errs, fmt.Errorf("unknown resource type %s", typ))
		}
	}
	sc := scratchPool.Get().(*snapshotScratch)
	defer sc.release()
	total := 0
	for _, list := range r {
		total += len(list)
	}
	sc.grow(total)
	s := &snapshot{}
	var sorted [len(snapshotTypes)][]sortedRes // each type's resources by name
	for i, typ := range snapshotTypes {
		list, ok := r[typ]
		if !ok {
			continue // no version: a proxy asking for the type waits
		}
		if p := prev.get(typ); p.holdsExactly(list) {
			// The very resources of the proxy's last snapshot, in the
			// same order: the same part (already checked and versioned).
			s.types[i], sorted[i] = p, p.entries
			continue
		}
		fs := sc.facts[:len(list)]
		known.ofAll(typ, list, fs)
		items := sc.items[len(sc.items) : len(sc.items)+len(list)]
		n := 0
		for j, f := range fs {
			if f.hashErr != nil {
				errs = append(errs, f.hashErr)
				continue
			}
			errs = append(errs, f.check.errs...)
			items[n] = sortedRes{name: f.name, facts: f, res: list[j]}
			n++
		}
		items = items[:n]
		sc.items = sc.items[:len(sc.items)+n]
		// Generators mostly list resources by name already.
		if !slices.IsSortedFunc(items, bySortedName) {
			slices.SortFunc(items, bySortedName)
		}
		for j := 1; j < len(items); j++ {
			if items[j-1].name == items[j].name {
				errs = append(errs, fmt.Errorf("%s %q twice", shortType(typ), items[j].name))
			}
		}
		sorted[i] = items
		if len(errs) > 0 {
			continue // it will not be published
		}
		s.types[i] = parts.get(uint8(i), sc.versionOf(items), items)
	}
	errs = checkRefs(s, &sorted, len(errs) == 0, errs)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return s, nil
}

// sortedRes is a resource and its facts, as newSnapshot sorts them: a part's
// entry, so that a part kept from the proxy's last snapshot serves as its
// type's sorted resources. It holds the name too, so that searching does
// not follow the facts.
type sortedRes = partEntry

func bySortedName(a, b sortedRes) int { return strings.Compare(a.name, b.name) }

// hasName reports whether items, sorted by name, hold name.
func hasName(items []sortedRes, name string) bool {
	lo, hi := 0, len(items)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if items[m].name < name {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo < len(items) && items[lo].name == name
}

// partSum is what a part's version is made from: the hash of its
// resources' hashes, in the order of their names.
type partSum [10]byte

// snapshotScratch is what newSnapshot works in; scratchPool reuses it.
type snapshotScratch struct {
	facts []*facts    // one type's facts, as ofAll finds them
	items []sortedRes // every type's resources, sorted per type
	buf   []byte
}

var scratchPool = sync.Pool{New: func() any { return new(snapshotScratch) }}

// grow makes room for n resources.
func (sc *snapshotScratch) grow(n int) {
	if cap(sc.facts) < n {
		sc.facts = make([]*facts, n)
	}
	sc.facts = sc.facts[:cap(sc.facts)]
	if cap(sc.items) < n {
		sc.items = make([]sortedRes, 0, n)
	}
	sc.items = sc.items[:0]
}

// release returns sc to the pool, holding nothing alive.
func (sc *snapshotScratch) release() {
	clear(sc.facts)
	clear(sc.items[:cap(sc.items)])
	scratchPool.Put(sc)
}

// versionOf hashes items' hashes. A resource's hash is that of its
// encoding, which holds its name (every type a snapshot holds has its name
// in a field), so this changes when a resource is added, removed, renamed
// or changed, and not otherwise.
func (sc *snapshotScratch) versionOf(items []sortedRes) partSum {
	sc.buf = sc.buf[:0]
	for _, it := range items {
		sc.buf = append(sc.buf, it.facts.hash[:16]...)
	}
	sum := sha256.Sum256(sc.buf)
	return partSum(sum[:len(partSum{})])
}

// checkRefs appends to errs an error for every reference of a resource in
// sorted that names no resource of its type there. Where each type has its
// part (published is set), a part whose references were found in parts of
// the same versions before is not checked again: the names a part holds
// follow from its version.
func checkRefs(s *snapshot, sorted *[len(snapshotTypes)][]sortedRes, published bool, errs []error) []error {
	for i := range sorted {
		p := s.types[i]
		var targets refTargets
		if published && p != nil {
			if p.refTypes == 0 {
				continue
			}
			for j := range targets {
				if p.refTypes&(1<<j) != 0 {
					targets[j] = s.types[j].getVersion()
				}
			}
			if last := p.refsFound.Load(); last != nil && *last == targets {
				continue
			}
		}
		found := true
		for _, it := range sorted[i] {
			for _, ref := range it.facts.check.refs {
				j := slices.Index(snapshotTypes[:], ref.typ)
				if !hasName(sorted[j], ref.name) {
					errs = append(errs, fmt.Errorf("%s refers to %s %q, which is not there", ref.from, shortType(ref.typ), ref.name))
					found = false
				}
			}
		}
		if published && p != nil && found {
			p.refsFound.Store(&targets)
		}
	}
	return errs
}

// refTargets are, by type, the versions of the parts a part's references
// were found in; empty for the types it does not refer to.
type refTargets [len(snapshotTypes)]string

// newSnapshotPart holds items, sorted by name.
func newSnapshotPart(sum partSum, items []sortedRes) *snapshotPart {
	p := &snapshotPart{version: hex.EncodeToString(sum[:]), entries: make([]partEntry, len(items)), anys: make([]*anypb.Any, len(items))}
	for i, it := range items {
		p.entries[i] = it
		p.anys[i] = it.facts.any
		for _, ref := range it.facts.check.refs {
			p.refTypes |= 1 << slices.Index(snapshotTypes[:], ref.typ)
		}
	}
	return p
}

// holdsExactly reports whether the part's entries are list's resources
// (the same messages, in the same order): list is then what the part was
// made from, as resources are never modified once published.
func (p *snapshotPart) holdsExactly(list []types.Resource) bool {
	if p == nil || len(p.entries) != len(list) {
		return false
	}
	for i, r := range list {
		if p.entries[i].res != r {
			return false
		}
	}
	return true
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
		// Known only at this version: a NACK rewritten to the version
		// published since (server.go) must still get it.
		if v, ok := known[name]; (!ok || v != p.getVersion()) && p.lookup(name) != nil {
			return true
		}
	}
	return false
}

// snapshotParts lets proxies whose resources of a type are the same share
// one snapshotPart, for as long as a snapshot holds it: the table holds
// parts weakly. It is safe for concurrent use; the zero value is ready.
type snapshotParts struct {
	mu sync.RWMutex
	m  map[partKey]weak.Pointer[snapshotPart]
}

type partKey struct {
	typ uint8 // index in snapshotTypes
	sum partSum
}

// get returns the part of a type (its index in snapshotTypes) whose
// version is made from sum, holding items, unless a live one is known.
func (c *snapshotParts) get(typ uint8, sum partSum, items []sortedRes) *snapshotPart {
	key := partKey{typ, sum}
	c.mu.RLock()
	wp, ok := c.m[key]
	c.mu.RUnlock()
	if ok {
		if p := wp.Value(); p != nil {
			return p
		}
	}
	p := newSnapshotPart(sum, items)
	wp = weak.Make(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.m[key]; ok {
		if q := old.Value(); q != nil {
			return q // built by another goroutine meanwhile
		}
	}
	if c.m == nil {
		c.m = map[partKey]weak.Pointer[snapshotPart]{}
	}
	c.m[key] = wp
	runtime.AddCleanup(p, func(wp weak.Pointer[snapshotPart]) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.m[key] == wp {
			delete(c.m, key)
		}
	}, wp)
	return p
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
