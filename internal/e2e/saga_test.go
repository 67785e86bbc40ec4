package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
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
)

const waitFor = 60 * time.Second

// stepSummary is what a test asserts about an order's history.
type stepSummary struct {
	Name, Status string
	Attempts     int
}

// steps summarises an order's steps and checks their timestamps.
func steps(t *testing.T, v order.View) []stepSummary {
	t.Helper()
	var out []stepSummary
	for _, s := range v.Steps {
		if s.StartedAt.IsZero() {
			t.Errorf("step %s has no started_at", s.Name)
		}
		if s.Status != saga.StepRunning && (s.FinishedAt == nil || s.FinishedAt.Before(s.StartedAt)) {
			t.Errorf("step %s: finished_at %v before started_at %v", s.Name, s.FinishedAt, s.StartedAt)
		}
		out = append(out, stepSummary{s.Name, s.Status, s.Attempts})
	}
	return out
}

func TestHappyPathCompletes(t *testing.T) {
	s := system(t)
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Mechanical Mouse", 1250, 5)

	id := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 2)})
	v := s.WaitTerminal(t, []string{id}, waitFor)[id]

	if v.State != order.StateCompleted {
		t.Fatalf("state = %s (%s), want completed", v.State, v.Reason)
	}
	if v.AmountCents != 2500 {
		t.Errorf("amount_cents = %d, want 2500 (priced by inventory)", v.AmountCents)
	}
	want := []stepSummary{
		{order.StepReserveStock, saga.StepSucceeded, 1},
		{order.StepChargePayment, saga.StepSucceeded, 1},
		{order.StepPrepareShipment, saga.StepSucceeded, 1},
		{order.StepCommitStock, saga.StepSucceeded, 1},
		{order.StepAwaitDelivery, saga.StepSucceeded, 1},
	}
	if diff := cmp.Diff(want, steps(t, v)); diff != "" {
		t.Errorf("steps (-want +got):\n%s", diff)
	}
	// Delivered at once (SIM_DELIVERY_DELAY 0s), after it was shipped.
	if v.DeliveredAt == nil || v.DeliveredAt.Before(v.CreatedAt) {
		t.Errorf("delivered_at = %v, want a time after the order was created (%v)", v.DeliveredAt, v.CreatedAt)
	}
	// The address and the tracking number are the admin view's only.
	var public map[string]any
	s.Call(t, http.MethodGet, "/orders/"+id, nil, nil).Decode(t, &public)
	for _, k := range []string{"shipping_address", "tracking_number"} {
		if _, ok := public[k]; ok {
			t.Errorf("the public view shows %s", k)
		}
	}
	var admin order.AdminView
	s.Admin(t, http.MethodGet, "/admin/orders/"+id, nil).Decode(t, &admin)
	if admin.TrackingNumber == "" || admin.ShippingAddress.Country != "US" || admin.OrderID != id {
		t.Errorf("admin view %+v: want the tracking number and the address", admin)
	}
	if p := s.Product(t, sk); p.Available != 3 || p.Reserved != 0 || p.Sold != 2 {
		t.Errorf("stock = %+v, want available 3, reserved 0, sold 2", p)
	}
	wantLedger := testenv.Books{
		Payment:       contract.PaymentLedgerReply{ChargedCents: 2500},
		Shipment:      contract.ShipmentLedgerReply{Prepared: 1},
		Notifications: contract.NotificationLedgerReply{Email: 1, SMS: 1},
	}
	if diff := cmp.Diff(wantLedger, s.WaitLedger(t, id, wantLedger, waitFor)); diff != "" {
		t.Errorf("ledger (-want +got):\n%s", diff)
	}
}

