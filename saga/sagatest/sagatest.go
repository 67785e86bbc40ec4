// Package sagatest is the test kit of the saga engine: a fresh PostgreSQL
// database or RabbitMQ vhost per test (dropped afterwards), and a simulated
// clock. Tests talk to the real servers named by DATABASE_URL, AMQP_URL and
// RABBITMQ_MANAGEMENT_URL (the defaults of the repository's .env when
// unset). A server that cannot be reached skips the test, or fails it under
// CI=true; a server that answers but refuses the test (a wrong password, a
// missing privilege, the management plugin off) fails it everywhere, with
// the server's reason.
package sagatest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagaflow/sagaflow"
)

// Servers are the PostgreSQL server and RabbitMQ broker tests create their
// databases and vhosts on.
type Servers struct {
	// Postgres is the URL of a role that may create databases; its
	// database part is ignored.
	Postgres string
	// AMQP is the broker's URL; its vhost part is ignored.
	AMQP string
	// Management is the root URL of RabbitMQ's management HTTP API, with
	// the credentials of a user who may create vhosts. Empty means the
	// broker is the test's own: every deployment uses its vhost "/".
	Management string
}

// DefaultServers are the servers of the environment: DATABASE_URL, AMQP_URL
// and RABBITMQ_MANAGEMENT_URL, or their defaults in .env.
func DefaultServers() Servers {
	get := func(name string) string {
		if v, ok := os.LookupEnv(name); ok && v != "" {
			return v
		}
		return sagaflow.Default(name)
	}
	return Servers{Postgres: get("DATABASE_URL"), AMQP: get("AMQP_URL"), Management: get("RABBITMQ_MANAGEMENT_URL")}
}

// DatabaseURL is the URL of a database on the PostgreSQL server.
func (s Servers) DatabaseURL(name string) string {
	u, err := url.Parse(s.Postgres)
	if err != nil {
		return s.Postgres
	}
	u.Path = "/" + name
	return u.String()
}

// AMQPURL is the URL of a vhost on the broker ("" for the vhost "/").
func (s Servers) AMQPURL(vhost string) string {
	u, err := url.Parse(s.AMQP)
	if err != nil {
		return s.AMQP
	}
	u.Path, u.RawPath = "/"+vhost, "/"+url.PathEscape(vhost)
	if vhost == "" {
		u.Path, u.RawPath = "/", ""
	}
	return u.String()
}

// Unreachable reports whether err says a server could not be reached at
// all (nothing listens, no route, no such host), as opposed to a server
// that answered and refused.
func Unreachable(err error) bool {
	var dns *net.DNSError
	var op *net.OpError
	switch {
	case err == nil:
		return false
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.ENOENT),
		errors.As(err, &dns):
		return true
	case errors.As(err, &op) && op.Op == "dial":
		return true
	}
	return false
}

// Unavailable stops a test that could not use a server. A server that
// cannot be reached skips it (fails it under CI=true: CI must never pass by
// skipping the tests that matter); any other error, such as a refused
// login, fails it with the server's reason.
func Unavailable(t testing.TB, what string, err error) {
	t.Helper()
	if !Unreachable(err) {
		t.Fatalf("%s refused the test: %v", what, err)
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is unreachable under CI=true: %v", what, err)
	}
	t.Skipf("%s is unreachable (%v); start it with `make services` (or `make run`)", what, err)
}

