package postgres

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store/storetest"
)

// TestReviewPGPausedWriterStopsEveryReplica: replica A is paused (SIGSTOP, a
// frozen VM, a long GC) in the middle of a write, holding the revision lock
// in an open transaction. The server never ends that transaction (no
// idle_in_transaction_session_timeout, no lock_timeout), so every write of
// every other replica waits for as long as A is paused. Writes that come
// with no deadline (presence's heartbeat, KDS) each pin one of the pool's
// few connections (pgxpool's default: max(4, NumCPU)), and then even a
// plain Get, which needs no lock, finds no connection.
func TestReviewPGPausedWriterStopsEveryReplica(t *testing.T) {
	ctx := context.Background()
	dsn := newDB(t)
	a, b := open(t, dsn, Options{}), open(t, dsn, Options{})
	storetest.MustCreate(t, b, storetest.Mesh("default"))

	// A, paused mid-write.
	conn, err := a.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT revision FROM ursa_revision FOR UPDATE`); err != nil {
		t.Fatal(err)
	}

	// B's writers without a deadline, as many as its pool has connections.
	n := int(b.pool.Config().MaxConns)
	done := make(chan error, n)
	for i := range n {
		go func() {
			_, err := b.Create(ctx, storetest.Route("default", fmt.Sprintf("r%d", i), 1, nil))
			done <- err
		}()
	}
	time.Sleep(time.Second)
	gctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, err = b.Get(gctx, api.Key{Type: "Mesh", Name: "default"})
	cancel()
	if err != nil {
		t.Errorf("B's Get, which needs no lock, while B's %d writers wait for A's lock: %v", n, err)
	}
	select {
	case err := <-done:
		t.Logf("a write of B ended: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatalf("A has been idle in its transaction for 30 s: B's writes are still waiting on the revision lock (the server never ends A's transaction, and nothing bounds the wait)")
	}
}
