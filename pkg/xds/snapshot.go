package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

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
// protocol's per-resource versions are the resources' hashes, known
// before the first delta stream asks for them. A snapshot is immutable.
type snapshot struct {
	types [len(snapshotTypes)]snapshotType
}

type snapshotType struct {
	version string
	items   map[string]types.ResourceWithTTL
	// hashes are the resources' versions for the delta protocol.
	hashes map[string]string
}

// newSnapshot versions r from its resources' facts.
func newSnapshot(r Resources, facts *resourceFacts) (*snapshot, error) {
	for typ := range r {
		if !slices.Contains(snapshotTypes[:], typ) {
			return nil, fmt.Errorf("snapshot: unknown resource type %s", typ)
		}
	}
	s := &snapshot{}
	for i, typ := range snapshotTypes {
		list, ok := r[typ]
		if !ok {
			continue // no version: a proxy asking for the type waits
		}
		t := snapshotType{
			items:  make(map[string]types.ResourceWithTTL, len(list)),
			hashes: make(map[string]string, len(list)),
		}
		names := make([]string, 0, len(list))
		for _, res := range list {
			name := cache.GetResourceName(res)
			f := facts.of(typ, res)
			if f.hashErr != nil {
				return nil, f.hashErr
			}
			t.items[name] = types.ResourceWithTTL{Resource: res}
			t.hashes[name] = f.version
			names = append(names, name)
		}
		slices.SortFunc(names, strings.Compare)
		h := sha256.New()
		for _, name := range names {
			h.Write([]byte(name))
			h.Write([]byte{0})
			h.Write([]byte(t.hashes[name]))
		}
		t.version = hex.EncodeToString(h.Sum(nil)[:10])
		s.types[i] = t
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

// ConstructVersionMap does nothing: the versions are known already.
func (s *snapshot) ConstructVersionMap() error { return nil }

// GetVersionMap returns each resource's version, by name. The map is the
// snapshot's: the cache only reads it.
func (s *snapshot) GetVersionMap(typeURL string) map[string]string {
	if t := s.get(typeURL); t != nil {
		return t.hashes
	}
	return nil
}

var _ cache.ResourceSnapshot = (*snapshot)(nil)
