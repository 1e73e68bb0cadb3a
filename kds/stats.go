package kds

import (
	"sync"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
)

// Stats counts one stream's exchanges, by type. It is safe for concurrent
// use: the stream writes it, the insight writer reads it.
type Stats struct {
	mu      sync.Mutex
	types   map[string]*api.TypeSyncStat
	synced  int64 // the newest source revision the peer has acknowledged all of
	current int64 // the newest source revision seen
	stalls  int64
}

// NewStats returns empty stats.
func NewStats() *Stats { return &Stats{types: map[string]*api.TypeSyncStat{}} }

func (s *Stats) typ(name string) *api.TypeSyncStat {
	t, ok := s.types[name]
	if !ok {
		t = &api.TypeSyncStat{}
		s.types[name] = t
	}
	return t
}

func (s *Stats) sent(name string) {
	s.mu.Lock()
	s.typ(name).ResponsesSent++
	s.mu.Unlock()
}

func (s *Stats) acked(name string, at time.Time) {
	s.mu.Lock()
	t := s.typ(name)
	t.ResponsesAcked++
	t.LastAckTime = at
	s.mu.Unlock()
}

func (s *Stats) nacked(name, reason string) {
	s.mu.Lock()
	t := s.typ(name)
	t.ResponsesNacked++
	t.LastNackReason = reason
	s.mu.Unlock()
}

func (s *Stats) revisions(current, synced int64) {
	s.mu.Lock()
	s.current = max(s.current, current)
	s.synced = max(s.synced, synced)
	s.mu.Unlock()
}

func (s *Stats) stalled() {
	s.mu.Lock()
	s.stalls++
	s.mu.Unlock()
}

// Read returns a copy of the per-type counters, prefixed with prefix, the
// revisions the peer is behind by, and how many times the stream stalled.
func (s *Stats) Read(prefix string, into map[string]api.TypeSyncStat) (behind int64, stalls int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, t := range s.types {
		into[prefix+name] = *t
	}
	return max(0, s.current-s.synced), s.stalls
}
