package pgstore_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/pgmigrate"
	"github.com/sagaflow/sagaflow/saga/pgstore"
	"github.com/sagaflow/sagaflow/saga/sagatest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	os.Exit(sagatest.CheckedRun(code))
}

// newPool returns a pool on a fresh database holding the store's tables
// (its migrations) in schema orchestrator.
func newPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool := sagatest.Pool(t, sagatest.NewDatabase(t), "orchestrator")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := pgmigrate.Up(ctx, pool, pgstore.Migrations); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return pool
}

func newStore(t testing.TB, cfg pgstore.Config) (*pgstore.Store, *pgxpool.Pool) {
	t.Helper()
	pool := newPool(t)
	return pgstore.New(pool, cfg), pool
}

func testContext(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// tripDefinition is a small saga: two compensatable steps, then a
// retriable one.
// dueClaim is the timer's claim of trip sagas due at now.
func dueClaim(now time.Time, limit int) saga.Claim {
	return saga.Claim{Now: now, Limit: limit, Definitions: []string{"trip"}}
}

func tripDefinition(t testing.TB) *saga.Definition {
	t.Helper()
	def := &saga.Definition{
		Name: "trip",
		Steps: []saga.Step{
			{
				Name: "book_hotel", State: "booking_hotel", Command: "hotel.book", Kind: saga.Compensatable,
				Compensation:   &saga.Compensation{Name: "cancel_hotel", Command: "hotel.cancel", Event: "hotel.cancelled"},
				SucceededEvent: "hotel.booked", FailedEvent: "hotel.failed",
			},
			{
				Name: "charge_card", State: "charging_card", Command: "card.charge", Kind: saga.Compensatable,
				Compensation:   &saga.Compensation{Name: "refund_card", Command: "card.refund"},
				SucceededEvent: "card.charged",
			},
			{Name: "send_ticket", State: "sending_ticket", Command: "ticket.send", Kind: saga.Retriable},
		},
		Retry: saga.Retry{Timeout: time.Minute, RetriableAttempts: 1 << 20},
	}
	if err := def.Validate(); err != nil {
		t.Fatal(err)
	}
	return def
}

// now is the test's wall time, at the store's precision.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// commandMessages renders a decision's commands as fake outbox messages,
// one per command.
func commandMessages(d saga.Decision, at time.Time) []saga.Message {
	msgs := make([]saga.Message, 0, len(d.Commands))
	for _, c := range d.Commands {
		msgs = append(msgs, saga.Message{
			Kind: saga.MessageCommand, MessageID: c.MessageID,
			CorrelationID: c.MessageID, Type: c.Type, Priority: c.Priority,
			TTL: c.Deadline.Sub(at), Headers: map[string]string{"x-step": c.Step}, Body: c.Payload,
		})
	}
	return msgs
}

// transition is the TransitionFunc of the tests: def.Decide at a fixed
// time, one message per command.
func transition(def *saga.Definition, at time.Time) saga.TransitionFunc {
	return func(in saga.Instance, inp saga.Input) (saga.Decision, []saga.Message, error) {
		d, err := def.Decide(in, inp, at)
		if err != nil || !d.Changed {
			return d, nil, err
		}
		return d, commandMessages(d, at), nil
	}
}

// newSaga returns a pending saga with a UUIDv7 id, given a deadline of
// startBy so that the timer queries see it.
func newSaga(t testing.TB, def *saga.Definition, created, startBy time.Time) saga.Instance {
	t.Helper()
	id, err := uuid.NewV7()
	if err != nil {
		t.Fatal(err)
	}
	data := json.RawMessage(fmt.Sprintf(`{"customer": "c-%s", "amount_cents": 1250}`, id.String()[:8]))
	in, _ := def.New(id, data, 3, created)
	in.Deadline = startBy.UTC().Truncate(time.Microsecond)
	return in
}

// create stores sagas without messages.
func create(t testing.TB, s *pgstore.Store, ins ...saga.Instance) {
	t.Helper()
	ctx := testContext(t)
	for _, in := range ins {
		if _, created, _, err := s.Create(ctx, saga.NewSaga{Instance: in}); err != nil || !created {
			t.Fatalf("Create(%s) = created %v, %v; want created", in.ID, created, err)
		}
	}
}

// decide applies inputs in order with def.Decide, as the store should.
func decide(t testing.TB, def *saga.Definition, in saga.Instance, at time.Time, inputs ...saga.Input) (saga.Instance, []saga.Decision) {
	t.Helper()
	var ds []saga.Decision
	for _, inp := range inputs {
		d, err := def.Decide(in, inp, at)
		if err != nil {
			t.Fatalf("Decide(%s, %v): %v", in.ID, inp.Kind, err)
		}
		ds = append(ds, d)
		in = d.Instance
	}
	return in, ds
}

func okReply(in saga.Instance, step string) *saga.Reply {
	return &saga.Reply{CorrelationID: saga.MessageID(in.ID, step), Status: saga.ReplyOK, Payload: json.RawMessage(`{"ref": "` + step + `"}`)}
}

// jsonEqual compares JSON by meaning, whatever the spacing and key order.
var jsonEqual = cmp.FilterValues(func(a, b json.RawMessage) bool {
	return len(a) > 0 && len(b) > 0
}, cmpopts.AcyclicTransformer("json", func(r json.RawMessage) any {
	var v any
	if err := json.Unmarshal(r, &v); err != nil {
		return "invalid JSON: " + string(r)
	}
	return v
}))

// bodyEqual compares message bodies (bytea) byte for byte, as strings for
// readable diffs.
var bodyEqual = cmp.FilterPath(func(p cmp.Path) bool {
	sf, ok := p.Last().(cmp.StructField)
	return ok && sf.Name() == "Body"
}, cmp.Transformer("string", func(b []byte) string { return string(b) }))

func instanceOpts() cmp.Options { return cmp.Options{jsonEqual} }

// assertUTC checks that every time of an instance is in UTC.
func assertUTC(t *testing.T, in saga.Instance) {
	t.Helper()
	check := func(name string, tm time.Time) {
		if tm.Location() != time.UTC {
			t.Errorf("%s %v: location %v, want UTC", name, tm, tm.Location())
		}
	}
	check("CreatedAt", in.CreatedAt)
	check("UpdatedAt", in.UpdatedAt)
	check("Deadline", in.Deadline)
	for i, r := range in.History {
		check(fmt.Sprintf("History[%d].StartedAt", i), r.StartedAt)
		if r.FinishedAt != nil {
			check(fmt.Sprintf("History[%d].FinishedAt", i), *r.FinishedAt)
		}
	}
}

func sortedIDs(outs []saga.Outcome) []uuid.UUID {
	ids := make([]uuid.UUID, 0, len(outs))
	for _, o := range outs {
		ids = append(ids, o.Instance.ID)
	}
	slices.SortFunc(ids, func(a, b uuid.UUID) int { return strings.Compare(a.String(), b.String()) })
	return ids
}

func sortUUIDs(ids []uuid.UUID) []uuid.UUID {
	ids = slices.Clone(ids)
	slices.SortFunc(ids, func(a, b uuid.UUID) int { return strings.Compare(a.String(), b.String()) })
	return ids
}

func TestCreateGetRoundTrip(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, pgstore.Config{})
	def := tripDefinition(t)
	t0 := now()
	cest := time.FixedZone("CEST", 2*60*60)

	pending := newSaga(t, def, t0, t0.Add(2*time.Second))

	// A saga with every field set, times in another zone, history with
	// a finished and a running record.
	full := newSaga(t, def, t0.Add(-time.Hour), t0)
	full, _ = decide(t, def, full, t0.Add(-50*time.Minute),
		saga.Input{Kind: saga.InputStart, SagaID: full.ID},
		saga.Input{Kind: saga.InputReply, SagaID: full.ID, Reply: okReply(full, "book_hotel")},
		saga.Input{Kind: saga.InputReply, SagaID: full.ID, Reply: &saga.Reply{
			CorrelationID: saga.MessageID(full.ID, "charge_card"), Status: saga.ReplyRetry, Code: "gateway_busy", Message: "try later",
		}},
	)
	full.StuckIn, full.Reason, full.StuckReason = saga.Compensating, "customer changed mind", "refund gateway down"
	full.TraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	full.Priority = 9
	full.CreatedAt = full.CreatedAt.In(cest)
	full.UpdatedAt = full.UpdatedAt.In(cest)
	full.Deadline = full.Deadline.In(cest)
	finished := full.History[0].FinishedAt.In(cest)
	full.History[0].FinishedAt = &finished
	full.History[1].StartedAt = full.History[1].StartedAt.In(cest)
	if !full.Waiting || full.Attempt != 1 || full.Seq == 0 || len(full.History) != 2 {
		t.Fatalf("test setup: want a waiting saga with history, got %+v", full)
	}

	// A terminal saga: no deadline.
	rejected := newSaga(t, def, t0, t0)
	rejected, _ = decide(t, def, rejected, t0,
		saga.Input{Kind: saga.InputStart, SagaID: rejected.ID},
		saga.Input{Kind: saga.InputReply, SagaID: rejected.ID, Reply: &saga.Reply{
			CorrelationID: saga.MessageID(rejected.ID, "book_hotel"), Status: saga.ReplyFailed, Code: "no_rooms",
		}},
	)
	if rejected.Phase != saga.Rejected || !rejected.Deadline.IsZero() {
		t.Fatalf("test setup: want a rejected saga without deadline, got %+v", rejected)
	}

	for _, tc := range []struct {
		name string
		in   saga.Instance
	}{
		{"pending", pending},
		{"every field set", full},
		{"terminal without deadline", rejected},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			in, created, msgs, err := s.Create(ctx, saga.NewSaga{Instance: tc.in})
			if err != nil || !created || len(msgs) != 0 {
				t.Fatalf("Create = created %v, %d messages, %v; want created, 0 messages", created, len(msgs), err)
			}
			if diff := cmp.Diff(tc.in, in, instanceOpts()); diff != "" {
				t.Errorf("Create returned another instance (-want +got):\n%s", diff)
			}
			got, err := s.Get(ctx, tc.in.ID)
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			// cmp compares times with Equal: same instant, any zone.
			if diff := cmp.Diff(tc.in, got, instanceOpts()); diff != "" {
				t.Errorf("Get (-want +got):\n%s", diff)
			}
			assertUTC(t, got)
		})
	}

	t.Run("unknown id", func(t *testing.T) {
		_, err := s.Get(testContext(t), uuid.New())
		if !errors.Is(err, saga.ErrNotFound) {
			t.Errorf("Get(unknown) error = %v, want saga.ErrNotFound", err)
		}
	})
}

