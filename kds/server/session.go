package server

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/kds"
	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// session is one zone's presence at this replica: its streams (normally one
// of each kind) and their counters.
type session struct {
	zone     string
	since    time.Time
	version  string
	toZone   *kds.Stats
	fromZone *kds.Stats

	mu      sync.Mutex
	streams map[*streamHandle]struct{}
}

type streamHandle struct {
	token  string
	cancel context.CancelCauseFunc
}

func (sess *session) tokens() map[string]bool {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	out := map[string]bool{}
	for h := range sess.streams {
		out[h.token] = true
	}
	return out
}

func (sess *session) closeToken(token string, why error) {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	for h := range sess.streams {
		if h.token == token {
			h.cancel(why)
		}
	}
}

func (sess *session) closeAll(why error) {
	sess.mu.Lock()
	defer sess.mu.Unlock()
	for h := range sess.streams {
		h.cancel(why)
	}
}

// attach registers a stream of zone c and returns the context the stream
// must run under (cancelled, with a cause, when the zone is shut out) and
// the function to call when the stream ends.
func (s *Server) attach(parent context.Context, c caller) (*session, context.Context, func()) {
	ctx, cancel := context.WithCancelCause(parent)
	stopWatching := context.AfterFunc(s.base, func() { cancel(errShuttingDown) })
	h := &streamHandle{token: c.token, cancel: cancel}
	s.mu.Lock()
	sess := s.sessions[c.zone]
	fresh := sess == nil
	if fresh {
		sess = &session{zone: c.zone, since: store.Now(), version: c.version,
			toZone: kds.NewStats(), fromZone: kds.NewStats(), streams: map[*streamHandle]struct{}{}}
		s.sessions[c.zone] = sess
	}
	sess.mu.Lock()
	sess.streams[h] = struct{}{}
	sess.mu.Unlock()
	s.mu.Unlock()
	if fresh {
		s.Metrics.Connected(c.zone)
		s.writeInsight(ctx, sess)
	}
	// A token expiring changes nothing in the store: the stream ends when
	// it does, reads and writes alike (the zone then needs a new one).
	expiry := func() bool { return false }
	if exp := c.expires; !exp.IsZero() {
		t := time.AfterFunc(time.Until(exp), func() { cancel(fmt.Errorf("zone token expired at %s", exp.UTC().Format(time.RFC3339))) })
		expiry = t.Stop
	}
	return sess, ctx, func() {
		stopWatching()
		expiry()
		cancel(nil)
		s.mu.Lock()
		sess.mu.Lock()
		delete(sess.streams, h)
		last := len(sess.streams) == 0
		sess.mu.Unlock()
		if last && s.sessions[c.zone] == sess {
			delete(s.sessions, c.zone)
		}
		s.mu.Unlock()
		if last {
			s.writeDisconnected(sess)
		}
	}
}

func (s *Server) insight(sess *session) *api.ZoneInsight {
	zi := &api.ZoneInsight{
		Meta:           api.Meta{Type: "ZoneInsight", Name: sess.zone},
		Connected:      true,
		ConnectedSince: sess.since,
		GlobalInstance: s.Instance,
		CPVersion:      sess.version,
		Heartbeat:      store.Now(),
		Sync:           map[string]api.TypeSyncStat{},
	}
	behind, stalls := sess.toZone.Read("global-to-zone/", zi.Sync)
	_, upStalls := sess.fromZone.Read("zone-to-global/", zi.Sync)
	zi.RevisionBehind, zi.Stalls = behind, stalls+upStalls
	return zi
}

func (s *Server) writeInsight(ctx context.Context, sess *session) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := s.Store.Apply(ctx, []api.Resource{s.insight(sess)}, nil); err != nil && ctx.Err() == nil {
		s.Log.Warn("cannot write zone insight", zap.String("zone", sess.zone), zap.Error(err))
	}
}

// writeDisconnected marks the zone offline, unless another replica (or a
// newer session here) has taken it over since.
func (s *Server) writeDisconnected(sess *session) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	key := api.Key{Type: "ZoneInsight", Name: sess.zone}
	cur, err := s.Store.Get(ctx, key)
	if err != nil {
		return
	}
	zi := cur.(*api.ZoneInsight)
	if zi.GlobalInstance != s.Instance || !zi.ConnectedSince.Equal(sess.since) {
		return
	}
	next := s.insight(sess)
	next.Version = zi.Version
	next.Connected, next.DisconnectedAt = false, store.Now()
	if _, err := s.Store.Update(ctx, next); err != nil && !errors.Is(err, store.ErrConflict) {
		s.Log.Warn("cannot mark zone disconnected", zap.String("zone", sess.zone), zap.Error(err))
	}
}

// writeInsights refreshes every connected zone's insight until ctx ends.
func (s *Server) writeInsights(ctx context.Context) {
	every(ctx, s.InsightInterval, func() {
		for _, sess := range s.sessionList() {
			s.writeInsight(ctx, sess)
		}
	})
}

// ConnectedZones is how many zones have a stream to this replica.
func (s *Server) ConnectedZones() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// sessionList is the sessions of the zones connected here.
func (s *Server) sessionList() []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Collect(maps.Values(s.sessions))
}

// every calls f every d until ctx ends.
func every(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}
