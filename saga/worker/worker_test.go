package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/pgmigrate"
	"github.com/sagaflow/sagaflow/saga/sagatest"
)

// newRuntime returns a runtime on a fresh database whose schema w holds
// the inbox (the runtime's migrations) and a table of effects the test
// handlers write to, and a pool on that database.
func newRuntime(t *testing.T, cfg Config) (*Runtime, *pgxpool.Pool) {
	t.Helper()
	url := sagatest.NewDatabase(t)
	pool := sagatest.Pool(t, url, "w")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := pgmigrate.Up(ctx, pool, Migrations); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	sagatest.Exec(t, url, `CREATE TABLE w.effects (n int)`)
	return New(cfg, pool, nil, zerolog.Nop()), pool
}

// effectHandler counts its runs and inserts one effect row per run, then
// answers with result (or err).
type effectHandler struct {
	runs   atomic.Int64
	result func() (Result, error)
}

func (e *effectHandler) handle(ctx context.Context, tx Tx, cmd Command) (Result, error) {
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

	first, err := rt.once(ctx, &handler{fn: perCommand(h.handle)}, cmd("m1"))
	if err != nil {
		t.Fatal(err)
	}
	want := Result{Status: saga.ReplyOK, Payload: json.RawMessage(`{"amount_cents":1234,"tracking":"trk_1"}`)}
	if diff := cmp.Diff(want, first); diff != "" {
		t.Errorf("first result (-want +got):\n%s", diff)
	}

	second, err := rt.once(ctx, &handler{fn: perCommand(h.handle)}, cmd("m1"))
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
	if _, err := rt.once(ctx, &handler{fn: perCommand(h.handle)}, cmd("m2")); err != nil {
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
			results[i], errs[i] = rt.once(context.Background(), &handler{fn: perCommand(h.handle)}, cmd("m1"))
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

	res, err := rt.once(ctx, &handler{fn: perCommand(h.handle)}, cmd("m1"))
	if !errors.Is(err, errBoom) {
		t.Fatalf("once = %+v, %v; want error %v", res, err, errBoom)
	}
	checkCounts(t, pool, h, 0, 0, 1)

	res, err = rt.once(ctx, &handler{fn: perCommand(h.handle)}, cmd("m1"))
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

	_, err := rt.once(context.Background(), &handler{fn: perCommand(h.handle)}, cmd("m1"))
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

	first, err := rt.once(ctx, &handler{fn: perCommand(h.handle)}, cmd("m1"))
	if err != nil {
		t.Fatal(err)
	}
	want := Result{Status: saga.ReplyFailed, Code: "card_declined", Message: "declined for o1"}
	if diff := cmp.Diff(want, first); diff != "" {
		t.Errorf("first result (-want +got):\n%s", diff)
	}

	second, err := rt.once(ctx, &handler{fn: perCommand(h.handle)}, cmd("m1"))
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
		if _, err := rt.once(context.Background(), &handler{fn: perCommand(h.handle)}, cmd("m1")); !errors.Is(err, errSimulated) {
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
		// The error stays in the log: a reply carries a code and a sentence.
		{"out of retries", 3, Result{Status: saga.ReplyRetry, Code: "pay_unavailable", Message: "the pay service failed temporarily"}, 0, 0, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rt, pool := newRuntime(t, Config{Queue: "pay.commands", Retries: 2, RetryBackoff: time.Nanosecond})
			h := &effectHandler{}
			h.result = func() (Result, error) {
				if h.runs.Load() <= tt.failures {
					return Result{}, errBoom
				}
				return ok, nil
			}

			res, err := rt.execute(context.Background(), zerolog.Nop(), &handler{fn: perCommand(h.handle)}, cmd("m1"))
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

// --- batches ---

// batchRecorder is a batch handler that records the commands of each call
// and inserts one effect row per command.
type batchRecorder struct {
	mu    sync.Mutex
	calls [][]string // message ids, per call
	fail  error
}

func (b *batchRecorder) handle(ctx context.Context, tx Tx, cmds []Command) ([]Verdict, error) {
	b.mu.Lock()
	ids := make([]string, len(cmds))
	for i, c := range cmds {
		ids[i] = c.ID
	}
	b.calls = append(b.calls, ids)
	b.mu.Unlock()
	out := make([]Verdict, len(cmds))
	for i, c := range cmds {
		if _, err := tx.Exec(ctx, `INSERT INTO effects (n) VALUES ($1)`, i); err != nil {
			return nil, err
		}
		if string(c.Payload) == `"invalid"` {
			out[i].Invalid = Invalid(errors.New("bad payload"))
			continue
		}
		res, err := OK(map[string]string{"id": c.ID})
		if err != nil {
			return nil, err
		}
		out[i].Result = res
	}
	if b.fail != nil {
		return nil, b.fail
	}
	return out, nil
}

func (b *batchRecorder) callLog() [][]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([][]string(nil), b.calls...)
}

// batchJobs builds the jobs of a batch: each spec is "saga/message-id/type"
// and types map to handlers.
func batchJobs(handlers map[string]*handler, specs ...string) []*job {
	jobs := make([]*job, len(specs))
	for i, spec := range specs {
		var sagaID, id, typ string
		parts := strings.SplitN(spec, "/", 3)
		sagaID, id, typ = parts[0], parts[1], parts[2]
		payload := json.RawMessage(`{"x":1}`)
		if strings.HasPrefix(id, "bad") {
			payload = json.RawMessage(`"invalid"`)
		}
		jobs[i] = &job{
			ctx: context.Background(), handler: handlers[typ], log: zerolog.Nop(),
			cmd: Command{Envelope: saga.Envelope{ID: id, SagaID: sagaID, Type: typ, Payload: payload}},
		}
	}
	return jobs
}

func resultIDs(t *testing.T, jobs []*job) []string {
	t.Helper()
	out := make([]string, len(jobs))
	for i, j := range jobs {
		if j.invalid != nil {
			out[i] = "invalid"
			continue
		}
		var p map[string]string
		if err := json.Unmarshal(j.res.Payload, &p); err != nil {
			t.Fatalf("job %s: result %+v: %v", j.cmd.ID, j.res, err)
		}
		out[i] = p["id"]
	}
	return out
}

// A batch hands each handler all of its commands at once, in delivery
// order, commits their effects with their inbox records, and answers each.
func TestBatchGroupsCommandsByHandlerInOneTransaction(t *testing.T) {
	t.Parallel()
	rt, pool := newRuntime(t, Config{Queue: "q"})
	a, b := &batchRecorder{}, &batchRecorder{}
	hs := map[string]*handler{"t.a": {fn: a.handle}, "t.b": {fn: b.handle}}
	jobs := batchJobs(hs, "s1/m1/t.a", "s2/m2/t.b", "s3/m3/t.a", "s4/m4/t.b", "s5/m5/t.a")

	if err := rt.tryBatch(context.Background(), jobs); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([][]string{{"m1", "m3", "m5"}}, a.callLog()); diff != "" {
		t.Errorf("handler a calls (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([][]string{{"m2", "m4"}}, b.callLog()); diff != "" {
		t.Errorf("handler b calls (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"m1", "m2", "m3", "m4", "m5"}, resultIDs(t, jobs)); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
	if n, m := count(t, pool, "effects"), count(t, pool, "inbox WHERE reply IS NOT NULL"); n != 5 || m != 5 {
		t.Errorf("effects %d, inbox rows with a reply %d; want 5 and 5", n, m)
	}
}

// Commands seen before get their stored reply and a copy within the batch
// the reply of the first: neither reaches a handler.
func TestBatchAnswersStoredAndDuplicateCommandsWithoutRunningThem(t *testing.T) {
	t.Parallel()
	rt, pool := newRuntime(t, Config{Queue: "q"})
	rec := &batchRecorder{}
	hs := map[string]*handler{"t.a": {fn: rec.handle}}
	ctx := context.Background()
	if err := rt.tryBatch(ctx, batchJobs(hs, "s1/m1/t.a")); err != nil {
		t.Fatal(err)
	}

	jobs := batchJobs(hs, "s1/m1/t.a", "s2/m2/t.a", "s2/m2/t.a", "s3/m3/t.a")
	if err := rt.tryBatch(ctx, jobs); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([][]string{{"m1"}, {"m2", "m3"}}, rec.callLog()); diff != "" {
		t.Errorf("handler calls (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"m1", "m2", "m2", "m3"}, resultIDs(t, jobs)); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
	if n := count(t, pool, "effects"); n != 3 {
		t.Errorf("effects = %d, want 3 (m1, m2, m3 once each)", n)
	}
}

// Two commands of one saga never reach a handler in the same call: the
// second waits for the next round, after everything of the first.
func TestBatchKeepsEachSagasCommandsInOrder(t *testing.T) {
	t.Parallel()
	rt, _ := newRuntime(t, Config{Queue: "q"})
	a, b := &batchRecorder{}, &batchRecorder{}
	hs := map[string]*handler{"t.a": {fn: a.handle}, "t.b": {fn: b.handle}}
	jobs := batchJobs(hs, "s1/s1-a/t.a", "s2/s2-b/t.b", "s1/s1-b/t.b", "s3/s3-a/t.a", "s1/s1-a2/t.a")

	if err := rt.tryBatch(context.Background(), jobs); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([][]string{{"s1-a", "s3-a"}, {"s1-a2"}}, a.callLog()); diff != "" {
		t.Errorf("handler a calls (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([][]string{{"s2-b"}, {"s1-b"}}, b.callLog()); diff != "" {
		t.Errorf("handler b calls (-want +got):\n%s", diff)
	}
}

// An invalid command is answered but leaves no inbox record; the others of
// its batch are recorded.
func TestBatchInvalidCommandRecordsNothing(t *testing.T) {
	t.Parallel()
	rt, pool := newRuntime(t, Config{Queue: "q"})
	rec := &batchRecorder{}
	hs := map[string]*handler{"t.a": {fn: rec.handle}}
	jobs := batchJobs(hs, "s1/m1/t.a", "s2/bad2/t.a", "s3/m3/t.a")

	if err := rt.tryBatch(context.Background(), jobs); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"m1", "invalid", "m3"}, resultIDs(t, jobs)); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
	var ids []string
	rows, err := pool.Query(context.Background(), `SELECT message_id FROM inbox ORDER BY message_id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if diff := cmp.Diff([]string{"m1", "m3"}, ids); diff != "" {
		t.Errorf("inbox (-want +got):\n%s", diff)
	}
}

// A failing batch leaves nothing behind; executeBatch then runs each
// command alone.
func TestBatchFailureRollsBackAndRunsCommandsAlone(t *testing.T) {
	t.Parallel()
	rt, pool := newRuntime(t, Config{Queue: "q", Retries: -1})
	rec := &batchRecorder{fail: errors.New("boom")}
	hs := map[string]*handler{"t.a": {fn: rec.handle}}
	jobs := batchJobs(hs, "s1/m1/t.a", "s2/m2/t.a")

	if err := rt.tryBatch(context.Background(), jobs); err == nil || err.Error() != "boom" {
		t.Fatalf("tryBatch error = %v, want boom", err)
	}
	if n, m := count(t, pool, "effects"), count(t, pool, "inbox"); n != 0 || m != 0 {
		t.Fatalf("after a failed batch: effects %d, inbox %d; want none", n, m)
	}
	// The connection went back to the pool outside the failed transaction.
	if _, err := pool.Exec(context.Background(), `INSERT INTO effects (n) VALUES (99)`); err != nil {
		t.Fatal(err)
	}

	// Failing as a batch, succeeding alone: executeBatch answers both.
	jobs = batchJobs(hs, "s1/m1/t.a", "s2/m2/t.a")
	hs["t.a"].fn = func(ctx context.Context, tx Tx, cmds []Command) ([]Verdict, error) {
		if len(cmds) > 1 {
			return nil, errors.New("boom")
		}
		rec.fail = nil
		return rec.handle(ctx, tx, cmds)
	}
	rt.executeBatch(context.Background(), jobs)
	if diff := cmp.Diff([]string{"m1", "m2"}, resultIDs(t, jobs)); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
	if n := count(t, pool, "inbox"); n != 2 {
		t.Errorf("inbox rows = %d, want 2", n)
	}
}

// Copies of the same commands in batches running at once (redeliveries to
// competing consumers) take effect once each: a batch that loses the race
// rolls back and its commands, alone, find the stored replies.
func TestBatchesRacingOnTheSameCommandsHaveOneEffectEach(t *testing.T) {
	t.Parallel()
	rt, pool := newRuntime(t, Config{Queue: "q"})
	rec := &batchRecorder{}
	hs := map[string]*handler{"t.a": {fn: rec.handle}}

	const racers = 8
	batches := make([][]*job, racers)
	for i := range batches {
		batches[i] = batchJobs(hs, "s1/m1/t.a", "s2/m2/t.a", "s3/m3/t.a", "s4/m4/t.a")
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range batches {
		wg.Go(func() {
			<-start
			rt.executeBatch(context.Background(), batches[i])
		})
	}
	close(start)
	wg.Wait()

	for i, jobs := range batches {
		if diff := cmp.Diff([]string{"m1", "m2", "m3", "m4"}, resultIDs(t, jobs)); diff != "" {
			t.Errorf("batch %d results (-want +got):\n%s", i, diff)
		}
	}
	if n, m := count(t, pool, "effects"), count(t, pool, "inbox"); n != 4 || m != 4 {
		t.Errorf("effects %d, inbox %d; want 4 and 4 (one per command)", n, m)
	}
}

// TestPruneDeletesOnlyOldInboxEntries: entries processed before the
// cutoff go, in batches; newer ones (whose commands may still be re-sent)
// stay. The inbox grew without bound before.
func TestPruneDeletesOnlyOldInboxEntries(t *testing.T) {
	t.Parallel()
	rt, pool := newRuntime(t, Config{Queue: "q"})
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO inbox (message_id, type, processed_at)
		SELECT 'old-' || g, 't', now() - interval '8 days' FROM generate_series(1, 12000) g`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO inbox (message_id, type) VALUES ('new-1', 't'), ('new-2', 't')`); err != nil {
		t.Fatal(err)
	}
	n, err := rt.Prune(ctx, time.Now().Add(-rt.cfg.InboxRetention))
	if err != nil || n != 12000 {
		t.Fatalf("Prune = %d, %v; want the 12000 old entries", n, err)
	}
	var left []string
	rows, _ := pool.Query(ctx, `SELECT message_id FROM inbox ORDER BY 1`)
	for rows.Next() {
		var id string
		_ = rows.Scan(&id)
		left = append(left, id)
	}
	if fmt.Sprint(left) != "[new-1 new-2]" {
		t.Errorf("left in the inbox: %v, want the two new entries", left)
	}
}

// A command's signals are kept with its reply: the redelivered command
// gets them back from the inbox, to publish again, without running.
func TestSignalsAreStoredWithTheReply(t *testing.T) {
	t.Parallel()
	rt, _ := newRuntime(t, Config{Queue: "q"})
	var runs atomic.Int32
	sig := saga.Signal{Name: "shipping.delivered", Key: "delivered:o-1", Payload: json.RawMessage(`{"delivered_at":"noon"}`)}
	hs := map[string]*handler{"t.a": {fn: perCommand(func(context.Context, Tx, Command) (Result, error) {
		runs.Add(1)
		res, err := OK(nil)
		res.Signals = []saga.Signal{sig}
		return res, err
	})}}
	ctx := context.Background()
	first := batchJobs(hs, "s1/m1/t.a")
	if err := rt.tryBatch(ctx, first); err != nil {
		t.Fatal(err)
	}
	again := batchJobs(hs, "s1/m1/t.a")
	if err := rt.tryBatch(ctx, again); err != nil {
		t.Fatal(err)
	}
	if runs.Load() != 1 {
		t.Errorf("handler ran %d times, want once", runs.Load())
	}
	for name, j := range map[string]*job{"first": first[0], "redelivered": again[0]} {
		if diff := cmp.Diff([]saga.Signal{sig}, j.res.Signals); diff != "" {
			t.Errorf("%s: signals (-want +got):\n%s", name, diff)
		}
	}
}