func TestCreateIdempotencyKey(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, pgstore.Config{})
	ctx := testContext(t)
	def := tripDefinition(t)
	t0 := now()
	msg := func(in saga.Instance) []saga.Message {
		return []saga.Message{{Kind: saga.MessageEvent, Type: "trip.created", MessageID: in.ID.String(), Body: []byte(`{}`)}}
	}

	first := newSaga(t, def, t0, t0.Add(time.Second))
	got, created, staged, err := s.Create(ctx, saga.NewSaga{Instance: first, Key: "key-1", Fingerprint: "fp-a", Messages: msg(first)})
	if err != nil || !created || len(staged) != 1 {
		t.Fatalf("first Create = created %v, %d messages, %v; want created with 1 message", created, len(staged), err)
	}

	t.Run("same key, same fingerprint", func(t *testing.T) {
		second := newSaga(t, def, t0.Add(time.Minute), t0.Add(time.Minute))
		got2, created, staged, err := s.Create(ctx, saga.NewSaga{Instance: second, Key: "key-1", Fingerprint: "fp-a", Messages: msg(second)})
		if err != nil {
			t.Fatalf("Create: %v", err)
		}
		if created || len(staged) != 0 {
			t.Errorf("Create = created %v, %d messages; want created=false, no messages", created, len(staged))
		}
		if diff := cmp.Diff(got, got2, instanceOpts()); diff != "" {
			t.Errorf("Create returned another saga than the first (-want +got):\n%s", diff)
		}
		if _, err := s.Get(ctx, second.ID); !errors.Is(err, saga.ErrNotFound) {
			t.Errorf("Get(second id) error = %v, want saga.ErrNotFound: the duplicate must not be inserted", err)
		}
	})

	t.Run("same key, other fingerprint", func(t *testing.T) {
		third := newSaga(t, def, t0, t0)
		_, created, staged, err := s.Create(ctx, saga.NewSaga{Instance: third, Key: "key-1", Fingerprint: "fp-b", Messages: msg(third)})
		if !errors.Is(err, saga.ErrKeyReused) {
			t.Errorf("Create error = %v, want saga.ErrKeyReused", err)
		}
		if created || len(staged) != 0 {
			t.Errorf("Create = created %v, %d messages; want neither", created, len(staged))
		}
		if _, err := s.Get(ctx, third.ID); !errors.Is(err, saga.ErrNotFound) {
			t.Errorf("Get(third id) error = %v, want saga.ErrNotFound", err)
		}
	})

	t.Run("no key never conflicts", func(t *testing.T) {
		for range 2 {
			in := newSaga(t, def, t0, t0)
			if _, created, _, err := s.Create(ctx, saga.NewSaga{Instance: in, Fingerprint: "fp-a"}); err != nil || !created {
				t.Errorf("Create without key = created %v, %v; want created", created, err)
			}
		}
	})

	// Only the first saga's message was staged.
	if n, _, err := s.OutboxStats(ctx); err != nil || n != 1 {
		t.Errorf("OutboxStats count = %d, %v; want 1", n, err)
	}
}

