package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"runtime"
	"sync"
	"unsafe"
	"weak"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// resourceFacts remembers what this package derives from a resource alone
// — its encoding and the hash of it, and what validating it found — by the
// resource's identity (its pointer), for as long as the resource lives.
//
// What a mesh's proxies share (MeshState memoises it) is one message that
// many snapshots point at, so hashing and checking each once instead of
// once per proxy is most of what validating and versioning a snapshot
// cost. This relies on the invariant every published resource already
// obeys: it is never modified once built (the snapshot cache holds it). A
// changed resource is a new message, hence a new key.
//
// Entries are keyed by the resource's address and hold a weak pointer to
// it: the cache keeps nothing alive, an entry is used only while its weak
// pointer still leads to the very resource asked about (so an address
// reused by a later message never finds an old entry), and it is dropped
// by a cleanup once its resource has been collected. It is safe for
// concurrent use; the zero value is ready.
type resourceFacts struct {
	mu sync.RWMutex
	m  map[uintptr]*factsEntry // by the resource's address
}

type factsEntry struct {
	// owner reads the weak pointer to the resource: nil once collected.
	owner func() unsafe.Pointer
	facts *facts
}

// facts are what is known of one resource. They must not refer to it, or it
// would never be collected.
type facts struct {
	name string
	// encoding is the resource's deterministic encoding, what is sent.
	encoding []byte
	hash     [sha256.Size]byte
	// version is the resource's version in the delta protocol: its hash,
	// in hex.
	version string
	// any and delta are the resource as state-of-the-world and delta
	// responses carry it (delta holds any), holding encoding: every
	// response that sends the resource shares them.
	any     *anypb.Any
	delta   *discovery.Resource
	hashErr error
	check   resourceCheck
}

// of returns res's facts, typ being the type it is published as.
func (c *resourceFacts) of(typ resource.Type, res types.Resource) *facts {
	out := [1]*facts{}
	c.ofAll(typ, []types.Resource{res}, out[:])
	return out[0]
}

// ofAll sets out[i] to the facts of list[i], all of type typ, looking the
// known ones up under one read lock.
func (c *resourceFacts) ofAll(typ resource.Type, list []types.Resource, out []*facts) {
	c.mu.RLock()
	for i, res := range list {
		out[i] = nil
		if p := identity(res); p != nil {
			if e := c.m[uintptr(p)]; e != nil && e.owner() == p {
				out[i] = e.facts
			}
		}
	}
	c.mu.RUnlock()
	for i, res := range list {
		if out[i] == nil {
			out[i] = c.learn(typ, res)
		}
	}
}

// identity is the address of a resource of a type the cache knows; nil for
// others, which are never remembered.
func identity(res types.Resource) unsafe.Pointer {
	switch v := res.(type) {
	case *listener.Listener:
		return unsafe.Pointer(v)
	case *cluster.Cluster:
		return unsafe.Pointer(v)
	case *endpoint.ClusterLoadAssignment:
		return unsafe.Pointer(v)
	case *route.RouteConfiguration:
		return unsafe.Pointer(v)
	case *tlsv3.Secret:
		return unsafe.Pointer(v)
	}
	return nil
}

// learn works out res's facts and remembers them.
func (c *resourceFacts) learn(typ resource.Type, res types.Resource) *facts {
	f := newFacts(typ, res)
	switch v := res.(type) {
	case *listener.Listener:
		return remember(c, v, f)
	case *cluster.Cluster:
		return remember(c, v, f)
	case *endpoint.ClusterLoadAssignment:
		return remember(c, v, f)
	case *route.RouteConfiguration:
		return remember(c, v, f)
	case *tlsv3.Secret:
		return remember(c, v, f)
	}
	return f
}

// remember records f as p's facts, unless another goroutine recorded some
// meanwhile, which it returns instead.
func remember[T any](c *resourceFacts, p *T, f *facts) *facts {
	addr := uintptr(unsafe.Pointer(p))
	wp := weak.Make(p)
	e := &factsEntry{owner: func() unsafe.Pointer { return unsafe.Pointer(wp.Value()) }, facts: f}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.m[addr]; old != nil && old.owner() == unsafe.Pointer(p) {
		return old.facts
	}
	// Absent, or the entry of a collected resource not yet cleaned up.
	if c.m == nil {
		c.m = map[uintptr]*factsEntry{}
	}
	c.m[addr] = e
	runtime.AddCleanup(p, func(e *factsEntry) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.m[addr] == e {
			delete(c.m, addr)
		}
	}, e)
	return f
}

func newFacts(typ resource.Type, res types.Resource) *facts {
	f := &facts{name: cache.GetResourceName(res), check: checkResource(typ, res)}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(res)
	if err != nil {
		f.hashErr = fmt.Errorf("marshal %s: %w", shortType(typ), err)
		return f
	}
	f.encoding = b
	f.hash = sha256.Sum256(b)
	f.version = hex.EncodeToString(f.hash[:16])
	f.any = &anypb.Any{TypeUrl: typ, Value: b}
	f.delta = &discovery.Resource{Name: f.name, Version: f.version, Resource: f.any}
	return f
}
