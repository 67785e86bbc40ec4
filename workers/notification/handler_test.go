package main

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/internal/workertest"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/worker"
	"github.com/sagaflow/sagaflow/workers/notification/migrations"
)

// newDB creates a fresh database with the notification schema.
func newDB(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, _ := workertest.DB(t, "notification", migrations.Set)
	return pool
}

// The handler test kit, under the names these tests use.
var (
	command      = workertest.Command
	okVerdict    = workertest.OK
	checkVerdict = workertest.CheckVerdict
)

func payloadOf[T any](t *testing.T, res worker.Result) T { return workertest.Payload[T](t, res) }

// Non-outcome order events: consumed, never notified.
const (
	eventOrderCreated      = "order.created"
	eventOrderCompensating = "order.compensating"
)

var t0 = time.Date(2025, 3, 14, 9, 26, 53, 0, time.UTC)

// --- notification helpers ---

// rawEvent builds an event of order orderID carrying payload p verbatim.
func rawEvent(t *testing.T, orderID, typ string, p contract.EventPayload) worker.Event {
	t.Helper()
	body, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return worker.Event{
		Envelope:    saga.Envelope{ID: uuid.NewString(), SagaID: orderID, Type: typ, At: t0, Payload: body},
		TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
	}
}

// orderEvent builds an event of an order placed by customerID, with reason
// in its payload (empty for none).
func orderEvent(t *testing.T, orderID, customerID, typ, reason string) worker.Event {
	t.Helper()
	data, err := json.Marshal(contract.OrderEventData{
		OrderID: orderID, CustomerID: customerID, Items: []contract.Item{{SKU: "sku-1", Quantity: 2}},
		Priority: "normal", Country: "DE", AmountCents: 2000,
	})
	if err != nil {
		t.Fatal(err)
	}
	return rawEvent(t, orderID, typ, contract.EventPayload{SagaID: orderID, Seq: 7, State: "done", Reason: reason, Data: data})
}

// send runs the channel's handler in its own transaction, committed when it
// returns no error and rolled back otherwise, as the runtime does.
func send(t *testing.T, pool *pgxpool.Pool, channel string, events ...worker.Event) error {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if err := sender(channel)(ctx, tx, events); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit: %v", err)
	}
	return nil
}

func mustSend(t *testing.T, pool *pgxpool.Pool, channel string, events ...worker.Event) {
	t.Helper()
	if err := send(t, pool, channel, events...); err != nil {
		t.Fatalf("sender(%s): unexpected error: %v", channel, err)
	}
}

// notification is a row of notifications (sent_at left out).
type notification struct {
	OrderID, Channel, EventID, EventType, Recipient, Body string
}

