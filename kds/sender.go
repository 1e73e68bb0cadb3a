package kds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ursamesh/ursa/pkg/api"
)

// ResponseStream is the side of a stream that sends resources: the global's
// GlobalToZone stream, the zone's ZoneToGlobal stream.
type ResponseStream interface {
	Send(*discovery.DeltaDiscoveryResponse) error
	Recv() (*discovery.DeltaDiscoveryRequest, error)
}

// ErrStalled ends a stream whose peer left changes unacknowledged past the
// deadline; the peer reconnects and resyncs.
var ErrStalled = errors.New("peer stopped acknowledging changes")

// Sender keeps a peer's copy of a Source up to date over one stream: it
// waits for the peer to subscribe to each type with what it holds, sends
// the difference, and from then on sends every change as it is published.
type Sender struct {
	Source Source
	// Types the peer may subscribe to, in the order changes are sent.
	Types []api.Descriptor
	// Peer is the zone at the other end, or "": entries from that zone are
	// never sent back to it, and entries for another zone never to it.
	Peer string
	// MaxMessageSize bounds each response; a larger change is split.
	MaxMessageSize int
	// AckTimeout is how long a response may go unacknowledged before the
	// stream is declared stalled and ended.
	AckTimeout time.Duration
	Stats      *Stats
	Log        *zap.Logger
	// Metrics, optional, counts responses by type and result.
	Metrics *Metrics
	// Direction labels metrics: "global_to_zone" or "zone_to_global".
	Direction string
}

// peerState is what the sender believes the peer holds of one type.
type peerState struct {
	name     string // type name
	versions map[string]string
	synced   *TypeSet // the set last diffed against
	// After a NACK the type is sent again at retryAt, backing off while
	// NACKs go on: a rejection is often transient (policies that arrived
	// before their Mesh, a store that refused for a moment), and the peer
	// must not stay behind until the next change.
	retryAt time.Time
	backoff time.Duration
}

// Bounds of the pause before a NACKed type is sent again.
const (
	firstRetry = time.Second
	maxRetry   = 30 * time.Second
)

type pending struct {
	typeURL string
	// touched is what the sync that sent this response changed of the
	// peer's versions (shared by the responses it was split into).
	touched  *touched
	sentAt   time.Time
	revision int64
}

// touched lists the names one sync sent or removed of a type. A NACK of its
// response marks them held in an unknown version: the peer applies what it
// can take and refuses the rest, so it need not hold what it held before,
// and versions are hashes of the content, so believing it had gone back
// could match a later change (a rollback), which would never be sent. Only
// the names: a copy of the peer's versions per response in flight would
// cost memory in proportion to the responses times the type's size.
type touched struct{ names []string }

// unknownVersion is what a peer holds of a name after a NACK: no version
// equals it, so the next sync sends the name again (or its removal, a
// no-op where it is gone).
const unknownVersion = "\x00unknown"

// Run serves stream until ctx ends, the peer closes it (nil), or it fails.
func (s *Sender) Run(ctx context.Context, stream ResponseStream) error {
	s.Metrics.streaming(s.Direction, s.Types)
	allowed := map[string]api.Descriptor{}
	for _, d := range s.Types {
		allowed[TypeURL(d.Type)] = d
	}
	reqs, errc := make(chan *discovery.DeltaDiscoveryRequest, 16), make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	peers := map[string]*peerState{}
	outstanding := map[string]pending{}
	nonce := 0
	tick := time.NewTicker(max(s.AckTimeout/4, 10*time.Millisecond))
	defer tick.Stop()
	// Nothing is sent before the source holds the store: its empty
	// snapshot would tell a peer that resumes (initial_resource_versions)
	// to delete all it holds, a zone its Meshes and with them everything
	// in them, while a restarted global (or zone) still loads.
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-s.Source.Ready():
	}
	snap, changed := s.Source.Current()
	for {
		retryIn := time.Duration(-1) // until the next NACKed type's retry
		for _, d := range s.Types {
			url := TypeURL(d.Type)
			p := peers[url]
			if p == nil || snap.Types[url] == p.synced {
				continue
			}
			if wait := time.Until(p.retryAt); wait > 0 {
				if retryIn < 0 || wait < retryIn {
					retryIn = wait
				}
				continue
			}
			changed := &touched{}
			sent, err := s.sync(stream, url, p, snap, &nonce, changed)
			if err != nil {
				return err
			}
			for _, n := range sent {
				outstanding[n] = pending{typeURL: url, touched: changed, sentAt: time.Now(), revision: snap.Revision}
			}
		}
		var retry <-chan time.Time
		if retryIn >= 0 {
			retry = time.After(retryIn)
		}
		if len(outstanding) == 0 && len(peers) > 0 && retryIn < 0 {
			s.Stats.revisions(snap.Revision, snap.Revision)
		} else {
			s.Stats.revisions(snap.Revision, 0)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-changed:
			snap, changed = s.Source.Current()
		case <-retry:
		case req := <-reqs:
			if err := s.handle(req, allowed, peers, outstanding); err != nil {
				return err
			}
		case now := <-tick.C:
			for n, p := range outstanding {
				if age := now.Sub(p.sentAt); age > s.AckTimeout {
					s.Stats.stalled()
					s.Metrics.stall(s.Direction)
					s.Log.Warn("peer has not acknowledged a response in time; restarting the stream",
						zap.String("type_url", p.typeURL), zap.String("nonce", n), zap.Duration("waited", age))
					return fmt.Errorf("%w: response %s of %s unacknowledged for %s", ErrStalled, n, p.typeURL, age.Round(time.Millisecond))
				}
			}
		}
	}
}

