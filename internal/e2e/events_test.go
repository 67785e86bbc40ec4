package e2e

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/orchestrator/order"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
)

// trail polls GET /orders/{id}/events until the last event is want's last
// (events are asynchronous), then returns the trail.
func trail(t *testing.T, s *testenv.System, id string, last string) []contract.AuditEvent {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		var got contract.OrderEventsReply
		r := s.Call(t, http.MethodGet, "/orders/"+id+"/events", nil, nil)
		if r.Status != http.StatusOK {
			t.Fatalf("GET events: %d %s", r.Status, r.Body)
		}
		r.Decode(t, &got)
		if n := len(got.Events); n > 0 && got.Events[n-1].Type == last || time.Now().After(deadline) {
			// Let late duplicates, if any, arrive before the caller counts.
			time.Sleep(200 * time.Millisecond)
			s.Call(t, http.MethodGet, "/orders/"+id+"/events", nil, nil).Decode(t, &got)
			return got.Events
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestAuditTrailHasEveryEventOnceInOrder(t *testing.T) {
	s := system(t)
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Watch", 15000, 5)
	cases := []struct {
		name  string
		spec  testenv.OrderSpec
		state string
		types []string
	}{
		{"completed", testenv.OrderSpec{Items: testenv.Items(sk, 1)}, order.StateCompleted, []string{
			"order.created", "inventory.reserved", "payment.succeeded", "shipping.prepared", "inventory.committed",
			"order.delivered", "order.completed"}},
		{"cancelled by the gateway", testenv.OrderSpec{Items: testenv.Items(sk, 1), Token: contract.DeclineToken}, order.StateCancelled, []string{
			"order.created", "inventory.reserved", "payment.failed", "order.compensating", "inventory.released", "order.cancelled"}},
		{"cancelled by the carrier", testenv.OrderSpec{Items: testenv.Items(sk, 1), Country: contract.RefusedCountry}, order.StateCancelled, []string{
			"order.created", "inventory.reserved", "payment.succeeded", "shipping.failed", "order.compensating",
			"payment.refunded", "inventory.released", "order.cancelled"}},
		{"rejected", testenv.OrderSpec{Items: testenv.Items(sk, 99)}, order.StateRejected, []string{
			"order.created", "inventory.out_of_stock", "order.rejected"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := s.Place(t, tc.spec)
			if v := s.WaitTerminal(t, []string{id}, waitFor)[id]; v.State != tc.state {
				t.Fatalf("state %s, want %s", v.State, tc.state)
			}
			events := trail(t, s, id, tc.types[len(tc.types)-1])
			var types []string
			ids := map[string]bool{}
			for i, e := range events {
				types = append(types, e.Type)
				if e.Seq != i+1 {
					t.Errorf("event %d (%s) has seq %d", i, e.Type, e.Seq)
				}
				if ids[e.ID] || e.ID == "" {
					t.Errorf("event id %q twice or empty", e.ID)
				}
				ids[e.ID] = true
				if i > 0 && e.At.Before(events[i-1].At) {
					t.Errorf("%s at %v is before %s at %v", e.Type, e.At, events[i-1].Type, events[i-1].At)
				}
			}
			if diff := cmp.Diff(tc.types, types); diff != "" {
				t.Errorf("trail (-want +got):\n%s", diff)
			}
		})
	}
}

// TestAuditKeepsAnEventOnceWhenDeliveredTwice replays an event the broker
// already delivered: the audit log does not grow.
func TestAuditKeepsAnEventOnceWhenDeliveredTwice(t *testing.T) {
	s := system(t)
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Ring", 9900, 5)
	id := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 1)})
	s.WaitTerminal(t, []string{id}, waitFor)
	before := trail(t, s, id, "order.completed")

	db := s.Pool(t, "audit")
	var payload []byte
	var at time.Time
	var evID uuid.UUID
	if err := db.QueryRow(context.Background(), `SELECT id, at, payload FROM events WHERE saga_id = $1 AND type = 'order.completed'`,
		uuid.MustParse(id)).Scan(&evID, &at, &payload); err != nil {
		t.Fatal(err)
	}
	b := dialBroker(t, s)
	body := []byte(`{"v":1,"id":"` + evID.String() + `","correlation_id":"` + id + `","saga_id":"` + id +
		`","type":"order.completed","at":"` + at.UTC().Format(time.RFC3339Nano) + `","payload":` + string(payload) + `}`)
	for range 3 {
		b.publish(amqpbus.EventExchange, "order.completed", amqp.Publishing{MessageId: evID.String(), Body: body})
	}
	// A marker event after the duplicates: once audit has it, it has seen them.
	marker := uuid.New()
	b.publish(amqpbus.EventExchange, "test.marker", amqp.Publishing{MessageId: marker.String(), Body: []byte(
		`{"v":1,"id":"` + marker.String() + `","saga_id":"` + uuid.NewString() + `","type":"test.marker","at":"2026-01-01T00:00:00Z","payload":{"seq":1}}`)})
	deadline := time.Now().Add(waitFor)
	for {
		var n int
		_ = db.QueryRow(context.Background(), `SELECT count(*) FROM events WHERE id = $1`, marker).Scan(&n)
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("audit never recorded the marker event")
		}
		time.Sleep(50 * time.Millisecond)
	}
	var n int
	if err := db.QueryRow(context.Background(), `SELECT count(*) FROM events WHERE saga_id = $1`, uuid.MustParse(id)).Scan(&n); err != nil || n != len(before) {
		t.Errorf("audit holds %d events for the order (%v), want %d", n, err, len(before))
	}
	// Append-only: the log refuses changes.
	if _, err := db.Exec(context.Background(), `DELETE FROM events WHERE id = $1`, evID); err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Errorf("DELETE from the audit log: %v, want refused as append-only", err)
	}
}

