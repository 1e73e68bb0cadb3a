package xds

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/ursamesh/ursa/pkg/api"
)

// Node is a proxy connected to this zone CP replica: the xDS server keeps
// the configuration of these, and only of these, current. Whether a proxy
// is up, for every replica to see, is the Presence's to record.
type Node struct {
	ID    string    `json:"id"`
	Kind  Kind      `json:"kind"`
	Since time.Time `json:"connectedSince"`
	// Acked is the last version the proxy acknowledged, by type URL.
	Acked map[string]string `json:"acked,omitempty"`
	// Current is the version of its configuration the CP publishes, by
	// type URL: where it equals Acked, the proxy is up to date.
	Current map[string]string `json:"current,omitempty"`
	// LastNack is the reason of the last NACK, if any.
	LastNack string `json:"lastNack,omitempty"`
	Nacks    int    `json:"nacks"`
	// CSR is the certificate request (PEM) in the node metadata of its
	// latest stream, if any: its identity certifies that key.
	CSR string `json:"-"`
	// DNSAddress is the IP:port its latest stream asked a DNS listener on
	// (node metadata api.MetadataDNSAddress), "" for none.
	DNSAddress string `json:"dnsAddress,omitempty"`
	// TransparentProxy is the port its latest stream said its outbound
	// TCP is redirected to (node metadata api.MetadataTransparentProxy),
	// "" for none.
	TransparentProxy string `json:"transparentProxy,omitempty"`
	// TransparentInbound is the port its latest stream said its inbound
	// TCP is redirected to (node metadata api.MetadataTransparentInbound),
	// "" for none.
	TransparentInbound string `json:"transparentInbound,omitempty"`
	// InboundPassthrough is whether its latest stream said every inbound
	// port is redirected (node metadata api.MetadataInboundPassthrough).
	InboundPassthrough bool `json:"inboundPassthrough,omitempty"`
	// Claims are the tokens' claims of its open streams that showed one
	// (Nodes sets them): each stream is served what the node is generated,
	// so every one of them must cover its Dataplane (Server.Revoke).
	Claims []Claims `json:"-"`
}

// KindOf tells a proxy's kind from its node metadata.
func KindOf(node *core.Node) Kind {
	f := node.GetMetadata().GetFields()
	switch {
	case f[api.MetadataIngress].GetStringValue() == "true":
		return KindIngress
	case f[api.MetadataProxyless].GetStringValue() == "true":
		return KindProxyless
	}
	return KindSidecar
}

// StreamEvent is what happened on a proxy's streams.
type StreamEvent struct {
	Op   StreamOp
	Node string
	Kind Kind
	At   time.Time
	// TypeURL, with Version (an ACK) or Reason (a NACK).
	TypeURL string
	Version string
	Reason  string
	// Stopping, on OpDisconnected: the stream ended because this server
	// is stopping (the context Register was given is done), not because
	// the proxy left: it is reconnecting, here or elsewhere.
	Stopping bool
}

// StreamOp is the kind of a StreamEvent.
type StreamOp int

const (
	// OpConnected: the proxy's first stream to this replica was admitted.
	OpConnected StreamOp = iota + 1
	// OpDisconnected: its last stream to this replica closed.
	OpDisconnected
	// OpAcked: it acknowledged Version of TypeURL.
	OpAcked
	// OpNacked: it rejected TypeURL's configuration, for Reason.
	OpNacked
)

// Presence is told what happens on proxies' streams; the zone's presence
// component writes it to the store as DataplaneInsights. Observe is called
// from the stream's goroutine and must not block on I/O.
type Presence interface {
	Observe(e StreamEvent)
}

// Registrar registers what a proxy presents in its node metadata (its
// Dataplane or ZoneIngress) when its first stream opens, before it is
// served; an error refuses the stream. claims are its token's, nil without
// one.
type Registrar interface {
	Register(ctx context.Context, node *core.Node, claims *Claims) error
}

