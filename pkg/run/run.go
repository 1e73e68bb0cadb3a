// Package run starts a process's long-running components together and stops
// them together.
package run

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
)

// Component is a long-running piece of a process. Start blocks until ctx
// ends (returning nil) or the component fails (returning why).
type Component interface {
	Start(ctx context.Context) error
}

// Func adapts a function to Component.
type Func func(ctx context.Context) error

// Start implements Component.
func (f Func) Start(ctx context.Context) error { return f(ctx) }

type entry struct {
	name    string
	c       Component
	restart bool
}

// Runner runs components. Its zero value is not ready; use New.
type Runner struct {
	log     *zap.Logger
	entries []entry
}

// New returns a Runner that logs with log.
func New(log *zap.Logger) *Runner { return &Runner{log: log} }

// Add registers a component whose failure stops the whole process.
func (r *Runner) Add(name string, c Component) {
	r.entries = append(r.entries, entry{name: name, c: c})
}

// AddRestarting registers a component that is restarted, with exponential
// backoff, when it fails or panics, instead of stopping the process.
func (r *Runner) AddRestarting(name string, c Component) {
	r.entries = append(r.entries, entry{name: name, c: c, restart: true})
}

// Run starts every component and waits until ctx ends or one of them fails;
// then it stops all the others and returns the first failure, if any.
func (r *Runner) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	for _, e := range r.entries {
		log := r.log.With(zap.String("component", e.name))
		g.Go(func() error {
			log.Info("starting")
			err := r.runOne(ctx, e, log)
			if err != nil {
				log.Error("stopped with an error", zap.Error(err))
				return fmt.Errorf("%s: %w", e.name, err)
			}
			log.Info("stopped")
			return nil
		})
	}
	return g.Wait()
}

func (r *Runner) runOne(ctx context.Context, e entry, log *zap.Logger) error {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = 100*time.Millisecond, 10*time.Second
	for {
		started := time.Now()
		err := safeStart(ctx, e.c)
		if ctx.Err() != nil {
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err // nil, or what went wrong while stopping
		}
		if err == nil {
			err = errors.New("returned before the process stopped")
		}
		if !e.restart {
			return err
		}
		if time.Since(started) > time.Minute {
			b.Reset()
		}
		delay := b.NextBackOff()
		log.Warn("failed; restarting", zap.Error(err), zap.Duration("retry_in", delay))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
	}
}

func safeStart(ctx context.Context, c Component) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v\n%s", p, debug.Stack())
		}
	}()
	return c.Start(ctx)
}

// HTTPServer serves srv on ln until ctx ends, then shuts down gracefully:
// in-flight requests get up to grace to finish.
func HTTPServer(srv *http.Server, ln net.Listener, grace time.Duration) Component {
	return Func(func(ctx context.Context) error {
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(ln) }()
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close()
			return fmt.Errorf("graceful shutdown: %w", err)
		}
		return nil
	})
}

// GRPCServer serves srv on ln until ctx ends, then stops gracefully: open
// streams get up to grace to end before they are cut.
func GRPCServer(srv *grpc.Server, ln net.Listener, grace time.Duration) Component {
	return Func(func(ctx context.Context) error {
		errc := make(chan error, 1)
		go func() { errc <- srv.Serve(ln) }()
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
		}
		done := make(chan struct{})
		go func() { srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(grace):
			srv.Stop()
		}
		return nil
	})
}

// Every calls fn every d, the first time after d, until ctx ends (Every
// then returns nil) or fn returns an error (returned as is).
func Every(ctx context.Context, d time.Duration, fn func(ctx context.Context) error) error {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := fn(ctx); err != nil {
			return err
		}
	}
}