// TestNotificationsCatchUpAfterDowntime: orders complete while the
// notification service is down; back up, it sends one email and one SMS
// for each, no more.
func TestNotificationsCatchUpAfterDowntime(t *testing.T) {
	s := system(t)
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Book", 1200, 1000)
	if code, err := s.Kill("notification", syscall.SIGTERM); err != nil || code != 0 {
		t.Fatalf("stop notification: %d %v", code, err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = s.StartService("notification", nil)
		}
	})
	ids := placeMany(t, s, 100, func(int) testenv.OrderSpec { return testenv.OrderSpec{Items: testenv.Items(sk, 1)} })
	for _, v := range s.WaitTerminal(t, ids, 2*waitFor) {
		if v.State != order.StateCompleted {
			t.Fatalf("order %s is %s: orders must complete without notifications", v.OrderID, v.State)
		}
	}
	if err := s.StartService("notification", nil); err != nil {
		t.Fatal(err)
	}
	restarted = true
	db := s.Pool(t, "notification")
	deadline := time.Now().Add(waitFor)
	var email, sms, orders int
	for time.Now().Before(deadline) {
		if err := db.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE channel = 'email'),
			count(*) FILTER (WHERE channel = 'sms'), count(DISTINCT order_id)
			FROM notifications WHERE order_id = ANY($1)`, ids).Scan(&email, &sms, &orders); err != nil {
			t.Fatal(err)
		}
		if email >= len(ids) && sms >= len(ids) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if email != 100 || sms != 100 || orders != 100 {
		t.Errorf("sent %d emails and %d SMS for %d orders, want 100, 100, 100", email, sms, orders)
	}
	// Each one once: every order's ledger says 1 and 1.
	for _, id := range ids[:5] {
		if l := s.Ledger(t, id); l.Notifications != (contract.NotificationLedgerReply{Email: 1, SMS: 1}) {
			t.Errorf("order %s notifications %+v, want 1 email, 1 SMS", id, l.Notifications)
		}
	}
}

// placeMany places n orders with 16 clients and returns their ids in order.
func placeMany(t *testing.T, s *testenv.System, n int, spec func(i int) testenv.OrderSpec) []string {
	t.Helper()
	ids := make([]string, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	var mu sync.Mutex
	var firstErr error
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			r, id, err := s.PlaceE(spec(i))
			if err == nil && r.Status != http.StatusAccepted {
				err = &httpError{r}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			ids[i] = id
		}()
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatalf("place orders: %v", firstErr)
	}
	return ids
}

// TestHighPriorityOrdersOvertake: with the payment worker paused, 500
// normal orders and then 20 high ones wait for it; once it is back, the
// high ones finish among the first 60. Every order is admitted
// (MAX_ACTIVE_SAGAS above 520), so the priority at work is the queue's.
func TestHighPriorityOrdersOvertake(t *testing.T) {
	s := testenv.StartT(t, testenv.Options{Env: map[string]string{
		"STEP_TIMEOUT": "3m", "STEP_MAX_TIMEOUT": "3m", "MAX_ACTIVE_SAGAS": "1000", "LOG_LEVEL": "warn",
	}})
	s.PutProduct(t, "prio-a", "Lamp", 2000, 10_000)
	if _, err := s.Kill("payment", syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	normal := placeMany(t, s, 500, func(int) testenv.OrderSpec { return testenv.OrderSpec{Items: testenv.Items("prio-a", 1)} })
	high := placeMany(t, s, 20, func(int) testenv.OrderSpec {
		return testenv.OrderSpec{Items: testenv.Items("prio-a", 1), Priority: "high"}
	})
	// Every order's charge command is in the payment queue: the outbox is
	// empty (a row goes once the broker confirmed all its messages, that is
	// once they are queued) and the queue holds at least one per order. (A
	// saga's state says charging_payment once the command is staged in the
	// outbox, not once it is queued: a high-priority command still in the
	// outbox when payment starts cannot overtake anything.)
	b := dialBroker(t, s)
	db := s.Pool(t, "orchestrator")
	deadline := time.Now().Add(2 * waitFor)
	for {
		var staged int
		if err := db.QueryRow(context.Background(), `SELECT count(*) FROM outbox`).Scan(&staged); err != nil {
			t.Fatal(err)
		}
		q, err := b.ch.QueueDeclarePassive(contract.PaymentQueue, true, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if staged == 0 && q.Messages >= len(normal)+len(high) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d charge commands queued for payment, %d outbox rows left", q.Messages, len(normal)+len(high), staged)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := s.StartService("payment", nil); err != nil {
		t.Fatal(err)
	}
	s.WaitTerminal(t, append(normal, high...), 3*waitFor)

	rows, err := db.Query(context.Background(), `SELECT id::text FROM sagas WHERE state = 'completed' ORDER BY updated_at, id LIMIT 60`)
	if err != nil {
		t.Fatal(err)
	}
	first := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		first[id] = true
	}
	rows.Close()
	late := 0
	for _, id := range high {
		if !first[id] {
			late++
		}
	}
	if late > 0 {
		t.Errorf("%d of the 20 high-priority orders did not finish among the first 60", late)
	}
}

// TestExpiredCommandsAreDeadLetteredAndRetried: with the payment worker
// away, charge commands outlive their deadline in the queue, expire into
// saga.dead, and the saga re-sends them until payment is back.
func TestExpiredCommandsAreDeadLetteredAndRetried(t *testing.T) {
	s := testenv.StartT(t, testenv.Options{Env: map[string]string{
		"STEP_TIMEOUT": "800ms", "STEP_MAX_TIMEOUT": "800ms", "STEP_ATTEMPTS": "30",
	}})
	s.PutProduct(t, "ttl-a", "Fan", 3000, 10)
	if _, err := s.Kill("payment", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	id := s.Place(t, testenv.OrderSpec{Items: testenv.Items("ttl-a", 1)})
	b := dialBroker(t, s)
	msgID := id + ":" + order.StepChargePayment
	expired := 0
	deadline := time.Now().Add(waitFor)
	for expired < 2 && time.Now().Before(deadline) {
		for _, d := range b.dead(1) {
			deaths, _ := d.Headers["x-death"].([]any)
			if d.MessageId == msgID && len(deaths) > 0 && deaths[0].(amqp.Table)["reason"] == "expired" {
				expired++
			}
		}
	}
	if expired < 2 {
		t.Fatalf("%d expired charge commands in saga.dead, want at least 2", expired)
	}
	if err := s.StartService("payment", nil); err != nil {
		t.Fatal(err)
	}
	v := s.WaitTerminal(t, []string{id}, waitFor)[id]
	if v.State != order.StateCompleted {
		t.Fatalf("state %s (%s), want completed once payment is back", v.State, v.Reason)
	}
	for _, st := range v.Steps {
		if st.Name == order.StepChargePayment && st.Attempts < 3 {
			t.Errorf("charge attempts = %d, want at least 3 (two expired)", st.Attempts)
		}
	}
	if l := s.Ledger(t, id); l.Payment.ChargedCents != 3000 {
		t.Errorf("charged %d, want 3000 once", l.Payment.ChargedCents)
	}
}

// TestMetricsMoveWhenOrdersFlow scrapes the orchestrator and a worker
// before and after three orders.
func TestMetricsMoveWhenOrdersFlow(t *testing.T) {
	s := system(t)
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Hat", 2500, 10)
	workerMetrics := func() map[string]float64 {
		r, err := testenv.Request(s.HTTP, "http://"+s.MetricsAddr("payment"), http.MethodGet, "/metrics", nil, nil)
		if err != nil || r.Status != http.StatusOK {
			t.Fatalf("payment /metrics: %v %d", err, r.Status)
		}
		return parseMetrics(r.Body)
	}
	waitQuiet(t, s) // earlier tests' sagas and messages are done and counted
	before, wBefore := metricValues(t, s), workerMetrics()
	ids := []string{
		s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 1)}),
		s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 1)}),
		s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 1), Token: contract.DeclineToken}),
	}
	s.WaitTerminal(t, ids, waitFor)
	wants := map[string]float64{
		"sagaflow_sagas_started_total":                               3,
		`sagaflow_sagas_finished_total{outcome="completed"}`:         2,
		`sagaflow_sagas_finished_total{outcome="cancelled"}`:         1,
		`sagaflow_step_duration_seconds_count{step="reserve_stock"}`: 3,
		`sagaflow_step_duration_seconds_count{step="release_stock"}`: 1,
		"sagaflow_compensations_total":                               1,
		`sagaflow_messages_published_total{result="confirmed"}`:      3 * 2, // at least: commands and events
		// The API's own: three orders accepted.
		`sagaflow_http_requests_total{code="202",method="POST",route="/orders"}`: 3,
	}
	// Metrics move just after the commit that WaitTerminal sees: wait until
	// they all got there (then check they did not go further).
	var after, wAfter map[string]float64
	for deadline := time.Now().Add(waitFor); ; time.Sleep(50 * time.Millisecond) {
		after, wAfter = metricValues(t, s), workerMetrics()
		reached := true
		for name, want := range wants {
			reached = reached && after[name]-before[name] >= want
		}
		if reached || time.Now().After(deadline) {
			break
		}
	}
	for name, want := range wants {
		if got := after[name] - before[name]; got < want || (!strings.Contains(name, "published") && got != want) {
			t.Errorf("%s moved by %v, want %v", name, got, want)
		}
	}
	for _, name := range []string{"sagaflow_outbox_backlog", "sagaflow_outbox_oldest_seconds", "sagaflow_stuck_sagas",
		"sagaflow_sagas_pending", "sagaflow_amqp_reconnects_total", `sagaflow_http_request_duration_seconds_count{method="POST",route="/orders"}`} {
		if _, ok := after[name]; !ok {
			t.Errorf("%s is not exposed", name)
		}
	}
	for name, want := range map[string]float64{
		`sagaflow_worker_commands_total{outcome="ok",type="payment.charge"}`:     2,
		`sagaflow_worker_commands_total{outcome="failed",type="payment.charge"}`: 1,
	} {
		if got := wAfter[name] - wBefore[name]; got != want {
			t.Errorf("payment %s moved by %v, want %v", name, got, want)
		}
	}
}

// TestTraceContextFollowsTheOrder: the trace id of the POST /orders request
// travels through every command and event of its saga.
func TestTraceContextFollowsTheOrder(t *testing.T) {
	s := system(t)
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Scarf", 1800, 5)
	traceID := strings.ReplaceAll(uuid.NewString(), "-", "")
	r := s.Call(t, http.MethodPost, "/orders", testenv.OrderSpec{Items: testenv.Items(sk, 1)}.Body(),
		map[string]string{"traceparent": "00-" + traceID + "-00f067aa0ba902b7-01"})
	var acc struct {
		OrderID string `json:"order_id"`
	}
	r.Decode(t, &acc)
	s.WaitTerminal(t, []string{acc.OrderID}, waitFor)
	trail(t, s, acc.OrderID, "order.completed")
	rows, err := s.Pool(t, "audit").Query(context.Background(), `SELECT type, trace_parent FROM events WHERE saga_id = $1`, uuid.MustParse(acc.OrderID))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var typ, tp string
		if err := rows.Scan(&typ, &tp); err != nil {
			t.Fatal(err)
		}
		n++
		if !strings.HasPrefix(tp, "00-"+traceID+"-") {
			t.Errorf("%s carried traceparent %q, want trace %s", typ, tp, traceID)
		}
	}
	if n < 6 {
		t.Errorf("%d events, want the whole trail", n)
	}
}

// TestQuorumQueues runs an order on quorum queues (AMQP_QUEUE_TYPE=quorum).
func TestQuorumQueues(t *testing.T) {
	s := testenv.StartT(t, testenv.Options{Env: map[string]string{"AMQP_QUEUE_TYPE": "quorum"}})
	s.PutProduct(t, "q-a", "Clock", 4000, 3)
	id := s.Place(t, testenv.OrderSpec{Items: testenv.Items("q-a", 1)})
	if v := s.WaitTerminal(t, []string{id}, waitFor)[id]; v.State != order.StateCompleted {
		t.Fatalf("state %s (%s), want completed", v.State, v.Reason)
	}
	for _, q := range []string{contract.InventoryQueue, amqpbus.ReplyQueue, contract.AuditEventsQueue} {
		var info struct {
			Type string `json:"type"`
		}
		path := "/queues/" + url.PathEscape(s.Name) + "/" + url.PathEscape(q)
		if err := s.Servers().ManagementAPI(context.Background(), http.MethodGet, path, nil, &info); err != nil {
			t.Fatal(err)
		}
		if info.Type != "quorum" {
			t.Errorf("%s is a %s queue, want quorum", q, info.Type)
		}
	}
}

// TestNormalOrdersAreNotStarvedByHighOnes: with few orders admitted at
// once and a crowd of high-priority orders waiting behind a few normal
// ones, admission still gives the oldest their share (ADMISSION_OLDEST_SHARE),
// so the normal orders finish early instead of after every high one, as
// strict priority made them.
func TestNormalOrdersAreNotStarvedByHighOnes(t *testing.T) {
	s := testenv.StartT(t, testenv.Options{
		Env:        map[string]string{"MAX_ACTIVE_SAGAS": "4", "LOG_LEVEL": "warn"},
		ServiceEnv: map[string]map[string]string{"payment": {"SIM_LATENCY": "20ms"}},
	})
	s.PutProduct(t, "fair-a", "Rope", 300, 10_000)
	// The first orders fill admission, so the rest wait as pending.
	placeMany(t, s, 8, func(int) testenv.OrderSpec {
		return testenv.OrderSpec{Items: testenv.Items("fair-a", 1), Priority: "high"}
	})
	normal := placeMany(t, s, 10, func(int) testenv.OrderSpec { return testenv.OrderSpec{Items: testenv.Items("fair-a", 1)} })
	high := placeMany(t, s, 120, func(int) testenv.OrderSpec {
		return testenv.OrderSpec{Items: testenv.Items("fair-a", 1), Priority: "high"}
	})
	s.WaitTerminal(t, append(append([]string(nil), normal...), high...), 3*waitFor)

	rows, err := s.Pool(t, "orchestrator").Query(context.Background(),
		`SELECT id::text FROM sagas WHERE id = ANY($1::uuid[]) ORDER BY updated_at, id`, append(normal, high...))
	if err != nil {
		t.Fatal(err)
	}
	rank := map[string]int{}
	for i := 0; rows.Next(); i++ {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		rank[id] = i
	}
	rows.Close()
	last := 0
	for _, id := range normal {
		last = max(last, rank[id])
	}
	t.Logf("the last of the %d normal orders finished %d-th of %d (strict priority: after every high one)", len(normal), last+1, len(rank))
	if last >= len(rank)-len(normal) {
		t.Errorf("the normal orders finished after every high one (last at %d of %d): starved", last+1, len(rank))
	}
	if last > len(rank)*3/4 {
		t.Errorf("the last normal order finished %d-th of %d: want within the first three quarters", last+1, len(rank))
	}
}