// Server serves xDS (ADS and per-type, state-of-the-world and delta) from a
// snapshot cache. It knows which proxies are connected to it, so that only
// their configurations are generated, and tells its Presence what happens
// on their streams; it decides nothing from that itself. NACKs are counted,
// logged, and slow the proxy's stream down, so a bad configuration is never
// resent in a hot loop.
type Server struct {
	cache    snapshotCache
	log      *zap.Logger
	nacks    *prometheus.CounterVec
	refusals *prometheus.CounterVec

	auth      Auth
	presence  Presence
	registrar Registrar

	mu      sync.Mutex
	serving context.Context       // what Register was given: the streams end with it
	auths   map[int64]*streamAuth // stream id → who it showed it is
	nodes   map[string]*Node
	streams map[int64]string // stream id → node id
	// byNode is streams the other way round: a node's open streams.
	byNode map[string]map[int64]bool
	open   map[string]int // node id → its open streams
	// published is each node's last snapshot.
	published map[string]*snapshot
	changed   chan struct{}

	// facts make validating and versioning a snapshot cost what is new
	// in it, not what it shares with other proxies' snapshots.
	facts resourceFacts
	// parts let proxies with the same resources of a type share them.
	parts snapshotParts
}

// SetAuth sets how proxies are authenticated; call it before Register.
func (s *Server) SetAuth(a Auth) { s.auth = a }

// SetPresence sets who is told of proxies' streams; call it before Register.
func (s *Server) SetPresence(p Presence) { s.presence = p }

// SetRegistrar sets who registers what proxies present; call it before
// Register.
func (s *Server) SetRegistrar(r Registrar) { s.registrar = r }

// NewServer returns a Server; it registers its metrics on reg.
func NewServer(log *zap.Logger, reg prometheus.Registerer) (*Server, error) {
	s := &Server{
		log:   log,
		auths: map[int64]*streamAuth{},
		nodes: map[string]*Node{}, streams: map[int64]string{}, byNode: map[string]map[int64]bool{}, open: map[string]int{}, published: map[string]*snapshot{},
		changed: make(chan struct{}),
	}
	for _, c := range s.newMetrics() {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Register adds the xDS services to g.
func (s *Server) Register(ctx context.Context, g *grpc.Server) {
	s.mu.Lock()
	s.serving = ctx
	s.mu.Unlock()
	srv := serverv3.NewServer(ctx, &s.cache, s.callbacks())
	r := revocableRegistrar{g}
	discovery.RegisterAggregatedDiscoveryServiceServer(r, srv)
	listenerservice.RegisterListenerDiscoveryServiceServer(r, srv)
	routeservice.RegisterRouteDiscoveryServiceServer(r, srv)
	clusterservice.RegisterClusterDiscoveryServiceServer(r, srv)
	endpointservice.RegisterEndpointDiscoveryServiceServer(r, srv)
}

// Nodes returns the proxies connected to this replica, by id, and a channel
// closed when that set changes.
func (s *Server) Nodes() ([]Node, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	claims := map[string][]Claims{}
	for stream, id := range s.streams {
		if a := s.auths[stream]; a != nil && a.claims != nil {
			claims[id] = append(claims[id], *a.claims)
		}
	}
	out := make([]Node, 0, len(s.nodes))
	for _, n := range s.nodes {
		c := *n
		c.Claims = claims[n.ID]
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b Node) int { return strings.Compare(a.ID, b.ID) })
	return out, s.changed
}

// observe tells the presence, if any, of e.
func (s *Server) observe(e StreamEvent) {
	if s.presence != nil {
		e.At = time.Now()
		s.presence.Observe(e)
	}
}

// ErrInvalid marks resources that SetResources refused because they did
// not pass validation.
var ErrInvalid = errors.New("invalid configuration")

// SetResources validates a proxy's resources (as Validate does; an error
// wraps ErrInvalid) and publishes them, unless they are what it already
// has. Neither they nor any message they point to may be modified
// afterwards: the cache serves them as they are, and what SetResources
// learns about each resource (its encoding, hash and own checks) is
// remembered by the resource's identity, so that what many proxies share
// is encoded, hashed and checked once. It is safe to call concurrently for
// different proxies.
func (s *Server) SetResources(ctx context.Context, nodeID string, r Resources) error {
	s.mu.Lock()
	prev := s.published[nodeID]
	s.mu.Unlock()
	snap, err := newSnapshot(r, &s.facts, &s.parts, prev)
	if err != nil {
		return fmt.Errorf("snapshot for %s: %w", nodeID, err)
	}
	same := snap.sameAs(prev)
	if same {
		return nil
	}
	s.cache.set(nodeID, snap)
	s.mu.Lock()
	s.published[nodeID] = snap
	s.mu.Unlock()
	return nil
}

// SetResourcesFor is SetResources for the connection n (a Node from
// Nodes): it publishes only while that connection is open, and forgets
// what it published if the proxy went meanwhile, so that a generation
// racing a disconnection neither keeps a gone proxy's snapshot nor serves
// it when the proxy comes back.
func (s *Server) SetResourcesFor(ctx context.Context, n Node, r Resources) error {
	if !s.holds(n) {
		return nil
	}
	err := s.SetResources(ctx, n.ID, r)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, connected := s.nodes[n.ID]; !connected {
		delete(s.published, n.ID)
		s.cache.clear(n.ID)
	}
	return err
}

// holds reports whether n's connection (its id and since) is open.
func (s *Server) holds(n Node) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.nodes[n.ID]
	return ok && cur.Since.Equal(n.Since)
}