func TestOutOfStockIsRejected(t *testing.T) {
	s := system(t)
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Keyboard", 500, 1)

	id := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 2)})
	v := s.WaitTerminal(t, []string{id}, waitFor)[id]

	if v.State != order.StateRejected || !strings.Contains(v.Reason, contract.CodeOutOfStock) {
		t.Fatalf("state %s reason %q, want rejected for out_of_stock", v.State, v.Reason)
	}
	if diff := cmp.Diff([]stepSummary{{order.StepReserveStock, saga.StepFailed, 1}}, steps(t, v)); diff != "" {
		t.Errorf("steps (-want +got):\n%s", diff)
	}
	told := testenv.Books{Notifications: contract.NotificationLedgerReply{Email: 1, SMS: 1}}
	if diff := cmp.Diff(told, s.WaitLedger(t, id, told, waitFor)); diff != "" {
		t.Errorf("nothing may be charged or shipped; the customer is told once (-want +got):\n%s", diff)
	}
	if p := s.Product(t, sk); p.Available != 1 || p.Reserved != 0 {
		t.Errorf("stock = %+v, want untouched", p)
	}
}

func TestUnknownSKUIsAcceptedThenRejected(t *testing.T) {
	s := system(t)
	id := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sku(t, "nope"), 1)})
	v := s.WaitTerminal(t, []string{id}, waitFor)[id]
	if v.State != order.StateRejected || !strings.Contains(v.Reason, contract.CodeUnknownSKU) {
		t.Fatalf("state %s reason %q, want rejected for unknown_sku", v.State, v.Reason)
	}
}

func TestDeclinedPaymentIsCancelledAndStockRestored(t *testing.T) {
	s := system(t)
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Monitor", 10000, 4)

	id := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 3), Token: contract.DeclineToken})
	v := s.WaitTerminal(t, []string{id}, waitFor)[id]

	if v.State != order.StateCancelled || !strings.Contains(v.Reason, contract.CodeCardDeclined) {
		t.Fatalf("state %s reason %q, want cancelled for card_declined", v.State, v.Reason)
	}
	want := []stepSummary{
		{order.StepReserveStock, saga.StepSucceeded, 1},
		{order.StepChargePayment, saga.StepFailed, 1},
		{order.StepReleaseStock, saga.StepSucceeded, 1},
	}
	if diff := cmp.Diff(want, steps(t, v)); diff != "" {
		t.Errorf("steps (-want +got):\n%s", diff)
	}
	if p := s.Product(t, sk); p.Available != 4 || p.Reserved != 0 || p.Sold != 0 {
		t.Errorf("stock = %+v, want restored to available 4", p)
	}
	told := testenv.Books{Notifications: contract.NotificationLedgerReply{Email: 1, SMS: 1}}
	if diff := cmp.Diff(told, s.WaitLedger(t, id, told, waitFor)); diff != "" {
		t.Errorf("nothing may be charged; the customer is told once (-want +got):\n%s", diff)
	}
}

func TestRefusedShipmentIsRefundedAndStockRestored(t *testing.T) {
	s := system(t)
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Desk", 20000, 2)

	id := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 1), Country: contract.RefusedCountry})
	v := s.WaitTerminal(t, []string{id}, waitFor)[id]

	if v.State != order.StateCancelled || !strings.Contains(v.Reason, contract.CodeCarrierRefused) {
		t.Fatalf("state %s reason %q, want cancelled for carrier_refused", v.State, v.Reason)
	}
	// Compensations run in reverse order: refund, then release.
	want := []stepSummary{
		{order.StepReserveStock, saga.StepSucceeded, 1},
		{order.StepChargePayment, saga.StepSucceeded, 1},
		{order.StepPrepareShipment, saga.StepFailed, 1},
		{order.StepRefundPayment, saga.StepSucceeded, 1},
		{order.StepReleaseStock, saga.StepSucceeded, 1},
	}
	if diff := cmp.Diff(want, steps(t, v)); diff != "" {
		t.Errorf("steps (-want +got):\n%s", diff)
	}
	wantLedger := testenv.Books{
		Payment:       contract.PaymentLedgerReply{ChargedCents: 20000, RefundedCents: 20000},
		Notifications: contract.NotificationLedgerReply{Email: 1, SMS: 1},
	}
	if diff := cmp.Diff(wantLedger, s.WaitLedger(t, id, wantLedger, waitFor)); diff != "" {
		t.Errorf("ledger (-want +got):\n%s", diff)
	}
	if p := s.Product(t, sk); p.Available != 2 || p.Reserved != 0 || p.Sold != 0 {
		t.Errorf("stock = %+v, want restored to available 2", p)
	}
}

