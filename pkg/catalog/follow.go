package catalog

import (
	"context"
	"encoding/binary"
	"hash/fnv"
	"sync"

	"go.uber.org/zap"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

// Source is the zone's store mirror.
type Source interface {
	Current() (*store.View, <-chan struct{})
}

// Follower builds the zone's catalogue once per change of the mirror's
// View, and publishes it when its hash changed: a change that no catalogue
// reader can see (a proxy's ACKed versions in its insight, a lease renewal)
// wakes nobody. Readers take the current Catalog and a channel closed when
// a newer one is published, as they would from the mirror.
type Follower struct {
	zone string
	src  Source
	log  *zap.Logger

	// digests are, by insight type, the presenceDigest of the last view
	// (Start's goroutine only).
	digests map[string]uint64

	mu      sync.Mutex
	cur     *Catalog
	built   bool
	changed chan struct{}
	ready   chan struct{}
	once    sync.Once
}

// NewFollower returns a Follower of src for zone; Start runs it. Until the
// first catalogue is built, Current returns an empty one.
func NewFollower(zone string, src Source, log *zap.Logger) *Follower {
	return &Follower{zone: zone, src: src, log: log, cur: build(zone, 0, inputs{}), digests: map[string]uint64{},
		changed: make(chan struct{}), ready: make(chan struct{})}
}

// Current returns the latest catalogue and a channel closed when a newer
// one is published.
func (f *Follower) Current() (*Catalog, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur, f.changed
}

// Ready is closed once the first catalogue is published.
func (f *Follower) Ready() <-chan struct{} { return f.ready }

// equivalent reports whether a catalogue built from view would be the one
// built from last: every type it reads is the same in both (a lease
// renewal changes none), or differs only in what it ignores (the versions
// proxies ACKed, which the presence writes every few seconds, change an
// insight but not whether its proxy is online). It keeps the digests of the
// insights it last saw.
func (f *Follower) equivalent(last, view *store.View) bool {
	same := last != nil
	for _, t := range Types() {
		if last != nil && view.Same(last, t) {
			continue
		}
		if t != "DataplaneInsight" && t != "ZoneIngressInsight" {
			same = false
			continue
		}
		if d := presenceDigest(view, t); d != f.digests[t] || last == nil {
			f.digests[t] = d
			same = false
		}
	}
	return same
}

// presenceDigest sums, over the insights of typ in view, what the
// catalogue reads of each: whether connected, since when, gone when.
func presenceDigest(view *store.View, typ string) uint64 {
	items, err := view.Items(typ)
	if err != nil {
		return 0 // Build reports it
	}
	var sum uint64
	var buf [25]byte
	for k, r := range items {
		p := api.StatusOf(r)
		if p == nil {
			continue
		}
		h := fnv.New64a()
		h.Write([]byte(k.Mesh))
		h.Write([]byte{0})
		h.Write([]byte(k.Name))
		if p.Connected {
			buf[0] = 1
		} else {
			buf[0] = 0
		}
		binary.BigEndian.PutUint64(buf[1:], uint64(p.ConnectedSince.UnixNano()))
		binary.BigEndian.PutUint64(buf[9:], uint64(p.DisconnectedAt.UnixNano()))
		binary.BigEndian.PutUint64(buf[17:], uint64(r.GetMeta().CreationTime.UnixNano()))
		h.Write(buf[:])
		sum += h.Sum64() // order does not matter
	}
	return sum
}

// Start follows the mirror until ctx ends. A View the catalogue cannot be
// built from (the mirror does not follow one of its types) is a wiring
// mistake: Start returns the error.
func (f *Follower) Start(ctx context.Context) error {
	var last *store.View
	for {
		view, changed := f.src.Current()
		same := f.equivalent(last, view)
		last = view
		if same {
			select {
			case <-ctx.Done():
				return nil
			case <-changed:
				continue
			}
		}
		cat, err := Build(f.zone, view)
		if err != nil {
			return err
		}
		f.mu.Lock()
		publish := cat.Hash != f.cur.Hash || !f.built
		f.built = true
		if publish {
			f.cur = cat
			close(f.changed)
			f.changed = make(chan struct{})
		}
		f.mu.Unlock()
		if publish {
			f.once.Do(func() { close(f.ready) })
			f.log.Debug("catalogue", zap.Stringer("catalog", cat))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}
