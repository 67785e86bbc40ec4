// Package chaos is the fault-injection suite: thousands of orders while
// every process is killed with SIGKILL, RabbitMQ is restarted and
// PostgreSQL goes away, then a reconciliation of the saga's view against
// every service's own books.
//
// The servers these tests stop and restart are their own: each test starts
// a private PostgreSQL and RabbitMQ (testenv.StartPrivateServers) and
// removes them at the end; the machine's servers are never touched.
// `make chaos` runs the long form (CHAOS_ORDERS=3000).
package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/orchestrator/order"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/sagatest"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// privateServers starts the test's own PostgreSQL and RabbitMQ.
func privateServers(t *testing.T) *testenv.PrivateServers {
	t.Helper()
	if testing.Short() {
		t.Skip("fault-injection test: skipped with -short")
	}
	return testenv.StartPrivateServers(t)
}

// faultEnv makes recovery quick: short step deadlines and leases, and
// budgets large enough that outages of a few seconds never exhaust them.
var faultEnv = map[string]string{
	"STEP_TIMEOUT": "2s", "STEP_MAX_TIMEOUT": "6s", "STEP_ATTEMPTS": "8",
	"COMPENSATION_ATTEMPTS": "30", "RETRIABLE_ATTEMPTS": "60",
	"OUTBOX_LEASE": "3s", "LOG_LEVEL": "warn",
}

// client places orders like a careful shop front: every order has an
// Idempotency-Key, and a request that fails (connection refused, 5xx) is
// retried with the same key, on whichever orchestrator answers.
type client struct {
	s    *testenv.System
	apis []string
	next atomic.Uint64
	http *http.Client
}

func (c *client) place(ctx context.Context, spec testenv.OrderSpec) (string, error) {
	spec.Key = uuid.NewString()
	body := spec.Body()
	wait := 50 * time.Millisecond
	for {
		base := c.apis[int(c.next.Add(1))%len(c.apis)]
		r, id, err := placeAt(c.http, base, body, spec.Key)
		switch {
		case err == nil && r == http.StatusAccepted:
			return id, nil
		case err == nil && r >= 400 && r < 500:
			return "", fmt.Errorf("order refused: %d", r)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("gave up placing an order: %v (%d)", err, r)
		case <-time.After(wait):
		}
		if wait < time.Second {
			wait *= 2
		}
	}
}

type spec struct {
	kind string
	sku  string
	qty  int
}

// figures is the reconciliation, printed at the end.
type figures struct {
	accepted, completed, cancelled, rejected, notTerminal int
	charged, refunded, expectedNet                        int64
	shipmentsCompleted, activeShipmentsOther              int
	kills                                                 map[string]int
	brokerRestarts, dbRestarts                            int
	poisonSent, duplicatesSent                            int
	stock                                                 map[string][4]int64 // initial, available, reserved, sold
}

