// Command createdb creates the database named by DATABASE_URL when it is
// missing, owned by the URL's role (used by `make run`); with -fresh it
// drops it first (`make bench`); with -check it only tells whether the role
// can log in. It connects to the server's "postgres" database to do so.
// DATABASE_URL defaults to the value of the repository's .env.
//
// Exit codes: 0 done, 3 the server refused the login (wrong password, no
// such role), 1 anything else.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sagaflow/sagaflow"
)

func main() {
	fresh := flag.Bool("fresh", false, "drop the database first")
	check := flag.Bool("check", false, "only check that the role can log in")
	flag.Parse()
	raw := os.Getenv("DATABASE_URL")
	if raw == "" {
		raw = sagaflow.Default("DATABASE_URL")
	}
	err := run(raw, *fresh, *check)
	if err == nil {
		return
	}
	fmt.Fprintf(os.Stderr, "createdb: %v\n", err)
	var pg *pgconn.PgError
	switch {
	case errors.As(err, &pg) && strings.HasPrefix(pg.Code, "28"): // invalid_authorization_specification, invalid_password
		os.Exit(3)
	}
	os.Exit(1)
}

func run(raw string, fresh, check bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	name := strings.TrimPrefix(u.Path, "/")
	if name == "" {
		return fmt.Errorf("DATABASE_URL names no database")
	}
	admin := *u
	admin.Path = "/postgres"
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin.String())
	if err != nil {
		return fmt.Errorf("log in to %s: %w", admin.Redacted(), err)
	}
	defer conn.Close(ctx)
	if check {
		return nil
	}
	if fresh {
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			return err
		}
	}
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return err
	}
	if !exists {
		// CREATE DATABASE takes no parameters: the name is quoted as an identifier.
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "createdb: created database %s\n", name)
	}
	// Each service creates its own schema in it at start.
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT has_database_privilege(current_user, $1, 'CREATE')`, name).Scan(&ok); err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("role %s may not create schemas in database %s (it belongs to another role): "+
			"drop the database or grant it, e.g. ALTER DATABASE %s OWNER TO %s",
			u.User.Username(), name, pgx.Identifier{name}.Sanitize(), pgx.Identifier{u.User.Username()}.Sanitize())
	}
	return nil
}
