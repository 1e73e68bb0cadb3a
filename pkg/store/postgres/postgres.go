// Package postgres is the PostgreSQL implementation of store.Store. Writes
// are serialised on one revision row, so revisions are gapless and follow
// commit order; every change is appended to a change log in the same
// transaction and announced with NOTIFY, so every CP replica sees every write.
package postgres

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/ursamesh/ursa/pkg/api"
	"github.com/ursamesh/ursa/pkg/store"
)

const channel = "ursa_changes"

// Options tune a Store. The zero value is usable.
type Options struct {
	// Retention is how many changes the log keeps for resuming watchers
	// (store.DefaultLogRetention when 0).
	Retention int64
	Log       *zap.Logger
}

// Store is a store.Store on PostgreSQL.
type Store struct {
	pool      *pgxpool.Pool
	log       *zap.Logger
	retention int64
	notifier  *notifier
	cancel    context.CancelFunc
	done      chan struct{}
	// writers bounds the writes that hold a connection: they take turns
	// on the revision lock anyway, and a writer stuck behind it (another
	// replica paused mid-write) must not take every connection from the
	// reads.
	writers chan struct{}
}

var _ store.Store = (*Store)(nil)

func parseConfig(dsn string) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse postgres url: %w", err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	// A connection whose network path died without a word is dropped by
	// the kernel in about 30 s (keep-alive probes when idle, a bound on
	// unacknowledged data when not), not after its default of many
	// minutes.
	d := &net.Dialer{Timeout: cfg.ConnConfig.ConnectTimeout,
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3},
		Control: func(network, _ string, c syscall.RawConn) error {
			if !strings.HasPrefix(network, "tcp") {
				return nil // a Unix socket: no network path to lose
			}
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int((30 * time.Second).Milliseconds()))
			})
			return cmp.Or(err, serr)
		}}
	cfg.ConnConfig.DialFunc = d.DialContext
	return cfg, nil
}

// Open connects to dsn, refuses a schema other than the one this binary knows,
// and starts listening for changes. Close releases it.
func Open(ctx context.Context, dsn string, opts Options) (*Store, error) {
	cfg, err := parseConfig(dsn)
	if err != nil {
		return nil, err
	}
	if err := checkSchema(ctx, dsn); err != nil {
		return nil, err
	}
	// A store connection's session is bounded, unless the DSN says
	// otherwise: a replica paused mid-write (SIGSTOP, a frozen VM) loses
	// its transaction, and so the revision lock, after 15 s idle in it; a
	// writer waiting on the lock gives up after 10 s (unavailable: to be
	// tried again); no statement runs for ever.
	sessionLimits := map[string]string{
		"idle_in_transaction_session_timeout": "15s",
		"lock_timeout":                        "10s",
		"statement_timeout":                   "60s",
	}
	for k, v := range sessionLimits {
		if _, set := cfg.ConnConfig.RuntimeParams[k]; !set {
			cfg.ConnConfig.RuntimeParams[k] = v
		}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", classify(err))
	}
	if opts.Retention <= 0 {
		opts.Retention = store.DefaultLogRetention
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	bg, cancel := context.WithCancel(context.Background())
	s := &Store{
		pool:      pool,
		log:       opts.Log,
		retention: opts.Retention,
		notifier:  newNotifier(cfg.ConnConfig, opts.Log),
		cancel:    cancel,
		done:      make(chan struct{}),
		writers:   make(chan struct{}, max(1, cfg.MaxConns/2)),
	}
	go func() { defer close(s.done); s.notifier.run(bg) }()
	return s, nil
}

// Close stops listening and closes every connection.
func (s *Store) Close() {
	s.cancel()
	<-s.done
	s.pool.Close()
}

// Ping reports whether the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return classify(err)
	}
	return nil
}