func TestChaos(t *testing.T) {
	priv := privateServers(t)
	orders := envInt("CHAOS_ORDERS", 400)
	concurrency := envInt("CHAOS_CONCURRENCY", 16)
	services := append([]string{"orchestrator", "orchestrator-2"}, testenv.Workers...)
	s := testenv.StartT(t, testenv.Options{Services: services, Env: faultEnv, Servers: priv.Servers()})
	c := &client{s: s, apis: []string{s.API("orchestrator"), s.API("orchestrator-2")},
		http: &http.Client{Timeout: 10 * time.Second}}

	// The catalog: stock for about 90% of the good orders, so some run out.
	skus := []string{"chaos-a", "chaos-b", "chaos-c", "chaos-d"}
	initial := map[string]int64{}
	for i, sk := range skus {
		stock := int64(orders / len(skus))
		s.PutProduct(t, sk, "Chaos "+sk, int64(500+100*i), stock)
		initial[sk] = stock
	}
	s.PutProduct(t, "chaos-empty", "Never in stock", 999, 0)
	initial["chaos-empty"] = 0

	plan := make([]spec, orders)
	for i := range plan {
		sk := skus[rand.IntN(len(skus))]
		switch r := rand.IntN(100); {
		case r < 10:
			plan[i] = spec{"decline", sk, 1}
		case r < 20:
			plan[i] = spec{"refused", sk, 1}
		case r < 28:
			plan[i] = spec{"out_of_stock", "chaos-empty", 1}
		default:
			plan[i] = spec{"good", sk, 1 + rand.IntN(2)}
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	ids := make([]string, orders)
	var (
		wg       sync.WaitGroup
		failures atomic.Int64
		placed   atomic.Int64
		firstErr atomic.Value
	)
	work := make(chan int)
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				p := plan[i]
				o := testenv.OrderSpec{Items: testenv.Items(p.sku, p.qty), Customer: fmt.Sprintf("cust-%d", i)}
				switch p.kind {
				case "decline":
					o.Token = contract.DeclineToken
				case "refused":
					o.Country = contract.RefusedCountry
				}
				id, err := c.place(ctx, o)
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				ids[i] = id
				placed.Add(1)
			}
		}()
	}

	// The chaos monkey: kill -9 a process, restart it; crash PostgreSQL
	// (an immediate stop) once, a third of the way; restart the broker
	// once, half way.
	f := figures{kills: map[string]int{}, stock: map[string][4]int64{}}
	monkeyDone := make(chan error, 1)
	victims := []string{"orchestrator", "inventory", "payment", "shipping", "orchestrator-2", "notification", "audit"}
	rounds := envInt("CHAOS_KILLS", 2) * len(victims)
	go func() {
		for i := 0; i < rounds; i++ {
			time.Sleep(time.Duration(200+rand.IntN(600)) * time.Millisecond)
			if i == rounds/3 {
				t.Logf("chaos: PostgreSQL stopped in immediate mode and started (%d orders placed)", placed.Load())
				err := priv.Postgres.Stop("immediate")
				if err == nil {
					err = priv.Postgres.Start()
				}
				if err != nil {
					monkeyDone <- err
					return
				}
				f.dbRestarts++
			}
			if i == rounds/2 {
				t.Logf("chaos: restarting RabbitMQ (%d orders placed)", placed.Load())
				err := priv.RabbitMQ.Stop()
				if err == nil {
					err = priv.RabbitMQ.Start()
				}
				if err != nil {
					monkeyDone <- err
					return
				}
				f.brokerRestarts++
			}
			v := victims[i%len(victims)]
			if _, err := s.Kill(v, syscall.SIGKILL); err != nil {
				monkeyDone <- err
				return
			}
			f.kills[v]++
			time.Sleep(time.Duration(100+rand.IntN(700)) * time.Millisecond)
			if err := s.StartService(v, nil); err != nil {
				monkeyDone <- err
				return
			}
		}
		monkeyDone <- nil
	}()
	// Meanwhile, poison and duplicates on the bus: an event nobody can
	// read, and copies of events already delivered (taken from the audit
	// log), which every consumer must take once.
	injectDone := make(chan struct{})
	stopInject := make(chan struct{})
	go func() {
		defer close(injectDone)
		inject(t, s, &f, stopInject)
	}()
	// Pace the orders over the chaos, about a second a round, so that
	// processes die with sagas in every state.
	pace := time.Duration(float64(rounds) * float64(time.Second) / float64(orders))
	tick := time.NewTicker(pace)
	for i := range plan {
		<-tick.C
		work <- i
	}
	tick.Stop()
	close(work)
	wg.Wait()
	if err := <-monkeyDone; err != nil {
		t.Fatalf("chaos monkey: %v", err)
	}
	t.Logf("chaos: the monkey's %d rounds ended after %s", rounds, time.Since(start).Round(time.Millisecond))
	close(stopInject)
	<-injectDone
	acceptedIn := time.Since(start)
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d orders could not be placed, first: %v", n, firstErr.Load())
	}
	if err := s.WaitReady(time.Minute); err != nil {
		t.Fatal(err)
	}

	db := s.Pool(t, "")
	f.accepted = len(ids)
	waitAllTerminal(t, db, ids, 5*time.Minute)
	reconcile(t, db, ids, initial, &f)
	reconcileEvents(t, db, ids, 2*time.Minute)
	t.Logf("chaos: %d orders accepted in %s, all terminal after %s", f.accepted, acceptedIn.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	t.Logf("chaos: kills %v, RabbitMQ restarts %d, PostgreSQL crashes %d, poison events %d, duplicate events %d",
		f.kills, f.brokerRestarts, f.dbRestarts, f.poisonSent, f.duplicatesSent)
	t.Logf("chaos: outcomes completed %d, cancelled %d, rejected %d, not terminal %d", f.completed, f.cancelled, f.rejected, f.notTerminal)
	t.Logf("chaos: charged %d, refunded %d, net %d cents = completed orders' amounts %d", f.charged, f.refunded, f.charged-f.refunded, f.expectedNet)
	t.Logf("chaos: shipments of completed orders %d (want %d), live shipments of other orders %d (want 0)", f.shipmentsCompleted, f.completed, f.activeShipmentsOther)
	for sk, st := range f.stock {
		t.Logf("chaos: stock %-12s initial %4d = available %4d + reserved %d + sold %4d", sk, st[0], st[1], st[2], st[3])
	}
}