func TestCreateIdempotencyKeyConcurrent(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, pgstore.Config{})
	ctx := testContext(t)
	def := tripDefinition(t)
	t0 := now()

	const n = 8
	type result struct {
		id      uuid.UUID
		created bool
		err     error
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		in := newSaga(t, def, t0, t0)
		wg.Go(func() {
			got, created, _, err := s.Create(ctx, saga.NewSaga{Instance: in, Key: "race", Fingerprint: "fp"})
			results[i] = result{got.ID, created, err}
		})
	}
	wg.Wait()
	var winners []uuid.UUID
	for _, r := range results {
		if r.err != nil {
			t.Fatalf("Create: %v", r.err)
		}
		if r.created {
			winners = append(winners, r.id)
		}
	}
	if len(winners) != 1 {
		t.Fatalf("%d concurrent Creates with one key created %d sagas, want 1", n, len(winners))
	}
	for i, r := range results {
		if r.id != winners[0] {
			t.Errorf("Create %d returned saga %s, want the winner %s", i, r.id, winners[0])
		}
	}
}

func TestOutboxLease(t *testing.T) {
	t.Parallel()
	const lease = 50 * time.Millisecond
	pool := newPool(t)
	// The writer leases what it stages for 50ms; the scanner, like another
	// orchestrator, leases what it claims for long enough that its second
	// claim finds nothing however slow the test runs.
	writer := pgstore.New(pool, pgstore.Config{OutboxLease: lease})
	scanner := pgstore.New(pool, pgstore.Config{OutboxLease: time.Hour})
	ctx := testContext(t)
	def := tripDefinition(t)
	t0 := now()

	messages := func(in saga.Instance) []saga.Message {
		return []saga.Message{
			{
				Kind: saga.MessageCommand, MessageID: in.ID.String() + ":book_hotel",
				CorrelationID: in.ID.String() + ":book_hotel", Type: "hotel.book",
				Priority: 7, TTL: 90 * time.Second, Headers: map[string]string{"traceparent": "00-abc-def-01", "x-a": "b"},
				Body: []byte(`{"v":1,"id":"x"}`),
			},
			{Kind: saga.MessageEvent, MessageID: "ev-1", CorrelationID: in.ID.String(), Type: "trip.created", Body: []byte("\x00binary\xff")},
			{Kind: saga.MessageEvent, Type: "trip.noted", MessageID: "ev-2", Body: []byte(`{}`)},
		}
	}

	// Staged under a long lease: nobody else may claim them.
	held := newSaga(t, def, t0, t0)
	if _, _, staged, err := scanner.Create(ctx, saga.NewSaga{Instance: held, Messages: messages(held)}); err != nil || len(staged) != 3 {
		t.Fatalf("Create = %d messages, %v; want 3", len(staged), err)
	}
	if got, err := scanner.ClaimOutbox(ctx, 100); err != nil || len(got) != 0 {
		t.Fatalf("ClaimOutbox right after Create = %d messages, %v; want none (leased to the writer)", len(got), err)
	}

	// Staged under the 50ms lease.
	start := time.Now()
	in := newSaga(t, def, t0, t0)
	want := messages(in)
	_, created, staged, err := writer.Create(ctx, saga.NewSaga{Instance: in, Messages: want})
	if err != nil || !created {
		t.Fatalf("Create = created %v, %v", created, err)
	}
	ignoreOutboxID := cmpopts.IgnoreFields(saga.Message{}, "OutboxID")
	if diff := cmp.Diff(want, staged, ignoreOutboxID, bodyEqual); diff != "" {
		t.Errorf("staged messages (-want +got):\n%s", diff)
	}
	// A transaction's messages share one outbox row.
	for _, m := range staged {
		if m.OutboxID == uuid.Nil || m.OutboxID != staged[0].OutboxID {
			t.Errorf("staged message %s has outbox id %s: want the transaction's row %s", m.MessageID, m.OutboxID, staged[0].OutboxID)
		}
	}

	// Claimable once the lease is over, and only then.
	var claimed []saga.Message
	deadline := time.Now().Add(10 * time.Second)
	for len(claimed) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("ClaimOutbox returned nothing %v after staging with a %v lease", time.Since(start), lease)
		}
		if claimed, err = scanner.ClaimOutbox(ctx, 100); err != nil {
			t.Fatalf("ClaimOutbox: %v", err)
		}
		if len(claimed) == 0 {
			time.Sleep(5 * time.Millisecond) // polling the lease's expiry
		}
	}
	if since := time.Since(start); since < lease {
		t.Errorf("ClaimOutbox returned the messages %v after staging: before their %v lease ended", since, lease)
	}
	if diff := cmp.Diff(staged, claimed, cmpopts.IgnoreFields(saga.Message{}, "Timestamp"), cmpopts.EquateEmpty(), bodyEqual); diff != "" {
		t.Errorf("ClaimOutbox (-want +got):\n%s", diff)
	}
	// Messages staged without a timestamp are given their staging time.
	for _, m := range claimed {
		if age := time.Since(m.Timestamp); age < 0 || age > time.Minute {
			t.Errorf("claimed message %s has timestamp %v (%v ago), want about its staging time", m.MessageID, m.Timestamp, age)
		}
	}
	// The claim renewed the lease: a second scan finds nothing.
	if again, err := scanner.ClaimOutbox(ctx, 100); err != nil || len(again) != 0 {
		t.Errorf("second ClaimOutbox = %d messages, %v; want none (lease renewed)", len(again), err)
	}

	n, oldest, err := scanner.OutboxStats(ctx)
	if err != nil {
		t.Fatalf("OutboxStats: %v", err)
	}
	if n != 6 {
		t.Errorf("OutboxStats count = %d, want 6", n)
	}
	if oldest < lease || oldest > time.Since(start)+time.Minute {
		t.Errorf("OutboxStats oldest = %v, want between %v and %v", oldest, lease, time.Since(start)+time.Minute)
	}

	var claimedIDs []uuid.UUID
	for _, m := range claimed {
		claimedIDs = append(claimedIDs, m.OutboxID)
	}
	if err := writer.DeleteOutbox(ctx, claimedIDs); err != nil {
		t.Fatalf("DeleteOutbox: %v", err)
	}
	if n, _, err := scanner.OutboxStats(ctx); err != nil || n != 3 {
		t.Errorf("OutboxStats count after DeleteOutbox = %d, %v; want 3 (only the held saga's)", n, err)
	}
	if err := writer.DeleteOutbox(ctx, nil); err != nil {
		t.Errorf("DeleteOutbox(nil) = %v, want nil", err)
	}
}

