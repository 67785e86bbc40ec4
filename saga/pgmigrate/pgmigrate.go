// Package pgmigrate applies versioned SQL migrations to PostgreSQL with
// goose (github.com/pressly/goose): each owner of tables (the saga store,
// the worker inbox, an application) keeps its migrations in a Set, embedded
// in its package and recorded in a version table of its own, so the
// engine's versions and an application's never collide.
//
// Tables go into the pool's current schema: the first schema of its
// search_path, which Up creates if it is missing. Up takes an advisory lock
// for the whole run, so several processes starting at once apply each
// migration once; the others wait and find nothing left to do.
//
// Migrations only go forward: a release never drops or rewrites what an
// older one may still read, and there are no down migrations.
package pgmigrate

import (
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// Set is the migrations of one owner of tables.
type Set struct {
	// Name names the set in results and errors ("saga store").
	Name string
	// Table is the set's version table, in the current schema.
	Table string
	// FS holds the migrations at its root: goose SQL files named
	// NNNNN_what.sql, each starting with "-- +goose Up".
	FS fs.FS
}

// Applied is one migration Up applied.
type Applied struct {
	Set      string
	Version  int64
	File     string
	Duration time.Duration
}

// Status is where a set stands in a database.
type Status struct {
	Set string
	// Current is the latest version applied (0: none).
	Current int64
	// Latest is the latest version the set holds.
	Latest int64
	// Pending lists the files not applied yet.
	Pending []string
}

// lockID is the advisory lock every Up takes (per database): "sagaflow"
// in ASCII.
const lockID int64 = 0x73616761666c6f77

// Up applies the pending migrations of each set, in order, under the
// advisory lock, and returns what it applied (nothing when the database
// is current).
func Up(ctx context.Context, pool *pgxpool.Pool, sets ...Set) ([]Applied, error) {
	if err := createSchema(ctx, pool); err != nil {
		return nil, err
	}
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	var applied []Applied
	for _, s := range sets {
		p, err := provider(db, s)
		if err != nil {
			return applied, err
		}
		res, err := p.Up(ctx)
		for _, r := range res {
			if r.Error == nil {
				applied = append(applied, Applied{Set: s.Name, Version: r.Source.Version, File: path.Base(r.Source.Path), Duration: r.Duration})
			}
		}
		if err != nil {
			return applied, fmt.Errorf("migrate %s: %w", s.Name, err)
		}
	}
	return applied, nil
}

// Check returns where each set stands, changing nothing.
func Check(ctx context.Context, pool *pgxpool.Pool, sets ...Set) ([]Status, error) {
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	var out []Status
	for _, s := range sets {
		p, err := provider(db, s)
		if err != nil {
			return out, err
		}
		st := Status{Set: s.Name}
		for _, src := range p.ListSources() {
			st.Latest = max(st.Latest, src.Version)
		}
		exists, err := versionTableExists(ctx, pool, s.Table)
		if err != nil {
			return out, fmt.Errorf("migrate %s: %w", s.Name, err)
		}
		if !exists {
			for _, src := range p.ListSources() {
				st.Pending = append(st.Pending, path.Base(src.Path))
			}
			out = append(out, st)
			continue
		}
		all, err := p.Status(ctx)
		if err != nil {
			return out, fmt.Errorf("migrate %s: %w", s.Name, err)
		}
		for _, m := range all {
			if m.State == goose.StateApplied {
				st.Current = max(st.Current, m.Source.Version)
			} else {
				st.Pending = append(st.Pending, path.Base(m.Source.Path))
			}
		}
		out = append(out, st)
	}
	return out, nil
}

// Pending reports whether any set has migrations not applied yet.
func Pending(st []Status) bool {
	for _, s := range st {
		if len(s.Pending) > 0 {
			return true
		}
	}
	return false
}

func provider(db *sql.DB, s Set) (*goose.Provider, error) {
	if s.Table == "" || s.FS == nil {
		return nil, fmt.Errorf("migrate %s: a set needs a version table and migrations", s.Name)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, s.FS,
		goose.WithTableName(s.Table),
		goose.WithSessionLocker(advisoryLock{}),
		goose.WithDisableGlobalRegistry(true),
		goose.WithLogger(quiet{}),
	)
	if err != nil {
		return nil, fmt.Errorf("migrate %s: %w", s.Name, err)
	}
	return p, nil
}

// CurrentSchema returns the schema tables go into: the first schema of
// the pool's search_path ("" when it names none, such as "$user" or
// nothing: PostgreSQL's own choice, usually public, applies).
func CurrentSchema(pool *pgxpool.Pool) string {
	sp := pool.Config().ConnConfig.RuntimeParams["search_path"]
	first, _, _ := strings.Cut(sp, ",")
	first = strings.TrimSpace(first)
	if strings.HasPrefix(first, `"`) && strings.HasSuffix(first, `"`) && len(first) >= 2 {
		return strings.ReplaceAll(first[1:len(first)-1], `""`, `"`)
	}
	if first == "$user" {
		return ""
	}
	return first
}

// createSchema creates the pool's current schema under the lock
// (concurrent CREATE SCHEMA IF NOT EXISTS may otherwise collide).
func createSchema(ctx context.Context, pool *pgxpool.Pool) error {
	name := CurrentSchema(pool)
	if name == "" {
		return nil
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit, a no-op
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockID); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	// An identifier cannot be a parameter: pgx quotes it.
	if _, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("migrate: create schema %s: %w", name, err)
	}
	return tx.Commit(ctx)
}

func versionTableExists(ctx context.Context, pool *pgxpool.Pool, table string) (bool, error) {
	var exists bool
	err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = $1)`, table).Scan(&exists)
	return exists, err
}

// advisoryLock is goose's session lock as a blocking advisory lock: a
// process waits exactly as long as the one migrating takes (goose's own
// polls every second at best).
type advisoryLock struct{}

var _ lock.SessionLocker = advisoryLock{}

func (advisoryLock) SessionLock(ctx context.Context, conn *sql.Conn) error {
	_, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, lockID)
	return err
}

func (advisoryLock) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	_, err := conn.ExecContext(ctx, `SELECT pg_advisory_unlock($1)`, lockID)
	return err
}

// quiet drops goose's own log lines: Up returns what it applied.
type quiet struct{}

func (quiet) Printf(string, ...any) {}
func (quiet) Fatalf(format string, v ...any) {
	panic(fmt.Sprintf(format, v...))
}

// Sub returns the directory dir of fsys (an embed.FS holding
// "migrations/*.sql", say) as the root of a Set's FS; it panics if dir is
// not a valid path, which is a programming error.
func Sub(fsys fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(fsys, dir)
	if err != nil {
		panic(fmt.Sprintf("pgmigrate: %v", err))
	}
	return sub
}
