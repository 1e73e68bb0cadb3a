package run

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

func TestRestartingComponentRecoversFromPanics(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var starts atomic.Int32
	r := New(zaptest.NewLogger(t))
	r.AddRestarting("flaky", Func(func(ctx context.Context) error {
		if starts.Add(1) < 3 {
			panic("boom")
		}
		cancel()
		<-ctx.Done()
		return nil
	}))
	if err := r.Run(ctx); err != nil {
		t.Fatalf("run: %v", err)
	}
	if starts.Load() != 3 {
		t.Fatalf("started %d times, want 3", starts.Load())
	}
}

func TestFailureStopsEverything(t *testing.T) {
	r := New(zaptest.NewLogger(t))
	stopped := make(chan struct{})
	r.Add("waits", Func(func(ctx context.Context) error { <-ctx.Done(); close(stopped); return nil }))
	r.Add("fails", Func(func(ctx context.Context) error { return errors.New("broken") }))
	err := r.Run(context.Background())
	if err == nil || err.Error() != "fails: broken" {
		t.Fatalf("run = %v", err)
	}
	<-stopped
}

// TestHTTPServerFinishesInFlightRequests: a request in progress when the
// process is told to stop still gets its answer.
func TestHTTPServerFinishesInFlightRequests(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		io.WriteString(w, "done")
	})}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- HTTPServer(srv, ln, 10*time.Second).Start(ctx) }()

	got := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String())
		if err != nil {
			got <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- string(b)
	}()
	<-entered
	cancel()
	select {
	case err := <-stopped:
		t.Fatalf("server stopped (%v) while a request was in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if body := <-got; body != "done" {
		t.Fatalf("in-flight request got %q", body)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

// TestEvery: fn runs each tick until it fails (its error returned) or the
// context ends (nil).
func TestEvery(t *testing.T) {
	calls := 0
	stop := errors.New("stop")
	err := Every(context.Background(), time.Millisecond, func(context.Context) error {
		if calls++; calls == 3 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || calls != 3 {
		t.Fatalf("Every = %v after %d calls, want stop after 3", err, calls)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Every(ctx, time.Hour, func(context.Context) error { return stop }); err != nil {
		t.Fatalf("Every on an ended context = %v", err)
	}
}
