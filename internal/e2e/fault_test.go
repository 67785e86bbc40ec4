package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/orchestrator/api"
	"github.com/sagaflow/sagaflow/orchestrator/order"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/worker"
)

// broker is a raw AMQP client for tests that play a misbehaving peer.
type broker struct {
	t  *testing.T
	ch *amqp.Channel
}

func dialBroker(t *testing.T, s *testenv.System) *broker {
	t.Helper()
	conn, err := amqp.Dial(s.AMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return &broker{t: t, ch: ch}
}

// replyQueue declares a private queue for replies and returns its name and
// deliveries.
func (b *broker) replyQueue() (string, <-chan amqp.Delivery) {
	b.t.Helper()
	q, err := b.ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	d, err := b.ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	return q.Name, d
}

func (b *broker) publish(exchange, key string, p amqp.Publishing) {
	b.t.Helper()
	p.DeliveryMode = amqp.Persistent
	if err := b.ch.PublishWithContext(context.Background(), exchange, key, false, false, p); err != nil {
		b.t.Fatal(err)
	}
}

// command publishes a saga command like the orchestrator would.
func (b *broker) command(typ, msgID, replyTo string, payload any) {
	b.t.Helper()
	body, _ := json.Marshal(payload)
	env := saga.Envelope{ID: msgID, CorrelationID: msgID, SagaID: uuid.NewString(), Type: typ, At: time.Now().UTC(), Payload: body}
	b.publish(amqpbus.CommandExchange, typ, amqp.Publishing{MessageId: msgID, CorrelationId: msgID, ReplyTo: replyTo, Body: env.Encode()})
}

func next(t *testing.T, d <-chan amqp.Delivery) saga.Envelope {
	t.Helper()
	select {
	case m := <-d:
		env, err := saga.Decode(m.Body)
		if err != nil {
			t.Fatalf("reply: %v", err)
		}
		return env
	case <-time.After(waitFor):
		t.Fatal("no reply")
	}
	return saga.Envelope{}
}

// dead drains saga.dead and returns its messages by message id: at least
// want of them, or, when ids are given, until each of those was seen
// (others, left by earlier tests, are drained too).
func (b *broker) dead(want int, ids ...string) map[string]amqp.Delivery {
	b.t.Helper()
	out := map[string]amqp.Delivery{}
	deadline := time.Now().Add(waitFor)
	missing := func() bool {
		if len(ids) == 0 {
			return len(out) < want
		}
		for _, id := range ids {
			if _, ok := out[id]; !ok {
				return true
			}
		}
		return false
	}
	for missing() && time.Now().Before(deadline) {
		d, ok, err := b.ch.Get(amqpbus.DeadLetterQueue, true)
		if err != nil {
			b.t.Fatal(err)
		}
		if !ok {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		out[d.MessageId] = d
	}
	return out
}

// TestLateChargeAfterRefundIsANoOp: a refund that overtakes its charge
// wins; the charge arriving later charges nothing.
func TestLateChargeAfterRefundIsANoOp(t *testing.T) {
	s := system(t)
	b := dialBroker(t, s)
	replyTo, replies := b.replyQueue()
	orderID := uuid.NewString()

	b.command(contract.PaymentRefund, orderID+":"+order.StepRefundPayment, replyTo, contract.OrderRef{OrderID: orderID})
	if r := next(t, replies); r.Status != saga.ReplyOK {
		t.Fatalf("refund reply %+v, want ok", r)
	}
	b.command(contract.PaymentCharge, orderID+":"+order.StepChargePayment, replyTo,
		contract.ChargeRequest{OrderID: orderID, CustomerID: "c", AmountCents: 5000, PaymentToken: "tok_visa"})
	if r := next(t, replies); r.Status != saga.ReplyFailed || r.Code != contract.CodeAlreadyRefunded {
		t.Fatalf("late charge reply %+v, want failed already_refunded", r)
	}
	var charged int64
	if err := s.Pool(t, "payment").QueryRow(context.Background(),
		`SELECT charged_cents FROM payments WHERE order_id = $1`, orderID).Scan(&charged); err != nil || charged != 0 {
		t.Errorf("charged_cents = %d (%v), want 0", charged, err)
	}
}

// TestPoisonMessagesAreDeadLetteredWithAReason: unparseable, unknown
// version, unknown command and invalid payload go to saga.dead with a
// reason; the consumers keep going.
func TestPoisonMessagesAreDeadLetteredWithAReason(t *testing.T) {
	s := system(t)
	b := dialBroker(t, s)
	replyTo, replies := b.replyQueue()
	id := func() string { return "poison-" + uuid.NewString() }
	envelope := func(v int, typ string, payload string) []byte {
		return []byte(`{"v":` + string(rune('0'+v)) + `,"id":"x","type":"` + typ + `","at":"2026-01-01T00:00:00Z","payload":` + payload + `}`)
	}
	cases := []struct {
		id, queue, reason string
		body              []byte
	}{
		{id(), contract.InventoryQueue, "malformed", []byte("this is not JSON")},
		{id(), contract.InventoryQueue, "unknown schema version", envelope(2, contract.InventoryReserve, `{}`)},
		{id(), contract.PaymentQueue, "unknown command", envelope(1, "payment.explode", `{}`)},
		{id(), contract.ShippingQueue, "invalid command", envelope(1, contract.ShippingPrepare, `{"order_id":""}`)},
		{id(), amqpbus.ReplyQueue, "malformed", []byte(`{"v":1}`)},
	}
	for _, c := range cases {
		b.publish("", c.queue, amqp.Publishing{MessageId: c.id, CorrelationId: c.id, ReplyTo: replyTo, Body: c.body})
	}
	// The invalid command is also answered, so its saga does not wait.
	if r := next(t, replies); r.Status != saga.ReplyFailed || r.Code != worker.CodeInvalidCommand {
		t.Errorf("reply to the invalid command %+v, want failed invalid_command", r)
	}
	var ids []string
	for _, c := range cases {
		ids = append(ids, c.id)
	}
	dead := b.dead(len(cases), ids...)
	for _, c := range cases {
		d, ok := dead[c.id]
		if !ok {
			t.Errorf("%s (%s) did not reach saga.dead", c.reason, c.queue)
			continue
		}
		reason, _ := d.Headers["x-sagaflow-reason"].(string)
		queue, _ := d.Headers["x-sagaflow-queue"].(string)
		if !strings.Contains(reason, c.reason) || queue != c.queue || string(d.Body) != string(c.body) {
			t.Errorf("dead letter %s: reason %q queue %q body %q; want reason with %q from %s, body kept",
				c.id, reason, queue, d.Body, c.reason, c.queue)
		}
	}
	// Every consumer is still there.
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Cable", 900, 3)
	id2 := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 1)})
	if v := s.WaitTerminal(t, []string{id2}, waitFor)[id2]; v.State != order.StateCompleted {
		t.Errorf("an order after the poison: %s (%s)", v.State, v.Reason)
	}
}

