package proxy

import (
	"sync"
	"sync/atomic"
)

// loadKey is where connections went: a cluster, in a locality's zone.
type loadKey struct {
	cluster, zone string
}

// loadCounts are a loadKey's totals since the proxy started.
type loadCounts struct {
	issued, successful, errors uint64
}

// loadCounters counts upstream connection attempts (a TCP cluster) or
// requests (an HTTP cluster) per cluster and zone.
// The zero value is ready; it is safe for concurrent use, and recording is
// a map lookup and an atomic add (the map only grows when a new cluster
// or zone is first used).
type loadCounters struct {
	m sync.Map // loadKey → *loadCounter
}

type loadCounter struct {
	issued, successful, errors atomic.Uint64
}

// record counts one attempt, which succeeded (connected, TLS included) or
// failed.
func (l *loadCounters) record(cluster, zone string, ok bool) {
	k := loadKey{cluster, zone}
	v, found := l.m.Load(k)
	if !found {
		v, _ = l.m.LoadOrStore(k, &loadCounter{})
	}
	c := v.(*loadCounter)
	c.issued.Add(1)
	if ok {
		c.successful.Add(1)
	} else {
		c.errors.Add(1)
	}
}

// snapshot returns every key's totals.
func (l *loadCounters) snapshot() map[loadKey]loadCounts {
	out := map[loadKey]loadCounts{}
	l.m.Range(func(k, v any) bool {
		c := v.(*loadCounter)
		out[k.(loadKey)] = loadCounts{issued: c.issued.Load(), successful: c.successful.Load(), errors: c.errors.Load()}
		return true
	})
	return out
}