// classify marks errors that mean "the database cannot be reached" with
// store.ErrUnavailable. Errors the server reports about a statement are left
// alone: they are bugs, not outages.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// Connection, operator intervention, resources, serialization
		// failures and deadlocks, a statement timeout, a read-only
		// (demoted) server: none is about what was written.
		switch {
		case strings.HasPrefix(pgErr.Code, "08"), strings.HasPrefix(pgErr.Code, "57P"), strings.HasPrefix(pgErr.Code, "53"),
			strings.HasPrefix(pgErr.Code, "40"), pgErr.Code == "57014", pgErr.Code == "25006",
			pgErr.Code == "55P03", pgErr.Code == "25P03": // a lock not had in lock_timeout; a transaction idle too long
			return fmt.Errorf("%w: %v", store.ErrUnavailable, err)
		}
		return err
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	var netErr net.Error
	var connectErr *pgconn.ConnectError
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &netErr) || errors.As(err, &connectErr) ||
		pgconn.Timeout(err) || pgconn.SafeToRetry(err) || strings.Contains(err.Error(), "conn closed") ||
		strings.Contains(err.Error(), "unexpected EOF") || errors.Is(err, pgx.ErrTxClosed) {
		return fmt.Errorf("%w: %v", store.ErrUnavailable, err)
	}
	return err
}

// change is one row of the change log written by a transaction.
type change struct {
	op  store.Op
	res api.Resource
	doc []byte
}

// write runs fn in a transaction that holds the revision lock, then appends
// fn's changes to the log with consecutive revisions and announces them.
func (s *Store) write(ctx context.Context, what string, fn func(tx pgx.Tx, rev int64) ([]change, error)) ([]change, error) {
	select {
	case s.writers <- struct{}{}:
		defer func() { <-s.writers }()
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: wait for a writer's turn: %w", what, classify(ctx.Err()))
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: begin: %w", what, classify(err))
	}
	defer tx.Rollback(context.Background())
	var rev int64
	if err := tx.QueryRow(ctx, `SELECT revision FROM ursa_revision FOR UPDATE`).Scan(&rev); err != nil {
		return nil, fmt.Errorf("%s: lock revision: %w", what, classify(err))
	}
	changes, err := fn(tx, rev+1)
	if err != nil {
		return nil, err
	}
	if len(changes) == 0 {
		return nil, tx.Commit(ctx)
	}
	b := &pgx.Batch{}
	for i, c := range changes {
		k := api.KeyOf(c.res)
		b.Queue(`INSERT INTO ursa_changes (revision, op, type, mesh, name, document, more) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			rev+int64(i)+1, int16(c.op), k.Type, k.Mesh, k.Name, c.doc, i < len(changes)-1)
	}
	last := rev + int64(len(changes))
	b.Queue(`UPDATE ursa_revision SET revision = $1`, last)
	b.Queue(`SELECT pg_notify($1, $2)`, channel, fmt.Sprint(last))
	if last/256 != rev/256 {
		b.Queue(`DELETE FROM ursa_changes WHERE revision <= $1`, last-s.retention)
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("%s: record change: %w", what, classify(err))
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("%s: commit: %w", what, classify(err))
	}
	return changes, nil
}

func encode(r api.Resource) ([]byte, []byte, error) {
	doc, err := json.Marshal(r)
	if err != nil {
		return nil, nil, fmt.Errorf("encode %s: %w", api.KeyOf(r), err)
	}
	labels := r.GetMeta().Labels
	if labels == nil {
		labels = map[string]string{}
	}
	lb, _ := json.Marshal(labels)
	return doc, lb, nil
}

// Create implements store.Store.
func (s *Store) Create(ctx context.Context, r api.Resource) (api.Resource, error) {
	r = store.Clone(r)
	key := api.KeyOf(r)
	what := "create " + key.String()
	changes, err := s.write(ctx, what, func(tx pgx.Tx, rev int64) ([]change, error) {
		if d, ok := api.Lookup(key.Type); ok && d.Scope == api.ScopeMesh {
			var exists bool
			err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM ursa_resources WHERE type = 'Mesh' AND mesh = '' AND name = $1)`, key.Mesh).Scan(&exists)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", what, classify(err))
			}
			if !exists {
				return nil, fmt.Errorf("%s: %w: %q", what, store.ErrMeshNotFound, key.Mesh)
			}
		}
		m := r.GetMeta()
		now := store.Now()
		m.Version, m.CreationTime, m.ModificationTime = 1, now, now
		doc, labels, err := encode(r)
		if err != nil {
			return nil, err
		}
		tag, err := tx.Exec(ctx, `INSERT INTO ursa_resources (type, mesh, name, version, revision, labels, document, created_at, updated_at)
			VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $7) ON CONFLICT DO NOTHING`,
			key.Type, key.Mesh, key.Name, rev, labels, doc, now)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, classify(err))
		}
		if tag.RowsAffected() == 0 {
			return nil, fmt.Errorf("%s: %w", what, store.ErrAlreadyExists)
		}
		return []change{{op: store.OpCreate, res: r, doc: doc}}, nil
	})
	if err != nil {
		return nil, err
	}
	return changes[0].res, nil
}

