// Package testutil holds what Ursa's tests share: a poll-until helper that
// says what it waited for, and a fake clock. Only tests import it; it
// imports no other Ursa package, so every package's tests may use it.
package testutil

import (
	"errors"
	"time"
)

// TB is the part of testing.TB that Eventually uses, so that its own tests
// can watch it fail.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// errFalse is what Until reports when its condition was false at the deadline.
var errFalse = errors.New("the condition was still false")

// Eventually calls cond until it returns nil, and fails t once timeout has
// passed without that, naming what it waited for and cond's last error.
// It polls at 1 ms at first, backing off to every 50 ms, so a condition that
// holds soon is seen soon and a slow one does not spin. The timeout is a
// bound for a broken test, not a measurement: make it generous (seconds),
// since the machine may be busy. Like t.Fatalf, call it from the goroutine
// running the test.
func Eventually(t TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	wait := time.Millisecond
	for {
		err := cond()
		if err == nil {
			return
		}
		if !time.Now().Before(deadline) {
			t.Fatalf("gave up after %s waiting for %s: %v", timeout, what, err)
			return
		}
		time.Sleep(min(wait, time.Until(deadline)))
		wait = min(2*wait, 50*time.Millisecond)
	}
}

// Until is Eventually for a condition that is only true or false.
func Until(t TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	Eventually(t, timeout, what, func() error {
		if cond() {
			return nil
		}
		return errFalse
	})
}