func TestAdminRoutesNeedTheToken(t *testing.T) {
	s := system(t)
	routes := []struct{ method, path string }{
		{http.MethodPut, "/admin/products/" + sku(t, "x")},
		{http.MethodGet, "/admin/orders/" + uuid.NewString() + "/ledger"},
		{http.MethodGet, "/admin/sagas?state=stuck"},
		{http.MethodPost, "/admin/sagas/" + uuid.NewString() + "/replay"},
		{http.MethodPost, "/admin/sagas/" + uuid.NewString() + "/cancel"},
	}
	for _, r := range routes {
		for _, auth := range []string{"", "Bearer wrong-token", "Basic " + s.AdminToken, "Bearer " + s.AdminToken + "x"} {
			resp := s.Call(t, r.method, r.path, map[string]any{"name": "x", "price_cents": 1, "available": 1},
				map[string]string{"Authorization": auth})
			var e testenv.ErrorBody
			_ = json.Unmarshal(resp.Body, &e)
			if resp.Status != http.StatusUnauthorized || e.Error.Code != api.CodeUnauthorized {
				t.Errorf("%s %s with %q: %d %s, want 401 unauthorized", r.method, r.path, auth, resp.Status, resp.Body)
			}
		}
	}
	if r := s.Admin(t, http.MethodGet, "/admin/sagas?state=stuck", nil); r.Status != http.StatusOK {
		t.Errorf("with the token: %d %s", r.Status, r.Body)
	}
}

