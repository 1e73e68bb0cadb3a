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
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// snapshotTypes are the types a proxy's snapshot can hold, in the order
// their versions are listed.
var snapshotTypes = [...]resource.Type{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType, resource.SecretType}

// snapshot is one proxy's published resources, as go-control-plane's
// snapshot cache serves them (it implements cache.ResourceSnapshot).
//
// Each type has its own version, which changes exactly when that type's
// resources do: a change to a proxy's listeners resends its listeners,
// not its clusters, load assignments and secrets as well (in state of the
// world, every type whose version changed is resent whole). The delta
// protocol's per-resource versions are the resources' hashes. Resources
// are held as encoded, so that serving them does not encode them again.
// Proxies whose resources of a type are the same (same version) share one
// part. A snapshot and its parts are immutable (a part's version map is
// built once, on first use).
type snapshot struct {
	types [len(snapshotTypes)]*snapshotPart
}

// snapshotPart is the resources of one type.
type snapshotPart struct {
	version  string
	items    map[string]types.ResourceWithTTL
	versions []resourceVersion // by name

	// Built on first use: each resource's version (for the delta
	// protocol), and the resources without TTLs (the cache ranges over
	// them on every wildcard request).
	versionOnce   sync.Once
	versionMap    map[string]string
	resourcesOnce sync.Once
	resources     map[string]types.Resource
}

type resourceVersion struct{ name, version string }

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
	checked := make([]*facts, 0, total)             // for the references, once every name is known
	var names [len(snapshotTypes)][]resourceVersion // by name
	var buf []byte
	for i, typ := range snapshotTypes {
		list, ok := r[typ]
		if !ok {
			continue // no version: a proxy asking for the type waits
		}
		versions := make([]resourceVersion, 0, len(list))
		fs := checked[len(checked) : len(checked)+len(list)]
		known.ofAll(typ, list, fs)
		checked = checked[:len(checked)+len(list)]
		for j, f := range fs {
			if f.hashErr != nil {
				errs = append(errs, f.hashErr)
				continue
			}
			errs = append(errs, f.check.errs...)
			versions = append(versions, resourceVersion{name: cache.GetResourceName(list[j]), version: f.version})
		}
		slices.SortFunc(versions, func(a, b resourceVersion) int { return strings.Compare(a.name, b.name) })
		if need := len(versions) * 64; cap(buf) < need { // names are short
			buf = make([]byte, 0, need)
		}
		buf = buf[:0]
		for j, v := range versions {
			if j > 0 && versions[j-1].name == v.name {
				errs = append(errs, fmt.Errorf("%s %q twice", shortType(typ), v.name))
			}
			buf = append(append(append(buf, v.name...), 0), v.version...)
		}
		names[i] = versions
		if len(errs) > 0 {
			continue // it will not be published
		}
		sum := sha256.Sum256(buf)
		version := hex.EncodeToString(sum[:10])
		s.types[i] = parts.get(typ, version, func() *snapshotPart {
			return newSnapshotPart(version, list, fs, versions)
		})
	}
	for _, f := range checked {
		for _, ref := range f.check.refs {
			i := slices.Index(snapshotTypes[:], ref.typ)
			if _, found := slices.BinarySearchFunc(names[i], ref.name, func(v resourceVersion, name string) int {
				return strings.Compare(v.name, name)
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

// newSnapshotPart holds list, whose facts are fs.
func newSnapshotPart(version string, list []types.Resource, fs []*facts, versions []resourceVersion) *snapshotPart {
	p := &snapshotPart{version: version, versions: versions, items: make(map[string]types.ResourceWithTTL, len(list))}
	wrapped := make([]encoded, len(list))
	for j, res := range list {
		name := cache.GetResourceName(res)
		wrapped[j] = encoded{res: res, name: name, bytes: fs[j].encoding}
		p.items[name] = types.ResourceWithTTL{Resource: &wrapped[j]}
	}
	return p
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

// GetResourcesAndTTL returns a type's resources by name. The map is the
// snapshot's: the cache only reads it.
func (s *snapshot) GetResourcesAndTTL(typeURL string) map[string]types.ResourceWithTTL {
	if p := s.get(typeURL); p != nil {
		return p.items
	}
	return nil
}

// GetResources returns a type's resources by name. The map is the
// snapshot's: the cache only reads it.
func (s *snapshot) GetResources(typeURL string) map[string]types.Resource {
	p := s.get(typeURL)
	if p == nil {
		return nil
	}
	p.resourcesOnce.Do(func() {
		p.resources = make(map[string]types.Resource, len(p.items))
		for name, r := range p.items {
			p.resources[name] = r.Resource
		}
	})
	return p.resources
}

// ConstructVersionMap builds the resources' versions for the delta
// protocol, from the hashes the snapshot was versioned with.
func (s *snapshot) ConstructVersionMap() error {
	for _, p := range s.types {
		if p != nil {
			p.constructVersionMap()
		}
	}
	return nil
}

func (p *snapshotPart) constructVersionMap() {
	p.versionOnce.Do(func() {
		p.versionMap = make(map[string]string, len(p.versions))
		for _, v := range p.versions {
			p.versionMap[v.name] = v.version
		}
	})
}

// GetVersionMap returns each resource's version, by name. The map is the
// snapshot's: the cache only reads it.
func (s *snapshot) GetVersionMap(typeURL string) map[string]string {
	p := s.get(typeURL)
	if p == nil {
		return nil
	}
	p.constructVersionMap()
	return p.versionMap
}

var _ cache.ResourceSnapshot = (*snapshot)(nil)