// Name returns a random lower-case name with a prefix, usable as a
// database or vhost name.
func Name(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// CreateDatabase creates an empty database and returns its URL.
func (s Servers) CreateDatabase(ctx context.Context, name string) (string, error) {
	conn, err := pgx.Connect(ctx, s.DatabaseURL("postgres"))
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	// CREATE DATABASE takes no parameters; the name is ours and checked.
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	return s.DatabaseURL(name), nil
}

// DropDatabase drops a database, disconnecting its sessions.
func (s Servers) DropDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, s.DatabaseURL("postgres"))
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
	srv := DefaultServers()
	u, err := srv.CreateDatabase(ctx, name)
	if err != nil {
		Unavailable(t, "PostgreSQL", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.DropDatabase(ctx, name); err != nil {
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

// managementClient keeps no idle connection: none of its goroutines may
// outlive a test package (goleak).
var managementClient = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// ManagementAPI calls RabbitMQ's management HTTP API: path is below /api
// ("/vhosts/x"), body (if not nil) is sent as JSON, and a JSON answer is
// decoded into out (if not nil). A DELETE of something already gone
// succeeds.
func (s Servers) ManagementAPI(ctx context.Context, method, path string, body, out any) error {
	base, err := url.Parse(s.Management)
	if err != nil || s.Management == "" {
		return fmt.Errorf("RABBITMQ_MANAGEMENT_URL %q: want http://user:password@host:15672/", s.Management)
	}
	user := base.User
	base.User = nil
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(base.String(), "/")+"/api"+path, rd)
	if err != nil {
		return err
	}
	if user != nil {
		pw, _ := user.Password()
		req.SetBasicAuth(user.Username(), pw)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := managementClient.Do(req)
	if err != nil {
		if Unreachable(err) {
			// The broker answered (callers dial it first): the plugin is off.
			err = fmt.Errorf("RabbitMQ's management API at %s does not answer (%v): enable it with "+
				"`rabbitmq-plugins enable rabbitmq_management` (make services does) or set RABBITMQ_MANAGEMENT_URL", base.Redacted(), err)
		}
		return err
	}
	defer resp.Body.Close()
	if method == http.MethodDelete && resp.StatusCode == http.StatusNotFound {
		return nil
	}
	if resp.StatusCode >= 300 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("RabbitMQ management API %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(msg))
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

// CreateVhost creates a vhost that the broker URL's user may use, and
// returns its URL. On a broker of the test's own (no management URL) it
// returns the URL of "/".
func (s Servers) CreateVhost(ctx context.Context, name string) (string, error) {
	conn, err := amqp.Dial(s.AMQPURL(""))
	if err != nil {
		return "", fmt.Errorf("broker: %w", err)
	}
	conn.Close()
	if s.Management == "" {
		return s.AMQPURL(""), nil
	}
	if err := s.ManagementAPI(ctx, http.MethodPut, "/vhosts/"+url.PathEscape(name), nil, nil); err != nil {
		return "", err
	}
	user := "guest"
	if u, err := url.Parse(s.AMQP); err == nil && u.User != nil {
		user = u.User.Username()
	}
	perm := map[string]string{"configure": ".*", "write": ".*", "read": ".*"}
	if err := s.ManagementAPI(ctx, http.MethodPut, "/permissions/"+url.PathEscape(name)+"/"+url.PathEscape(user), perm, nil); err != nil {
		_ = s.DeleteVhost(ctx, name)
		return "", err
	}
	return s.AMQPURL(name), nil
}

// DeleteVhost deletes a vhost and everything in it (nothing on a broker of
// the test's own).
func (s Servers) DeleteVhost(ctx context.Context, name string) error {
	if s.Management == "" {
		return nil
	}
	return s.ManagementAPI(ctx, http.MethodDelete, "/vhosts/"+url.PathEscape(name), nil, nil)
}

// CloseConnections closes every client connection to a vhost, as a broker
// restart would, and returns how many it closed. The management API lists
// a new connection only after its next statistics round (up to 5 s), so it
// waits until at least one is listed or ctx is done.
func (s Servers) CloseConnections(ctx context.Context, vhost string) (int, error) {
	for {
		var conns []struct {
			Name string `json:"name"`
		}
		if err := s.ManagementAPI(ctx, http.MethodGet, "/vhosts/"+url.PathEscape(vhost)+"/connections", nil, &conns); err != nil {
			return 0, err
		}
		for _, c := range conns {
			if err := s.ManagementAPI(ctx, http.MethodDelete, "/connections/"+url.PathEscape(c.Name), nil, nil); err != nil {
				return 0, err
			}
		}
		if len(conns) > 0 {
			return len(conns), nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("no connection to vhost %s listed: %w", vhost, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// NewVhost creates a fresh vhost for the test, deleted at cleanup, and
// returns its URL.
func NewVhost(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := Name("sf_test_")
	srv := DefaultServers()
	u, err := srv.CreateVhost(ctx, name)
	if err != nil {
		Unavailable(t, "RabbitMQ", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.DeleteVhost(ctx, name); err != nil {
			t.Logf("delete vhost %s: %v", name, err)
		}
	})
	return u
}
