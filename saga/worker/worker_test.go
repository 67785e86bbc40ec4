package worker

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/sagatest"
)

// testDDL is a worker's schema: the inbox (as in schema.sql) and a table of
// effects the test handlers write to.
const testDDL = `
CREATE SCHEMA w;
CREATE TABLE w.inbox (
    message_id   text PRIMARY KEY,
    type         text NOT NULL,
    reply        bytea,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE w.effects (n int);
`

// newRuntime returns a runtime on a fresh database holding testDDL, and a
// pool on that database.
func newRuntime(t *testing.T, cfg Config) (*Runtime, *pgxpool.Pool) {
	t.Helper()
	url := sagatest.NewDatabase(t)
	sagatest.Exec(t, url, testDDL)
	pool := sagatest.Pool(t, url, "w")
	return New(cfg, pool, nil, zerolog.Nop()), pool
}

// effectHandler counts its runs and inserts one effect row per run, then
// answers with result (or err).
type effectHandler struct {
	runs   atomic.Int64
	result func() (Result, error)
}

func (e *effectHandler) handle(ctx context.Context, tx pgx.Tx, cmd Command) (Result, error) {
	n := e.runs.Add(1)
	if _, err := tx.Exec(ctx, `INSERT INTO effects (n) VALUES ($1)`, n); err != nil {
		return Result{}, err
	}
	return e.result()
}

func okHandler(t *testing.T) *effectHandler {
	t.Helper()
	res, err := OK(map[string]any{"tracking": "trk_1", "amount_cents": 1234})
	if err != nil {
		t.Fatal(err)
	}
	return &effectHandler{result: func() (Result, error) { return res, nil }}
}

func cmd(id string) Command {
	return Command{Envelope: saga.Envelope{ID: id, Type: "test.effect", Payload: json.RawMessage(`{"x":1}`)}}
}

