// Package workertest runs worker handlers the way the worker runtime does,
// against a fresh PostgreSQL database with the worker's schema, for the
// workers' own tests.
package workertest

import (
	"context"
	"fmt"
	"testing"

	json "github.com/goccy/go-json"
	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/pgmigrate"
	"github.com/sagaflow/sagaflow/saga/sagatest"
	"github.com/sagaflow/sagaflow/saga/worker"
)

// DB creates a fresh database with a worker's tables in schema (the
// runtime's inbox, then sets) and returns a pool whose search_path is that
// schema, and the database URL.
func DB(t testing.TB, schema string, sets ...pgmigrate.Set) (*pgxpool.Pool, string) {
	t.Helper()
	url := sagatest.NewDatabase(t)
	pool := sagatest.Pool(t, url, schema)
	if _, err := pgmigrate.Up(context.Background(), pool, append([]pgmigrate.Set{worker.Migrations}, sets...)...); err != nil {
		t.Fatalf("migrate %s: %v", schema, err)
	}
	return pool, url
}

// Command builds a command with a fresh message id; a string payload is
// sent verbatim, anything else is marshalled.
func Command(t testing.TB, typ string, payload any) worker.Command {
	t.Helper()
	raw, ok := payload.(string)
	if !ok {
		b, err := json.Marshal(payload)
		if err != nil {
			t.Fatal(err)
		}
		raw = string(b)
	}
	return worker.Command{Envelope: saga.Envelope{ID: uuid.NewString(), Type: typ, Payload: json.RawMessage(raw)}}
}

// InTx runs one command through a batch handler in its own transaction,
// committed when h returns no error and rolled back otherwise, as the
// runtime does. An invalid verdict comes back as its error.
func InTx(ctx context.Context, pool *pgxpool.Pool, h worker.BatchHandlerFunc, cmd worker.Command) (worker.Result, error) {
	vs, err := BatchInTx(ctx, pool, h, []worker.Command{cmd})
	if err != nil {
		return worker.Result{}, err
	}
	if vs[0].Invalid != nil {
		return worker.Result{}, vs[0].Invalid
	}
	return vs[0].Result, nil
}

// BatchInTx runs commands through a batch handler in one transaction, as
// the runtime hands it a batch, and checks it answered each of them.
func BatchInTx(ctx context.Context, pool *pgxpool.Pool, h worker.BatchHandlerFunc, cmds []worker.Command) ([]worker.Verdict, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(ctx)
	vs, err := h(ctx, tx, cmds)
	if err != nil {
		return nil, err
	}
	if len(vs) != len(cmds) {
		return nil, fmt.Errorf("%d verdicts for %d commands", len(vs), len(cmds))
	}
	return vs, tx.Commit(ctx)
}

// Run runs a handler in a transaction and fails the test on a Go error.
func Run(t testing.TB, pool *pgxpool.Pool, h worker.BatchHandlerFunc, typ string, payload any) worker.Result {
	t.Helper()
	res, err := InTx(context.Background(), pool, h, Command(t, typ, payload))
	if err != nil {
		t.Fatalf("%s: unexpected error: %v", typ, err)
	}
	return res
}

// RunBatch runs commands as one batch and fails the test on a Go error.
func RunBatch(t testing.TB, pool *pgxpool.Pool, h worker.BatchHandlerFunc, cmds ...worker.Command) []worker.Verdict {
	t.Helper()
	vs, err := BatchInTx(context.Background(), pool, h, cmds)
	if err != nil {
		t.Fatalf("batch of %d: unexpected error: %v", len(cmds), err)
	}
	return vs
}

// Verdict is the part of a Result a saga decides on.
type Verdict struct {
	Status saga.ReplyStatus
	Code   string
}

// OK is the verdict of a success.
var OK = Verdict{Status: saga.ReplyOK}

// Failed is the verdict of a business failure with code.
func Failed(code string) Verdict { return Verdict{Status: saga.ReplyFailed, Code: code} }

// Invalid is the verdict of a command refused as invalid.
var Invalid = Verdict{Code: worker.CodeInvalidCommand}

// Verdicts reduces a batch's answers to their verdicts (Invalid for the
// commands refused as invalid).
func Verdicts(vs []worker.Verdict) []Verdict {
	out := make([]Verdict, len(vs))
	for i, v := range vs {
		if v.Invalid != nil {
			out[i] = Invalid
			continue
		}
		out[i] = Verdict{Status: v.Status, Code: v.Code}
	}
	return out
}

// CheckVerdict compares a result's verdict with want.
func CheckVerdict(t testing.TB, what string, res worker.Result, want Verdict) {
	t.Helper()
	if diff := cmp.Diff(want, Verdict{res.Status, res.Code}); diff != "" {
		t.Errorf("%s verdict (-want +got):\n%s\nmessage: %q", what, diff, res.Message)
	}
}

// Payload decodes a result's payload.
func Payload[T any](t testing.TB, res worker.Result) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(res.Payload, &v); err != nil {
		t.Fatalf("decode payload %q: %v", res.Payload, err)
	}
	return v
}
