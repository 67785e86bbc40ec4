package dbschema

import (
	"context"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/saga/pgmigrate"
	"github.com/sagaflow/sagaflow/saga/sagatest"
)

var update = flag.Bool("update", false, "rewrite schema.sql from the migrations")

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	os.Exit(sagatest.CheckedRun(code))
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestSchemaFileIsCurrent keeps schema.sql, the file people read, true to
// the migrations.
func TestSchemaFileIsCurrent(t *testing.T) {
	t.Parallel()
	want, err := Render()
	if err != nil {
		t.Fatal(err)
	}
	const path = "../../schema.sql"
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, string(got)); diff != "" {
		t.Errorf("schema.sql is not what the migrations say; run go test ./internal/dbschema -update (-want +got):\n%s", diff)
	}
}

// migrateAll migrates every service's schema of the database at url and
// returns what was applied.
func migrateAll(ctx context.Context, t *testing.T, url string) []pgmigrate.Applied {
	t.Helper()
	var all []pgmigrate.Applied
	for _, svc := range Services {
		pool := sagatest.Pool(t, url, svc.Schema)
		applied, err := pgmigrate.Up(ctx, pool, svc.Sets...)
		if err != nil {
			t.Fatalf("migrate %s: %v", svc.Schema, err)
		}
		all = append(all, applied...)
		pool.Close()
	}
	return all
}

// files counts the migrations of every service.
func files(t *testing.T) int {
	n := 0
	for _, svc := range Services {
		for _, set := range svc.Sets {
			m, err := fsGlob(set)
			if err != nil {
				t.Fatal(err)
			}
			n += m
		}
	}
	return n
}

func TestMigrateFreshDatabaseThenNothingLeft(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	url := sagatest.NewDatabase(t)
	if got, want := len(migrateAll(ctx, t, url)), files(t); got != want {
		t.Errorf("a fresh database applied %d migrations, want every one (%d)", got, want)
	}
	if again := migrateAll(ctx, t, url); len(again) != 0 {
		t.Errorf("a current database applied %v, want nothing", again)
	}
	for _, svc := range Services {
		pool := sagatest.Pool(t, url, svc.Schema)
		st, err := pgmigrate.Check(ctx, pool, svc.Sets...)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range st {
			if s.Current != s.Latest || len(s.Pending) > 0 || s.Latest == 0 {
				t.Errorf("%s %s: %+v, want current", svc.Schema, s.Set, s)
			}
		}
	}
}

// TestMigrationsRunOnceWithManyProcessesStarting: services sharing a
// database start together; each migration must be applied exactly once and
// none of them may fail.
func TestMigrationsRunOnceWithManyProcessesStarting(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	url := sagatest.NewDatabase(t)
	const starters = 6
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		applied = map[string]int{}
		errs    []error
	)
	for i := range starters {
		for _, svc := range Services {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// A pool per starter: a process of its own.
				pool := sagatest.Pool(t, url, svc.Schema)
				defer pool.Close()
				got, err := pgmigrate.Up(ctx, pool, svc.Sets...)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, fmt.Errorf("starter %d, %s: %w", i, svc.Schema, err))
				}
				for _, a := range got {
					applied[svc.Schema+"/"+a.Set+"/"+a.File]++
				}
			}()
		}
	}
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}
	if len(applied) != files(t) {
		t.Errorf("applied %d distinct migrations, want %d: %v", len(applied), files(t), applied)
	}
	for m, n := range applied {
		if n != 1 {
			t.Errorf("%s applied %d times", m, n)
		}
	}
}

// TestUpgradeFromReleasesBeforeMigrations: a database made by a release
// that created its tables from schema.sql at start (no version tables)
// takes the migrations, keeps its rows, and ends exactly like a fresh one.
func TestUpgradeFromReleasesBeforeMigrations(t *testing.T) {
	t.Parallel()
	fresh := sagatest.NewDatabase(t)
	migrateAll(testContext(t), t, fresh)
	want := catalog(testContext(t), t, fresh)
	for _, release := range []string{"bf8caaf", "9507055"} {
		t.Run(release, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			ddl, err := os.ReadFile("testdata/schema-" + release + ".sql")
			if err != nil {
				t.Fatal(err)
			}
			url := sagatest.NewDatabase(t)
			sagatest.Exec(t, url, string(ddl))
			sagatest.Exec(t, url, releaseRows)
			before := rows(ctx, t, url)

			applied := migrateAll(ctx, t, url)
			if got, want := len(applied), files(t); got != want {
				t.Errorf("applied %d migrations, want every one recorded (%d)", got, want)
			}
			if diff := cmp.Diff(before, withColumnsOf(before, rows(ctx, t, url))); diff != "" {
				t.Errorf("rows changed by the upgrade (-before +after):\n%s", diff)
			}
			if diff := cmp.Diff(want, catalog(ctx, t, url)); diff != "" {
				t.Errorf("upgraded database differs from a fresh one (-fresh +upgraded):\n%s", diff)
			}
			if again := migrateAll(ctx, t, url); len(again) != 0 {
				t.Errorf("applied %v after the upgrade, want nothing", again)
			}
		})
	}
}

