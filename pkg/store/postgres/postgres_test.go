package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/pgtest"
	"github.com/ursamesh/ursa/pkg/store"
	"github.com/ursamesh/ursa/pkg/store/storetest"
	"github.com/ursamesh/ursa/pkg/testutil"
)

// cluster is shared by the package's tests; each test gets its own database.
var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	var err error
	cluster, err = pgtest.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	cluster.Close()
	os.Exit(code)
}

// newDB returns the URL of a fresh, migrated database.
func newDB(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	dsn, err := cluster.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := MigrateUp(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	return dsn
}

func open(t testing.TB, dsn string, opts Options) *Store {
	t.Helper()
	s, err := Open(context.Background(), dsn, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return open(t, newDB(t), Options{Log: zaptest.NewLogger(t)}) })
}

func TestSchemaIsChecked(t *testing.T) {
	ctx := context.Background()
	dsn, err := cluster.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, dsn, Options{}); err == nil || !strings.Contains(err.Error(), "migrate up") {
		t.Fatalf("open on an empty database = %v, want advice to run migrate up", err)
	}
	st, err := MigrationsStatus(ctx, dsn)
	if err != nil || len(st) == 0 || st[0].Applied {
		t.Fatalf("status before migrating = %+v, %v", st, err)
	}
	applied, err := MigrateUp(ctx, dsn)
	if err != nil || len(applied) != len(st) {
		t.Fatalf("migrate up applied %+v, %v", applied, err)
	}
	if again, err := MigrateUp(ctx, dsn); err != nil || len(again) != 0 {
		t.Fatalf("second migrate up applied %+v, %v; want nothing", again, err)
	}
	// A schema from a newer binary is refused.
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `INSERT INTO goose_db_version (version_id, is_applied) VALUES (99999, true)`); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, dsn, Options{}); err == nil || !strings.Contains(err.Error(), "newer than this binary knows") {
		t.Fatalf("open on a newer schema = %v, want a refusal", err)
	}
}

func TestCompactedLog(t *testing.T) {
	s := open(t, newDB(t), Options{Retention: 10})
	storetest.MustCreate(t, s, storetest.Mesh("default"))
	for i := range 300 {
		storetest.MustCreate(t, s, storetest.Route("default", fmt.Sprintf("r%d", i), 1, nil))
	}
	err := s.Watch(context.Background(), 1, func(store.Event) error { return nil })
	if !errors.Is(err, store.ErrCompacted) {
		t.Fatalf("watch from a compacted revision = %v, want ErrCompacted", err)
	}
	if _, err := storetest.Collect(s, 295, 6, 10*time.Second); err != nil {
		t.Fatalf("watch within retention: %v", err)
	}
}

// TestTwoReplicasSeeEveryWrite: a write through one store handle reaches a
// watcher on another, as it would across CP replicas.
func TestTwoReplicasSeeEveryWrite(t *testing.T) {
	dsn := newDB(t)
	a, b := open(t, dsn, Options{}), open(t, dsn, Options{})
	got := make(chan error, 1)
	go func() {
		_, err := storetest.Collect(b, 0, 2, 20*time.Second)
		got <- err
	}()
	storetest.MustCreate(t, a, storetest.Mesh("default"))
	storetest.MustCreate(t, a, storetest.Route("default", "r", 1, nil))
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}

// TestOutage stops PostgreSQL under a running writer and watcher: writes fail
// with ErrUnavailable while it is down, succeed once it is back, every
// acknowledged write survives, and the watcher's view equals the database's.
func TestOutage(t *testing.T) {
	if cluster.External() {
		t.Skip("TEST_DATABASE_URL is set: cannot stop an external server")
	}
	// The outage stops the shared cluster; no other test may run meanwhile.
	dsn := newDB(t)
	s := open(t, dsn, Options{Log: zaptest.NewLogger(t)})
	storetest.MustCreate(t, s, storetest.Mesh("default"))

	var (
		mu    sync.Mutex
		state = map[string]int{} // name -> version, as the watcher saw it
		last  atomic.Int64
	)
	wctx, stopWatch := context.WithCancel(context.Background())
	watchDone := make(chan error, 1)
	go func() {
		watchDone <- s.Watch(wctx, 0, func(e store.Event) error {
			if e.Revision != last.Load()+1 {
				return fmt.Errorf("revision %d after %d", e.Revision, last.Load())
			}
			last.Store(e.Revision)
			mu.Lock()
			state[api.KeyOf(e.Resource).String()] = int(e.Resource.GetMeta().Version)
			if e.Op == store.OpDelete {
				delete(state, api.KeyOf(e.Resource).String())
			}
			mu.Unlock()
			return nil
		})
	}()

	acked := map[string]int64{} // name -> last acknowledged version
	var unavailable int
	write := func(i int) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		name := fmt.Sprintf("r%d", i%20)
		r := storetest.Route("default", name, i%100+1, nil)
		var (
			out api.Resource
			err error
		)
		if v, ok := acked[name]; ok {
			r.Version = v
			out, err = s.Update(ctx, r)
		} else {
			out, err = s.Create(ctx, r)
		}
		switch {
		case err == nil:
			acked[name] = out.GetMeta().Version
		case errors.Is(err, store.ErrUnavailable):
			unavailable++
		case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrAlreadyExists):
			// A commit whose answer was lost in the outage: re-read.
			if got, gerr := s.Get(ctx, api.KeyOf(r)); gerr == nil {
				acked[name] = got.GetMeta().Version
			}
		default:
			t.Fatalf("write %d: unexpected error %v", i, err)
		}
	}
	for i := range 50 {
		write(i)
	}
	if err := cluster.StopServer(); err != nil {
		t.Fatal(err)
	}
	for i := 50; i < 60; i++ {
		write(i)
	}
	if unavailable != 10 {
		t.Fatalf("%d of 10 writes during the outage reported ErrUnavailable", unavailable)
	}
	if err := s.Ping(context.Background()); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("ping while down = %v", err)
	}
	if err := cluster.StartServer(); err != nil {
		t.Fatal(err)
	}
	unavailable = 0
	for i := 60; i < 200; i++ {
		write(i)
	}
	if unavailable != 0 {
		t.Fatalf("%d writes failed after PostgreSQL came back", unavailable)
	}
	ctx := context.Background()
	res, err := s.List(ctx, store.ListOptions{Type: "TrafficRoute"})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res.Items {
		if v := acked[r.GetMeta().Name]; r.GetMeta().Version != v {
			t.Errorf("%s: stored version %d, last acknowledged %d", r.GetMeta().Name, r.GetMeta().Version, v)
		}
	}
	if len(res.Items) != len(acked) {
		t.Errorf("stored %d routes, acknowledged %d", len(res.Items), len(acked))
	}
	// The watcher catches up to the list's revision and agrees with it.
	testutil.Until(t, 20*time.Second, "the watcher to reach the list's revision", func() bool { return last.Load() >= res.Revision })
	stopWatch()
	if err := <-watchDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("watch ended with %v", err)
	}
	if last.Load() != res.Revision {
		t.Fatalf("watcher reached revision %d, store is at %d", last.Load(), res.Revision)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, r := range res.Items {
		if state[api.KeyOf(r).String()] != int(r.GetMeta().Version) {
			t.Errorf("watcher saw %s at version %d, store has %d", api.KeyOf(r), state[api.KeyOf(r).String()], r.GetMeta().Version)
		}
	}
}

func BenchmarkPostgres(b *testing.B) {
	storetest.Bench(b, func(b *testing.B) store.Store { return open(b, newDB(b), Options{}) })
}
