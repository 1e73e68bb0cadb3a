package xds

import (
	"math"
	"slices"
	"strings"
	"sync"
	"time"
)

// LoadKey is where one zone's callers sent traffic: a service of a mesh,
// in a destination zone.
type LoadKey struct {
	Mesh, Service, Zone string
}

// LoadSample is what one proxy reported for one LoadKey over one reporting
// interval: counts since its previous report (Envoy's LRS semantics).
type LoadSample struct {
	LoadKey
	Issued, Successful, Errors uint64
	// Interval is how long the counts were gathered over.
	Interval time.Duration
}

// ZoneLoad is the aggregate of a LoadKey.
type ZoneLoad struct {
	// Issued, Successful and Errors are totals since the aggregation
	// started.
	Issued, Successful, Errors uint64
	// PerSecond is the rate of successful ones over the window.
	PerSecond float64
}

// ServiceLoad is the aggregate of a service's LoadKeys, by destination zone.
type ServiceLoad struct {
	Mesh, Service string
	Zones         map[string]ZoneLoad
}

// Loads aggregates proxies' load reports: totals since it was made, and a
// rate over a sliding window. It is safe for concurrent use; its memory is
// bounded by the keys reported (which the LRS server bounds to clusters and
// localities it generated) times the proxies reporting them in the window.
type Loads struct {
	window time.Duration

	mu      sync.Mutex
	entries map[LoadKey]*loadEntry
}

type loadEntry struct {
	total ZoneLoad
	// recent holds, by proxy, the samples of the window, oldest first.
	recent map[string][]windowSample
}

type windowSample struct {
	at         time.Time
	successful uint64
	interval   time.Duration
}

// NewLoads returns an empty aggregate whose rates cover window (2s when 0).
func NewLoads(window time.Duration) *Loads {
	if window <= 0 {
		window = 2 * time.Second
	}
	return &Loads{window: window, entries: map[LoadKey]*loadEntry{}}
}

// Add records the samples a proxy (by node id) reported at now.
func (l *Loads) Add(node string, samples []LoadSample, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	// One report may hold several samples of a key (clusters of different
	// subsets sending to the same zone): they cover the same interval, so
	// they add up into one sample before going into the window.
	var merged []LoadSample
	at := map[LoadKey]int{}
	for _, s := range samples {
		i, ok := at[s.LoadKey]
		if !ok {
			at[s.LoadKey] = len(merged)
			merged = append(merged, s)
			continue
		}
		m := &merged[i]
		m.Issued, m.Successful, m.Errors = addSat(m.Issued, s.Issued), addSat(m.Successful, s.Successful), addSat(m.Errors, s.Errors)
		m.Interval = max(m.Interval, s.Interval)
	}
	for _, s := range merged {
		e, ok := l.entries[s.LoadKey]
		if !ok {
			e = &loadEntry{recent: map[string][]windowSample{}}
			l.entries[s.LoadKey] = e
		}
		e.total.Issued = addSat(e.total.Issued, s.Issued)
		e.total.Successful = addSat(e.total.Successful, s.Successful)
		e.total.Errors = addSat(e.total.Errors, s.Errors)
		interval := min(max(s.Interval, 10*time.Millisecond), time.Minute)
		e.recent[node] = append(e.recent[node], windowSample{at: now, successful: s.Successful, interval: interval})
		e.prune(now.Add(-l.window))
	}
}

// prune drops the samples taken before cutoff.
func (e *loadEntry) prune(cutoff time.Time) {
	for node, ss := range e.recent {
		i := 0
		for i < len(ss) && ss[i].at.Before(cutoff) {
			i++
		}
		if i == len(ss) {
			delete(e.recent, node)
			continue
		}
		e.recent[node] = ss[i:]
	}
}

// rate is the successful ones per second: each proxy's count over the time
// its samples of the window cover, summed over proxies.
func (e *loadEntry) rate() float64 {
	var total float64
	for _, ss := range e.recent {
		var n uint64
		var d time.Duration
		for _, s := range ss {
			n = addSat(n, s.successful)
			d += s.interval
		}
		total += float64(n) / d.Seconds()
	}
	if math.IsInf(total, 0) || math.IsNaN(total) {
		return 0
	}
	return total
}

// Services returns the aggregate of every service reported since the start,
// sorted by mesh and service, with rates as of now.
func (l *Loads) Services(now time.Time) []ServiceLoad {
	l.mu.Lock()
	defer l.mu.Unlock()
	byService := map[[2]string]*ServiceLoad{}
	for k, e := range l.entries {
		e.prune(now.Add(-l.window))
		sl, ok := byService[[2]string{k.Mesh, k.Service}]
		if !ok {
			sl = &ServiceLoad{Mesh: k.Mesh, Service: k.Service, Zones: map[string]ZoneLoad{}}
			byService[[2]string{k.Mesh, k.Service}] = sl
		}
		zl := e.total
		zl.PerSecond = e.rate()
		sl.Zones[k.Zone] = zl
	}
	out := make([]ServiceLoad, 0, len(byService))
	for _, sl := range byService {
		out = append(out, *sl)
	}
	slices.SortFunc(out, func(a, b ServiceLoad) int {
		if c := strings.Compare(a.Mesh, b.Mesh); c != 0 {
			return c
		}
		return strings.Compare(a.Service, b.Service)
	})
	return out
}

// addSat adds without wrapping around.
func addSat(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}
