package xds

import (
	"crypto/sha256"
	"fmt"
	"runtime"
	"sync"
	"weak"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
)

// resourceHashes remembers the hash of each resource it has seen, by the
// resource's identity (its pointer), for as long as the resource lives.
//
// What a mesh's proxies share (MeshState memoises it) is one message that
// many snapshots point at, so hashing each once instead of once per proxy
// is most of what versioning a snapshot costs. This relies on the
// invariant every published resource already obeys: it is never modified
// once built (go-control-plane's cache holds it and marshals it lazily).
// A changed resource is a new message, hence a new key.
//
// Keys are weak pointers: the cache keeps nothing alive, and an entry is
// dropped by a cleanup once its resource has been collected, so an address
// reused by a later message can never find an old hash. It is safe for
// concurrent use; the zero value is ready.
type resourceHashes struct {
	m sync.Map // weak.Pointer[T] → [sha256.Size]byte
}

// hash returns the SHA-256 of res's deterministic encoding.
func (c *resourceHashes) hash(res types.Resource) ([sha256.Size]byte, error) {
	switch v := res.(type) {
	case *listener.Listener:
		return hashOnce(c, v)
	case *cluster.Cluster:
		return hashOnce(c, v)
	case *endpoint.ClusterLoadAssignment:
		return hashOnce(c, v)
	case *route.RouteConfiguration:
		return hashOnce(c, v)
	case *tlsv3.Secret:
		return hashOnce(c, v)
	}
	return hashMessage(res)
}

func hashOnce[T any, P interface {
	*T
	proto.Message
}](c *resourceHashes, p P) ([sha256.Size]byte, error) {
	key := weak.Make((*T)(p))
	if h, ok := c.m.Load(key); ok {
		return h.([sha256.Size]byte), nil
	}
	h, err := hashMessage(p)
	if err != nil {
		return h, err
	}
	if _, loaded := c.m.LoadOrStore(key, h); !loaded {
		runtime.AddCleanup((*T)(p), func(k weak.Pointer[T]) { c.m.Delete(k) }, key)
	}
	return h, nil
}

func hashMessage(m proto.Message) ([sha256.Size]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return [sha256.Size]byte{}, fmt.Errorf("marshal %T: %w", m, err)
	}
	return sha256.Sum256(b), nil
}