func (s *Server) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// opened keeps the token in a new stream's metadata, checked with its first
// request.
func (s *Server) opened(ctx context.Context, stream int64) error {
	revoke, _ := ctx.Value(revokeKey{}).(context.CancelCauseFunc)
	s.mu.Lock()
	s.auths[stream] = &streamAuth{header: headerToken(ctx), revoke: revoke}
	s.mu.Unlock()
	return nil
}

// Revoke ends, refused as not covered, every open stream of node whose
// token's claims do not cover what the node is now, as uncovered says (its
// registered Dataplane: a stream may have been admitted before that was
// registered, or while it was something else). It returns how many it
// ended, and how many such streams it could not end (not served through
// Register): while any is open, nothing may be published to the node.
func (s *Server) Revoke(node string, uncovered func(Claims) error) (ended, left int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for stream, id := range s.streams {
		a := s.auths[stream]
		if id != node || a == nil || a.claims == nil {
			continue
		}
		err := uncovered(*a.claims)
		switch {
		case err == nil:
			continue
		case a.revoke == nil:
			left++
			continue
		}
		s.end(node, a, refuse(RefusedNotCovered, codes.PermissionDenied, "%s is not served to this stream any more: %v", node, err))
		ended++
	}
	return ended, left
}

// seen records a request's node, or refuses it when the node is connected
// as another kind (checked again here, with the recording, as two first
// streams may race); the caller holds mu.
func (s *Server) seen(stream int64, node *core.Node) *refusal {
	if node == nil || node.GetId() == "" {
		return nil
	}
	if r := s.otherKind(node); r != nil {
		return r
	}
	prev, had := s.streams[stream]
	if !had {
		s.open[node.GetId()]++
		if s.byNode[node.GetId()] == nil {
			s.byNode[node.GetId()] = map[int64]bool{}
		}
		s.byNode[node.GetId()][stream] = true
	} else if prev != node.GetId() {
		return nil // a stream's node is the one its first request named
	}
	s.streams[stream] = node.GetId()
	csr := node.GetMetadata().GetFields()[api.MetadataCSR].GetStringValue()
	dnsAddr := node.GetMetadata().GetFields()[api.MetadataDNSAddress].GetStringValue()
	transparent := node.GetMetadata().GetFields()[api.MetadataTransparentProxy].GetStringValue()
	transparentIn := node.GetMetadata().GetFields()[api.MetadataTransparentInbound].GetStringValue()
	passthrough := node.GetMetadata().GetFields()[api.MetadataInboundPassthrough].GetStringValue() == "true"
	if n, ok := s.nodes[node.GetId()]; ok {
		if !had {
			n.DNSAddress, n.TransparentProxy, n.TransparentInbound, n.InboundPassthrough = dnsAddr, transparent, transparentIn, passthrough
			// A proxy that restarted with a new key before its old stream
			// closed: its identity must certify the new key. And every
			// stream's token must cover the node: told of a further
			// one, the generation checks it.
			n.CSR = csr
			s.notify()
		}
		return nil
	}
	kind := KindOf(node)
	s.nodes[node.GetId()] = &Node{ID: node.GetId(), Kind: kind, Since: time.Now(), Acked: map[string]string{}, CSR: csr, DNSAddress: dnsAddr, TransparentProxy: transparent,
		TransparentInbound: transparentIn, InboundPassthrough: passthrough}
	s.log.Info("proxy connected", zap.String("proxy", node.GetId()), zap.Stringer("kind", kind))
	s.observe(StreamEvent{Op: OpConnected, Node: node.GetId(), Kind: kind})
	s.notify()
	return nil
}