// Update implements store.Store.
func (s *Store) Update(ctx context.Context, r api.Resource) (api.Resource, error) {
	r = store.Clone(r)
	key := api.KeyOf(r)
	what := "update " + key.String()
	changes, err := s.write(ctx, what, func(tx pgx.Tx, rev int64) ([]change, error) {
		var (
			version int64
			created time.Time
		)
		err := tx.QueryRow(ctx, `SELECT version, created_at FROM ursa_resources WHERE type = $1 AND mesh = $2 AND name = $3`,
			key.Type, key.Mesh, key.Name).Scan(&version, &created)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("%s: %w", what, store.ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, classify(err))
		}
		m := r.GetMeta()
		if m.Version != version {
			return nil, fmt.Errorf("%s: %w: version %d given, %d stored", what, store.ErrConflict, m.Version, version)
		}
		m.Version, m.CreationTime, m.ModificationTime = version+1, created.UTC(), store.Now()
		doc, labels, err := encode(r)
		if err != nil {
			return nil, err
		}
		_, err = tx.Exec(ctx, `UPDATE ursa_resources SET version = $4, revision = $5, labels = $6, document = $7, updated_at = $8
			WHERE type = $1 AND mesh = $2 AND name = $3`,
			key.Type, key.Mesh, key.Name, m.Version, rev, labels, doc, m.ModificationTime)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, classify(err))
		}
		return []change{{op: store.OpUpdate, res: r, doc: doc}}, nil
	})
	if err != nil {
		return nil, err
	}
	return changes[0].res, nil
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, key api.Key, version int64) error {
	what := "delete " + key.String()
	_, err := s.write(ctx, what, func(tx pgx.Tx, rev int64) ([]change, error) {
		var (
			stored int64
			doc    []byte
		)
		err := tx.QueryRow(ctx, `SELECT version, document FROM ursa_resources WHERE type = $1 AND mesh = $2 AND name = $3`,
			key.Type, key.Mesh, key.Name).Scan(&stored, &doc)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("%s: %w", what, store.ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, classify(err))
		}
		if version != 0 && version != stored {
			return nil, fmt.Errorf("%s: %w: version %d given, %d stored", what, store.ErrConflict, version, stored)
		}
		var changes []change
		if key.Type == "Mesh" {
			rows, err := tx.Query(ctx, `DELETE FROM ursa_resources WHERE mesh = $1 RETURNING type, document`, key.Name)
			if err != nil {
				return nil, fmt.Errorf("%s: contents: %w", what, classify(err))
			}
			changes, err = collectDeleted(rows)
			if err != nil {
				return nil, fmt.Errorf("%s: contents: %w", what, err)
			}
		}
		if _, err := tx.Exec(ctx, `DELETE FROM ursa_resources WHERE type = $1 AND mesh = $2 AND name = $3`, key.Type, key.Mesh, key.Name); err != nil {
			return nil, fmt.Errorf("%s: %w", what, classify(err))
		}
		r, err := store.DecodeStored(key.Type, doc)
		if err != nil {
			return nil, err
		}
		return append(changes, change{op: store.OpDelete, res: r, doc: doc}), nil
	})
	return err
}

