package testutil

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// recorder is a TB that keeps the failure instead of ending the test.
type recorder struct{ failed string }

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
}

func TestEventuallyReturnsOnceTheConditionHolds(t *testing.T) {
	calls := 0
	var r recorder
	Eventually(&r, time.Minute, "the third call", func() error {
		if calls++; calls < 3 {
			return fmt.Errorf("call %d", calls)
		}
		return nil
	})
	if r.failed != "" || calls != 3 {
		t.Fatalf("failed %q after %d calls, want success after 3", r.failed, calls)
	}
}

func TestEventuallySaysWhatItWaitedFor(t *testing.T) {
	var r recorder
	Eventually(&r, 0, "billing's VIP", func() error { return errors.New("no VIP yet") })
	for _, want := range []string{"billing's VIP", "no VIP yet"} {
		if !strings.Contains(r.failed, want) {
			t.Errorf("failure %q does not say %q", r.failed, want)
		}
	}
	r = recorder{}
	Until(&r, 0, "the proxy to be ready", func() bool { return false })
	if !strings.Contains(r.failed, "the proxy to be ready") {
		t.Errorf("failure %q does not say what it waited for", r.failed)
	}
}

func TestClock(t *testing.T) {
	start := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	c := NewClock(start)
	soon, later := c.After(time.Second), c.At(start.Add(time.Hour))
	select {
	case <-c.At(start):
	default:
		t.Fatal("a channel for a time already reached did not fire at once")
	}
	c.Advance(999 * time.Millisecond)
	select {
	case <-soon:
		t.Fatal("fired early")
	default:
	}
	c.Advance(time.Millisecond)
	if got := <-soon; !got.Equal(start.Add(time.Second)) {
		t.Fatalf("fired with %v", got)
	}
	if c.Waiting() != 1 {
		t.Fatalf("%d waiting, want 1", c.Waiting())
	}
	c.Set(start) // never backwards
	if !c.Now().Equal(start.Add(time.Second)) {
		t.Fatalf("the clock went back to %v", c.Now())
	}
	c.Set(start.Add(2 * time.Hour))
	<-later
	if c.Waiting() != 0 {
		t.Fatalf("%d waiting, want 0", c.Waiting())
	}
}

func TestRefusingAddr(t *testing.T) {
	addr := RefusingAddr(t)
	if c, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
		c.Close()
		t.Fatalf("%s accepted a connection", addr)
	}
	if ln, err := net.Listen("tcp", addr); err == nil {
		ln.Close()
		t.Fatalf("%s could be taken by a listener", addr)
	}
}

func TestServeEach(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		ServeEach(ln, func(c net.Conn) { io.Copy(c, c) })
		close(done)
	}()
	for range 2 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte("ping"))
		c.(*net.TCPConn).CloseWrite()
		if b, err := io.ReadAll(c); err != nil || string(b) != "ping" {
			t.Fatalf("echo: %q, %v", b, err)
		}
		c.Close()
	}
	ln.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("ServeEach did not return when its listener closed")
	}
}

// TestFreeAddr: the addresses are distinct, bindable, and below the
// kernel's ephemeral range, where no bind to port 0 can take them.
func TestFreeAddr(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		addr := FreeAddr(t)
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
		_, p, _ := net.SplitHostPort(addr)
		if port, _ := strconv.Atoi(p); port >= ephemeralLow() || port < 1024 {
			t.Fatalf("%s: port outside [1024, %d)", addr, ephemeralLow())
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		ln.Close()
	}
}