// TestOperatorsHaveTheirOwnListener: the admin routes, /metrics and the
// profiler answer on ADMIN_ADDR only; the public port knows nothing of
// them, even with the token.
func TestOperatorsHaveTheirOwnListener(t *testing.T) {
	s := system(t)
	auth := map[string]string{"Authorization": "Bearer " + s.AdminToken}
	for _, path := range []string{"/admin/sagas", "/metrics", "/debug/pprof/"} {
		r, err := testenv.Request(s.HTTP, s.BaseURL, http.MethodGet, path, nil, auth)
		if err != nil || r.Status != http.StatusNotFound {
			t.Errorf("public port, GET %s: %d %s %v, want 404", path, r.Status, trunc(r.Body), err)
		}
		r, err = testenv.Request(s.HTTP, s.AdminURL, http.MethodGet, path, nil, auth)
		if err != nil || r.Status != http.StatusOK {
			t.Errorf("admin listener, GET %s: %d %s %v, want 200", path, r.Status, trunc(r.Body), err)
		}
	}
	for _, base := range []string{s.BaseURL, s.AdminURL} {
		if r, err := testenv.Request(s.HTTP, base, http.MethodGet, "/readyz", nil, nil); err != nil || r.Status != http.StatusOK {
			t.Errorf("%s/readyz: %d %v", base, r.Status, err)
		}
	}
}

func TestAdminRoutesAreRefusedWithoutAConfiguredToken(t *testing.T) {
	s := testenv.StartT(t, testenv.Options{Env: map[string]string{"ADMIN_TOKEN": ""}})
	for _, auth := range []string{"", "Bearer ", "Bearer " + s.AdminToken} {
		r := s.Call(t, http.MethodGet, "/admin/sagas", nil, map[string]string{"Authorization": auth})
		if r.Status != http.StatusForbidden || !strings.Contains(string(r.Body), api.CodeForbidden) {
			t.Errorf("with %q: %d %s, want 403 forbidden", auth, r.Status, r.Body)
		}
	}
}

// TestLostReplyGetsTheStoredReply: the payment worker charges but its
// reply is lost; the saga re-sends the command with the same idempotency
// key and the worker answers from its inbox, without a second charge.
func TestLostReplyGetsTheStoredReply(t *testing.T) {
	s := testenv.StartT(t, testenv.Options{
		Env:        map[string]string{"STEP_TIMEOUT": "1s"},
		ServiceEnv: map[string]map[string]string{"payment": {"SIM_DROP_FIRST_REPLY": "true"}},
	})
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Chair", 4500, 5)
	id := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 2)})
	v := s.WaitTerminal(t, []string{id}, waitFor)[id]
	if v.State != order.StateCompleted {
		t.Fatalf("state %s (%s), want completed", v.State, v.Reason)
	}
	// The first reply was lost: the charge was sent at least twice (a slow
	// step elsewhere may be re-sent too; that is not what this is about).
	for _, st := range v.Steps {
		if st.Name == order.StepChargePayment && st.Attempts < 2 {
			t.Errorf("%s attempts = %d, want at least 2", st.Name, st.Attempts)
		}
	}
	want := testenv.Books{
		Payment:       contract.PaymentLedgerReply{ChargedCents: 9000},
		Shipment:      contract.ShipmentLedgerReply{Prepared: 1},
		Notifications: contract.NotificationLedgerReply{Email: 1, SMS: 1},
	}
	if diff := cmp.Diff(want, s.WaitLedger(t, id, want, waitFor)); diff != "" {
		t.Errorf("ledger (-want +got):\n%s", diff)
	}
}

