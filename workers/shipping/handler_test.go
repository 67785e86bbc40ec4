package main

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/internal/workertest"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/sagatest"
	"github.com/sagaflow/sagaflow/saga/worker"
	"github.com/sagaflow/sagaflow/workers/shipping/migrations"
)

// newDB creates a fresh database with the shipping schema.
func newDB(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, _ := workertest.DB(t, "shipping", migrations.Set)
	return pool
}

// The handler test kit, under the names these tests use.
var (
	command      = workertest.Command
	inTx         = workertest.InTx
	run          = workertest.Run
	okVerdict    = workertest.OK
	failed       = workertest.Failed
	checkVerdict = workertest.CheckVerdict
)

type verdict = workertest.Verdict

// handle is the shipper of the tests: deliveries at once.
var handle = shipper{now: time.Now}.handle

func payloadOf[T any](t *testing.T, res worker.Result) T { return workertest.Payload[T](t, res) }

// --- shipping helpers ---

func doPrepare(t *testing.T, pool *pgxpool.Pool, orderID, country string) worker.Result {
	t.Helper()
	return run(t, pool, handle, contract.ShippingPrepare, contract.PrepareRequest{
		OrderID:         orderID,
		ShippingAddress: contract.Address{Line1: "1 Main St", City: "Springfield", Country: country},
		Items:           []contract.Item{{SKU: "apple", Quantity: 2}},
	})
}

func doCancel(t *testing.T, pool *pgxpool.Pool, orderID string) worker.Result {
	t.Helper()
	return run(t, pool, handle, contract.ShippingCancel, contract.OrderRef{OrderID: orderID})
}

func checkLedger(t *testing.T, pool *pgxpool.Pool, orderID string, want contract.ShipmentLedgerReply) {
	t.Helper()
	res, err := ledger(context.Background(), pool, command(t, contract.ShippingLedger, contract.OrderRef{OrderID: orderID}))
	if err != nil {
		t.Fatalf("ledger: %v", err)
	}
	checkVerdict(t, "ledger", res, okVerdict)
	if diff := cmp.Diff(want, payloadOf[contract.ShipmentLedgerReply](t, res)); diff != "" {
		t.Errorf("ledger of %s (-want +got):\n%s", orderID, diff)
	}
}

type shipmentRow struct {
	Status, Country string
	Prepared        bool
}

