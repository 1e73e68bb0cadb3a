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
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
)

// resourceFacts remembers what this package derives from a resource alone
// — its encoding and the hash of it, and what validating it found — by the
// resource's identity (its pointer), for as long as the resource lives.
//
// What a mesh's proxies share (MeshState memoises it) is one message that
// many snapshots point at, so hashing and checking each once instead of
// once per proxy is most of what validating and versioning a snapshot
// cost. This relies on the invariant every published resource already
// obeys: it is never modified once built (go-control-plane's cache holds it
// and marshals it lazily). A changed resource is a new message, hence a new
// key.
//
// Entries are keyed by the resource's address and hold a weak pointer to
// it: the cache keeps nothing alive, an entry is used only while its weak
// pointer still leads to the very resource asked about (so an address
// reused by a later message never finds an old entry), and it is dropped
// by a cleanup once its resource has been collected. It is safe for
// concurrent use; the zero value is ready.
type resourceFacts struct {
	m sync.Map // uintptr → *factsEntry
}

type factsEntry struct {
	owner any // weak.Pointer[T] to the resource
	facts *facts
}

// facts are what is known of one resource. They must not refer to it, or it
// would never be collected.
type facts struct {
	// encoding is the resource's deterministic encoding, what is sent.
	encoding []byte
	hash     [sha256.Size]byte
	// version is the resource's version in the delta protocol: its hash,
	// in hex.
	version string
	hashErr error
	check   resourceCheck
}

// of returns res's facts, typ being the type it is published as.
func (c *resourceFacts) of(typ resource.Type, res types.Resource) *facts {
	switch v := res.(type) {
	case *listener.Listener:
		return factsOnce(c, typ, v)
	case *cluster.Cluster:
		return factsOnce(c, typ, v)
	case *endpoint.ClusterLoadAssignment:
		return factsOnce(c, typ, v)
	case *route.RouteConfiguration:
		return factsOnce(c, typ, v)
	case *tlsv3.Secret:
		return factsOnce(c, typ, v)
	}
	return newFacts(typ, res)
}

func factsOnce[T any, P interface {
	*T
	proto.Message
}](c *resourceFacts, typ resource.Type, p P) *facts {
	addr := uintptr(unsafe.Pointer(p))
	of := func(v any) (*facts, bool) {
		e := v.(*factsEntry)
		wp, ok := e.owner.(weak.Pointer[T])
		return e.facts, ok && wp.Value() == (*T)(p)
	}
	if v, ok := c.m.Load(addr); ok {
		if f, mine := of(v); mine {
			return f
		}
	}
	e := &factsEntry{owner: weak.Make((*T)(p)), facts: newFacts(typ, p)}
	for {
		v, loaded := c.m.LoadOrStore(addr, e)
		if loaded {
			if f, mine := of(v); mine {
				return f // another goroutine got there first
			}
			// The entry of a collected resource, not yet cleaned up.
			if !c.m.CompareAndSwap(addr, v, e) {
				continue
			}
		}
		runtime.AddCleanup((*T)(p), func(e *factsEntry) { c.m.CompareAndDelete(addr, e) }, e)
		return e.facts
	}
}

func newFacts(typ resource.Type, res types.Resource) *facts {
	f := &facts{check: checkResource(typ, res)}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(res)
	if err != nil {
		f.hashErr = fmt.Errorf("marshal %s: %w", shortType(typ), err)
		return f
	}
	f.encoding = b
	f.hash = sha256.Sum256(b)
	f.version = hex.EncodeToString(f.hash[:16])
	return f
}
