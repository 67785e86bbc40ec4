// Package pgtx holds what the engine's users of PostgreSQL share: the store
// and the worker runtime send their transactions as pipelines that end
// with COMMIT.
package pgtx

import (
	"context"
	"errors"

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
