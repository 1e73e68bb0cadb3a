package gctune

import (
	"runtime"
	"runtime/metrics"
	"sync"
	"testing"
	"time"
)

// deepStack holds a goroutine's stack at about depth*1 KiB until release
// closes.
func deepStack(depth int, release chan struct{}) byte {
	var frame [1024]byte
	frame[depth%len(frame)] = byte(depth)
	if depth == 0 {
		<-release
		return frame[0]
	}
	return deepStack(depth-1, release) + frame[depth%len(frame)]
}

// TestHeapFloorCountsStacksAndGlobals: the collector's goal is
// live + (live + stacks + globals) * GOGC/100 (Go 1.18's pacer), so a
// percent taken from the live heap alone multiplies the stacks and
// globals by it: a proxy with many connections (goroutine stacks) and a
// small heap would be let grow by many times the floor. The goal stays
// within the floor (or Go's default, when that is larger) of the live heap.
func TestHeapFloorCountsStacksAndGlobals(t *testing.T) {
	release := make(chan struct{})
	var wg sync.WaitGroup
	for range 256 { // 256 goroutines of about 64 KiB of stack: 16 MiB
		wg.Add(1)
		go func() { defer wg.Done(); deepStack(64, release) }()
	}
	defer func() { close(release); wg.Wait() }()
	time.Sleep(100 * time.Millisecond) // all of them down their stacks
	checkGoalWithinFloor(t)
}

// TestHeapFloorSmallHeapGoal: the collector never sets a goal below its
// heap minimum, 4 MiB * GOGC/100: at the bound of 2000%, 80 MiB, whatever
// the floor. A small live heap (a proxy before its first configuration,
// or any proxy whose live heap is under a few MiB) is let grow by the
// floor, not by two or three times it.
func TestHeapFloorSmallHeapGoal(t *testing.T) {
	checkGoalWithinFloor(t)
}

// checkGoalWithinFloor runs the tuner with a floor of 32 MiB and checks
// the collector's goal: at most the live heap and the larger of the floor
// and Go's default growth (the live heap, stacks and globals), and 10%.
func checkGoalWithinFloor(t *testing.T) {
	const floor = 32 << 20
	runHeapFloor(t, floor)
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/scan/stack:bytes"}, {Name: "/gc/scan/globals:bytes"}, {Name: "/gc/heap/goal:bytes"}}
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		time.Sleep(20 * time.Millisecond) // the finalizer's turn
		metrics.Read(s)
		live, stacks, globals, goal := s[0].Value.Uint64(), s[1].Value.Uint64(), s[2].Value.Uint64(), s[3].Value.Uint64()
		growth := max(uint64(floor), live+stacks+globals) // the floor, or Go's default
		if goal <= live+growth+growth/10 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("live heap %d KiB, stacks %d KiB, globals %d KiB, floor %d MiB: goal %d MiB (GOGC %d%%), want at most %d MiB",
				live>>10, stacks>>10, globals>>10, floor>>20, goal>>20, gcPercent(), (live+growth+growth/10)>>20)
		}
	}
}