// TestConcurrentOrdersNeverOversell: 200 orders race for 50 units.
func TestConcurrentOrdersNeverOversell(t *testing.T) {
	s := system(t)
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Console", 49900, 50)

	ids := make([]string, 200)
	var wg sync.WaitGroup
	errs := make(chan error, len(ids))
	sem := make(chan struct{}, 32)
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			r, id, err := s.PlaceE(testenv.OrderSpec{Items: testenv.Items(sk, 1), Customer: uuid.NewString()})
			if err == nil && r.Status != http.StatusAccepted {
				err = &httpError{r}
			}
			ids[i] = id
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("place order: %v", err)
	}
	outcomes := map[string]int{}
	for _, v := range s.WaitTerminal(t, ids, 3*waitFor) {
		outcomes[v.State]++
	}
	if diff := cmp.Diff(map[string]int{order.StateCompleted: 50, order.StateRejected: 150}, outcomes); diff != "" {
		t.Errorf("outcomes (-want +got):\n%s", diff)
	}
	if p := s.Product(t, sk); p.Available != 0 || p.Reserved != 0 || p.Sold != 50 {
		t.Errorf("stock = %+v, want available 0, reserved 0, sold 50", p)
	}
}

type httpError struct{ r testenv.Response }

func (e *httpError) Error() string { return http.StatusText(e.r.Status) + ": " + string(e.r.Body) }