// Reverify checks again the token of every open stream that was admitted
// with a token that says when it expires (one the zone signed: a revoked
// one no longer verifies), and ends, refused as invalid_token, those whose
// token no longer verifies. Each distinct token is verified once. It
// returns how many streams it ended. A token that cannot be checked now
// keeps its streams.
func (s *Server) Reverify(ctx context.Context) int {
	type open struct {
		node string
		a    *streamAuth
	}
	var streams []open
	s.mu.Lock()
	for stream, a := range s.auths {
		if a.done && a.token != "" && a.claims != nil && !a.claims.ExpiresAt.IsZero() && a.revoke != nil {
			streams = append(streams, open{s.streams[stream], a})
		}
	}
	s.mu.Unlock()
	verdicts := map[string]error{}
	ended := 0
	for _, o := range streams {
		err, done := verdicts[o.a.token]
		if !done {
			_, err = s.auth.Verify(ctx, o.a.token)
			verdicts[o.a.token] = err
		}
		if !errors.Is(err, ErrInvalidToken) {
			continue
		}
		s.end(o.node, o.a, refuse(RefusedInvalidToken, codes.Unauthenticated, "its token no longer verifies (revoked?): %v", err))
		ended++
	}
	return ended
}

// expired ends the stream a, of node, whose token expired at exp: a token
// is checked when a stream opens, and a proxy that connected with it would
// otherwise go on being served, and its identity renewed, for as long as
// the stream lasts. Its reconnect shows the token again, and is refused
// until it shows a new one (its proxy runs on what it has meanwhile).
func (s *Server) expired(node string, a *streamAuth, exp time.Time) {
	s.end(node, a, refuse(RefusedInvalidToken, codes.Unauthenticated, "its token expired at %s: give the proxy a new one", exp.UTC().Format(time.RFC3339)))
}

// end ends an admitted stream a of node, refused as r: counted, logged, and
// closed with r's status.
func (s *Server) end(node string, a *streamAuth, r *refusal) {
	s.refusals.WithLabelValues(r.reason).Inc()
	s.log.Warn("refused a proxy", zap.String("proxy", node), zap.String("reason", r.reason), zap.String("error", r.st.Message()))
	a.revoke(r)
}