func count(t *testing.T, pool *pgxpool.Pool, table string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM `+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// checkCounts checks the effect rows, inbox rows and handler runs.
func checkCounts(t *testing.T, pool *pgxpool.Pool, h *effectHandler, effects, inbox, runs int) {
	t.Helper()
	type counts struct{ Effects, Inbox, Runs int }
	want := counts{effects, inbox, runs}
	got := counts{count(t, pool, "effects"), count(t, pool, "inbox"), int(h.runs.Load())}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
}

func TestOnceRedeliveryReturnsStoredResultWithoutSecondEffect(t *testing.T) {
	t.Parallel()
	rt, pool := newRuntime(t, Config{Queue: "q"})
	h := okHandler(t)
	ctx := context.Background()

	first, err := rt.once(ctx, h.handle, cmd("m1"))
	if err != nil {
		t.Fatal(err)
	}
	want := Result{Status: saga.ReplyOK, Payload: json.RawMessage(`{"amount_cents":1234,"tracking":"trk_1"}`)}
	if diff := cmp.Diff(want, first); diff != "" {
		t.Errorf("first result (-want +got):\n%s", diff)
	}

	second, err := rt.once(ctx, h.handle, cmd("m1"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(first, second); diff != "" {
		t.Errorf("redelivered result (-first +second):\n%s", diff)
	}
	checkCounts(t, pool, h, 1, 1, 1)

	// The inbox row records the type and the reply as sent.
	var typ string
	var stored []byte
	if err := pool.QueryRow(ctx, `SELECT type, reply FROM inbox WHERE message_id = 'm1'`).Scan(&typ, &stored); err != nil {
		t.Fatal(err)
	}
	var storedRes Result
	if err := json.Unmarshal(stored, &storedRes); err != nil {
		t.Fatalf("stored reply %q: %v", stored, err)
	}
	if diff := cmp.Diff([]any{"test.effect", first}, []any{typ, storedRes}); diff != "" {
		t.Errorf("inbox row (-want +got):\n%s", diff)
	}

	// Another message id is another command: it runs.
	if _, err := rt.once(ctx, h.handle, cmd("m2")); err != nil {
		t.Fatal(err)
	}
	checkCounts(t, pool, h, 2, 2, 2)
}

func TestOnceConcurrentDeliveriesOfOneMessageHaveOneEffect(t *testing.T) {
	t.Parallel()
	rt, pool := newRuntime(t, Config{Queue: "q"})
	h := okHandler(t)

	const n = 20
	results := make([]Result, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			results[i], errs[i] = rt.once(context.Background(), h.handle, cmd("m1"))
		})
	}
	close(start)
	wg.Wait()

	want, _ := h.result()
	for i := range n {
		if errs[i] != nil {
			t.Errorf("delivery %d: %v", i, errs[i])
			continue
		}
		if diff := cmp.Diff(want, results[i]); diff != "" {
			t.Errorf("delivery %d result (-want +got):\n%s", i, diff)
		}
	}
	checkCounts(t, pool, h, 1, 1, 1)
}

// A Go error is transient: nothing is recorded, so the retry runs the
// effect.
func TestOnceHandlerErrorRollsBackEffectAndInbox(t *testing.T) {
	t.Parallel()
	rt, pool := newRuntime(t, Config{Queue: "q"})
	errBoom := errors.New("boom")
	ok, _ := OK(map[string]string{"done": "yes"})
	h := &effectHandler{}
	h.result = func() (Result, error) {
		if h.runs.Load() == 1 {
			return Result{}, errBoom
		}
		return ok, nil
	}
	ctx := context.Background()

	res, err := rt.once(ctx, h.handle, cmd("m1"))
	if !errors.Is(err, errBoom) {
		t.Fatalf("once = %+v, %v; want error %v", res, err, errBoom)
	}
	checkCounts(t, pool, h, 0, 0, 1)

	res, err = rt.once(ctx, h.handle, cmd("m1"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ok, res); diff != "" {
		t.Errorf("retry result (-want +got):\n%s", diff)
	}
	checkCounts(t, pool, h, 1, 1, 2)
}

// An invalid command is not recorded either: it is answered, not stored.
func TestOnceInvalidErrorRecordsNothing(t *testing.T) {
	t.Parallel()
	rt, pool := newRuntime(t, Config{Queue: "q"})
	h := &effectHandler{result: func() (Result, error) { return Result{}, Invalid(errors.New("bad payload")) }}

	_, err := rt.once(context.Background(), h.handle, cmd("m1"))
	var inv *InvalidError
	if !errors.As(err, &inv) {
		t.Fatalf("once error = %v; want an *InvalidError", err)
	}
	checkCounts(t, pool, h, 0, 0, 1)
}

// A business failure is a reply like any other: stored with its effect and
// answered again on redelivery without a second run.
func TestOnceStoresBusinessFailure(t *testing.T) {
	t.Parallel()
	rt, pool := newRuntime(t, Config{Queue: "q"})
	h := &effectHandler{result: func() (Result, error) { return Fail("card_declined", "declined for %s", "o1") }}
	ctx := context.Background()

	first, err := rt.once(ctx, h.handle, cmd("m1"))
	if err != nil {
		t.Fatal(err)
	}
	want := Result{Status: saga.ReplyFailed, Code: "card_declined", Message: "declined for o1"}
	if diff := cmp.Diff(want, first); diff != "" {
		t.Errorf("first result (-want +got):\n%s", diff)
	}

	second, err := rt.once(ctx, h.handle, cmd("m1"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, second); diff != "" {
		t.Errorf("redelivered result (-want +got):\n%s", diff)
	}
	checkCounts(t, pool, h, 1, 1, 1)
}

func TestOnceSimulatedFailureHasNoEffect(t *testing.T) {
	t.Parallel()
	rt, pool := newRuntime(t, Config{Queue: "q", Simulate: Simulation{FailureRate: 1}})
	h := okHandler(t)

	for range 3 {
		if _, err := rt.once(context.Background(), h.handle, cmd("m1")); !errors.Is(err, errSimulated) {
			t.Fatalf("once error = %v; want %v", err, errSimulated)
		}
	}
	checkCounts(t, pool, h, 0, 0, 0)
}

// execute retries transient failures inline, then answers retry.
func TestExecuteRetriesTransientFailures(t *testing.T) {
	t.Parallel()
	errBoom := errors.New("boom")
	ok, _ := OK(map[string]int{"n": 1})
	tests := []struct {
		name      string
		failures  int64 // runs that fail before one succeeds
		want      Result
		effects   int
		inboxRows int
		runs      int
	}{
		{"recovers within the retries", 2, ok, 1, 1, 3},
		{"out of retries", 3, Result{Status: saga.ReplyRetry, Code: "transient", Message: "boom"}, 0, 0, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rt, pool := newRuntime(t, Config{Queue: "q", Retries: 2, RetryBackoff: time.Nanosecond})
			h := &effectHandler{}
			h.result = func() (Result, error) {
				if h.runs.Load() <= tt.failures {
					return Result{}, errBoom
				}
				return ok, nil
			}

			res, err := rt.execute(context.Background(), zerolog.Nop(), h.handle, cmd("m1"))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, res); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
			checkCounts(t, pool, h, tt.effects, tt.inboxRows, tt.runs)
		})
	}
}