// sent returns every notification, by order and channel.
func sent(t *testing.T, pool *pgxpool.Pool) []notification {
	t.Helper()
	rows, err := pool.Query(context.Background(),
		`SELECT order_id, channel, event_id::text, event_type, recipient, body FROM notifications ORDER BY order_id, channel`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := []notification{}
	for rows.Next() {
		var n notification
		if err := rows.Scan(&n.OrderID, &n.Channel, &n.EventID, &n.EventType, &n.Recipient, &n.Body); err != nil {
			t.Fatal(err)
		}
		out = append(out, n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func checkSent(t *testing.T, pool *pgxpool.Pool, want []notification) {
	t.Helper()
	if diff := cmp.Diff(want, sent(t, pool)); diff != "" {
		t.Errorf("notifications (-want +got):\n%s", diff)
	}
}

func checkLedger(t *testing.T, pool *pgxpool.Pool, orderID string, want contract.NotificationLedgerReply) {
	t.Helper()
	res, err := ledger(context.Background(), pool, command(t, contract.NotificationLedger, contract.OrderRef{OrderID: orderID}))
	if err != nil {
		t.Fatalf("ledger: %v", err)
	}
	checkVerdict(t, "ledger", res, okVerdict)
	if diff := cmp.Diff(want, payloadOf[contract.NotificationLedgerReply](t, res)); diff != "" {
		t.Errorf("ledger of %s (-want +got):\n%s", orderID, diff)
	}
}

// --- tests ---

func TestOutcomeEventsNotifyOncePerChannel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		typ, reason string
		wantBody    string
	}{
		{contract.EventOrderCompleted, "", "Your order o-1 was delivered."},
		{contract.EventOrderCompleted, "shipped early", "Your order o-1 was delivered. Reason: shipped early"},
		{contract.EventOrderCancelled, "cancelled by customer", "Your order o-1 was cancelled. Reason: cancelled by customer"},
		{contract.EventOrderCancelled, "", "Your order o-1 was cancelled."},
		{contract.EventOrderRejected, "out of stock: sku-1", "Your order o-1 could not be accepted. Reason: out of stock: sku-1"},
	}
	for _, tt := range tests {
		t.Run(tt.typ+"/reason="+tt.reason, func(t *testing.T) {
			t.Parallel()
			pool := newDB(t)
			ev := orderEvent(t, "o-1", "cust-42", tt.typ, tt.reason)

			mustSend(t, pool, email, ev)
			mustSend(t, pool, sms, ev)

			checkSent(t, pool, []notification{
				{OrderID: "o-1", Channel: "email", EventID: ev.ID, EventType: tt.typ, Recipient: "cust-42", Body: tt.wantBody},
				{OrderID: "o-1", Channel: "sms", EventID: ev.ID, EventType: tt.typ, Recipient: "cust-42", Body: tt.wantBody},
			})
			checkLedger(t, pool, "o-1", contract.NotificationLedgerReply{Email: 1, SMS: 1})
		})
	}
}

func TestChannelsAreSeparate(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	ev := orderEvent(t, "o-1", "cust-42", contract.EventOrderCompleted, "")
	want := notification{
		OrderID: "o-1", Channel: "email", EventID: ev.ID, EventType: contract.EventOrderCompleted,
		Recipient: "cust-42", Body: "Your order o-1 was delivered.",
	}

	mustSend(t, pool, email, ev)
	checkSent(t, pool, []notification{want})
	checkLedger(t, pool, "o-1", contract.NotificationLedgerReply{Email: 1})

	// The SMS channel sends its own message, the email one being sent.
	mustSend(t, pool, sms, ev)
	wantSMS := want
	wantSMS.Channel = "sms"
	checkSent(t, pool, []notification{want, wantSMS})
	checkLedger(t, pool, "o-1", contract.NotificationLedgerReply{Email: 1, SMS: 1})
}

func TestNonOutcomeEventsSendNothing(t *testing.T) {
	t.Parallel()
	pool := newDB(t)

	for _, channel := range []string{email, sms} {
		mustSend(t, pool, channel,
			orderEvent(t, "o-1", "cust-42", eventOrderCreated, ""),
			orderEvent(t, "o-1", "cust-42", eventOrderCompensating, "payment failed"),
		)
	}
	checkSent(t, pool, []notification{})
	checkLedger(t, pool, "o-1", contract.NotificationLedgerReply{})

	// Among outcomes in a batch they are skipped.
	done := orderEvent(t, "o-2", "cust-7", contract.EventOrderCompleted, "")
	mustSend(t, pool, email,
		orderEvent(t, "o-2", "cust-7", eventOrderCreated, ""),
		done,
		orderEvent(t, "o-3", "cust-8", eventOrderCompensating, "carrier refused"),
	)
	checkSent(t, pool, []notification{{
		OrderID: "o-2", Channel: "email", EventID: done.ID, EventType: contract.EventOrderCompleted,
		Recipient: "cust-7", Body: "Your order o-2 was delivered.",
	}})
	checkLedger(t, pool, "o-3", contract.NotificationLedgerReply{})
}

func TestSecondOutcomeOfAnOrderSendsNothingMore(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		batches func(first, other worker.Event) [][]worker.Event
	}{
		{"redelivery in a later batch", func(first, _ worker.Event) [][]worker.Event {
			return [][]worker.Event{{first}, {first}}
		}},
		{"redelivery within one batch", func(first, _ worker.Event) [][]worker.Event {
			return [][]worker.Event{{first, first}}
		}},
		{"different outcome in a later batch", func(first, other worker.Event) [][]worker.Event {
			return [][]worker.Event{{first}, {other}}
		}},
		{"different outcome within one batch", func(first, other worker.Event) [][]worker.Event {
			return [][]worker.Event{{first, other}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pool := newDB(t)
			first := orderEvent(t, "o-1", "cust-42", contract.EventOrderRejected, "out of stock")
			other := orderEvent(t, "o-1", "cust-42", contract.EventOrderCancelled, "timed out")

			for _, batch := range tt.batches(first, other) {
				mustSend(t, pool, email, batch...)
			}

			checkSent(t, pool, []notification{{
				OrderID: "o-1", Channel: "email", EventID: first.ID, EventType: contract.EventOrderRejected,
				Recipient: "cust-42", Body: "Your order o-1 could not be accepted. Reason: out of stock",
			}})
			checkLedger(t, pool, "o-1", contract.NotificationLedgerReply{Email: 1})
		})
	}
}

// TestOutcomeWithoutOrderIsPoison: an outcome event that names no order
// fails its batch as poison, so the consumer retries the batch message by
// message and dead-letters only this one (amqpbus isolates it).
func TestOutcomeWithoutOrderIsPoison(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		event func(t *testing.T) worker.Event
	}{
		{"no data", func(t *testing.T) worker.Event {
			return rawEvent(t, "o-2", contract.EventOrderCompleted, contract.EventPayload{SagaID: "o-2", Seq: 5, State: "completed"})
		}},
		{"data without order_id", func(t *testing.T) worker.Event {
			return rawEvent(t, "o-2", contract.EventOrderCancelled, contract.EventPayload{
				SagaID: "o-2", Seq: 5, State: "cancelled", Data: json.RawMessage(`{"customer_id":"cust-7"}`),
			})
		}},
		{"data not an object", func(t *testing.T) worker.Event {
			return rawEvent(t, "o-2", contract.EventOrderRejected, contract.EventPayload{
				SagaID: "o-2", Seq: 5, State: "rejected", Data: json.RawMessage(`"o-2"`),
			})
		}},
		{"payload not JSON", func(t *testing.T) worker.Event {
			ev := orderEvent(t, "o-2", "cust-7", contract.EventOrderCompleted, "")
			ev.Payload = json.RawMessage(`{"data":`)
			return ev
		}},
		{"event id not a uuid", func(t *testing.T) worker.Event {
			ev := orderEvent(t, "o-2", "cust-7", contract.EventOrderCompleted, "")
			ev.ID = "evt-1"
			return ev
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pool := newDB(t)
			good := orderEvent(t, "o-1", "cust-42", contract.EventOrderCompleted, "")

			for _, channel := range []string{email, sms} {
				if err := send(t, pool, channel, good, tt.event(t)); !amqpbus.IsPoison(err) {
					t.Errorf("sender(%s): got %v, want a poison error", channel, err)
				}
			}

			// The batch rolled back: not even the good event was sent.
			checkSent(t, pool, []notification{})
			checkLedger(t, pool, "o-1", contract.NotificationLedgerReply{})
		})
	}
}

func TestLedgerCountsPerOrder(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	mustSend(t, pool, email,
		orderEvent(t, "o-1", "cust-1", contract.EventOrderCompleted, ""),
		orderEvent(t, "o-2", "cust-2", contract.EventOrderCancelled, "changed mind"),
	)
	mustSend(t, pool, sms, orderEvent(t, "o-1", "cust-1", contract.EventOrderCompleted, ""))
	mustSend(t, pool, sms, orderEvent(t, "o-3", "cust-3", contract.EventOrderRejected, "card declined"))

	checkLedger(t, pool, "o-1", contract.NotificationLedgerReply{Email: 1, SMS: 1})
	checkLedger(t, pool, "o-2", contract.NotificationLedgerReply{Email: 1})
	checkLedger(t, pool, "o-3", contract.NotificationLedgerReply{SMS: 1})
	checkLedger(t, pool, "unknown", contract.NotificationLedgerReply{})
	checkLedger(t, pool, "", contract.NotificationLedgerReply{})
}

func TestLedgerRejectsInvalidPayloads(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	for _, payload := range []string{`{"order_id":"o-1","x":1}`, `{"order_id"`, `[]`} {
		res, err := ledger(context.Background(), pool, command(t, contract.NotificationLedger, payload))
		var inv *worker.InvalidError
		if !errors.As(err, &inv) {
			t.Errorf("ledger(%s): got result %+v, error %v; want a *worker.InvalidError", payload, res, err)
		}
	}
}