func (s *Server) closed(stream int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.auths[stream]; a != nil && a.expiry != nil {
		a.expiry.Stop()
	}
	id, ok := s.streams[stream]
	delete(s.streams, stream)
	delete(s.auths, stream)
	if !ok {
		return
	}
	if delete(s.byNode[id], stream); len(s.byNode[id]) == 0 {
		delete(s.byNode, id)
	}
	if s.open[id]--; s.open[id] > 0 {
		s.notify() // its streams' tokens changed: one may have held it back
		return     // another stream of the same proxy is still open
	}
	delete(s.open, id)
	kind := KindSidecar
	if n := s.nodes[id]; n != nil {
		kind = n.Kind
	}
	delete(s.nodes, id)
	delete(s.published, id)
	s.cache.clear(id)
	// The streams end on the serving context: once it is done, every
	// stream that ends sees it so.
	stopping := s.serving != nil && s.serving.Err() != nil
	s.log.Info("proxy disconnected", zap.String("proxy", id), zap.Bool("server_stopping", stopping))
	s.observe(StreamEvent{Op: OpDisconnected, Node: id, Kind: kind, Stopping: stopping})
	s.notify()
}

// nacked counts and logs a NACK. It does not slow the proxy down: a sleep
// here held the whole stream (every type's responses and ACKs) for up to
// 10 s, and the rejected version is not resent anyway (the NACK's version
// is rewritten, StreamRequestFunc).
func (s *Server) nacked(stream int64, typeURL, reason string) {
	s.nacks.WithLabelValues(typeURL).Inc()
	s.mu.Lock()
	id := s.streams[stream]
	if n := s.nodes[id]; n != nil {
		n.Nacks++
		n.LastNack = reason
		s.observe(StreamEvent{Op: OpNacked, Node: id, Kind: n.Kind, TypeURL: typeURL, Reason: reason})
	}
	s.mu.Unlock()
	s.log.Warn("proxy rejected its configuration", zap.String("proxy", id), zap.String("type_url", typeURL), zap.String("reason", reason))
}

func (s *Server) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamOpenFunc:      func(ctx context.Context, stream int64, _ string) error { return s.opened(ctx, stream) },
		DeltaStreamOpenFunc: func(ctx context.Context, stream int64, _ string) error { return s.opened(ctx, stream) },
		StreamRequestFunc: func(stream int64, req *discovery.DiscoveryRequest) error {
			if err := s.admit(stream, req.GetNode()); err != nil {
				return err
			}
			if req.GetErrorDetail() != nil {
				s.nacked(stream, req.GetTypeUrl(), req.GetErrorDetail().GetMessage())
				// The cache answers any request whose version differs from
				// the snapshot's, so a NACK (which carries the last good
				// version) would get the rejected configuration again at
				// once, forever. Record the rejected version as the
				// proxy's: nothing is resent until the configuration
				// changes.
				s.mu.Lock()
				if snap, ok := s.published[s.streams[stream]]; ok {
					req.VersionInfo = snap.GetVersion(req.GetTypeUrl())
				}
				s.mu.Unlock()
			} else if req.GetResponseNonce() != "" {
				s.acked(stream, req.GetTypeUrl(), req.GetVersionInfo())
			}
			return nil
		},
		StreamDeltaRequestFunc: func(stream int64, req *discovery.DeltaDiscoveryRequest) error {
			if err := s.admit(stream, req.GetNode()); err != nil {
				return err
			}
			if req.GetErrorDetail() != nil {
				s.nacked(stream, req.GetTypeUrl(), req.GetErrorDetail().GetMessage())
			} else if req.GetResponseNonce() != "" {
				// Delta requests carry no version: the proxy holds what
				// the last response sent, the snapshot's version of the
				// type (or an older one, if a newer response is in
				// flight; the next ACK corrects it).
				s.mu.Lock()
				version := s.published[s.streams[stream]].GetVersion(req.GetTypeUrl())
				s.mu.Unlock()
				s.acked(stream, req.GetTypeUrl(), version)
			}
			return nil
		},
		StreamClosedFunc:      func(stream int64, _ *core.Node) { s.closed(stream) },
		DeltaStreamClosedFunc: func(stream int64, _ *core.Node) { s.closed(stream) },
	}
}

