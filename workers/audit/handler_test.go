package main

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/internal/workertest"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/sagatest"
	"github.com/sagaflow/sagaflow/saga/worker"
	"github.com/sagaflow/sagaflow/workers/audit/migrations"
)

// TestMain runs the tests in a local zone other than UTC: pgx reads a
// timestamptz in time.Local, so only then does it show whether orderEvents
// answers in UTC.
func TestMain(m *testing.M) {
	time.Local = time.FixedZone("UTC+5", 5*60*60)
	sagatest.Main(m)
}

// newDB creates a fresh database with the audit schema.
func newDB(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, _ := workertest.DB(t, "audit", migrations.Set)
	return pool
}

// The handler test kit, under the names these tests use.
var (
	command      = workertest.Command
	okVerdict    = workertest.OK
	checkVerdict = workertest.CheckVerdict
)

func payloadOf[T any](t *testing.T, res worker.Result) T { return workertest.Payload[T](t, res) }

const traceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// t0 is a microsecond-precise instant (PostgreSQL keeps microseconds) in a
// zone other than UTC, so that storing and reading it in UTC is visible.
var t0 = time.Date(2025, 3, 14, 11, 26, 53, 589793000, time.FixedZone("CEST", 2*60*60))

// --- audit helpers ---

// orderData marshals the order as events carry it.
func orderData(t *testing.T, d contract.OrderEventData) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// event builds a domain event of a saga with a fresh id; the payload's
// saga_id and seq are set from sagaID and seq.
func event(t *testing.T, sagaID string, seq int, typ string, at time.Time, p contract.EventPayload, trace string) worker.Event {
	t.Helper()
	p.SagaID, p.Seq = sagaID, seq
	if p.Data == nil {
		p.Data = orderData(t, contract.OrderEventData{
			OrderID: sagaID, CustomerID: "cust-1", Items: []contract.Item{{SKU: "sku-1", Quantity: 2}},
			Priority: "normal", Country: "DE",
		})
	}
	body, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return worker.Event{
		Envelope:    saga.Envelope{ID: uuid.NewString(), SagaID: sagaID, Type: typ, At: at, Payload: body},
		TraceParent: trace,
	}
}

// simpleEvent is an event with only a state in its payload.
func simpleEvent(t *testing.T, sagaID string, seq int, typ string) worker.Event {
	t.Helper()
	return event(t, sagaID, seq, typ, t0.Add(time.Duration(seq)*time.Second), contract.EventPayload{State: "running"}, traceParent)
}

// appendBatch runs appendEvents in its own transaction, committed when it
// returns no error and rolled back otherwise, as the runtime does.
func appendBatch(t *testing.T, pool *pgxpool.Pool, events ...worker.Event) error {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if err := appendEvents(ctx, tx, events); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit: %v", err)
	}
	return nil
}

// mustAppend appends a batch and fails the test on an error.
func mustAppend(t *testing.T, pool *pgxpool.Pool, events ...worker.Event) {
	t.Helper()
	if err := appendBatch(t, pool, events...); err != nil {
		t.Fatalf("appendEvents: unexpected error: %v", err)
	}
}

// storedEvent is a row of audit.events; At is the instant in UTC as text
// and Payload the stored JSON decoded.
type storedEvent struct {
	ID, SagaID  string
	Seq         int
	Type        string
	At          string
	Payload     any
	TraceParent string
}

const utcMicros = "2006-01-02T15:04:05.000000Z"

func decodeJSON(t *testing.T, raw []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("decode %q: %v", raw, err)
	}
	return v
}

