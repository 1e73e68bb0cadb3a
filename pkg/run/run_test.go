package run

import (
	"context"
	"errors"
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