// waitAllTerminal polls the saga table until every order is terminal.
func waitAllTerminal(t *testing.T, db *pgxpool.Pool, ids []string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var open int
		var sample *string
		err := db.QueryRow(context.Background(), `
			SELECT count(*), min(id::text || ' ' || state || ' ' || stuck_reason)
			FROM orchestrator.sagas WHERE id = ANY($1::uuid[]) AND state NOT IN ('completed', 'rejected', 'cancelled')`,
			ids).Scan(&open, &sample)
		if err == nil && open == 0 {
			return
		}
		if time.Now().After(deadline) {
			s := ""
			if sample != nil {
				s = *sample
			}
			var states string
			_ = db.QueryRow(context.Background(), `
				SELECT coalesce(string_agg(state || ' ' || n, ', '), '') FROM (
					SELECT state, count(*) AS n FROM orchestrator.sagas
					WHERE id = ANY($1::uuid[]) AND state NOT IN ('completed', 'rejected', 'cancelled') GROUP BY state) g`,
				ids).Scan(&states)
			t.Fatalf("%d orders not terminal after %s (%v): %s; e.g. %s", open, timeout, err, states, s)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// reconcile checks the saga's view against each service's books.
func reconcile(t *testing.T, db *pgxpool.Pool, ids []string, initial map[string]int64, f *figures) {
	t.Helper()
	ctx := context.Background()
	rows, err := db.Query(ctx, `
		SELECT s.id::text, s.state, coalesce((s.data->>'amount_cents')::bigint, 0),
			coalesce(p.charged_cents, 0), coalesce(p.refunded_cents, 0),
			coalesce(sh.prepared AND sh.status <> 'cancelled', false)
		FROM orchestrator.sagas s
		LEFT JOIN payment.payments p ON p.order_id = s.id::text
		LEFT JOIN shipping.shipments sh ON sh.order_id = s.id::text
		WHERE s.id = ANY($1::uuid[])`, ids)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	seen := 0
	var bad []string
	for rows.Next() {
		var (
			id, state               string
			amount, charged, refund int64
			shipped                 bool
		)
		if err := rows.Scan(&id, &state, &amount, &charged, &refund, &shipped); err != nil {
			t.Fatal(err)
		}
		seen++
		f.charged += charged
		f.refunded += refund
		net := charged - refund
		switch state {
		case order.StateCompleted:
			f.completed++
			f.expectedNet += amount
			if shipped {
				f.shipmentsCompleted++
			}
			if net != amount || !shipped {
				bad = append(bad, fmt.Sprintf("completed %s: net charge %d, amount %d, shipped %v", id, net, amount, shipped))
			}
		case order.StateCancelled, order.StateRejected:
			if state == order.StateCancelled {
				f.cancelled++
			} else {
				f.rejected++
			}
			if shipped {
				f.activeShipmentsOther++
			}
			if net != 0 || shipped {
				bad = append(bad, fmt.Sprintf("%s %s: net charge %d, shipped %v", state, id, net, shipped))
			}
		default:
			f.notTerminal++
		}
	}
	if seen != len(ids) {
		t.Errorf("%d of %d accepted orders found", seen, len(ids))
	}
	if len(bad) > 0 {
		t.Errorf("%d orders disagree with the services' books, e.g.:\n%s", len(bad), strings.Join(bad[:min(len(bad), 10)], "\n"))
	}
	if f.charged-f.refunded != f.expectedNet {
		t.Errorf("charges - refunds = %d, want the completed amounts %d", f.charged-f.refunded, f.expectedNet)
	}
	// Stock: conserved, nothing left reserved, sold = completed quantities.
	sold := map[string]int64{}
	qrows, err := db.Query(ctx, `
		SELECT it->>'sku', sum((it->>'quantity')::bigint)
		FROM orchestrator.sagas s, json_array_elements(s.data->'items') it
		WHERE s.id = ANY($1::uuid[]) AND s.state = 'completed' GROUP BY 1`, ids)
	if err != nil {
		t.Fatal(err)
	}
	for qrows.Next() {
		var sk string
		var n int64
		if err := qrows.Scan(&sk, &n); err != nil {
			t.Fatal(err)
		}
		sold[sk] = n
	}
	qrows.Close()
	for sk, init := range initial {
		var a, r, so int64
		if err := db.QueryRow(ctx, `SELECT available, reserved, sold FROM inventory.products WHERE sku = $1`, sk).Scan(&a, &r, &so); err != nil {
			t.Fatal(err)
		}
		f.stock[sk] = [4]int64{init, a, r, so}
		if a+r+so != init || r != 0 || so != sold[sk] || a < 0 {
			t.Errorf("stock of %s: initial %d, available %d + reserved %d + sold %d; completed orders bought %d",
				sk, init, a, r, so, sold[sk])
		}
	}
	// Nothing is left behind in the outbox.
	var outbox int64
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if err := db.QueryRow(ctx, `SELECT count(*) FROM orchestrator.outbox`).Scan(&outbox); err == nil && outbox == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%d messages still in the outbox", outbox)
			break
		}
	}
	if f.completed == 0 {
		t.Error("no order completed: the run proves nothing")
	}
	// Why orders did not complete: by state and failure code, with a sample.
	rrows, err := db.Query(ctx, `
		SELECT state, count(*), min(reason)
		FROM orchestrator.sagas WHERE id = ANY($1::uuid[]) AND state <> 'completed'
		GROUP BY state, split_part(reason, ':', 1) ORDER BY 2 DESC`, ids)
	if err != nil {
		t.Fatal(err)
	}
	defer rrows.Close()
	for rrows.Next() {
		var state, reason string
		var n int
		if err := rrows.Scan(&state, &n, &reason); err != nil {
			t.Fatal(err)
		}
		if len(reason) > 140 {
			reason = reason[:140] + "…"
		}
		t.Logf("chaos: %5d %-9s %s", n, state, reason)
	}
}