// stored returns every row of audit.events in arrival order.
func stored(t *testing.T, pool *pgxpool.Pool) []storedEvent {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT id::text, saga_id::text, seq, type,
		to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), payload::text, trace_parent
		FROM events ORDER BY pos`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := []storedEvent{}
	for rows.Next() {
		var e storedEvent
		var payload string
		if err := rows.Scan(&e.ID, &e.SagaID, &e.Seq, &e.Type, &e.At, &payload, &e.TraceParent); err != nil {
			t.Fatal(err)
		}
		e.Payload = decodeJSON(t, []byte(payload))
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// storedAs is the row an event is expected to become.
func storedAs(t *testing.T, ev worker.Event) storedEvent {
	t.Helper()
	var p contract.EventPayload
	if err := json.Unmarshal(ev.Payload, &p); err != nil {
		t.Fatal(err)
	}
	return storedEvent{
		ID: ev.ID, SagaID: ev.SagaID, Seq: p.Seq, Type: ev.Type, At: ev.At.UTC().Format(utcMicros),
		Payload: decodeJSON(t, ev.Payload), TraceParent: ev.TraceParent,
	}
}

func checkStored(t *testing.T, pool *pgxpool.Pool, want ...worker.Event) {
	t.Helper()
	wantRows := []storedEvent{}
	for _, ev := range want {
		wantRows = append(wantRows, storedAs(t, ev))
	}
	if diff := cmp.Diff(wantRows, stored(t, pool)); diff != "" {
		t.Errorf("audit.events (-want +got):\n%s", diff)
	}
}

// queryOrderEvents runs the orderEvents query.
func queryOrderEvents(t *testing.T, pool *pgxpool.Pool, orderID string) (worker.Result, error) {
	t.Helper()
	return orderEvents(context.Background(), pool, command(t, contract.AuditOrderEvents, contract.OrderRef{OrderID: orderID}))
}

// trail returns an order's audit trail and fails the test on an error.
func trail(t *testing.T, pool *pgxpool.Pool, orderID string) []contract.AuditEvent {
	t.Helper()
	res, err := queryOrderEvents(t, pool, orderID)
	if err != nil {
		t.Fatalf("orderEvents(%s): unexpected error: %v", orderID, err)
	}
	checkVerdict(t, "orderEvents", res, okVerdict)
	got := payloadOf[contract.OrderEventsReply](t, res)
	if got.Events == nil {
		t.Fatalf("orderEvents(%s) payload %s: events is null, want a list", orderID, res.Payload)
	}
	for _, e := range got.Events {
		if e.At.Location() != time.UTC {
			t.Errorf("event %s at %v: not in UTC (payload %s)", e.ID, e.At, res.Payload)
		}
	}
	return got.Events
}

// --- tests ---

func TestAppendEventsStoresEveryColumn(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	sagaID := "0f8fad5b-d9cb-469f-a165-70867728950e"
	data := orderData(t, contract.OrderEventData{
		OrderID: sagaID, CustomerID: "cust-42", Items: []contract.Item{{SKU: "sku-1", Quantity: 3}},
		Priority: "express", Country: "FR", AmountCents: 4500, TrackingNumber: "TRK-1",
	})
	created := event(t, sagaID, 1, "order.created", t0, contract.EventPayload{State: "pending", Data: data}, traceParent)
	created.ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
	failed := event(t, sagaID, 2, "order.step_failed", t0.Add(1500*time.Microsecond),
		contract.EventPayload{State: "compensating", Step: "payment", Code: contract.CodeCardDeclined, Message: "card declined", Data: data}, "")
	failed.ID = "e4eaaaf2-d142-11e1-b3e4-080027620cdd"
	completed := event(t, sagaID, 3, contract.EventOrderCompleted, time.Date(2025, 3, 14, 9, 30, 0, 0, time.UTC),
		contract.EventPayload{State: "completed", Reason: "done", Data: data}, traceParent)
	completed.ID = "16fd2706-8baf-433b-82eb-8c7fada847da"

	mustAppend(t, pool, created, failed, completed)

	wantData := map[string]any{
		"order_id": sagaID, "customer_id": "cust-42", "items": []any{map[string]any{"sku": "sku-1", "quantity": 3.0}},
		"priority": "express", "country": "FR", "amount_cents": 4500.0, "tracking_number": "TRK-1",
	}
	want := []storedEvent{
		{
			ID: "7c9e6679-7425-40de-944b-e07fc1f90ae7", SagaID: sagaID, Seq: 1, Type: "order.created",
			At:          "2025-03-14T09:26:53.589793Z",
			Payload:     map[string]any{"saga_id": sagaID, "seq": 1.0, "state": "pending", "data": wantData},
			TraceParent: traceParent,
		},
		{
			ID: "e4eaaaf2-d142-11e1-b3e4-080027620cdd", SagaID: sagaID, Seq: 2, Type: "order.step_failed",
			At: "2025-03-14T09:26:53.591293Z",
			Payload: map[string]any{
				"saga_id": sagaID, "seq": 2.0, "state": "compensating", "step": "payment",
				"code": "card_declined", "message": "card declined", "data": wantData,
			},
			TraceParent: "",
		},
		{
			ID: "16fd2706-8baf-433b-82eb-8c7fada847da", SagaID: sagaID, Seq: 3, Type: "order.completed",
			At:          "2025-03-14T09:30:00.000000Z",
			Payload:     map[string]any{"saga_id": sagaID, "seq": 3.0, "state": "completed", "reason": "done", "data": wantData},
			TraceParent: traceParent,
		},
	}
	if diff := cmp.Diff(want, stored(t, pool)); diff != "" {
		t.Errorf("audit.events (-want +got):\n%s", diff)
	}
}

func TestAppendEventsStoresAnEventOnce(t *testing.T) {
	t.Parallel()
	sagaID := uuid.NewString()
	tests := []struct {
		name    string
		batches func(first, other worker.Event) [][]worker.Event
	}{
		{"again in a later batch", func(first, other worker.Event) [][]worker.Event {
			return [][]worker.Event{{first}, {first, other}}
		}},
		{"twice within one batch", func(first, other worker.Event) [][]worker.Event {
			return [][]worker.Event{{first, other, first}}
		}},
		{"again in a later batch with other content", func(first, other worker.Event) [][]worker.Event {
			// A copy with the same id but another trace and time is
			// still the event already recorded: the first stays.
			changed := first
			changed.TraceParent, changed.At = "", first.At.Add(time.Hour)
			return [][]worker.Event{{first}, {changed, other}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pool := newDB(t)
			first := simpleEvent(t, sagaID, 1, "order.created")
			other := simpleEvent(t, sagaID, 2, "order.step_completed")

			for _, batch := range tt.batches(first, other) {
				mustAppend(t, pool, batch...)
			}

			checkStored(t, pool, first, other)
		})
	}
}

func TestOrderEventsReturnsOneOrderInSeqOrder(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	a, b := uuid.NewString(), uuid.NewString()
	a1 := event(t, a, 1, "order.created", t0, contract.EventPayload{State: "pending"}, traceParent)
	a2 := event(t, a, 2, "order.step_failed", t0.Add(time.Second), contract.EventPayload{
		State: "compensating", Step: "payment", Code: contract.CodeCardDeclined, Message: "card declined by issuer",
	}, traceParent)
	a3 := event(t, a, 3, contract.EventOrderCancelled, t0.Add(2*time.Second), contract.EventPayload{
		State: "cancelled", Reason: "payment failed",
	}, "")
	b1 := event(t, b, 1, "order.created", t0.Add(3*time.Second), contract.EventPayload{State: "pending"}, traceParent)
	b2 := event(t, b, 2, contract.EventOrderCompleted, t0.Add(4*time.Second), contract.EventPayload{State: "completed"}, traceParent)

	// The two sagas interleaved, saga a's events out of order.
	mustAppend(t, pool, a3, b1)
	mustAppend(t, pool, a1)
	mustAppend(t, pool, b2, a2)

	wantA := []contract.AuditEvent{
		{ID: a1.ID, Type: "order.created", At: t0, Seq: 1, State: "pending"},
		{
			ID: a2.ID, Type: "order.step_failed", At: t0.Add(time.Second), Seq: 2, State: "compensating",
			Step: "payment", Code: contract.CodeCardDeclined, Message: "card declined by issuer",
		},
		{ID: a3.ID, Type: contract.EventOrderCancelled, At: t0.Add(2 * time.Second), Seq: 3, State: "cancelled", Reason: "payment failed"},
	}
	if diff := cmp.Diff(wantA, trail(t, pool, a)); diff != "" {
		t.Errorf("orderEvents(a) (-want +got):\n%s", diff)
	}
	wantB := []contract.AuditEvent{
		{ID: b1.ID, Type: "order.created", At: t0.Add(3 * time.Second), Seq: 1, State: "pending"},
		{ID: b2.ID, Type: contract.EventOrderCompleted, At: t0.Add(4 * time.Second), Seq: 2, State: "completed"},
	}
	if diff := cmp.Diff(wantB, trail(t, pool, b)); diff != "" {
		t.Errorf("orderEvents(b) (-want +got):\n%s", diff)
	}
	// The log itself keeps arrival order.
	checkStored(t, pool, a3, b1, a1, b2, a2)
}

func TestAppendEventsRejectsEventsWithoutUUIDs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		breaks func(*worker.Event)
	}{
		{"id not a uuid", func(ev *worker.Event) { ev.ID = "evt-1" }},
		{"empty id", func(ev *worker.Event) { ev.ID = "" }},
		{"saga_id not a uuid", func(ev *worker.Event) { ev.SagaID = "order-1" }},
		{"empty saga_id", func(ev *worker.Event) { ev.SagaID = "" }},
		{"payload not JSON", func(ev *worker.Event) { ev.Payload = json.RawMessage(`{"seq":`) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pool := newDB(t)
			sagaID := uuid.NewString()
			good := simpleEvent(t, sagaID, 1, "order.created")
			bad := simpleEvent(t, sagaID, 2, "order.step_completed")
			tt.breaks(&bad)

			err := appendBatch(t, pool, good, bad)

			if !amqpbus.IsPoison(err) {
				t.Fatalf("appendEvents: got %v, want a poison error (the consumer isolates and dead-letters it)", err)
			}
			if !strings.Contains(err.Error(), "audit") {
				t.Errorf("error %q does not name the audit service", err)
			}
			checkStored(t, pool) // nothing of the batch
		})
	}
}

func TestEventsAreAppendOnly(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	ev := simpleEvent(t, uuid.NewString(), 1, "order.created")
	mustAppend(t, pool, ev)

	for _, stmt := range []string{
		`UPDATE events SET type = 'order.tampered'`,
		`UPDATE events SET payload = '{}' WHERE id = '` + ev.ID + `'`,
		`DELETE FROM events`,
		`DELETE FROM events WHERE id = '` + ev.ID + `'`,
		`TRUNCATE events`,
	} {
		_, err := pool.Exec(context.Background(), stmt)
		if err == nil || !strings.Contains(err.Error(), "append-only") {
			t.Errorf("%s: got error %v, want one mentioning append-only", stmt, err)
		}
	}
	checkStored(t, pool, ev)
}

func TestOrderEventsRejectsInvalidOrderID(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	mustAppend(t, pool, simpleEvent(t, uuid.NewString(), 1, "order.created"))
	tests := []struct {
		name    string
		payload string
	}{
		{"not a uuid", `{"order_id":"order-1"}`},
		{"empty order_id", `{"order_id":""}`},
		{"missing order_id", `{}`},
		{"unknown field", `{"order_id":"` + uuid.NewString() + `","x":1}`},
		{"bad JSON", `{"order_id"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res, err := orderEvents(context.Background(), pool, command(t, contract.AuditOrderEvents, tt.payload))
			var inv *worker.InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("got result %+v, error %v; want a *worker.InvalidError", res, err)
			}
		})
	}
}

func TestOrderEventsOfUnknownOrderIsEmpty(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	mustAppend(t, pool, simpleEvent(t, uuid.NewString(), 1, "order.created"))

	res, err := queryOrderEvents(t, pool, uuid.NewString())
	if err != nil {
		t.Fatalf("orderEvents: unexpected error: %v", err)
	}
	checkVerdict(t, "orderEvents", res, okVerdict)
	if got, want := string(res.Payload), `{"events":[]}`; got != want {
		t.Errorf("payload = %s, want %s", got, want)
	}
	if diff := cmp.Diff([]contract.AuditEvent{}, trail(t, pool, uuid.NewString())); diff != "" {
		t.Errorf("orderEvents of an unknown order (-want +got):\n%s", diff)
	}
}