// releaseRows is data a running release holds: a saga, an outbox row, a
// product, a reservation, a payment, a shipment, a notification, an audit
// event and inbox entries.
const releaseRows = `
INSERT INTO orchestrator.sagas (id, definition, phase, state, data, created_at, updated_at)
    VALUES ('0190f3c4-0000-7000-8000-000000000001', 'order', 'running', 'reserving_stock', '{"a":1}', now(), now());
INSERT INTO orchestrator.outbox (id, messages, payload, created_at, leased_until)
    VALUES ('0190f3c4-0000-7000-8000-000000000002', 1, '\x00', now(), now());
INSERT INTO inventory.products (sku, name, price_cents, available) VALUES ('SKU-1', 'One', 100, 5);
INSERT INTO inventory.reservations (order_id, status) VALUES ('o1', 'reserved');
INSERT INTO inventory.inbox (message_id, type, reply) VALUES ('m1', 'inventory.reserve', '\x01');
INSERT INTO payment.payments (order_id, status, charged_cents) VALUES ('o1', 'charged', 100);
INSERT INTO payment.inbox (message_id, type) VALUES ('m2', 'payment.charge');
INSERT INTO shipping.shipments (order_id, status) VALUES ('o1', 'prepared');
INSERT INTO notification.notifications (order_id, channel, event_id, event_type, recipient, body)
    VALUES ('o1', 'email', '0190f3c4-0000-7000-8000-000000000003', 'order.completed', 'a@b.c', 'hi');
INSERT INTO audit.events (id, saga_id, seq, type, at, payload)
    VALUES ('0190f3c4-0000-7000-8000-000000000004', '0190f3c4-0000-7000-8000-000000000001', 1, 'order.created', now(), '{}');
`

// rows reads every row of the tables releaseRows fills, each a map of its
// columns.
func rows(ctx context.Context, t *testing.T, url string) map[string][]map[string]any {
	t.Helper()
	pool := sagatest.Pool(t, url, "")
	defer pool.Close()
	out := map[string][]map[string]any{}
	for _, table := range []pgx.Identifier{
		{"orchestrator", "sagas"}, {"orchestrator", "outbox"}, {"inventory", "products"}, {"inventory", "reservations"},
		{"inventory", "inbox"}, {"payment", "payments"}, {"payment", "inbox"}, {"shipping", "shipments"},
		{"notification", "notifications"}, {"audit", "events"},
	} {
		// An identifier cannot be a parameter: pgx quotes it.
		rs, err := pool.Query(ctx, `SELECT row_to_json(r) FROM `+table.Sanitize()+` r ORDER BY 1::text`)
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectRows(rs, pgx.RowTo[map[string]any])
		if err != nil {
			t.Fatal(err)
		}
		out[strings.Join(table, ".")] = got
	}
	return out
}

// withColumnsOf keeps, of each row of after, the columns its row in
// before has: the upgrade may add columns, never change the old ones.
func withColumnsOf(before, after map[string][]map[string]any) map[string][]map[string]any {
	out := map[string][]map[string]any{}
	for table, rs := range after {
		for i, r := range rs {
			kept := map[string]any{}
			for k, v := range r {
				if i < len(before[table]) {
					if _, ok := before[table][i][k]; ok {
						kept[k] = v
					}
				}
			}
			out[table] = append(out[table], kept)
		}
	}
	return out
}

// catalog describes a database's structure: the columns, indexes,
// constraints, triggers and storage options of every table of the
// services' schemas.
func catalog(ctx context.Context, t *testing.T, url string) map[string][]string {
	t.Helper()
	pool := sagatest.Pool(t, url, "")
	defer pool.Close()
	schemas := make([]string, len(Services))
	for i, svc := range Services {
		schemas[i] = svc.Schema
	}
	out := map[string][]string{}
	for what, query := range map[string]string{
		"columns": `SELECT format('%s.%s.%s %s null=%s default=%s storage=%s', n.nspname, c.relname, a.attname,
				format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attstorage)
			FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
			LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
			WHERE n.nspname = ANY($1) AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped`,
		"indexes": `SELECT indexdef FROM pg_indexes WHERE schemaname = ANY($1)`,
		"constraints": `SELECT format('%s.%s %s', n.nspname, c.relname, pg_get_constraintdef(k.oid))
			FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = ANY($1)`,
		"triggers": `SELECT pg_get_triggerdef(g.oid) FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
			JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY($1) AND NOT g.tgisinternal`,
		"options": `SELECT format('%s.%s %s', n.nspname, c.relname, c.reloptions) FROM pg_class c
			JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY($1) AND c.relkind = 'r'`,
	} {
		rs, err := pool.Query(ctx, query+` ORDER BY 1`, schemas)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		got, err := pgx.CollectRows(rs, pgx.RowTo[string])
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		out[what] = got
	}
	return out
}

func fsGlob(set pgmigrate.Set) (int, error) {
	names, err := fs.Glob(set.FS, "*.sql")
	return len(names), err
}
