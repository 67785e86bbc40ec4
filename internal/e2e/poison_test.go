package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/orchestrator/order"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
)

// TestPoisonEventsEndInSagaDeadAndOrdersStillNotify: events that the
// notification and audit services can never handle, published to
// saga.events, each reach saga.dead once per consuming queue with the
// reason, and are not delivered again and again; an order placed after
// them still gets its email and SMS.
func TestPoisonEventsEndInSagaDeadAndOrdersStillNotify(t *testing.T) {
	s := testenv.StartT(t, testenv.Options{})
	b := dialBroker(t, s)
	event := func(id, sagaID string, payload any) []byte {
		p, _ := json.Marshal(payload)
		return saga.Envelope{ID: id, CorrelationID: sagaID, SagaID: sagaID, Type: contract.EventOrderCompleted,
			At: time.Now().UTC(), Payload: p}.Encode()
	}
	orderID := uuid.NewString()
	nul, noOrder, notJSON := uuid.NewString(), uuid.NewString(), uuid.NewString()
	cases := []struct {
		name   string
		id     string
		body   []byte
		queues []string // where a dead copy must come from
	}{
		{"a NUL in the customer", nul, event(nul, orderID, contract.EventPayload{
			SagaID: orderID, Seq: 9, State: "completed",
			Data: json.RawMessage(`{"order_id":"` + orderID + `","customer_id":"c\u0000x"}`),
		}), []string{contract.EmailQueue, contract.SMSQueue}},
		{"no order", noOrder, event(noOrder, orderID, contract.EventPayload{SagaID: orderID, Seq: 9, State: "completed"}),
			[]string{contract.EmailQueue, contract.SMSQueue}},
		{"an id that is no uuid", "evt-1", event("evt-1", orderID, contract.EventPayload{
			SagaID: orderID, Seq: 9, State: "completed", Data: json.RawMessage(`{"order_id":"` + orderID + `"}`),
		}), []string{contract.EmailQueue, contract.SMSQueue, contract.AuditEventsQueue}},
		{"not JSON", notJSON, []byte("this is not JSON"),
			[]string{contract.EmailQueue, contract.SMSQueue, contract.AuditEventsQueue}},
	}
	for _, c := range cases {
		b.publish(amqpbus.EventExchange, contract.EventOrderCompleted, amqp.Publishing{MessageId: c.id, Body: c.body})
	}

	// Every copy that reaches saga.dead, by message id and source queue.
	copies := map[string]map[string]int{}
	reasons := map[string]string{}
	take := func(until time.Time, done func() bool) {
		for time.Now().Before(until) && !done() {
			d, ok, err := b.ch.Get(amqpbus.DeadLetterQueue, true)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			q, _ := d.Headers["x-sagaflow-queue"].(string)
			if copies[d.MessageId] == nil {
				copies[d.MessageId] = map[string]int{}
			}
			copies[d.MessageId][q]++
			reasons[d.MessageId+"@"+q], _ = d.Headers["x-sagaflow-reason"].(string)
		}
	}
	all := func() bool {
		for _, c := range cases {
			for _, q := range c.queues {
				if copies[c.id][q] == 0 {
					return false
				}
			}
		}
		return true
	}
	take(time.Now().Add(waitFor), all)
	// Then a few seconds more: a message requeued forever would come back
	// every second.
	take(time.Now().Add(3*time.Second), func() bool { return false })
	for _, c := range cases {
		for _, q := range c.queues {
			if n := copies[c.id][q]; n != 1 {
				t.Errorf("%s: %d copies from %s in saga.dead, want 1", c.name, n, q)
			}
			if reasons[c.id+"@"+q] == "" {
				t.Errorf("%s: the copy from %s carries no reason", c.name, q)
			}
		}
		t.Logf("%s: %v, e.g. %q", c.name, copies[c.id], reasons[c.id+"@"+c.queues[0]])
	}

	s.PutProduct(t, "poison-a", "Lamp", 1500, 5)
	id := s.Place(t, testenv.OrderSpec{Items: testenv.Items("poison-a", 1)})
	if v := s.WaitTerminal(t, []string{id}, waitFor)[id]; v.State != order.StateCompleted {
		t.Fatalf("an order after the poison: %s (%s)", v.State, v.Reason)
	}
	deadline := time.Now().Add(waitFor)
	for {
		l := s.Ledger(t, id)
		if l.Notifications == (contract.NotificationLedgerReply{Email: 1, SMS: 1}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the order after the poison got %+v notifications, want 1 email and 1 SMS", l.Notifications)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestReplyThatCannotBeAppliedIsDeadLettered: a reply for a saga whose
// transition fails (a saga type this orchestrator does not know, as in a
// rolling deploy) is retried a bounded number of times and dead-lettered;
// the replies behind it, and the orders they belong to, flow on.
func TestReplyThatCannotBeAppliedIsDeadLettered(t *testing.T) {
	s := system(t)
	b := dialBroker(t, s)
	alien := uuid.New()
	if _, err := s.Pool(t, "orchestrator").Exec(context.Background(), `INSERT INTO sagas
		(id, definition, phase, state, step, attempt, data, created_at, updated_at)
		VALUES ($1, 'hotel_booking', 'running', 'booking_room', 0, 1, '{}', now(), now())`, alien); err != nil {
		t.Fatal(err)
	}
	msgID := alien.String() + ":book_room:reply"
	b.publish("", amqpbus.ReplyQueue, amqp.Publishing{MessageId: msgID, CorrelationId: alien.String() + ":book_room",
		Body: saga.Envelope{ID: msgID, CorrelationID: alien.String() + ":book_room", SagaID: alien.String(),
			Type: "hotel.book.reply", At: time.Now().UTC(), Status: saga.ReplyOK}.Encode()})

	sk := sku(t, "a")
	s.PutProduct(t, sk, "Cup", 700, 5)
	id := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 1)})
	if v := s.WaitTerminal(t, []string{id}, waitFor)[id]; v.State != order.StateCompleted {
		t.Errorf("an order beside the bad reply: %s (%s)", v.State, v.Reason)
	}
	d, ok := b.dead(1, msgID)[msgID]
	if !ok {
		t.Fatal("the reply that cannot be applied never reached saga.dead")
	}
	reason, _ := d.Headers["x-sagaflow-reason"].(string)
	if !strings.Contains(reason, "hotel_booking") || d.Headers["x-sagaflow-queue"] != amqpbus.ReplyQueue {
		t.Errorf("dead letter reason %q from %v, want the unknown definition, from %s", reason, d.Headers["x-sagaflow-queue"], amqpbus.ReplyQueue)
	}
}