// placeAt posts one order to one orchestrator.
func placeAt(hc *http.Client, base string, body map[string]any, key string) (int, string, error) {
	r, err := testenv.Request(hc, base, http.MethodPost, "/orders", body, map[string]string{"Idempotency-Key": key})
	if err != nil {
		return 0, "", err
	}
	if r.Status != http.StatusAccepted {
		return r.Status, "", nil
	}
	var acc struct {
		OrderID string `json:"order_id"`
	}
	if err := json.Unmarshal(r.Body, &acc); err != nil {
		return r.Status, "", err
	}
	return r.Status, acc.OrderID, nil
}

func TestMain(m *testing.M) {
	code := m.Run()
	testenv.RemoveBinaries()
	os.Exit(sagatest.CheckedRun(code))
}

// inject publishes, every ~300 ms until stop, a poison event and copies of
// a few events the audit log already holds.
func inject(t *testing.T, s *testenv.System, f *figures, stop <-chan struct{}) {
	conn, err := amqp.Dial(s.AMQPURL)
	if err != nil {
		t.Errorf("inject: %v", err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Errorf("inject: %v", err)
		return
	}
	db := s.Pool(t, "audit")
	for {
		select {
		case <-stop:
			return
		case <-time.After(300 * time.Millisecond):
		}
		pub := func(key, id string, body []byte) {
			_ = ch.PublishWithContext(context.Background(), amqpbus.EventExchange, key, false, false,
				amqp.Publishing{MessageId: id, DeliveryMode: amqp.Persistent, Body: body})
		}
		pub(contract.EventOrderCompleted, uuid.NewString(), []byte("poison: not an event"))
		f.poisonSent++
		rows, err := db.Query(context.Background(), `SELECT id, saga_id, type, at, payload FROM events ORDER BY random() LIMIT 3`)
		if err != nil {
			continue // PostgreSQL may be down right now
		}
		for rows.Next() {
			var (
				id, sagaID uuid.UUID
				typ        string
				at         time.Time
				payload    []byte
			)
			if rows.Scan(&id, &sagaID, &typ, &at, &payload) != nil {
				continue
			}
			env := saga.Envelope{ID: id.String(), CorrelationID: sagaID.String(), SagaID: sagaID.String(), Type: typ, At: at, Payload: payload}
			pub(typ, id.String(), env.Encode())
			f.duplicatesSent++
		}
		rows.Close()
	}
}

// reconcileEvents checks what customers and auditors were told: for every
// terminal order exactly one email and one SMS, and an audit trail that
// ends in the order's terminal event; for every completed order, exactly
// one order.delivered and a delivered_at, and for no other order either.
// Consumers are asynchronous: it waits up to timeout for them to catch up.
func reconcileEvents(t *testing.T, db *pgxpool.Pool, ids []string, timeout time.Duration) {
	t.Helper()
	ctx := context.Background()
	var bad []string
	for deadline := time.Now().Add(timeout); ; time.Sleep(500 * time.Millisecond) {
		bad = bad[:0]
		rows, err := db.Query(ctx, `
			SELECT s.id::text, s.state,
				(SELECT count(*) FROM notification.notifications n WHERE n.order_id = s.id::text AND n.channel = 'email'),
				(SELECT count(*) FROM notification.notifications n WHERE n.order_id = s.id::text AND n.channel = 'sms'),
				coalesce((SELECT e.type FROM audit.events e WHERE e.saga_id = s.id ORDER BY e.seq DESC LIMIT 1), ''),
				(SELECT count(*) FROM audit.events e WHERE e.saga_id = s.id AND e.type = 'order.delivered'),
				s.data->>'delivered_at' IS NOT NULL
			FROM orchestrator.sagas s WHERE s.id = ANY($1::uuid[])`, ids)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var id, state, last string
			var email, sms, delivered int
			var deliveredAt bool
			if err := rows.Scan(&id, &state, &email, &sms, &last, &delivered, &deliveredAt); err != nil {
				t.Fatal(err)
			}
			wantDelivered := state == "completed"
			if email != 1 || sms != 1 || last != "order."+state || (delivered == 1) != wantDelivered || delivered > 1 || deliveredAt != wantDelivered {
				bad = append(bad, fmt.Sprintf("%s %s: %d email, %d SMS, audit trail ends in %q, %d order.delivered, delivered_at set %v",
					id, state, email, sms, last, delivered, deliveredAt))
			}
		}
		rows.Close()
		if len(bad) == 0 {
			t.Logf("chaos: every one of %d orders has exactly one email, one SMS, and an audit trail ending in its outcome; each completed one was delivered once", len(ids))
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%d orders were not told their outcome exactly once, e.g.:\n%s", len(bad), strings.Join(bad[:min(len(bad), 10)], "\n"))
			return
		}
	}
}
