package gctune

import (
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		live, roots, floor uint64
		want               int
	}{
		{8 * mib, 0, 32 * mib, 400},           // a proxy's heap: collect every 32 MiB, not every 8
		{8 * mib, 8 * mib, 32 * mib, 200},     // its stacks and globals count as the collector counts them
		{32 * mib, 0, 32 * mib, 100},          // Go's default from here on
		{500 * mib, 0, 32 * mib, 100},         // a large heap still doubles
		{10 * mib, 0, 0, 100},                 // no floor: Go's default
		{64 * 1024, 0, 32 * mib, 801},         // bounded by the heap minimum (4 MiB*GOGC/100 ≤ live+floor)
		{0, 0, 32 * mib, 800},                 // nothing live yet
		{64 * 1024, 0, 256 * mib, maxPercent}, // bounded
		{33 * mib, 0, 100 * mib, 303},         // rounded down
		{mib, 0, 3 * mib / 2, 100},            // under Go's own heap minimum: Go's default
		{4 * mib, 0, 6 * mib, 150},            // between
	}
	for _, tt := range tests {
		if got := Percent(tt.live, tt.roots, tt.floor, maxPercent); got != tt.want {
			t.Errorf("Percent(%d, %d, %d) = %d, want %d", tt.live, tt.roots, tt.floor, got, tt.want)
		}
	}
}

// runHeapFloor runs the tuner in this process with floor until the test
// ends, then gives the target back; the test is skipped when GOGC is set
// (the tuner then leaves the target to it).
func runHeapFloor(t *testing.T, floor uint64) {
	t.Helper()
	if _, ok := os.LookupEnv("GOGC"); ok {
		t.Skip("GOGC is set: the tuner leaves the target to it")
	}
	before := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(before) })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	HeapFloor(ctx, floor, zaptest.NewLogger(t))
}

// TestHeapFloorFollowsLiveHeap runs the tuner in this process: after a
// collection the target is the floor's over the live heap, and once the
// live heap outgrows the floor it is Go's default again.
func TestHeapFloorFollowsLiveHeap(t *testing.T) {
	const floor = 48 << 20
	runHeapFloor(t, floor)

	// The target the tuner should have set for the live heap now.
	wantAfterGC := func() int {
		runtime.GC()
		s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/stack:bytes"}, {Name: "/gc/scan/globals:bytes"}}
		metrics.Read(s)
		return Percent(s[0].Value.Uint64(), s[1].Value.Uint64()+s[2].Value.Uint64(), floor, maxPercent)
	}
	want := wantAfterGC()
	if want <= 100 {
		t.Fatalf("the test's live heap is already %d%% of the floor: nothing to show", want)
	}
	waitPercent(t, want)

	held := make([][]byte, 64) // 64 MiB live, more than the floor
	for i := range held {
		held[i] = make([]byte, 1<<20)
	}
	waitPercent(t, wantAfterGC())
	if got := gcPercent(); got != 100 {
		t.Errorf("with %d MiB live over a floor of 48 MiB, target %d%%, want 100%%", len(held), got)
	}
	runtime.KeepAlive(held)
}

func TestHeapFloorLeavesGOGC(t *testing.T) {
	t.Setenv("GOGC", "150")
	defer debug.SetGCPercent(debug.SetGCPercent(150))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	HeapFloor(ctx, 1<<30, zaptest.NewLogger(t))
	runtime.GC()
	runtime.GC()
	if got := gcPercent(); got != 150 {
		t.Errorf("target %d%% with GOGC=150, want 150%%", got)
	}
}

// waitPercent waits for the finalizer, which runs after the collection,
// to have set want.
func waitPercent(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for gcPercent() != want {
		if time.Now().After(deadline) {
			t.Fatalf("target %d%%, want %d%%", gcPercent(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func gcPercent() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

// TestFixed: a fixed target is set, unless GOGC is (it wins) or the
// target is 0 (Go's default stays).
func TestFixed(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	log := zaptest.NewLogger(t)
	if _, ok := os.LookupEnv("GOGC"); !ok {
		Fixed(250, log)
		if got := gcPercent(); got != 250 {
			t.Errorf("Fixed(250): target %d%%", got)
		}
		Fixed(0, log)
		if got := gcPercent(); got != 250 {
			t.Errorf("Fixed(0) changed the target to %d%%", got)
		}
	}
	t.Setenv("GOGC", "150")
	debug.SetGCPercent(150)
	Fixed(400, log)
	if got := gcPercent(); got != 150 {
		t.Errorf("Fixed(400) with GOGC=150: target %d%%", got)
	}
}