// shipments returns every shipment row by order id.
func shipments(t *testing.T, pool *pgxpool.Pool) map[string]shipmentRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT order_id, status, country, prepared FROM shipments`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]shipmentRow{}
	for rows.Next() {
		var id string
		var s shipmentRow
		if err := rows.Scan(&id, &s.Status, &s.Country, &s.Prepared); err != nil {
			t.Fatal(err)
		}
		out[id] = s
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func checkShipments(t *testing.T, pool *pgxpool.Pool, want map[string]shipmentRow) {
	t.Helper()
	if diff := cmp.Diff(want, shipments(t, pool)); diff != "" {
		t.Errorf("shipments (-want +got):\n%s", diff)
	}
}

// --- tests ---

func TestPrepareBooksShipmentOnce(t *testing.T) {
	t.Parallel()
	pool := newDB(t)

	first := doPrepare(t, pool, "o1", "fr")
	checkVerdict(t, "prepare", first, okVerdict)
	tracking := payloadOf[contract.PrepareReply](t, first).TrackingNumber
	if !strings.HasPrefix(tracking, "trk_") || len(tracking) <= len("trk_") {
		t.Errorf("tracking_number = %q, want trk_<id>", tracking)
	}

	// A re-sent prepare (new message id) answers the same tracking number.
	second := doPrepare(t, pool, "o1", "FR")
	if diff := cmp.Diff(first, second); diff != "" {
		t.Errorf("repeated prepare (-first +second):\n%s", diff)
	}
	checkLedger(t, pool, "o1", contract.ShipmentLedgerReply{Prepared: 1})
	checkShipments(t, pool, map[string]shipmentRow{"o1": {Status: "prepared", Country: "FR", Prepared: true}})
}

func TestPrepareToRefusedCountryFails(t *testing.T) {
	t.Parallel()
	for _, country := range []string{"ZZ", "zz", "Zz"} {
		t.Run(country, func(t *testing.T) {
			t.Parallel()
			pool := newDB(t)

			checkVerdict(t, "prepare", doPrepare(t, pool, "o1", country), failed(contract.CodeCarrierRefused))
			checkVerdict(t, "re-sent prepare", doPrepare(t, pool, "o1", country), failed(contract.CodeCarrierRefused))
			// Cancelling a refused shipment is a harmless no-op.
			checkVerdict(t, "cancel", doCancel(t, pool, "o1"), okVerdict)

			checkLedger(t, pool, "o1", contract.ShipmentLedgerReply{})
			checkShipments(t, pool, map[string]shipmentRow{"o1": {Status: "refused", Country: "ZZ"}})
		})
	}
}

func TestCancelAfterPrepare(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	checkVerdict(t, "prepare", doPrepare(t, pool, "o1", "DE"), okVerdict)

	checkVerdict(t, "cancel", doCancel(t, pool, "o1"), okVerdict)
	checkLedger(t, pool, "o1", contract.ShipmentLedgerReply{Prepared: 1, Cancelled: 1})

	checkVerdict(t, "repeated cancel", doCancel(t, pool, "o1"), okVerdict)
	checkLedger(t, pool, "o1", contract.ShipmentLedgerReply{Prepared: 1, Cancelled: 1})
	checkShipments(t, pool, map[string]shipmentRow{"o1": {Status: "cancelled", Country: "DE", Prepared: true}})
}

// A cancel that overtakes its prepare wins: the late prepare is a no-op.
func TestCancelBeforePrepareMakesLatePrepareFail(t *testing.T) {
	t.Parallel()
	pool := newDB(t)

	checkVerdict(t, "early cancel", doCancel(t, pool, "o1"), okVerdict)
	checkVerdict(t, "late prepare", doPrepare(t, pool, "o1", "DE"), failed(contract.CodeAlreadyCanceled))
	checkVerdict(t, "repeated cancel", doCancel(t, pool, "o1"), okVerdict)
	checkVerdict(t, "re-sent late prepare", doPrepare(t, pool, "o1", "DE"), failed(contract.CodeAlreadyCanceled))

	checkLedger(t, pool, "o1", contract.ShipmentLedgerReply{})
	checkShipments(t, pool, map[string]shipmentRow{"o1": {Status: "cancelled"}})
}

func TestLedgerOfUnknownOrderIsZero(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	checkVerdict(t, "prepare other order", doPrepare(t, pool, "other", "US"), okVerdict)

	checkLedger(t, pool, "o1", contract.ShipmentLedgerReply{})
	checkLedger(t, pool, "other", contract.ShipmentLedgerReply{Prepared: 1})
}

func TestInvalidPayloadsAreRejected(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	inTxCall := func(h worker.BatchHandlerFunc) func(context.Context, worker.Command) (worker.Result, error) {
		return func(ctx context.Context, cmd worker.Command) (worker.Result, error) { return inTx(ctx, pool, h, cmd) }
	}
	ledgerCall := func(ctx context.Context, cmd worker.Command) (worker.Result, error) { return ledger(ctx, pool, cmd) }
	tests := []struct {
		name    string
		typ     string
		call    func(context.Context, worker.Command) (worker.Result, error)
		payload string
	}{
		{"prepare missing country", contract.ShippingPrepare, inTxCall(handle), `{"order_id":"o1","shipping_address":{"line1":"1 Main St","city":"X"}}`},
		{"prepare missing address", contract.ShippingPrepare, inTxCall(handle), `{"order_id":"o1"}`},
		{"prepare missing order_id", contract.ShippingPrepare, inTxCall(handle), `{"shipping_address":{"country":"FR"}}`},
		{"prepare unknown field", contract.ShippingPrepare, inTxCall(handle), `{"order_id":"o1","shipping_address":{"country":"FR"},"express":true}`},
		{"prepare unknown address field", contract.ShippingPrepare, inTxCall(handle), `{"order_id":"o1","shipping_address":{"country":"FR","zip":"75001"}}`},
		{"prepare bad JSON", contract.ShippingPrepare, inTxCall(handle), `{"order_id":"o1",`},
		{"cancel missing order_id", contract.ShippingCancel, inTxCall(handle), `{"order_id":""}`},
		{"cancel unknown field", contract.ShippingCancel, inTxCall(handle), `{"order_id":"o1","reason":"x"}`},
		{"cancel bad JSON", contract.ShippingCancel, inTxCall(handle), `}`},
		{"ledger bad JSON", contract.ShippingLedger, ledgerCall, `x`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := tt.call(context.Background(), command(t, tt.typ, tt.payload))
			var inv *worker.InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("got result %+v, error %v; want a *worker.InvalidError", res, err)
			}
		})
	}
	checkShipments(t, pool, map[string]shipmentRow{})
}

// A batch mixing prepares and cancellations of orders in every state
// answers and records each as one by one would.
func TestBatchOfPreparesAndCancellations(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	checkVerdict(t, "prepare o1", doPrepare(t, pool, "o1", "FR"), okVerdict)
	prepare := func(id, country string) worker.Command {
		return command(t, contract.ShippingPrepare, contract.PrepareRequest{
			OrderID: id, ShippingAddress: contract.Address{Line1: "1 Main St", City: "Springfield", Country: country},
		})
	}
	cancel := func(id string) worker.Command {
		return command(t, contract.ShippingCancel, contract.OrderRef{OrderID: id})
	}

	vs := workertest.RunBatch(t, pool, handle,
		prepare("o1", "FR"), // prepared before: same tracking number
		cancel("o1"),
		prepare("o2", "de"),
		prepare("o3", "ZZ"),
		cancel("o4"), // before its prepare
		prepare("o4", "US"),
		command(t, contract.ShippingPrepare, `{"order_id":"o5"}`),
	)
	got := workertest.Verdicts(vs)
	want := []verdict{okVerdict, okVerdict, okVerdict, failed(contract.CodeCarrierRefused), okVerdict,
		failed(contract.CodeAlreadyCanceled), workertest.Invalid}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("verdicts (-want +got):\n%s", diff)
	}
	checkShipments(t, pool, map[string]shipmentRow{
		"o1": {Status: "cancelled", Country: "FR", Prepared: true},
		"o2": {Status: "prepared", Country: "DE", Prepared: true},
		"o3": {Status: "refused", Country: "ZZ"},
		"o4": {Status: "cancelled"},
	})
}

// --- deliveries ---

type deliveryRow struct {
	DeliverAt, DeliveredAt bool // set
	Announced              bool
}

func deliveryOf(t *testing.T, pool *pgxpool.Pool, orderID string) deliveryRow {
	t.Helper()
	var r deliveryRow
	if err := pool.QueryRow(context.Background(), `SELECT deliver_at IS NOT NULL, delivered_at IS NOT NULL, announced
		FROM shipments WHERE order_id = $1`, orderID).Scan(&r.DeliverAt, &r.DeliveredAt, &r.Announced); err != nil {
		t.Fatal(err)
	}
	return r
}

// With no delay the prepare's reply carries the delivery signal, and the
// shipment is recorded delivered and announced; with a delay, nothing is
// said yet.
func TestPrepareDeliversAtOnceOrLater(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	now := time.Date(2026, 12, 3, 10, 0, 0, 123456789, time.UTC)
	atOnce := shipper{now: func() time.Time { return now }}.handle
	later := shipper{delay: time.Hour, now: func() time.Time { return now }}.handle
	req := func(id string) contract.PrepareRequest {
		return contract.PrepareRequest{OrderID: id, ShippingAddress: contract.Address{Line1: "1 Main St", City: "X", Country: "FR"}}
	}

	res := run(t, pool, atOnce, contract.ShippingPrepare, req("o1"))
	checkVerdict(t, "prepare", res, okVerdict)
	want := []saga.Signal{{Name: contract.ShippingDelivered, Key: "delivered:o1",
		Payload: json.RawMessage(`{"delivered_at":"2026-12-03T10:00:00.123456Z"}`)}}
	if diff := cmp.Diff(want, res.Signals); diff != "" {
		t.Errorf("signals of a prepare without delay (-want +got):\n%s", diff)
	}
	if got := deliveryOf(t, pool, "o1"); got != (deliveryRow{DeliverAt: true, DeliveredAt: true, Announced: true}) {
		t.Errorf("o1 delivery %+v, want delivered and announced", got)
	}

	res = run(t, pool, later, contract.ShippingPrepare, req("o2"))
	if len(res.Signals) != 0 {
		t.Errorf("a prepare with a delay said %v", res.Signals)
	}
	if got := deliveryOf(t, pool, "o2"); got != (deliveryRow{DeliverAt: true}) {
		t.Errorf("o2 delivery %+v, want due later, not delivered", got)
	}
}

// A confirmation of receipt makes a prepared shipment due now; a shipment
// refused, cancelled or never prepared is not_shipped.
func TestConfirmDelivery(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	later := shipper{delay: time.Hour, now: time.Now}.handle
	run(t, pool, later, contract.ShippingPrepare, contract.PrepareRequest{OrderID: "o1",
		ShippingAddress: contract.Address{Line1: "1 Main St", City: "X", Country: "FR"}})
	doPrepare(t, pool, "refused", "ZZ")
	doCancel(t, pool, "cancelled")
	d := &deliveries{db: pool, wake: make(chan struct{}, 1)}
	for order, want := range map[string]string{
		"o1": contract.DeliveryConfirmed, "refused": contract.DeliveryNotShipped,
		"cancelled": contract.DeliveryNotShipped, "never": contract.DeliveryNotShipped,
	} {
		res, err := d.confirm(context.Background(), command(t, contract.ShippingConfirmDelivery, contract.OrderRef{OrderID: order}))
		if err != nil {
			t.Fatalf("confirm %s: %v", order, err)
		}
		if got := payloadOf[contract.DeliveryReply](t, res).Status; got != want {
			t.Errorf("confirm %s = %s, want %s", order, got, want)
		}
	}
	var due bool
	if err := pool.QueryRow(context.Background(), `SELECT deliver_at <= now() FROM shipments WHERE order_id = 'o1'`).Scan(&due); err != nil || !due {
		t.Errorf("o1 due now after its confirmation: %v, %v", due, err)
	}
	select {
	case <-d.wake:
	default:
		t.Error("the confirmation did not wake the delivery loop")
	}
	if _, err := d.confirm(context.Background(), command(t, contract.ShippingConfirmDelivery, contract.OrderRef{})); err == nil {
		t.Error("a confirmation without an order id was accepted")
	}
}

// A pass sends the signals of the deliveries due, on the signal exchange,
// and marks them announced; one not due is left for later.
func TestDeliveryPassAnnouncesDueDeliveries(t *testing.T) {
	t.Parallel()
	pool := newDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bus, err := amqpbus.Dial(ctx, amqpbus.Config{URL: sagatest.NewVhost(t), Name: t.Name()}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	top := amqpbus.SagaTopology(amqpbus.QueueOptions{}).Merge(amqpbus.SignalTopology([]string{contract.ShippingDelivered}, amqpbus.QueueOptions{}))
	if err := bus.Declare(ctx, top); err != nil {
		t.Fatal(err)
	}
	later := shipper{delay: time.Hour, now: time.Now}.handle
	for _, id := range []string{"o1", "o2", "o3"} {
		run(t, pool, later, contract.ShippingPrepare, contract.PrepareRequest{OrderID: id,
			ShippingAddress: contract.Address{Line1: "1 Main St", City: "X", Country: "FR"}})
	}
	d := &deliveries{db: pool, rt: worker.New(worker.Config{}, pool, bus, zerolog.Nop()), wake: make(chan struct{}, 1)}
	for _, id := range []string{"o1", "o2"} {
		if _, err := d.confirm(ctx, command(t, contract.ShippingConfirmDelivery, contract.OrderRef{OrderID: id})); err != nil {
			t.Fatal(err)
		}
	}
	if more := d.pass(ctx); more {
		t.Error("a pass of two deliveries said more may wait")
	}
	for id, want := range map[string]bool{"o1": true, "o2": true, "o3": false} {
		if got := deliveryOf(t, pool, id); got.Announced != want || got.DeliveredAt != want {
			t.Errorf("%s: %+v, want delivered and announced %v", id, got, want)
		}
	}
	ch, err := bus.Channel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	got := map[string]string{}
	for deadline := time.Now().Add(10 * time.Second); len(got) < 2 && time.Now().Before(deadline); {
		m, ok, err := ch.Get(amqpbus.SignalQueue, true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		env, err := saga.Decode(m.Body)
		if err != nil {
			t.Fatal(err)
		}
		got[env.SagaID] = env.ID
	}
	if diff := cmp.Diff(map[string]string{"o1": "delivered:o1", "o2": "delivered:o2"}, got); diff != "" {
		t.Errorf("signals sent (saga → key) (-want +got):\n%s", diff)
	}
	if more := d.pass(ctx); more {
		t.Error("a second pass found more")
	}

	// A confirmation of a shipment announced already (its signal went
	// astray: the order is stuck for want of it) announces it again.
	if _, err := d.confirm(ctx, command(t, contract.ShippingConfirmDelivery, contract.OrderRef{OrderID: "o1"})); err != nil {
		t.Fatal(err)
	}
	if got := deliveryOf(t, pool, "o1"); got.Announced {
		t.Fatalf("o1 after a second confirmation: %+v, want due to be announced again", got)
	}
	d.pass(ctx)
	if got := deliveryOf(t, pool, "o1"); !got.Announced {
		t.Errorf("o1 not announced again: %+v", got)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		m, ok, err := ch.Get(amqpbus.SignalQueue, true)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			if env, _ := saga.Decode(m.Body); env.ID != "delivered:o1" {
				t.Errorf("announced again: %s, want delivered:o1", env.ID)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no signal announced again within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
