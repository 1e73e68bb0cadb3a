package testutil

import (
	"sync"
	"time"
)

// Clock is a fake clock for code that takes its time from a function
// (now func() time.Time) and sleeps on a channel that fires at a given time.
// Time moves only when the test calls Advance or Set. A Clock is safe for
// concurrent use; create it with NewClock.
type Clock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

// NewClock returns a Clock reading start.
func NewClock(start time.Time) *Clock { return &Clock{now: start} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// At returns a channel that receives the clock's time once it reads at or
// later: at once if it already does. A wake-up is never lost, whichever of
// At and Advance runs first.
func (c *Clock) At(at time.Time) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if !c.now.Before(at) {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, waiter{at: at, ch: ch})
	return ch
}

// After returns a channel that receives the clock's time once d has passed
// on it, as time.After does on the real clock.
func (c *Clock) After(d time.Duration) <-chan time.Time { return c.At(c.Now().Add(d)) }

// Advance moves the clock forward by d and fires every channel whose time
// has come.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.set(c.now.Add(d))
}

// Set moves the clock to t (never backwards: an earlier t is ignored) and
// fires every channel whose time has come.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.set(t)
}

// set is Set with mu held.
func (c *Clock) set(t time.Time) {
	if t.Before(c.now) {
		return
	}
	c.now = t
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at.After(t) {
			kept = append(kept, w)
			continue
		}
		w.ch <- t
	}
	c.waiters = kept
}

// Waiting reports how many channels from At and After have not fired yet.
func (c *Clock) Waiting() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}