// TestDuplicateCommandHasOneEffect plays a broker that delivers a command
// twice: the payment worker charges once and answers both with the same
// stored reply.
func TestDuplicateCommandHasOneEffect(t *testing.T) {
	s := system(t)
	conn, err := amqp.Dial(s.AMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	replies, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(replies.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	orderID := uuid.NewString()
	msgID := orderID + ":" + order.StepChargePayment
	payload, _ := json.Marshal(contract.ChargeRequest{OrderID: orderID, CustomerID: "c-dup", AmountCents: 777, PaymentToken: "tok_visa"})
	body := saga.Envelope{ID: msgID, CorrelationID: msgID, SagaID: orderID, Type: contract.PaymentCharge, At: time.Now().UTC(), Payload: payload}.Encode()
	for range 2 {
		if err := ch.PublishWithContext(context.Background(), "saga.commands", contract.PaymentCharge, false, false, amqp.Publishing{
			MessageId: msgID, CorrelationId: msgID, ReplyTo: replies.Name, DeliveryMode: amqp.Persistent,
			ContentType: "application/json", Body: body,
		}); err != nil {
			t.Fatal(err)
		}
	}
	var got []saga.Envelope
	timeout := time.After(waitFor)
	for len(got) < 2 {
		select {
		case d := <-deliveries:
			env, err := saga.Decode(d.Body)
			if err != nil {
				t.Fatal(err)
			}
			if d.CorrelationId != msgID {
				t.Errorf("reply correlation_id = %q, want %q", d.CorrelationId, msgID)
			}
			got = append(got, env)
		case <-timeout:
			t.Fatalf("got %d replies, want 2", len(got))
		}
	}
	if got[0].Status != saga.ReplyOK || string(got[0].Payload) != string(got[1].Payload) {
		t.Errorf("replies differ or failed: %+v / %+v", got[0], got[1])
	}
	var charges, cents int64
	if err := s.Pool(t, "payment").QueryRow(context.Background(),
		`SELECT count(*), coalesce(sum(charged_cents), 0) FROM payments WHERE order_id = $1`, orderID).Scan(&charges, &cents); err != nil {
		t.Fatal(err)
	}
	if charges != 1 || cents != 777 {
		t.Errorf("payments: %d rows, %d cents; want 1 row, 777 cents", charges, cents)
	}
}

func TestIdempotencyKey(t *testing.T) {
	s := system(t)
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Lamp", 3000, 10)
	key := "key-" + uuid.NewString()
	spec := testenv.OrderSpec{Items: testenv.Items(sk, 1), Key: key}

	first := s.Place(t, spec)
	r, second, err := s.PlaceE(spec)
	if err != nil || r.Status != http.StatusAccepted {
		t.Fatalf("replay: %v %d %s", err, r.Status, r.Body)
	}
	if second != first || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("replay gave order %s (replayed %q), want %s", second, r.Header.Get("Idempotent-Replayed"), first)
	}
	spec.Items = testenv.Items(sk, 2)
	r, _, err = s.PlaceE(spec)
	if err != nil || r.Status != http.StatusConflict || !strings.Contains(string(r.Body), api.CodeIdempotencyKeyReused) {
		t.Errorf("same key, other body: %v %d %s; want 409 idempotency_key_reused", err, r.Status, r.Body)
	}
	s.WaitTerminal(t, []string{first}, waitFor)
	if p := s.Product(t, sk); p.Sold != 1 {
		t.Errorf("sold = %d, want 1: one order for one key", p.Sold)
	}
}

func TestGetOrderErrors(t *testing.T) {
	s := system(t)
	for _, tc := range []struct {
		path   string
		status int
		code   string
	}{
		{"/orders/" + uuid.NewString(), http.StatusNotFound, api.CodeNotFound},
		{"/orders/not-a-uuid", http.StatusBadRequest, api.CodeInvalidRequest},
		{"/orders?state=bogus", http.StatusBadRequest, api.CodeInvalidRequest},
		{"/orders?limit=0", http.StatusBadRequest, api.CodeInvalidRequest},
		{"/orders?cursor=xyz", http.StatusBadRequest, api.CodeInvalidRequest},
		{"/products/" + sku(t, "missing"), http.StatusNotFound, api.CodeNotFound},
		{"/products/bad%20sku", http.StatusBadRequest, api.CodeInvalidRequest},
		{"/nowhere", http.StatusNotFound, api.CodeNotFound},
	} {
		r := s.Call(t, http.MethodGet, tc.path, nil, nil)
		var e testenv.ErrorBody
		if err := json.Unmarshal(r.Body, &e); err != nil || r.Status != tc.status || e.Error.Code != tc.code || e.Error.Message == "" {
			t.Errorf("GET %s = %d %s, want %d with code %s", tc.path, r.Status, r.Body, tc.status, tc.code)
		}
	}
}

func TestListOrdersNewestFirstWithCursor(t *testing.T) {
	s := system(t)
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Pen", 100, 100)
	var ids []string
	for range 3 {
		ids = append(ids, s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 1)}))
	}
	s.WaitTerminal(t, ids, waitFor)

	var page1, page2 struct {
		Orders     []order.View `json:"orders"`
		NextCursor *string      `json:"next_cursor"`
	}
	s.Call(t, http.MethodGet, "/orders?state=completed&limit=2", nil, nil).Decode(t, &page1)
	if len(page1.Orders) != 2 || page1.NextCursor == nil {
		t.Fatalf("page 1: %d orders, cursor %v", len(page1.Orders), page1.NextCursor)
	}
	if page1.Orders[0].OrderID != ids[2] || page1.Orders[1].OrderID != ids[1] {
		t.Errorf("page 1 = %s, %s; want newest first %s, %s", page1.Orders[0].OrderID, page1.Orders[1].OrderID, ids[2], ids[1])
	}
	s.Call(t, http.MethodGet, "/orders?state=completed&limit=2&cursor="+*page1.NextCursor, nil, nil).Decode(t, &page2)
	if len(page2.Orders) == 0 || page2.Orders[0].OrderID != ids[0] {
		t.Errorf("page 2 starts with %v, want %s", page2.Orders, ids[0])
	}
	for _, o := range append(page1.Orders, page2.Orders...) {
		if o.State != order.StateCompleted {
			t.Errorf("order %s in state %s listed under state=completed", o.OrderID, o.State)
		}
	}
}

