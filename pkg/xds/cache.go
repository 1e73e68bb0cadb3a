package xds

import (
	"context"
	"fmt"
	"maps"
	"sync"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// snapshotCache holds each proxy's published snapshot and answers its
// streams' watches: it is the cache.ConfigWatcher (and ConfigFetcher)
// go-control-plane's xDS server runs on, in place of its SimpleCache.
//
// What it does differently, and why: a push publishes N snapshots at once
// from several goroutines, and SimpleCache answers each under one global
// lock, wrapping and re-encoding every resource of every response. Here
// the only shared lock guards the table of nodes (read-locked on the push
// path); a node's watches are answered under that node's lock; and a
// response is built from what the snapshot part already holds — each
// resource's Any (for state of the world) and delta Resource, made once per
// resource when it was first versioned — so answering a watch allocates the
// response, not its resources.
//
// Protocol semantics follow SimpleCache in non-ADS mode (a request naming
// resources gets those it names, and is answered even when they are not
// every resource of the type), with one difference in how the state a
// stream carries between requests is read: see sotwAnswer. It is safe for
// concurrent use; the zero value is ready.
type snapshotCache struct {
	mu    sync.RWMutex
	nodes map[string]*nodeCache
}

// nodeCache is one proxy's snapshot and the open watches of its streams.
// Its fields are guarded by mu.
type nodeCache struct {
	mu      sync.Mutex
	snap    *snapshot
	watches map[*sotwWatch]struct{}
	deltas  map[*deltaWatch]struct{}
}

type sotwWatch struct {
	req *cache.Request
	sub cache.Subscription
	out chan cache.Response
}

type deltaWatch struct {
	req *cache.DeltaRequest
	sub cache.Subscription
	out chan cache.DeltaResponse
	// quietAt is the version of the type at which the watch had nothing
	// to answer. The answer follows from the part's version alone, and the
	// server changes neither the request nor the subscription of an open
	// watch (it cancels the watch first), so a snapshot that leaves the
	// type at this version leaves the watch quiet without looking.
	quietAt string
}

// node returns the entry of a node id, creating it when create is set
// (nil otherwise when there is none).
func (c *snapshotCache) node(id string, create bool) *nodeCache {
	c.mu.RLock()
	n := c.nodes[id]
	c.mu.RUnlock()
	if n != nil || !create {
		return n
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if n = c.nodes[id]; n == nil {
		if c.nodes == nil {
			c.nodes = map[string]*nodeCache{}
		}
		n = &nodeCache{watches: map[*sotwWatch]struct{}{}, deltas: map[*deltaWatch]struct{}{}}
		c.nodes[id] = n
	}
	return n
}

// snapshot returns a node's published snapshot, nil if it has none.
func (c *snapshotCache) snapshot(id string) *snapshot {
	n := c.node(id, false)
	if n == nil {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.snap
}

// set publishes a node's snapshot and answers the watches it changes. The
// channels a watch answers on have room for its one response (the
// server's contract), so this never blocks on a stream.
func (c *snapshotCache) set(id string, snap *snapshot) {
	n := c.node(id, true)
	n.mu.Lock()
	defer n.mu.Unlock()
	n.snap = snap
	for w := range n.watches {
		if resp := sotwAnswer(snap, w.req, w.sub); resp != nil {
			w.out <- resp
			delete(n.watches, w)
		}
	}
	for w := range n.deltas {
		version := snap.GetVersion(w.req.GetTypeUrl())
		if version != "" && version == w.quietAt {
			continue
		}
		if resp := deltaAnswer(snap, w.req, w.sub); resp != nil {
			w.out <- resp
			delete(n.deltas, w)
		} else {
			w.quietAt = version
		}
	}
}

// clear forgets a node: its snapshot and its watches.
func (c *snapshotCache) clear(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.nodes, id)
}

// CreateWatch answers a state-of-the-world request at once when the
// node's snapshot has something the stream lacks, and otherwise keeps the
// watch until a snapshot does.
func (c *snapshotCache) CreateWatch(req *cache.Request, sub cache.Subscription, out chan cache.Response) (func(), error) {
	n := c.node(req.GetNode().GetId(), true)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.snap != nil {
		if resp := sotwAnswer(n.snap, req, sub); resp != nil {
			out <- resp
			return func() {}, nil
		}
	}
	w := &sotwWatch{req: req, sub: sub, out: out}
	n.watches[w] = struct{}{}
	return func() {
		n.mu.Lock()
		delete(n.watches, w)
		n.mu.Unlock()
	}, nil
}

// CreateDeltaWatch answers a delta request at once when the node's
// snapshot differs from what the stream has, and otherwise keeps the watch
// until a snapshot does.
func (c *snapshotCache) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, out chan cache.DeltaResponse) (func(), error) {
	n := c.node(req.GetNode().GetId(), true)
	n.mu.Lock()
	defer n.mu.Unlock()
	w := &deltaWatch{req: req, sub: sub, out: out}
	if n.snap != nil {
		if resp := deltaAnswer(n.snap, req, sub); resp != nil {
			out <- resp
			return nil, nil
		}
		w.quietAt = n.snap.GetVersion(req.GetTypeUrl())
	}
	n.deltas[w] = struct{}{}
	return func() {
		n.mu.Lock()
		delete(n.deltas, w)
		n.mu.Unlock()
	}, nil
}

// Fetch answers a REST request: the node's resources of the type, unless
// the request already has their version.
func (c *snapshotCache) Fetch(_ context.Context, req *cache.Request) (cache.Response, error) {
	snap := c.snapshot(req.GetNode().GetId())
	if snap == nil {
		return nil, fmt.Errorf("no configuration for node %q", req.GetNode().GetId())
	}
	p := snap.get(req.GetTypeUrl())
	if req.GetVersionInfo() == p.getVersion() {
		return nil, &types.SkipFetchError{}
	}
	return newSotwResponse(req, p, len(req.GetResourceNames()) == 0, req.GetResourceNames()), nil
}

// fullState is the key under which a state-of-the-world response that held
// every resource of its type records its version in the stream's returned
// resources ("*" names no resource: it is the protocol's wildcard).
const fullState = "*"

// sotwAnswer is the response a state-of-the-world request gets from snap,
// or nil when the stream already has everything it asks for.
//
// The server hands each response's returned resources back with the
// stream's next request (Subscription.ReturnedResources), for the cache to
// interpret. SimpleCache records every resource name it sent; a wildcard
// response here records only {"*": version}, since it held every resource
// of that version: a stream whose request carries the snapshot's version
// (or whose NACK the server rewrote to it) and whose last response was
// full is up to date, while a new stream (nothing returned yet) or one
// that was named resources before gets the full state.
func sotwAnswer(snap *snapshot, req *cache.Request, sub cache.Subscription) cache.Response {
	p := snap.get(req.GetTypeUrl())
	version := p.getVersion()
	names := req.GetResourceNames()
	// A request naming nothing after naming some lets go of the type
	// (not a wildcard, which the subscription tracks): nothing to send.
	full := sub.IsWildcard()
	if !full && len(names) == 0 {
		return nil
	}
	if req.GetVersionInfo() == version {
		returned := sub.ReturnedResources()
		if full {
			// (A type with nothing in it too: Envoy waits for its first
			// LDS and CDS responses, empty or not, to start.)
			if v, ok := returned[fullState]; ok && v == version {
				return nil
			}
		} else if !p.hasAnyOf(sub.SubscribedResources(), returned) {
			return nil
		}
	}
	return newSotwResponse(req, p, full, names)
}

// sotwResponse is a state-of-the-world response (cache.Response).
type sotwResponse struct {
	req       *cache.Request
	version   string
	resources []*anypb.Any // shared with other responses: read only
	returned  map[string]string
}

func newSotwResponse(req *cache.Request, p *snapshotPart, full bool, names []string) *sotwResponse {
	r := &sotwResponse{req: req, version: p.getVersion()}
	if full {
		if p != nil {
			r.resources = p.anys
		}
		r.returned = map[string]string{fullState: r.version}
		return r
	}
	r.returned = make(map[string]string, len(names))
	for _, name := range names {
		if e := p.lookup(name); e != nil {
			r.resources = append(r.resources, e.facts.any)
			r.returned[name] = r.version
		}
	}
	return r
}

// GetDiscoveryResponse builds the message; the server sets its nonce, so
// each call returns a new one (the resources are shared).
func (r *sotwResponse) GetDiscoveryResponse() (*discovery.DiscoveryResponse, error) {
	return &discovery.DiscoveryResponse{VersionInfo: r.version, Resources: r.resources, TypeUrl: r.req.GetTypeUrl()}, nil
}

func (r *sotwResponse) GetRequest() *discovery.DiscoveryRequest { return r.req }

// GetVersion is GetResponseVersion.
func (r *sotwResponse) GetVersion() (string, error) { return r.version, nil }

func (r *sotwResponse) GetResponseVersion() string { return r.version }

// GetReturnedResources is what the stream has once it got this response
// (see sotwAnswer).
func (r *sotwResponse) GetReturnedResources() map[string]string { return r.returned }

func (r *sotwResponse) GetContext() context.Context { return context.Background() }

// deltaAnswer is the response a delta request gets from snap: the
// resources whose version differs from what the stream has, and the names
// it has that are gone; nil when there are none, except for a wildcard
// stream's first request, which is always answered (Envoy waits for it to
// finish initialising). Its semantics are SimpleCache's.
func deltaAnswer(snap *snapshot, req *cache.DeltaRequest, sub cache.Subscription) cache.DeltaResponse {
	p := snap.get(req.GetTypeUrl())
	returned := sub.ReturnedResources()
	r := &deltaResponse{req: req, version: p.getVersion()}
	if sub.IsWildcard() {
		known := 0
		if p != nil {
			for i := range p.entries {
				e := &p.entries[i]
				v, ok := returned[e.name]
				if ok {
					known++
				}
				if !ok || v != e.facts.version {
					r.resources = append(r.resources, e.facts.delta)
				}
			}
		}
		if known < len(returned) { // some are gone
			for name := range returned {
				if p.lookup(name) == nil {
					r.removed = append(r.removed, name)
				}
			}
		}
		if len(r.resources) == 0 && len(r.removed) == 0 && req.GetResponseNonce() != "" {
			return nil // before building what the stream would have
		}
		// What the stream has, updated: cloning a map costs far less than
		// filling one, and most resources are unchanged.
		r.next = maps.Clone(returned)
		if r.next == nil {
			r.next = make(map[string]string, p.len())
		}
		for _, d := range r.resources {
			r.next[d.GetName()] = d.GetVersion()
		}
		for _, name := range r.removed {
			delete(r.next, name)
		}
	} else {
		r.next = make(map[string]string, len(sub.SubscribedResources()))
		for name := range sub.SubscribedResources() {
			prev, found := returned[name]
			if e := p.lookup(name); e != nil {
				if prev != e.facts.version {
					r.resources = append(r.resources, e.facts.delta)
				}
				r.next[name] = e.facts.version
			} else if found {
				r.removed = append(r.removed, name)
			}
		}
	}
	if len(r.resources) > 0 || len(r.removed) > 0 || (sub.IsWildcard() && req.GetResponseNonce() == "") {
		return r
	}
	return nil
}

// deltaResponse is a delta response (cache.DeltaResponse).
type deltaResponse struct {
	req       *cache.DeltaRequest
	version   string
	resources []*discovery.Resource // each shared with other responses: read only
	removed   []string
	next      map[string]string
}

// GetDeltaDiscoveryResponse builds the message; the server sets its
// nonce, so each call returns a new one (the resources are shared).
func (r *deltaResponse) GetDeltaDiscoveryResponse() (*discovery.DeltaDiscoveryResponse, error) {
	return &discovery.DeltaDiscoveryResponse{Resources: r.resources, RemovedResources: r.removed,
		TypeUrl: r.req.GetTypeUrl(), SystemVersionInfo: r.version}, nil
}

func (r *deltaResponse) GetDeltaRequest() *discovery.DeltaDiscoveryRequest { return r.req }

// GetSystemVersion is GetResponseVersion.
func (r *deltaResponse) GetSystemVersion() (string, error) { return r.version, nil }

func (r *deltaResponse) GetResponseVersion() string { return r.version }

// GetNextVersionMap is GetReturnedResources.
func (r *deltaResponse) GetNextVersionMap() map[string]string { return r.next }

// GetReturnedResources is each resource the stream has once it got this
// response, with its version. The server modifies it: it is this
// response's own.
func (r *deltaResponse) GetReturnedResources() map[string]string { return r.next }

func (r *deltaResponse) GetContext() context.Context { return context.Background() }

var (
	_ cache.Cache         = (*snapshotCache)(nil)
	_ cache.Response      = (*sotwResponse)(nil)
	_ cache.DeltaResponse = (*deltaResponse)(nil)
)