func collectDeleted(rows pgx.Rows) ([]change, error) {
	var out []change
	for rows.Next() {
		var (
			typ string
			doc []byte
		)
		if err := rows.Scan(&typ, &doc); err != nil {
			return nil, classify(err)
		}
		r, err := store.DecodeStored(typ, doc)
		if err != nil {
			return nil, err
		}
		out = append(out, change{op: store.OpDelete, res: r, doc: doc})
	}
	if err := rows.Err(); err != nil {
		return nil, classify(err)
	}
	slices.SortFunc(out, func(a, b change) int {
		return strings.Compare(api.KeyOf(a.res).String(), api.KeyOf(b.res).String())
	})
	return out, nil
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key api.Key) (api.Resource, error) {
	var doc []byte
	err := s.pool.QueryRow(ctx, `SELECT document FROM ursa_resources WHERE type = $1 AND mesh = $2 AND name = $3`,
		key.Type, key.Mesh, key.Name).Scan(&doc)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("get %s: %w", key, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, classify(err))
	}
	return store.DecodeStored(key.Type, doc)
}

// List implements store.Store. The items and the revision come from one
// snapshot of the database.
func (s *Store) List(ctx context.Context, opts store.ListOptions) (store.ListResult, error) {
	var res store.ListResult
	err := s.snapshot(ctx, func(tx pgx.Tx, rev int64) (err error) {
		res, err = list(ctx, tx, rev, opts)
		return err
	})
	if err != nil {
		return store.ListResult{}, fmt.Errorf("list %s: %w", opts.Type, classify(err))
	}
	return res, nil
}

// ListTypes implements store.Snapshotter: every type's List in one
// repeatable-read transaction.
func (s *Store) ListTypes(ctx context.Context, types []string) ([]store.ListResult, error) {
	out := make([]store.ListResult, len(types))
	err := s.snapshot(ctx, func(tx pgx.Tx, rev int64) error {
		for i, t := range types {
			res, err := list(ctx, tx, rev, store.ListOptions{Type: t})
			if err != nil {
				return fmt.Errorf("%s: %w", t, err)
			}
			out[i] = res
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %d types: %w", len(types), classify(err))
	}
	return out, nil
}

// snapshot runs fn in a read-only repeatable-read transaction, with the
// store revision its snapshot holds.
func (s *Store) snapshot(ctx context.Context, fn func(tx pgx.Tx, rev int64) error) error {
	return pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var rev int64
		if err := tx.QueryRow(ctx, `SELECT revision FROM ursa_revision`).Scan(&rev); err != nil {
			return err
		}
		return fn(tx, rev)
	})
}

// list is List within tx, whose snapshot holds revision rev.
func list(ctx context.Context, tx pgx.Tx, rev int64, opts store.ListOptions) (store.ListResult, error) {
	res := store.ListResult{Revision: rev}
	labels := opts.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	lb, _ := json.Marshal(labels)
	rows, err := tx.Query(ctx, `SELECT document FROM ursa_resources
		WHERE type = $1 AND ($2 = '' OR mesh = $2) AND labels @> $3 ORDER BY mesh COLLATE "C", name COLLATE "C"`, opts.Type, opts.Mesh, lb)
	if err != nil {
		return res, err
	}
	defer rows.Close()
	for rows.Next() {
		var doc []byte
		if err := rows.Scan(&doc); err != nil {
			return res, err
		}
		r, err := store.DecodeStored(opts.Type, doc)
		if err != nil {
			return res, err
		}
		res.Items = append(res.Items, r)
	}
	return res, rows.Err()
}