// Insight returns what this replica knows of a connected proxy's streams,
// or false when it is not connected here.
func (s *Server) Insight(nodeID string) (Node, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[nodeID]
	if !ok {
		return Node{}, false
	}
	out := *n
	out.Acked = maps.Clone(n.Acked)
	if snap := s.published[nodeID]; snap != nil {
		out.Current = map[string]string{}
		for _, typ := range snapshotTypes {
			if v := snap.GetVersion(typ); v != "" {
				out.Current[typ] = v
			}
		}
	}
	return out, true
}

// acked records a request that acknowledges a response.
func (s *Server) acked(stream int64, typeURL, version string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := s.nodes[s.streams[stream]]; n != nil && version != "" && n.Acked[typeURL] != version {
		n.Acked[typeURL] = version
		s.observe(StreamEvent{Op: OpAcked, Node: n.ID, Kind: n.Kind, TypeURL: typeURL, Version: version})
	}
}

// admit authenticates a stream with its first request, checks every
// request's node against the stream's token and, the first time a stream
// shows a node, registers what it presents. Each refusal is counted and
// logged, and closes the stream with a status saying why.
func (s *Server) admit(stream int64, node *core.Node) error {
	s.mu.Lock()
	a := s.auths[stream]
	if a == nil { // not opened through the callbacks: no token
		a = &streamAuth{}
		s.auths[stream] = a
	}
	done := a.done
	s.mu.Unlock()
	if !done {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, token, r := s.authenticate(ctx, a.header, node)
		cancel()
		if r != nil {
			return s.refused(node, r)
		}
		s.mu.Lock()
		a.claims, a.token, a.done = c, token, true
		if c != nil && !c.ExpiresAt.IsZero() && a.revoke != nil {
			a.expiry = time.AfterFunc(time.Until(c.ExpiresAt), func() { s.expired(node.GetId(), a, c.ExpiresAt) })
		}
		s.mu.Unlock()
	}
	s.mu.Lock()
	claims := a.claims
	first, known := s.streams[stream]
	s.mu.Unlock()
	if known && node.GetId() != "" && node.GetId() != first {
		// The cache serves a request by the node id it names: a stream
		// that could rename itself would be served another proxy's
		// configuration, judged only by what the store held when it asked.
		return s.refused(node, refuse(RefusedNotCovered, codes.PermissionDenied,
			"a stream's node is the one its first request named, %q, not %q", first, node.GetId()))
	}
	if r := s.covers(claims, node); r != nil {
		return s.refused(node, r)
	}
	s.mu.Lock()
	r := s.otherKind(node)
	s.mu.Unlock()
	if r != nil {
		return s.refused(node, r)
	}
	if !known && node.GetId() != "" && s.registrar != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := s.registrar.Register(ctx, node, claims)
		cancel()
		switch {
		case errors.Is(err, ErrNotCovered):
			return s.refused(node, refuse(RefusedNotCovered, codes.PermissionDenied, "register %s: %v", node.GetId(), err))
		case err != nil:
			return s.refused(node, refuse(RefusedRegistration, codes.PermissionDenied, "register %s: %v", node.GetId(), err))
		}
	}
	s.mu.Lock()
	r = s.seen(stream, node)
	s.mu.Unlock()
	if r != nil {
		return s.refused(node, r)
	}
	return nil
}

// otherKind refuses a stream whose node is connected as another kind of
// proxy: every stream of a node is served what the node is generated, so a
// stream admitted as an ingress (by an ingress token, checked against
// ZoneIngresses only) must not join a sidecar's node and get its identity.
// The caller holds mu.
func (s *Server) otherKind(node *core.Node) *refusal {
	if node.GetId() == "" {
		return nil
	}
	if n, ok := s.nodes[node.GetId()]; ok && n.Kind != KindOf(node) {
		return refuse(RefusedNotCovered, codes.PermissionDenied,
			"node %q is connected as a %s; a stream that says it is a %s is not served it", node.GetId(), n.Kind, KindOf(node))
	}
	return nil
}
