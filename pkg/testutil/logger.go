package testutil

import (
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
)

// Logger is zaptest.NewLogger(t) that goes quiet once the test's cleanups
// have run: a server's goroutine that outlives the test (a gRPC handler
// logging the end of its stream after Stop returned) then logs nothing,
// where zaptest's logger would panic ("Log in goroutine after … has
// completed").
func Logger(t testing.TB) *zap.Logger {
	q := &quiet{}
	t.Cleanup(func() {
		q.mu.Lock()
		q.done = true
		q.mu.Unlock()
	})
	return zaptest.NewLogger(t, zaptest.WrapOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return quietCore{Core: c, q: q} })))
}

// quiet is whether a Logger's test has ended; a write holds mu for reading,
// so that none is under way once done is set.
type quiet struct {
	mu   sync.RWMutex
	done bool
}

type quietCore struct {
	zapcore.Core
	q *quiet
}

func (c quietCore) With(fields []zapcore.Field) zapcore.Core {
	return quietCore{Core: c.Core.With(fields), q: c.q}
}

func (c quietCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c quietCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	c.q.mu.RLock()
	defer c.q.mu.RUnlock()
	if c.q.done {
		return nil
	}
	return c.Core.Write(e, fields)
}
