// Package sagatest is the test kit of the saga engine: a fresh PostgreSQL
// database or RabbitMQ vhost per test (dropped afterwards), and a simulated
// clock. Tests talk to the real services; when one cannot be reached the
// test fails under CI=true and is skipped otherwise, with a pointer to
// `make services`.
package sagatest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
)

// PostgresURL is the admin URL tests create databases with:
// $SAGAFLOW_TEST_POSTGRES, or postgres@127.0.0.1:5432 (trust auth).
func PostgresURL() string {
	if u := os.Getenv("SAGAFLOW_TEST_POSTGRES"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// AMQPURL is the broker URL of a vhost ("" for the default vhost "/"):
// based on $SAGAFLOW_TEST_AMQP, or guest@127.0.0.1:5672.
func AMQPURL(vhost string) string {
	base := os.Getenv("SAGAFLOW_TEST_AMQP")
	if base == "" {
		base = "amqp://guest:guest@127.0.0.1:5672/"
	}
	u, err := url.Parse(base)
	if err != nil {
		return base
	}
	u.Path = "/" + vhost
	if vhost == "" {
		u.Path = "/"
	}
	return u.String()
}

// Unavailable skips the test, or fails it when CI=true: CI must never
// pass by skipping the tests that matter.
func Unavailable(t testing.TB, what string, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is unavailable under CI=true: %v", what, err)
	}
	t.Skipf("%s is unavailable (%v); start it with `make services` (or `make run`)", what, err)
}

// Name returns a random lower-case name with a prefix, usable as a
// database or vhost name.
func Name(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// CreateDatabase creates an empty database and returns its URL.
func CreateDatabase(ctx context.Context, name string) (string, error) {
	conn, err := pgx.Connect(ctx, PostgresURL())
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	// CREATE DATABASE takes no parameters; the name is ours and checked.
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	u, _ := url.Parse(PostgresURL())
	u.Path = "/" + name
	return u.String(), nil
}

// DropDatabase drops a database, disconnecting its sessions.
func DropDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, PostgresURL())
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	return err
}

// NewDatabase creates a fresh database for the test, dropped at cleanup,
// and returns its URL.
func NewDatabase(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := Name("sf_test_")
	u, err := CreateDatabase(ctx, name)
	if err != nil {
		Unavailable(t, "PostgreSQL", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := DropDatabase(ctx, name); err != nil {
			t.Logf("drop database %s: %v", name, err)
		}
	})
	return u
}

// Pool opens a pool on dbURL with the given search_path, closed at cleanup.
func Pool(t testing.TB, dbURL, searchPath string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	if searchPath != "" {
		cfg.ConnConfig.RuntimeParams["search_path"] = searchPath
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Exec runs DDL or SQL without parameters on dbURL (several statements
// allowed).
func Exec(t testing.TB, dbURL, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatal(err)
	}
}

// rabbitmqctl serialises calls: concurrent CLI runs start an Erlang VM each.
var ctlMu sync.Mutex

func rabbitmqctl(args ...string) error {
	ctlMu.Lock()
	defer ctlMu.Unlock()
	out, err := exec.Command("rabbitmqctl", append([]string{"-q"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("rabbitmqctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// CreateVhost creates a vhost that guest may use, and returns its URL.
func CreateVhost(name string) (string, error) {
	conn, err := amqp.Dial(AMQPURL(""))
	if err != nil {
		return "", fmt.Errorf("broker: %w", err)
	}
	conn.Close()
	if err := rabbitmqctl("add_vhost", name); err != nil {
		return "", err
	}
	if err := rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*"); err != nil {
		return "", err
	}
	return AMQPURL(name), nil
}

// DeleteVhost deletes a vhost and everything in it.
func DeleteVhost(name string) error { return rabbitmqctl("delete_vhost", name) }

// NewVhost creates a fresh vhost for the test, deleted at cleanup, and
// returns its URL.
func NewVhost(t testing.TB) string {
	t.Helper()
	name := Name("sf_test_")
	u, err := CreateVhost(name)
	if err != nil {
		Unavailable(t, "RabbitMQ", err)
	}
	t.Cleanup(func() {
		if err := DeleteVhost(name); err != nil {
			t.Logf("delete vhost %s: %v", name, err)
		}
	})
	return u
}