// stuckSaga waits until the admin API lists the saga as stuck.
func stuckSaga(t *testing.T, s *testenv.System, id string) contract.SagaView {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for time.Now().Before(deadline) {
		var list struct {
			Sagas []contract.SagaView `json:"sagas"`
		}
		s.Admin(t, http.MethodGet, "/admin/sagas?state=stuck&limit=100", nil).Decode(t, &list)
		for _, v := range list.Sagas {
			if v.SagaID == id {
				return v
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("saga %s never stuck: %+v", id, s.Order(t, id))
	return contract.SagaView{}
}

// queue reads a queue's depth and consumer count (passive declare).
func (b *broker) queue(name string) amqp.Queue {
	b.t.Helper()
	q, err := b.ch.QueueDeclarePassive(name, true, false, false, false, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	return q
}

// waitQueue polls a queue until ok says its state is the one wanted.
func (b *broker) waitQueue(name, what string, ok func(amqp.Queue) bool) {
	b.t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		q := b.queue(name)
		if ok(q) {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("%s: %s never happened (%d messages, %d consumers)", name, what, q.Messages, q.Consumers)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// restart starts a worker again and waits until it consumes its queue: its
// /readyz answers before the consumer is registered.
func restart(t *testing.T, s *testenv.System, b *broker, name, queue string) {
	t.Helper()
	if err := s.StartService(name, nil); err != nil {
		t.Fatal(err)
	}
	b.waitQueue(queue, name+" consuming", func(q amqp.Queue) bool { return q.Consumers > 0 })
}

// TestStuckSagasAreReplayedAndCancelled runs the operator's day: a
// compensation that cannot finish and a step after the pivot that cannot
// finish both leave their saga stuck with a reason; once the worker is back,
// replay finishes them. Commands nobody consumed in time expire into
// saga.dead. Cancel compensates a saga before its pivot and refuses after.
// A saga is held at a step by stopping that step's worker until its
// command is queued, never by racing a worker's latency.
// operatorEvent returns the trail's one event of type typ, failing the
// test unless there is exactly one and it names operator and reason.
func operatorEvent(t *testing.T, events []contract.AuditEvent, typ, operator, reason string) {
	t.Helper()
	var found []contract.AuditEvent
	for _, e := range events {
		if e.Type == typ {
			found = append(found, e)
		}
	}
	if len(found) != 1 || found[0].Data == nil || found[0].Data.Operator != operator || found[0].Data.Reason != reason {
		t.Errorf("trail %+v: want one %s by %s for %q", events, typ, operator, reason)
	}
}

func TestStuckSagasAreReplayedAndCancelled(t *testing.T) {
	const aliceToken = "alice-token-0123456789"
	tokenFile := filepath.Join(t.TempDir(), "bob")
	if err := os.WriteFile(tokenFile, []byte("bob-token-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := testenv.StartT(t, shortAttempts("alice="+aliceToken+",bob=@"+tokenFile))
	as := func(token, method, path string, body any) testenv.Response {
		t.Helper()
		return s.Call(t, method, path, body, map[string]string{"Authorization": "Bearer " + token})
	}
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Sofa", 30000, 10)
	b := dialBroker(t, s)

	t.Run("compensation stuck, then replayed", func(t *testing.T) {
		if _, err := s.Kill("inventory", syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		id := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 1)})
		v := stuckSaga(t, s, id)
		if v.StuckIn != string(saga.Compensating) || v.Step != order.StepReserveStock || !strings.Contains(v.Reason, order.StepReleaseStock) {
			t.Errorf("stuck saga %+v: want stuck compensating at reserve_stock with a release_stock reason", v)
		}
		if r := s.Admin(t, http.MethodPost, "/admin/sagas/"+id+"/cancel", why); r.Status != http.StatusConflict {
			t.Errorf("cancel a saga stuck compensating: %d %s, want 409", r.Status, r.Body)
		}
		// Commands that waited longer than their deadline expired into saga.dead.
		var expired int
		for _, d := range b.dead(1) {
			if deaths, ok := d.Headers["x-death"].([]any); ok && len(deaths) > 0 {
				if reason, _ := deaths[0].(amqp.Table)["reason"].(string); reason == "expired" && strings.HasPrefix(d.RoutingKey, "inventory.") {
					expired++
				}
			}
		}
		if expired == 0 {
			t.Error("no expired inventory command in saga.dead")
		}
		restart(t, s, b, "inventory", contract.InventoryQueue)
		// Without a reason, nothing happens.
		for _, body := range []any{nil, map[string]string{"reason": ""}, map[string]string{"reason": "  "}} {
			if r := as(aliceToken, http.MethodPost, "/admin/sagas/"+id+"/replay", body); r.Status != http.StatusBadRequest ||
				!strings.Contains(string(r.Body), "reason is required") {
				t.Errorf("replay with %v: %d %s, want 400 reason is required", body, r.Status, r.Body)
			}
		}
		if v := stuckSaga(t, s, id); v.Phase != string(saga.Stuck) {
			t.Fatalf("a replay without a reason moved the saga: %+v", v)
		}
		if r := as(aliceToken, http.MethodPost, "/admin/sagas/"+id+"/replay", map[string]string{"reason": "inventory is back"}); r.Status != http.StatusOK {
			t.Fatalf("replay: %d %s", r.Status, r.Body)
		}
		if v := s.WaitTerminal(t, []string{id}, waitFor)[id]; v.State != order.StateCancelled {
			t.Errorf("after replay: %s (%s), want cancelled", v.State, v.Reason)
		}
		operatorEvent(t, trail(t, s, id, "order.cancelled"), saga.EventReplayed, "alice", "inventory is back")
		if p := s.Product(t, sk); p.Available != 10 || p.Reserved != 0 {
			t.Errorf("stock %+v, want all 10 available", p)
		}
	})

	t.Run("step after the pivot stuck, then replayed", func(t *testing.T) {
		// Held at the charge (stock reserved), inventory goes away, and
		// commit_stock, after the pivot, finds nobody.
		if _, err := s.Kill("payment", syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		id := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 2)})
		b.waitQueue(contract.PaymentQueue, "the charge queued", func(q amqp.Queue) bool { return q.Messages > 0 })
		if _, err := s.Kill("inventory", syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		restart(t, s, b, "payment", contract.PaymentQueue)
		v := stuckSaga(t, s, id)
		if v.StuckIn != string(saga.Running) || v.Step != order.StepCommitStock || v.Cause != string(saga.CauseNoReply) {
			t.Errorf("stuck saga %+v: want stuck running at commit_stock, for want of a reply", v)
		}
		// One saga's view asks the broker: nobody consumes inventory's queue.
		var one contract.SagaView
		s.Admin(t, http.MethodGet, "/admin/sagas/"+id, nil).Decode(t, &one)
		if one.Cause != string(saga.CauseNoConsumer) {
			t.Errorf("GET /admin/sagas/%s while inventory is down: cause %q, want no_consumer", id, one.Cause)
		}
		if r := s.Admin(t, http.MethodPost, "/admin/sagas/"+id+"/cancel", why); r.Status != http.StatusConflict {
			t.Errorf("cancel past the pivot: %d %s, want 409", r.Status, r.Body)
		}
		restart(t, s, b, "inventory", contract.InventoryQueue)
		if r := as("bob-token-0123456789", http.MethodPost, "/admin/sagas/"+id+"/replay", map[string]string{"reason": "commit after the outage"}); r.Status != http.StatusOK {
			t.Fatalf("replay: %d %s", r.Status, r.Body)
		}
		if v := s.WaitTerminal(t, []string{id}, waitFor)[id]; v.State != order.StateCompleted {
			t.Errorf("after replay: %s (%s), want completed", v.State, v.Reason)
		}
		if p := s.Product(t, sk); p.Available != 8 || p.Reserved != 0 || p.Sold != 2 {
			t.Errorf("stock %+v, want 8 available, 2 sold", p)
		}
	})

	t.Run("cancel before the pivot compensates", func(t *testing.T) {
		// Held at the charge: the cancel finds it in flight before the pivot.
		if _, err := s.Kill("payment", syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		id := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 1)})
		b.waitQueue(contract.PaymentQueue, "the charge queued", func(q amqp.Queue) bool { return q.Messages > 0 })
		r := s.Admin(t, http.MethodPost, "/admin/sagas/"+id+"/cancel", map[string]string{"reason": "customer called"})
		if r.Status != http.StatusOK {
			t.Fatalf("cancel: %d %s", r.Status, r.Body)
		}
		restart(t, s, b, "payment", contract.PaymentQueue)
		v := s.WaitTerminal(t, []string{id}, waitFor)[id]
		if v.State != order.StateCancelled || !strings.Contains(v.Reason, "customer called") {
			t.Errorf("after cancel: %s (%s), want cancelled with the operator's reason", v.State, v.Reason)
		}
		operatorEvent(t, trail(t, s, id, "order.cancelled"), saga.EventCancelled, api.UnnamedOperator, "customer called")
		// The charge in flight may land before or after its refund: either
		// way nothing stays charged.
		l := s.Ledger(t, id)
		if l.Payment.ChargedCents != l.Payment.RefundedCents || l.Shipment.Prepared != 0 {
			t.Errorf("ledger %+v: want charged == refunded, nothing shipped", l)
		}
		if p := s.Product(t, sk); p.Available != 8 || p.Reserved != 0 {
			t.Errorf("stock %+v, want 8 available", p)
		}
	})

	t.Run("operators cannot replay or cancel what is finished", func(t *testing.T) {
		id := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 1)})
		s.WaitTerminal(t, []string{id}, waitFor)
		for _, action := range []string{"replay", "cancel"} {
			if r := s.Admin(t, http.MethodPost, "/admin/sagas/"+id+"/"+action, why); r.Status != http.StatusConflict {
				t.Errorf("%s a completed saga: %d %s, want 409", action, r.Status, r.Body)
			}
			if r := s.Admin(t, http.MethodPost, "/admin/sagas/"+uuid.NewString()+"/"+action, why); r.Status != http.StatusNotFound {
				t.Errorf("%s an unknown saga: %d %s, want 404", action, r.Status, r.Body)
			}
		}
	})
}