// TestListsAreByDefinition: sagas of another definition sharing the
// store (another team's, or a release that drives more than orders) are
// neither orders nor in the way of a page of them (GET /orders filtered
// after its LIMIT and gave empty pages), and the admin list filters by
// definition with that definition's own states.
func TestListsAreByDefinition(t *testing.T) {
	s := system(t)
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Pen", 100, 100)
	ids := []string{s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 1)}), s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 1)})}
	s.WaitTerminal(t, ids, waitFor)

	// Three newer sagas of another definition, finished.
	pool := s.Pool(t, "orchestrator")
	var cruises []uuid.UUID
	for range 3 {
		id := uuid.Must(uuid.NewV7())
		cruises = append(cruises, id)
		if _, err := pool.Exec(context.Background(), `INSERT INTO sagas (id, definition, phase, state, data, created_at, updated_at)
			VALUES ($1, 'cruise', 'completed', 'completed', '{}', now(), now())`, id); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), `DELETE FROM sagas WHERE id = ANY($1)`, cruises)
	})

	var orders struct {
		Orders []order.View `json:"orders"`
	}
	s.Call(t, http.MethodGet, "/orders?state=completed&limit=2", nil, nil).Decode(t, &orders)
	if len(orders.Orders) != 2 || orders.Orders[0].OrderID != ids[1] || orders.Orders[1].OrderID != ids[0] {
		t.Errorf("GET /orders?limit=2 = %+v, want the two newest orders %v", orders.Orders, ids)
	}

	var sagas struct {
		Sagas []contract.SagaView `json:"sagas"`
	}
	s.Admin(t, http.MethodGet, "/admin/sagas?state=completed&limit=3", nil).Decode(t, &sagas)
	if len(sagas.Sagas) != 3 || sagas.Sagas[0].Definition != "cruise" {
		t.Errorf("every definition: %+v, want the three cruises first", sagas.Sagas)
	}
	s.Admin(t, http.MethodGet, "/admin/sagas?definition=order&state=completed&limit=2", nil).Decode(t, &sagas)
	if len(sagas.Sagas) != 2 || sagas.Sagas[0].SagaID != ids[1] || sagas.Sagas[1].SagaID != ids[0] {
		t.Errorf("definition=order: %+v, want the two newest orders", sagas.Sagas)
	}
	for _, tc := range []struct{ query, want string }{
		{"definition=cruise", "not one this orchestrator drives"},
		{"definition=order&state=sailing", `"sailing" is not a state of order`},
		{"state=sailing", "not a state of any saga"},
	} {
		r := s.Admin(t, http.MethodGet, "/admin/sagas?"+tc.query, nil)
		var e testenv.ErrorBody
		if err := json.Unmarshal(r.Body, &e); err != nil || r.Status != http.StatusBadRequest || !strings.Contains(e.Error.Message, tc.want) {
			t.Errorf("GET /admin/sagas?%s = %d %s, want 400 saying %q", tc.query, r.Status, r.Body, tc.want)
		}
	}
}

// TestFreeProductOrderCompletes: a product priced 0 can be ordered (the
// charge of 0 was refused as invalid, so every such order was cancelled).
func TestFreeProductOrderCompletes(t *testing.T) {
	s := system(t)
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Sticker", 0, 5)
	id := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 2)})
	if v := s.WaitTerminal(t, []string{id}, waitFor)[id]; v.State != order.StateCompleted || v.AmountCents != 0 {
		t.Errorf("order of a free product: %s (%s), amount %d; want completed, 0", v.State, v.Reason, v.AmountCents)
	}
}