func TestClaimOutboxLimit(t *testing.T) {
	t.Parallel()
	pool := newPool(t)
	writer := pgstore.New(pool, pgstore.Config{OutboxLease: time.Millisecond})
	scanner := pgstore.New(pool, pgstore.Config{OutboxLease: time.Hour})
	ctx := testContext(t)
	def := tripDefinition(t)
	// Five transactions of two messages each: five outbox rows.
	for i := range 5 {
		in := newSaga(t, def, now(), now())
		msgs := []saga.Message{
			{Kind: saga.MessageEvent, Type: "k", MessageID: fmt.Sprintf("%d-a", i), Body: []byte("b")},
			{Kind: saga.MessageEvent, Type: "k", MessageID: fmt.Sprintf("%d-b", i), Body: []byte("b")},
		}
		if _, _, staged, err := writer.Create(ctx, saga.NewSaga{Instance: in, Messages: msgs}); err != nil || len(staged) != 2 {
			t.Fatalf("Create = %d messages, %v", len(staged), err)
		}
	}

	var got []string
	deadline := time.Now().Add(10 * time.Second)
	for _, limit := range []int{2, 2, 2} {
		var claimed []saga.Message
		for {
			var err error
			claimed, err = scanner.ClaimOutbox(ctx, limit)
			if err != nil {
				t.Fatal(err)
			}
			if len(claimed) > 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(2 * time.Millisecond) // polling the 1ms lease's expiry
		}
		rows := map[uuid.UUID]bool{}
		for _, m := range claimed {
			rows[m.OutboxID] = true
			got = append(got, m.MessageID)
		}
		if len(rows) > limit {
			t.Errorf("ClaimOutbox(%d) returned %d rows", limit, len(rows))
		}
	}
	want := []string{"0-a", "0-b", "1-a", "1-b", "2-a", "2-b", "3-a", "3-b", "4-a", "4-b"}
	slices.Sort(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("messages claimed over three ClaimOutbox(2) calls (-want +got):\n%s", diff)
	}
}

