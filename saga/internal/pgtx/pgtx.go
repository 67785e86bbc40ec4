// Package pgtx holds what the engine's users of PostgreSQL share: the store
// and the worker runtime send their transactions as pipelines that end
// with COMMIT.
package pgtx

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrRolledBack is a COMMIT that ended the transaction without committing
// it: COMMIT of an aborted transaction answers ROLLBACK, without an error.
var ErrRolledBack = errors.New("transaction rolled back")

// SendCommit sends b, whose last statement is COMMIT, reads every result
// and checks that the transaction committed. Any error but ErrRolledBack
// may leave the transaction open.
func SendCommit(ctx context.Context, conn *pgxpool.Conn, b *pgx.Batch) error {
	br := conn.SendBatch(ctx, b)
	var tag pgconn.CommandTag
	var err error
	for range b.Len() {
		if tag, err = br.Exec(); err != nil {
			break
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err == nil && tag.String() != "COMMIT" {
		err = ErrRolledBack
	}
	return err
}

// Transient reports whether err says PostgreSQL is away or busy rather than
// that the statement can never succeed: the connection failed or closed,
// the server is starting or shutting down, out of resources, or the
// transaction lost a serialization race or a deadlock. Such work is
// retried later; any other error is a fault of the data (a value the
// column refuses) or of the code.
func Transient(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		c := pgErr.Code
		return strings.HasPrefix(c, "08") || strings.HasPrefix(c, "53") || strings.HasPrefix(c, "57P") ||
			c == "40001" || c == "40P01" || c == "55P03" // lock_not_available
	}
	var connErr *pgconn.ConnectError
	var netErr net.Error
	return errors.As(err, &connErr) || errors.As(err, &netErr) || pgconn.SafeToRetry(err) ||
		pgconn.Timeout(err) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, ErrRolledBack) || strings.Contains(err.Error(), "conn closed") || strings.Contains(err.Error(), "closed pool")
}
