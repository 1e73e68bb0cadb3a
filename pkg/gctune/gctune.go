// Package gctune keeps a process's garbage collection target in step with
// its live heap: a heap floor for processes whose live heap is small next
// to what they allocate (a proxy under load), so that they do not collect
// for every few megabytes they allocate.
package gctune

import (
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"

	"go.uber.org/zap"
)

// Percent is the collection target (what GOGC sets) that lets the heap
// grow to live+floor bytes between collections, and never less than Go's
// default. The collector's goal is live + (live+roots)*GOGC/100, roots
// being the goroutine stacks and globals it scanned (Go 1.18's pacer),
// and never below its heap minimum, 4 MiB*GOGC/100: so the target is
// floor over live+roots, at most what keeps that minimum within
// live+floor, at most `most`, and at least 100.
func Percent(live, roots, floor uint64, most int) int {
	if floor == 0 {
		return 100
	}
	p := uint64(most)
	if s := live + roots; s > 0 {
		p = min(p, floor*100/s)
	}
	p = min(p, (live+floor)*100/heapMinimum)
	return int(max(p, 100))
}

// heapMinimum is the runtime's smallest goal at GOGC=100 (its
// defaultHeapMinimum; 512 KiB under GOEXPERIMENT=heapminimum512kib, where
// this bound is then only stricter than it needs to be), which it scales
// by GOGC. With it the target rarely reaches maxPercent: about 800% for a
// floor of 32 MiB and a small live heap.
const heapMinimum = 4 << 20

// maxPercent bounds the target: a live heap of a few hundred kilobytes
// (a proxy before its first configuration) would otherwise ask for
// thousands of percent, which the next configuration's growth would then
// meet at once.
const maxPercent = 2000

// HeapFloor sets the process's collection target after every collection
// so that the heap may grow by at least floor bytes (or double, when the
// live heap is larger than floor) before the next, until ctx ends (the
// target then stays as last set). A GOGC environment variable wins: it
// then does nothing. The cost is memory only under allocation: an idle
// process does not grow towards its goal.
//
// Go offers GOMEMLIMIT for a floor (with GOGC=off), but a limit is a
// ceiling too: a live heap that outgrows it (a proxy sent a large mesh)
// has the collector run all the time. This floor moves with the live
// heap instead.
func HeapFloor(ctx context.Context, floor uint64, log *zap.Logger) {
	if floor == 0 || fromEnv(log) {
		return
	}
	t := &tuner{floor: floor, log: log, ctx: ctx, last: -1}
	t.sample = []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/stack:bytes"}, {Name: "/gc/scan/globals:bytes"}}
	t.adjust()
	t.arm()
	log.Info("garbage collection target follows the live heap", zap.Uint64("heap_floor_bytes", floor))
}

// Fixed sets the process's collection target to percent (what GOGC
// sets), unless the GOGC environment variable is set (it wins) or percent
// is 0 (Go's default stays). The setting is the process's: apply it once
// at start.
func Fixed(percent int, log *zap.Logger) {
	if percent == 0 || fromEnv(log) {
		return
	}
	debug.SetGCPercent(percent)
	log.Info("garbage collection target", zap.Int("gc_percent", percent))
}

// fromEnv reports (and logs) whether GOGC is set: the process's target is
// then the environment's.
func fromEnv(log *zap.Logger) bool {
	v, ok := os.LookupEnv("GOGC")
	if ok {
		log.Info("garbage collection target from GOGC", zap.String("gogc", v))
	}
	return ok
}

type tuner struct {
	floor uint64
	log   *zap.Logger
	ctx   context.Context

	mu     sync.Mutex
	sample []metrics.Sample
	last   int
}

// sentinel is what the collector finds unreachable once per cycle: its
// finalizer runs after each collection and sets itself again. (It holds a
// pointer so that the tiny allocator, which batches small objects
// without pointers, never makes it share a block.)
type sentinel struct{ t *tuner }

func (t *tuner) arm() {
	runtime.SetFinalizer(&sentinel{t: t}, afterGC)
}

func afterGC(s *sentinel) {
	if s.t.ctx.Err() != nil {
		return
	}
	s.t.adjust()
	runtime.SetFinalizer(s, afterGC) // again at the next cycle
}

// adjust sets the target for the live heap the last collection left.
func (t *tuner) adjust() {
	t.mu.Lock()
	defer t.mu.Unlock()
	metrics.Read(t.sample)
	for _, v := range t.sample {
		if v.Value.Kind() != metrics.KindUint64 {
			return
		}
	}
	live := t.sample[0].Value.Uint64()
	p := Percent(live, t.sample[1].Value.Uint64()+t.sample[2].Value.Uint64(), t.floor, maxPercent)
	if p == t.last {
		return
	}
	debug.SetGCPercent(p)
	t.last = p
	if ce := t.log.Check(zap.DebugLevel, "garbage collection target"); ce != nil {
		ce.Write(zap.Int("gc_percent", p), zap.Uint64("live_heap_bytes", live))
	}
}