// TestGracefulShutdown: SIGTERM stops every binary with exit code 0, and
// orders in flight finish once the services are back.
func TestGracefulShutdown(t *testing.T) {
	s := testenv.StartT(t, testenv.Options{ServiceEnv: map[string]map[string]string{
		"payment": {"SIM_LATENCY": "50ms"},
	}})
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Plant", 1500, 100)
	var ids []string
	for range 30 {
		ids = append(ids, s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 1)}))
	}
	for _, name := range testenv.Services {
		code, err := s.Kill(name, syscall.SIGTERM)
		if err != nil || code != 0 {
			t.Errorf("%s: exit code %d (%v), want 0 after SIGTERM\n%s", name, code, err, s.Logs(name, 10))
		}
	}
	for _, name := range testenv.Services {
		if err := s.StartService(name, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.WaitReady(waitFor); err != nil {
		t.Fatal(err)
	}
	outcomes := map[string]int{}
	for _, v := range s.WaitTerminal(t, ids, waitFor) {
		outcomes[v.State]++
	}
	if outcomes[order.StateCompleted] != len(ids) {
		t.Errorf("outcomes %v, want all %d completed", outcomes, len(ids))
	}
	if p := s.Product(t, sk); p.Sold != int64(len(ids)) || p.Reserved != 0 {
		t.Errorf("stock %+v, want %d sold", p, len(ids))
	}
}

// TestLedgerDegradesWhenAServiceIsAway: with the notification service
// stopped, the ledger answers at once with what payment and shipping
// recorded and names notification as unanswered. (It waited 5 s and
// answered 503 for everything before.)
func TestLedgerDegradesWhenAServiceIsAway(t *testing.T) {
	s := testenv.StartT(t, testenv.Options{})
	s.PutProduct(t, "ledger-a", "Bowl", 1100, 5)
	id := s.Place(t, testenv.OrderSpec{Items: testenv.Items("ledger-a", 1)})
	s.WaitTerminal(t, []string{id}, waitFor)
	if _, err := s.Kill("notification", syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r := s.Admin(t, http.MethodGet, "/admin/orders/"+id+"/ledger", nil)
	took := time.Since(start)
	var l api.Ledger
	r.Decode(t, &l)
	if r.Status != http.StatusOK || l.Payment == nil || l.Payment.ChargedCents != 1100 || l.Shipment == nil ||
		l.Notifications != nil || !slices.Equal(l.Unanswered, []string{"notification"}) {
		t.Errorf("ledger with notification away: %d %s; want 200 with payment and shipping, notification unanswered", r.Status, r.Body)
	}
	t.Logf("ledger answered in %v with notification away", took)
}