func TestApplyBatch(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, pgstore.Config{OutboxLease: time.Hour})
	ctx := testContext(t)
	def := tripDefinition(t)
	t0 := now()
	a, b, c := newSaga(t, def, t0, t0.Add(time.Hour)), newSaga(t, def, t0, t0.Add(time.Hour)), newSaga(t, def, t0, t0.Add(time.Hour))
	create(t, s, a, b, c)
	unknown := uuid.Must(uuid.NewV7())

	at := t0.Add(time.Second)
	inputs := []saga.Input{
		{Kind: saga.InputStart, SagaID: a.ID},
		{Kind: saga.InputStart, SagaID: b.ID},
		// Only applies after a's start, earlier in the batch.
		{Kind: saga.InputReply, SagaID: a.ID, Reply: okReply(a, "book_hotel")},
		{Kind: saga.InputStart, SagaID: unknown},
		{Kind: saga.InputStart, SagaID: c.ID},
		// A duplicate reply: no change.
		{Kind: saga.InputReply, SagaID: a.ID, Reply: okReply(a, "book_hotel")},
	}
	outs, staged, err := s.Apply(ctx, inputs, transition(def, at))
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}

	wantA, da := decide(t, def, a, at, inputs[0], inputs[2], inputs[5])
	wantB, db := decide(t, def, b, at, inputs[1])
	wantC, dc := decide(t, def, c, at, inputs[4])
	wantOuts := []saga.Outcome{
		{Decision: da[0]}, {Decision: db[0]}, {Decision: da[1]},
		{Err: saga.ErrNotFound}, {Decision: dc[0]}, {Decision: da[2]},
	}
	if da[2].Changed {
		t.Fatalf("test setup: the duplicate reply changed the saga")
	}
	if diff := cmp.Diff(wantOuts, outs, instanceOpts(), cmpopts.EquateErrors(), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("Apply outcomes (-want +got):\n%s", diff)
	}
	var wantMsgs []saga.Message
	for _, d := range []saga.Decision{da[0], db[0], da[1], dc[0]} {
		wantMsgs = append(wantMsgs, commandMessages(d, at)...)
	}
	if diff := cmp.Diff(wantMsgs, staged, cmpopts.IgnoreFields(saga.Message{}, "OutboxID"), bodyEqual); diff != "" {
		t.Errorf("Apply staged messages (-want +got):\n%s", diff)
	}
	for _, m := range staged {
		if m.OutboxID == uuid.Nil {
			t.Errorf("staged message %s has no outbox id", m.MessageID)
		}
	}
	for _, want := range []saga.Instance{wantA, wantB, wantC} {
		got, err := s.Get(ctx, want.ID)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		if diff := cmp.Diff(want, got, instanceOpts()); diff != "" {
			t.Errorf("saga %s after Apply (-want +got):\n%s", want.ID, diff)
		}
	}
	if wantA.Step != 1 || wantA.State != "charging_card" {
		t.Errorf("test setup: saga a should have advanced to charging_card, is %s", wantA.State)
	}
	if n, _, err := s.OutboxStats(ctx); err != nil || n != int64(len(wantMsgs)) {
		t.Errorf("OutboxStats count = %d, %v; want %d", n, err, len(wantMsgs))
	}
}

