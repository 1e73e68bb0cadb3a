package postgres

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/storetest"
)

// TestReviewPGWatchAcrossFailoverToLaggingStandby: PostgreSQL fails over to
// a standby that had not received the primary's last two commits
// (asynchronous replication: the usual Patroni/RDS set-up). Another
// replica's writes reach the new primary before this replica's listener has
// reconnected, so the revision has caught up with the watcher's by the time
// it looks. The watcher goes on from the revision it had, in another
// history: it keeps two resources that no longer exist and never sees two
// that do. Watch must return ErrCompacted (list again) instead.
func TestReviewPGWatchAcrossFailoverToLaggingStandby(t *testing.T) {
	if cluster.External() {
		t.Skip("needs its own cluster")
	}
	ctx := context.Background()
	dsn := newDB(t)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	db := cfg.Database
	admin, err := pgx.Connect(ctx, cluster.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	exec := func(sql string) {
		t.Helper()
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// The history both databases share: revisions 1..3.
	s0 := open(t, dsn, Options{})
	storetest.MustCreate(t, s0, storetest.Mesh("default"))
	storetest.MustCreate(t, s0, storetest.Route("default", "r1", 1, nil))
	storetest.MustCreate(t, s0, storetest.Route("default", "r2", 1, nil))
	s0.Close()
	exec(fmt.Sprintf("CREATE DATABASE %s_standby TEMPLATE %s", db, db)) // the standby, lagging from here on

	watcher := open(t, dsn, Options{Log: zaptest.NewLogger(t)})
	writer := open(t, dsn, Options{})
	var (
		mu      sync.Mutex
		state   = map[string]int64{}
		last    int64
		watchEr = make(chan error, 1)
	)
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() {
		watchEr <- watcher.Watch(wctx, 0, func(e store.Event) error {
			mu.Lock()
			defer mu.Unlock()
			k := api.KeyOf(e.Resource).String()
			if e.Op == store.OpDelete {
				delete(state, k)
			} else {
				state[k] = e.Resource.GetMeta().Version
			}
			last = e.Revision
			return nil
		})
	}()
	// Two commits only the old primary has (revisions 4, 5).
	storetest.MustCreate(t, writer, storetest.Route("default", "lost-1", 1, nil))
	storetest.MustCreate(t, writer, storetest.Route("default", "lost-2", 1, nil))
	until := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	until("the watcher to see revision 5", func() bool { mu.Lock(); defer mu.Unlock(); return last == 5 })

	// Failover: the primary goes away, the standby takes its name.
	exec(fmt.Sprintf("ALTER DATABASE %s ALLOW_CONNECTIONS false", db))
	exec(fmt.Sprintf("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s'", db))
	until("the old primary to be renamed", func() bool {
		_, err := admin.Exec(ctx, fmt.Sprintf("ALTER DATABASE %s RENAME TO %s_old", db, db))
		return err == nil
	})
	time.Sleep(1500 * time.Millisecond) // a failover takes a few seconds
	exec(fmt.Sprintf("ALTER DATABASE %s_standby RENAME TO %s", db, db))

	// Another replica writes to the new primary at once (revisions 4..6 of
	// the new history).
	for _, name := range []string{"after-1", "after-2", "after-3"} {
		until("a write to the new primary", func() bool {
			wc, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			_, err := writer.Create(wc, storetest.Route("default", name, 1, nil))
			return err == nil
		})
	}
	// The watcher either says it lost its place, or agrees with the store.
	res, err := writer.List(ctx, store.ListOptions{Type: "TrafficRoute"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"Mesh/default": 1}
	for _, r := range res.Items {
		want[api.KeyOf(r).String()] = r.GetMeta().Version
	}
	deadline := time.After(15 * time.Second)
	for {
		select {
		case err := <-watchEr:
			if errors.Is(err, store.ErrCompacted) {
				return // told to list again: correct
			}
			t.Fatalf("watch ended with %v", err)
		case <-deadline:
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("the watcher went on in another history: at revision %d (store at %d) it holds\n  %v\nthe store holds\n  %v", last, res.Revision, state, want)
		case <-time.After(50 * time.Millisecond):
		}
		mu.Lock()
		same := last == res.Revision && maps.Equal(state, want)
		mu.Unlock()
		if same {
			return
		}
	}
}
