package postgres

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed migrations/*.sql
var embedded embed.FS

// MigrationStatus is one migration and whether the database has it.
type MigrationStatus struct {
	Version int64
	Name    string
	Applied bool
}

func withProvider(ctx context.Context, dsn string, fn func(*goose.Provider) error) error {
	cfg, err := parseConfig(dsn)
	if err != nil {
		return err
	}
	db := stdlib.OpenDB(*cfg.ConnConfig)
	defer db.Close()
	return withProviderDB(db, fn)
}

func withProviderDB(db *sql.DB, fn func(*goose.Provider) error) error {
	fsys, err := fs.Sub(embedded, "migrations")
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys, goose.WithSessionLocker(locker))
	if err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	return fn(p)
}

// MigrateUp applies every migration the database lacks and returns the
// versions it applied. Concurrent callers are serialised by an advisory lock.
func MigrateUp(ctx context.Context, dsn string) ([]MigrationStatus, error) {
	var applied []MigrationStatus
	err := withProvider(ctx, dsn, func(p *goose.Provider) error {
		res, err := p.Up(ctx)
		for _, r := range res {
			applied = append(applied, MigrationStatus{Version: r.Source.Version, Name: r.Source.Path, Applied: r.Error == nil})
		}
		if err != nil {
			return fmt.Errorf("migrate up: %w", classify(err))
		}
		return nil
	})
	return applied, err
}

// MigrationsStatus lists every migration this binary knows and whether the
// database has it.
func MigrationsStatus(ctx context.Context, dsn string) ([]MigrationStatus, error) {
	var out []MigrationStatus
	err := withProvider(ctx, dsn, func(p *goose.Provider) error {
		st, err := p.Status(ctx)
		if err != nil {
			return fmt.Errorf("migration status: %w", classify(err))
		}
		for _, s := range st {
			out = append(out, MigrationStatus{Version: s.Source.Version, Name: s.Source.Path, Applied: s.State == goose.StateApplied})
		}
		return nil
	})
	return out, err
}

// checkSchema refuses a database whose schema is not exactly the one this
// binary was built for.
func checkSchema(ctx context.Context, dsn string) error {
	// goose creates its version table when asked for versions; look first,
	// so that a wrong URL is refused without writing to that database.
	cfg, err := parseConfig(dsn)
	if err != nil {
		return err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg.ConnConfig)
	if err != nil {
		return fmt.Errorf("read schema version: %w", classify(err))
	}
	var exists bool
	err = conn.QueryRow(ctx, `SELECT to_regclass('goose_db_version') IS NOT NULL`).Scan(&exists)
	conn.Close(ctx)
	if err != nil {
		return fmt.Errorf("read schema version: %w", classify(err))
	}
	if !exists {
		return errors.New("the database has no Ursa schema: run `ursa-cp migrate up --store ...` first")
	}
	return withProvider(ctx, dsn, func(p *goose.Provider) error {
		current, target, err := p.GetVersions(ctx)
		if err != nil {
			return fmt.Errorf("read schema version: %w", classify(err))
		}
		switch {
		case current > target:
			return fmt.Errorf("database schema version %d is newer than this binary knows (%d): upgrade ursa-cp", current, target)
		case current < target:
			return fmt.Errorf("database schema version %d is older than this binary needs (%d): run `ursa-cp migrate up --store ...` first", current, target)
		}
		return nil
	})
}