func TestApplyTransitionError(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, pgstore.Config{})
	ctx := testContext(t)
	def := tripDefinition(t)
	t0 := now()
	a, b, c := newSaga(t, def, t0, t0.Add(time.Hour)), newSaga(t, def, t0, t0.Add(time.Hour)), newSaga(t, def, t0, t0.Add(time.Hour))
	create(t, s, a, b, c)

	errBoom := errors.New("boom")
	ok := transition(def, t0)
	fn := func(in saga.Instance, inp saga.Input) (saga.Decision, []saga.Message, error) {
		if in.ID == b.ID {
			return saga.Decision{}, []saga.Message{{Kind: saga.MessageEvent, Type: "must-not-stage", MessageID: "m", Body: []byte("b")}}, errBoom
		}
		return ok(in, inp)
	}
	inputs := []saga.Input{
		{Kind: saga.InputStart, SagaID: a.ID},
		{Kind: saga.InputStart, SagaID: b.ID},
		{Kind: saga.InputStart, SagaID: c.ID},
	}
	outs, staged, err := s.Apply(ctx, inputs, fn)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if len(outs) != 3 {
		t.Fatalf("Apply returned %d outcomes, want 3", len(outs))
	}
	if !errors.Is(outs[1].Err, errBoom) {
		t.Errorf("outcome of the failing input: Err = %v, want %v", outs[1].Err, errBoom)
	}
	if diff := cmp.Diff(b, outs[1].Instance, instanceOpts()); diff != "" {
		t.Errorf("outcome of the failing input carries another instance than the stored one (-want +got):\n%s", diff)
	}
	for _, i := range []int{0, 2} {
		if outs[i].Err != nil || !outs[i].Changed {
			t.Errorf("outcome %d = changed %v, err %v; want changed, no error", i, outs[i].Changed, outs[i].Err)
		}
	}
	if len(staged) != 2 {
		t.Errorf("Apply staged %d messages, want 2 (one command each for a and c)", len(staged))
	}
	for _, m := range staged {
		if m.Type == "must-not-stage" {
			t.Errorf("the failing input's message was staged")
		}
	}
	got, err := s.Get(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(b, got, instanceOpts()); diff != "" {
		t.Errorf("saga b changed although its transition failed (-want +got):\n%s", diff)
	}
	for _, in := range []saga.Instance{a, c} {
		got, err := s.Get(ctx, in.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Phase != saga.Running || got.State != "booking_hotel" {
			t.Errorf("saga %s is %s/%s after Apply, want running/booking_hotel", in.ID, got.Phase, got.State)
		}
	}
}

func TestApplyConcurrentBatches(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, pgstore.Config{})
	ctx := testContext(t)
	def := tripDefinition(t)
	t0 := now()
	const sagas, rounds = 20, 10
	var ids []uuid.UUID
	for range sagas {
		in := newSaga(t, def, t0, t0.Add(time.Hour))
		create(t, s, in)
		ids = append(ids, in.ID)
	}
	// Each input bumps a counter of the saga: a lost update shows as a
	// missing count, a lock-order deadlock as an error.
	bump := func(in saga.Instance, _ saga.Input) (saga.Decision, []saga.Message, error) {
		in.Attempt++
		return saga.Decision{Instance: in, Changed: true}, nil, nil
	}
	forward := make([]saga.Input, 0, sagas)
	for _, id := range ids {
		forward = append(forward, saga.Input{Kind: saga.InputTimeout, SagaID: id})
	}
	backward := slices.Clone(forward)
	slices.Reverse(backward)

	var wg sync.WaitGroup
	errs := make(chan error, 2*rounds)
	for range rounds {
		for _, batch := range [][]saga.Input{forward, backward} {
			wg.Go(func() {
				if _, _, err := s.Apply(ctx, batch, bump); err != nil {
					errs <- err
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent Apply: %v", err)
	}
	for _, id := range ids {
		got, err := s.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if got.Attempt != 2*rounds {
			t.Errorf("saga %s counted %d inputs, want %d", id, got.Attempt, 2*rounds)
		}
	}
}

func TestApplyDue(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, pgstore.Config{})
	ctx := testContext(t)
	def := tripDefinition(t)
	t0 := now()

	// Deadlines from 3 minutes ago to 2 minutes ahead; one terminal saga
	// without deadline.
	var due []saga.Instance
	for _, d := range []time.Duration{-3 * time.Minute, -time.Minute, -2 * time.Minute, 0} {
		in := newSaga(t, def, t0.Add(-time.Hour), t0.Add(d))
		create(t, s, in)
		due = append(due, in)
	}
	later := newSaga(t, def, t0.Add(-time.Hour), t0.Add(2*time.Minute))
	done := newSaga(t, def, t0.Add(-time.Hour), t0.Add(-time.Hour))
	done, _ = decide(t, def, done, t0.Add(-time.Hour), saga.Input{Kind: saga.InputCancel, SagaID: done.ID})
	if !done.Deadline.IsZero() {
		t.Fatal("test setup: a cancelled saga has a deadline")
	}
	create(t, s, later, done)
	fn := transition(def, t0)

	// Oldest deadlines first, at most limit.
	outs, msgs, err := s.ApplyDue(ctx, dueClaim(t0, 2), fn)
	if err != nil {
		t.Fatalf("ApplyDue: %v", err)
	}
	if diff := cmp.Diff(sortUUIDs([]uuid.UUID{due[0].ID, due[2].ID}), sortedIDs(outs)); diff != "" {
		t.Errorf("ApplyDue(limit 2) applied (-want +got):\n%s", diff)
	}
	if len(msgs) != 2 {
		t.Errorf("ApplyDue(limit 2) staged %d messages, want 2", len(msgs))
	}
	for _, o := range outs {
		if o.Err != nil || !o.Changed || o.Instance.Phase != saga.Running || len(o.Transitions) == 0 || o.Transitions[0] != saga.TransitionStart {
			t.Errorf("outcome for %s = %+v, err %v; want the timeout to start it", o.Instance.ID, o.Decision, o.Err)
		}
	}

	outs, _, err = s.ApplyDue(ctx, dueClaim(t0, 100), fn)
	if err != nil {
		t.Fatalf("ApplyDue: %v", err)
	}
	// A deadline equal to now is due; a later one is not.
	if diff := cmp.Diff(sortUUIDs([]uuid.UUID{due[1].ID, due[3].ID}), sortedIDs(outs)); diff != "" {
		t.Errorf("second ApplyDue applied (-want +got):\n%s", diff)
	}

	// Everything due was moved on: nothing left.
	if outs, msgs, err := s.ApplyDue(ctx, dueClaim(t0, 100), fn); err != nil || len(outs) != 0 || len(msgs) != 0 {
		t.Errorf("third ApplyDue = %d outcomes, %d messages, %v; want none", len(outs), len(msgs), err)
	}

	for _, in := range due {
		got, err := s.Get(ctx, in.ID)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := decide(t, def, in, t0, saga.Input{Kind: saga.InputTimeout, SagaID: in.ID})
		if diff := cmp.Diff(want, got, instanceOpts()); diff != "" {
			t.Errorf("saga %s after ApplyDue (-want +got):\n%s", in.ID, diff)
		}
	}
	for _, in := range []saga.Instance{later, done} {
		got, err := s.Get(ctx, in.ID)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(in, got, instanceOpts()); diff != "" {
			t.Errorf("saga %s that was not due changed (-want +got):\n%s", in.ID, diff)
		}
	}
}

func TestApplyDueSkipsLockedSagas(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, pgstore.Config{})
	ctx := testContext(t)
	def := tripDefinition(t)
	t0 := now()
	var all []uuid.UUID
	for i := range 10 {
		in := newSaga(t, def, t0.Add(-time.Hour), t0.Add(-time.Duration(10-i)*time.Minute))
		create(t, s, in)
		all = append(all, in.ID)
	}
	fn := transition(def, t0)

	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	blocking := func(in saga.Instance, inp saga.Input) (saga.Decision, []saga.Message, error) {
		// Hold the first transaction open, its rows locked.
		once.Do(func() {
			close(entered)
			<-release
		})
		return fn(in, inp)
	}
	type result struct {
		outs []saga.Outcome
		err  error
	}
	first := make(chan result, 1)
	go func() {
		outs, _, err := s.ApplyDue(ctx, dueClaim(t0, 4), blocking)
		first <- result{outs, err}
	}()
	select {
	case <-entered:
	case r := <-first:
		t.Fatalf("first ApplyDue returned before its transition ran: %d outcomes, %v", len(r.outs), r.err)
	}

	// Must not wait for the first transaction's locks.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	second, _, err := s.ApplyDue(sctx, dueClaim(t0, 100), fn)
	cancel()
	close(release)
	r := <-first
	if err != nil {
		t.Fatalf("second ApplyDue while the first holds its sagas: %v", err)
	}
	if r.err != nil {
		t.Fatalf("first ApplyDue: %v", r.err)
	}
	if len(r.outs) != 4 || len(second) != 6 {
		t.Errorf("ApplyDue calls applied %d and %d sagas, want 4 and 6", len(r.outs), len(second))
	}
	seen := map[uuid.UUID]int{}
	for _, o := range append(slices.Clone(r.outs), second...) {
		seen[o.Instance.ID]++
		if o.Err != nil {
			t.Errorf("outcome for %s: %v", o.Instance.ID, o.Err)
		}
	}
	for _, id := range all {
		if seen[id] != 1 {
			t.Errorf("saga %s was applied %d times, want once", id, seen[id])
		}
	}
	// The first call locked the four oldest deadlines.
	if diff := cmp.Diff(sortUUIDs(all[:4]), sortedIDs(r.outs)); diff != "" {
		t.Errorf("first ApplyDue(limit 4) applied (-want +got):\n%s", diff)
	}
	if outs, _, err := s.ApplyDue(ctx, dueClaim(t0, 100), fn); err != nil || len(outs) != 0 {
		t.Errorf("ApplyDue afterwards = %d outcomes, %v; want none", len(outs), err)
	}
}

func TestListAndCount(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, pgstore.Config{})
	ctx := testContext(t)
	def := tripDefinition(t)
	t0 := now()

	// Seven trips in creation order (UUIDv7), the even ones started; then
	// two sagas of another definition with the same states, the first
	// started.
	cruise := tripDefinition(t)
	cruise.Name = "cruise"
	var ins []saga.Instance
	for i := range 9 {
		d := def
		if i >= 7 {
			d = cruise
		}
		in := newSaga(t, d, t0, t0.Add(time.Hour))
		if (i < 7 && i%2 == 0) || i == 7 {
			in, _ = decide(t, d, in, t0, saga.Input{Kind: saga.InputStart, SagaID: in.ID})
		}
		create(t, s, in)
		ins = append(ins, in)
	}
	id := func(i int) uuid.UUID { return ins[i].ID }

	for _, tc := range []struct {
		name   string
		filter pgstore.ListFilter
		want   []int
	}{
		{"first page", pgstore.ListFilter{Limit: 3}, []int{8, 7, 6}},
		{"second page", pgstore.ListFilter{Limit: 3, Before: id(6)}, []int{5, 4, 3}},
		{"last page", pgstore.ListFilter{Limit: 3, Before: id(1)}, []int{0}},
		{"past the end", pgstore.ListFilter{Limit: 3, Before: id(0)}, nil},
		{"everything", pgstore.ListFilter{Limit: 100}, []int{8, 7, 6, 5, 4, 3, 2, 1, 0}},
		{"state", pgstore.ListFilter{Limit: 2, State: "booking_hotel"}, []int{7, 6}},
		{"state, next page", pgstore.ListFilter{Limit: 2, State: "booking_hotel", Before: id(6)}, []int{4, 2}},
		{"state, cursor of another state", pgstore.ListFilter{Limit: 10, State: "pending", Before: id(4)}, []int{3, 1}},
		{"state without sagas", pgstore.ListFilter{Limit: 10, State: "stuck"}, nil},
		{"definition", pgstore.ListFilter{Limit: 3, Definition: "trip"}, []int{6, 5, 4}},
		{"definition, next page", pgstore.ListFilter{Limit: 3, Definition: "trip", Before: id(4)}, []int{3, 2, 1}},
		{"the other definition", pgstore.ListFilter{Limit: 10, Definition: "cruise"}, []int{8, 7}},
		{"definition and state", pgstore.ListFilter{Limit: 10, Definition: "cruise", State: "booking_hotel"}, []int{7}},
		{"definition and state, next page", pgstore.ListFilter{Limit: 2, Definition: "trip", State: "booking_hotel", Before: id(4)}, []int{2, 0}},
		{"definition without sagas", pgstore.ListFilter{Limit: 10, Definition: "safari"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.List(ctx, tc.filter)
			if err != nil {
				t.Fatalf("List: %v", err)
			}
			var want []saga.Instance
			for _, i := range tc.want {
				want = append(want, ins[i])
			}
			if diff := cmp.Diff(want, got, instanceOpts(), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("List(%+v) (-want +got):\n%s", tc.filter, diff)
			}
			for _, in := range got {
				assertUTC(t, in)
			}
		})
	}

	for state, want := range map[string]int64{"booking_hotel": 5, "pending": 4, "stuck": 0} {
		if got, err := s.CountState(ctx, state); err != nil || got != want {
			t.Errorf("CountState(%q) = %d, %v; want %d", state, got, err, want)
		}
	}
}

func TestOutboxStatsEmpty(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, pgstore.Config{})
	n, oldest, err := s.OutboxStats(testContext(t))
	if err != nil || n != 0 || oldest != 0 {
		t.Errorf("OutboxStats on an empty outbox = %d, %v, %v; want 0, 0, nil", n, oldest, err)
	}
}