// handle takes a subscription, an ACK or a NACK.
func (s *Sender) handle(req *discovery.DeltaDiscoveryRequest, allowed map[string]api.Descriptor, peers map[string]*peerState, outstanding map[string]pending) error {
	d, ok := allowed[req.GetTypeUrl()]
	if !ok {
		// A peer of another version may know types this side does not
		// (or no longer) carry: the stream goes on with the others, as
		// go-control-plane's does.
		s.Log.Warn("peer asked for a type this stream does not carry; ignored (a peer of another version?)", zap.String("type_url", req.GetTypeUrl()))
		return nil
	}
	if req.GetResponseNonce() == "" {
		versions := make(map[string]string, len(req.GetInitialResourceVersions()))
		for k, v := range req.GetInitialResourceVersions() {
			versions[k] = v
		}
		peers[req.GetTypeUrl()] = &peerState{name: d.Type, versions: versions}
		return nil
	}
	p, ok := outstanding[req.GetResponseNonce()]
	if !ok {
		return nil // an answer to a response from before a resubscription
	}
	delete(outstanding, req.GetResponseNonce())
	ps := peers[p.typeURL]
	if e := req.GetErrorDetail(); e != nil {
		s.Stats.nacked(d.Type, e.GetMessage())
		s.Metrics.response(s.Direction, d.Type, "nack")
		// The type's later responses, sent on top of this one, are void:
		// their answers are ignored, and what they changed is unknown with
		// what this one changed.
		unknown := []*touched{p.touched}
		for n, o := range outstanding {
			if o.typeURL == p.typeURL {
				delete(outstanding, n)
				unknown = append(unknown, o.touched)
			}
		}
		if ps != nil {
			// Diff against that once the pause is over: what the
			// responses changed is sent again. (Applying is idempotent,
			// and removing what is gone is a no-op.)
			for _, t := range unknown {
				for _, name := range t.names {
					ps.versions[name] = unknownVersion
				}
			}
			ps.synced = nil
			ps.backoff = min(max(2*ps.backoff, firstRetry), maxRetry)
			ps.retryAt = time.Now().Add(ps.backoff)
		}
		s.Log.Warn("peer rejected a response; sending the type again after a pause", zap.String("type_url", p.typeURL),
			zap.String("nonce", req.GetResponseNonce()), zap.String("reason", e.GetMessage()), zap.Duration("retry_in", ps.backoffOrZero()))
		return nil
	}
	if ps != nil {
		ps.backoff = 0
	}
	s.Stats.acked(d.Type, time.Now())
	s.Metrics.response(s.Direction, d.Type, "ack")
	return nil
}

// sync sends the difference between what the peer holds of one type and the
// snapshot, split to fit MaxMessageSize, and returns the nonces it used.
func (s *Sender) sync(stream ResponseStream, url string, p *peerState, snap *Snapshot, nonce *int, changed *touched) ([]string, error) {
	set := snap.Types[url]
	var (
		upserts []*Entry
		removed []string
	)
	for name, e := range set.Entries {
		if !e.SentTo(s.Peer) {
			continue
		}
		if p.versions[name] != e.Version {
			upserts = append(upserts, e)
		}
	}
	for name := range p.versions {
		if e, ok := set.Entries[name]; !ok || !e.SentTo(s.Peer) {
			removed = append(removed, name)
		}
	}
	p.synced = set
	if len(upserts) == 0 && len(removed) == 0 {
		return nil, nil
	}
	limit := max(s.MaxMessageSize-64<<10, 1<<10)
	var (
		nonces []string
		resp   *discovery.DeltaDiscoveryResponse
		size   int
	)
	flush := func() error {
		if resp == nil {
			return nil
		}
		*nonce++
		resp.Nonce = strconv.Itoa(*nonce)
		if err := stream.Send(resp); err != nil {
			return fmt.Errorf("send %s: %w", p.name, err)
		}
		s.Stats.sent(p.name)
		s.Metrics.response(s.Direction, p.name, "sent")
		nonces = append(nonces, resp.Nonce)
		resp, size = nil, 0
		return nil
	}
	add := func(n int) error {
		if resp != nil && size+n > limit {
			if err := flush(); err != nil {
				return err
			}
		}
		if resp == nil {
			resp = &discovery.DeltaDiscoveryResponse{TypeUrl: url, SystemVersionInfo: strconv.FormatInt(snap.Revision, 10)}
		}
		size += n
		return nil
	}
	for _, e := range upserts {
		if e.Size > limit {
			s.Log.Error("resource is larger than the KDS message limit; sending it alone", zap.String("resource", e.Name), zap.Int("bytes", e.Size))
		}
		// Its size in the response: the bytes, its field's tag and length.
		if err := add(e.Size + 1 + protowire.SizeVarint(uint64(e.Size))); err != nil {
			return nonces, err
		}
		resp.Resources = append(resp.Resources, e.Wire)
		changed.names = append(changed.names, e.Name)
		p.versions[e.Name] = e.Version
	}
	for _, name := range removed {
		if err := add(len(name) + 1 + protowire.SizeVarint(uint64(len(name)))); err != nil {
			return nonces, err
		}
		resp.RemovedResources = append(resp.RemovedResources, name)
		changed.names = append(changed.names, name)
		delete(p.versions, name)
	}
	return nonces, flush()
}

func (p *peerState) backoffOrZero() time.Duration {
	if p == nil {
		return 0
	}
	return p.backoff
}
