package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

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
// A snapshot is immutable (its version maps are built once, on first use).
type snapshot struct {
	types [len(snapshotTypes)]snapshotType
}

type snapshotType struct {
	version  string
	items    map[string]types.ResourceWithTTL
	versions []resourceVersion

	once       sync.Once
	versionMap map[string]string // for the delta protocol, built by once
}

type resourceVersion struct{ name, version string }

// newSnapshot validates r, as Validate does, and versions it, from its
// resources' facts. Validation errors wrap ErrInvalid.
func newSnapshot(r Resources, facts *resourceFacts) (*snapshot, error) {
	var errs []error
	for typ := range r {
		if !slices.Contains(snapshotTypes[:], typ) {
			errs = append(errs, fmt.Errorf("unknown resource type %s", typ))
		}
	}
	s := &snapshot{}
	var refs []reference
	for i, typ := range snapshotTypes {
		list, ok := r[typ]
		if !ok {
			continue // no version: a proxy asking for the type waits
		}
		t := &s.types[i]
		t.items = make(map[string]types.ResourceWithTTL, len(list))
		t.versions = make([]resourceVersion, 0, len(list))
		wrapped := make([]encoded, len(list))
		for j, res := range list {
			name := cache.GetResourceName(res)
			f := facts.of(typ, res)
			if f.hashErr != nil {
				errs = append(errs, f.hashErr)
				continue
			}
			errs = append(errs, f.check.errs...)
			refs = append(refs, f.check.refs...)
			if _, dup := t.items[name]; dup {
				errs = append(errs, fmt.Errorf("%s %q twice", shortType(typ), name))
				continue
			}
			wrapped[j] = encoded{res: res, name: name, bytes: f.encoding}
			t.items[name] = types.ResourceWithTTL{Resource: &wrapped[j]}
			t.versions = append(t.versions, resourceVersion{name: name, version: f.version})
		}
		slices.SortFunc(t.versions, func(a, b resourceVersion) int { return strings.Compare(a.name, b.name) })
		h := sha256.New()
		for _, v := range t.versions {
			h.Write([]byte(v.name))
			h.Write([]byte{0})
			h.Write([]byte(v.version))
		}
		t.version = hex.EncodeToString(h.Sum(nil)[:10])
	}
	for _, ref := range refs {
		if _, ok := s.GetResourcesAndTTL(ref.typ)[ref.name]; !ok {
			errs = append(errs, fmt.Errorf("%s refers to %s %q, which is not there", ref.from, shortType(ref.typ), ref.name))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return s, nil
}

func (s *snapshot) get(typeURL string) *snapshotType {
	if s == nil {
		return nil
	}
	if i := slices.Index(snapshotTypes[:], typeURL); i >= 0 {
		return &s.types[i]
	}
	return nil
}

// sameAs reports whether every type has the same version in s and o.
func (s *snapshot) sameAs(o *snapshot) bool {
	if s == nil || o == nil {
		return s == o
	}
	for i := range s.types {
		if s.types[i].version != o.types[i].version {
			return false
		}
	}
	return true
}

// GetVersion is the version of a type's resources; empty when the snapshot
// has none of the type.
func (s *snapshot) GetVersion(typeURL string) string {
	if t := s.get(typeURL); t != nil {
		return t.version
	}
	return ""
}

// GetResourcesAndTTL returns a type's resources by name. The map is the
// snapshot's: the cache only reads it.
func (s *snapshot) GetResourcesAndTTL(typeURL string) map[string]types.ResourceWithTTL {
	if t := s.get(typeURL); t != nil {
		return t.items
	}
	return nil
}

// GetResources returns a type's resources by name, in a new map.
func (s *snapshot) GetResources(typeURL string) map[string]types.Resource {
	t := s.get(typeURL)
	if t == nil || t.items == nil {
		return nil
	}
	out := make(map[string]types.Resource, len(t.items))
	for name, r := range t.items {
		out[name] = r.Resource
	}
	return out
}

// ConstructVersionMap builds the resources' versions for the delta
// protocol, from the hashes the snapshot was versioned with.
func (s *snapshot) ConstructVersionMap() error {
	for i := range s.types {
		t := &s.types[i]
		t.once.Do(func() {
			t.versionMap = make(map[string]string, len(t.versions))
			for _, v := range t.versions {
				t.versionMap[v.name] = v.version
			}
		})
	}
	return nil
}

// GetVersionMap returns each resource's version, by name. The map is the
// snapshot's: the cache only reads it.
func (s *snapshot) GetVersionMap(typeURL string) map[string]string {
	t := s.get(typeURL)
	if t == nil {
		return nil
	}
	_ = s.ConstructVersionMap()
	return t.versionMap
}

var _ cache.ResourceSnapshot = (*snapshot)(nil)