// BenchmarkApplyBatch measures the hot path of the store: one Apply of 256
// replies, each advancing its own saga by a step and staging its next
// command, in one transaction.
func BenchmarkApplyBatch(b *testing.B) {
	const n = 256
	s, pool := newStore(b, pgstore.Config{OutboxLease: time.Hour})
	ctx := testContext(b)
	def := tripDefinition(b)
	t0 := now()
	started := make(map[uuid.UUID]saga.Instance, n)
	inputs := make([]saga.Input, 0, n)
	for range n {
		in := newSaga(b, def, t0, t0)
		in, _ = decide(b, def, in, t0, saga.Input{Kind: saga.InputStart, SagaID: in.ID})
		create(b, s, in)
		started[in.ID] = in
		inputs = append(inputs, saga.Input{Kind: saga.InputReply, SagaID: in.ID, Reply: okReply(in, "book_hotel")})
	}
	fn := transition(def, t0.Add(time.Second))
	reset := func(in saga.Instance, _ saga.Input) (saga.Decision, []saga.Message, error) {
		return saga.Decision{Instance: started[in.ID], Changed: true}, nil, nil
	}

	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		outs, msgs, err := s.Apply(ctx, inputs, fn)
		if err != nil {
			b.Fatal(err)
		}
		if len(outs) != n || len(msgs) != n || !outs[n-1].Changed {
			b.Fatalf("Apply = %d outcomes, %d messages; want %d changed sagas and messages", len(outs), len(msgs), n)
		}
		b.StopTimer()
		// Put the sagas back at their first step and empty the outbox.
		if _, _, err := s.Apply(ctx, inputs, reset); err != nil {
			b.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `DELETE FROM outbox`); err != nil {
			b.Fatal(err)
		}
		// Keep the tables at their steady-state size: without it every
		// iteration leaves 512 dead saga versions behind and later
		// iterations measure the bloat.
		if _, err := pool.Exec(ctx, `VACUUM sagas, outbox`); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// TestOutboxRowsOfAnOlderRelease checks the upgrade path: rows staged
// before payloads were compressed (codec version 1) are still claimed and
// published, and new rows are written compressed (version 2).
func TestOutboxRowsOfAnOlderRelease(t *testing.T) {
	t.Parallel()
	store, pool := newStore(t, pgstore.Config{OutboxLease: time.Hour})
	ctx := testContext(t)

	// A version 1 payload, framed by hand: one event with a body and no
	// properties beyond its names.
	str := func(b []byte, s string) []byte { return append(binary.AppendUvarint(b, uint64(len(s))), s...) }
	old := []byte{1}
	old = binary.AppendUvarint(old, 1)
	for _, s := range []string{"saga.events", "trip.created", "ev-old", "corr-old", "", "trip.created"} {
		old = str(old, s)
	}
	old = append(old, 0)                 // priority
	old = binary.AppendVarint(old, 0)    // expiration
	old = binary.AppendVarint(old, 0)    // timestamp: none
	old = binary.AppendUvarint(old, 0)   // headers
	old = str(old, `{"staged_by":"v1"}`) // body
	id := uuid.Must(uuid.NewV7())
	if _, err := pool.Exec(ctx, `INSERT INTO outbox (id, messages, payload, created_at, leased_until)
		VALUES ($1, 1, $2, now(), now() - interval '1 second')`, id, old); err != nil {
		t.Fatalf("insert a version 1 row: %v", err)
	}
	claimed, err := store.ClaimOutbox(ctx, 10)
	if err != nil {
		t.Fatalf("ClaimOutbox: %v", err)
	}
	if len(claimed) != 1 {
		t.Fatalf("ClaimOutbox = %d messages, want the version 1 row's one", len(claimed))
	}
	m := claimed[0]
	if m.OutboxID != id || m.Kind != saga.MessageEvent || m.Type != "trip.created" || m.MessageID != "ev-old" ||
		m.CorrelationID != "corr-old" || string(m.Body) != `{"staged_by":"v1"}` {
		t.Errorf("claimed %+v, want the version 1 row's event", m)
	}

	def := tripDefinition(t)
	in := newSaga(t, def, now(), now())
	body := []byte(strings.Repeat(`{"order_id":"`+in.ID.String()+`","note":"repetitive"}`, 20))
	if _, _, _, err := store.Create(ctx, saga.NewSaga{Instance: in, Messages: []saga.Message{
		{Kind: saga.MessageEvent, Type: "trip.created", MessageID: "ev-new", Body: body},
	}}); err != nil {
		t.Fatalf("Create: %v", err)
	}
	var version, size int
	if err := pool.QueryRow(ctx, `SELECT get_byte(payload, 0), length(payload) FROM outbox WHERE id <> $1`, id).Scan(&version, &size); err != nil {
		t.Fatalf("read the new row: %v", err)
	}
	if version != 3 || size >= len(body) {
		t.Errorf("new outbox row: version %d, %d bytes for a %d-byte body; want version 3, compressed", version, size, len(body))
	}
}
