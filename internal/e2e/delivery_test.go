package e2e

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/orchestrator/order"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
)

// Delivery: after its stock is committed an order waits in
// awaiting_delivery for shipping.delivered, which the shipping worker sends
// when the simulated carrier reports the delivery (SIM_DELIVERY_DELAY
// after the prepare) or when the customer confirms receipt.

// waitState polls an order until it is in state, and returns it.
func waitState(t *testing.T, s *testenv.System, id, state string) order.View {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		v := s.Order(t, id)
		if v.State == state {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("order %s is %s after %s, want %s (%s)", id, v.State, waitFor, state, v.Reason)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// count is how many events of type typ the trail holds.
func count(events []contract.AuditEvent, typ string) int {
	n := 0
	for _, e := range events {
		if e.Type == typ {
			n++
		}
	}
	return n
}

// TestDeliveryReportedByTheCarrier: with SIM_DELIVERY_DELAY=3s an order
// sits in awaiting_delivery, then completes with delivered_at.
func TestDeliveryReportedByTheCarrier(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	s := testenv.StartT(t, testenv.Options{ServiceEnv: map[string]map[string]string{"shipping": {"SIM_DELIVERY_DELAY": "3s"}}})
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Parcel", 1000, 5)
	id := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 1)})
	waiting := waitState(t, s, id, order.StateAwaitingDelivery)
	if waiting.DeliveredAt != nil {
		t.Errorf("delivered_at %v while awaiting delivery", waiting.DeliveredAt)
	}
	var shipped time.Time
	for _, st := range waiting.Steps {
		if st.Name == order.StepPrepareShipment && st.FinishedAt != nil {
			shipped = *st.FinishedAt
		}
	}
	v := s.WaitTerminal(t, []string{id}, waitFor)[id]
	if v.State != order.StateCompleted || v.DeliveredAt == nil {
		t.Fatalf("order %s, delivered_at %v; want completed and delivered", v.State, v.DeliveredAt)
	}
	// The carrier takes 3s from the prepare (the step finished a moment
	// after it, when its reply came).
	if d := v.DeliveredAt.Sub(shipped); shipped.IsZero() || d < 2*time.Second {
		t.Errorf("delivered %s after the shipment was prepared (%v), want about 3s", d, shipped)
	}
	events := trail(t, s, id, "order.completed")
	if n := count(events, contract.EventOrderDelivered); n != 1 {
		t.Errorf("%d order.delivered in the trail, want 1", n)
	}
}

// TestDeliveryConfirmedByTheCustomer: the carrier takes an hour, the
// customer confirms at once (twice: one effect); an order that is not
// shipped answers 409 not_shipped. With DELIVERY_TIMEOUT=3s an order whose
// delivery nobody confirms is stuck, "delivery not confirmed", with an
// order.delivery_overdue event; an operator's replay waits again, and a
// confirmation then completes it.
func TestDeliveryConfirmedByTheCustomer(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	s := testenv.StartT(t, testenv.Options{
		Env:        map[string]string{"DELIVERY_TIMEOUT": "3s"},
		ServiceEnv: map[string]map[string]string{"shipping": {"SIM_DELIVERY_DELAY": "1h"}},
	})
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Parcel", 1000, 5)
	confirm := func(id string) testenv.Response {
		t.Helper()
		return s.Call(t, http.MethodPost, "/orders/"+id+"/delivery", nil, nil)
	}

	t.Run("confirmed twice, delivered once", func(t *testing.T) {
		id := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 1)})
		waitState(t, s, id, order.StateAwaitingDelivery)
		for i := range 2 {
			r := confirm(id)
			var a struct {
				OrderID string `json:"order_id"`
				State   string `json:"state"`
			}
			r.Decode(t, &a)
			if r.Status != http.StatusAccepted || a.OrderID != id {
				t.Fatalf("confirmation %d = %d %s", i+1, r.Status, r.Body)
			}
		}
		// The deadline is 3s: whether the confirmation came before it or
		// after (a stuck order takes a late one), the order completes.
		v := s.WaitTerminal(t, []string{id}, waitFor)[id]
		if v.State != order.StateCompleted || v.DeliveredAt == nil {
			t.Fatalf("order %s, delivered_at %v; want completed and delivered", v.State, v.DeliveredAt)
		}
		if r := confirm(id); r.Status != http.StatusAccepted {
			t.Errorf("a confirmation of a delivered order = %d %s, want 202", r.Status, r.Body)
		}
		events := trail(t, s, id, "order.completed")
		if n := count(events, contract.EventOrderDelivered); n != 1 {
			t.Errorf("%d order.delivered in the trail, want 1", n)
		}
	})

	t.Run("not shipped", func(t *testing.T) {
		id := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 99)}) // out of stock: rejected
		s.WaitTerminal(t, []string{id}, waitFor)
		r := confirm(id)
		var e struct {
			Error struct{ Code string } `json:"error"`
		}
		r.Decode(t, &e)
		if r.Status != http.StatusConflict || e.Error.Code != "not_shipped" {
			t.Errorf("confirmation of a rejected order = %d %s, want 409 not_shipped", r.Status, r.Body)
		}
	})

	t.Run("not confirmed: stuck, replayed, confirmed", func(t *testing.T) {
		id := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 1)})
		v := waitState(t, s, id, order.StateStuck)
		if v.Reason != contract.ReasonDeliveryNotConfirmed {
			t.Errorf("stuck with reason %q, want %q", v.Reason, contract.ReasonDeliveryNotConfirmed)
		}
		events := trail(t, s, id, "order.stuck")
		types := make([]string, len(events))
		for i, e := range events {
			types[i] = e.Type
		}
		if n := len(types); n < 2 || !slices.Equal(types[n-2:], []string{contract.EventOrderDeliveryOverdue, "order.stuck"}) {
			t.Errorf("trail %v, want it to end with order.delivery_overdue, order.stuck", types)
		}
		if r := s.Admin(t, http.MethodPost, "/admin/sagas/"+id+"/replay", why); r.Status != http.StatusOK {
			t.Fatalf("replay = %d %s", r.Status, r.Body)
		}
		if v := s.Order(t, id); v.State != order.StateAwaitingDelivery {
			t.Fatalf("after the replay the order is %s, want awaiting_delivery again", v.State)
		}
		if r := confirm(id); r.Status != http.StatusAccepted {
			t.Fatalf("confirmation = %d %s", r.Status, r.Body)
		}
		if v := s.WaitTerminal(t, []string{id}, waitFor)[id]; v.State != order.StateCompleted {
			t.Errorf("order %s after its confirmation, want completed", v.State)
		}
	})
}

// TestNotificationsGetOutcomesOnly: the notification channels are bound
// to the three order outcomes only; a broker that still has the old
// order.* binding (every order event, dropped by notification) loses it
// when a service starts.
func TestNotificationsGetOutcomesOnly(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	s := testenv.StartT(t, testenv.Options{Services: []string{"notification"}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	keys := func() []string {
		var bindings []struct {
			Destination string `json:"destination"`
			RoutingKey  string `json:"routing_key"`
		}
		path := "/exchanges/" + url.PathEscape(s.Name) + "/" + url.PathEscape(amqpbus.EventExchange) + "/bindings/source"
		if err := s.Servers().ManagementAPI(ctx, http.MethodGet, path, nil, &bindings); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, b := range bindings {
			if b.Destination == contract.NotificationExchange {
				out = append(out, b.RoutingKey)
			}
		}
		slices.Sort(out)
		return out
	}
	want := slices.Sorted(slices.Values(contract.NotificationEvents))
	if got := keys(); !slices.Equal(got, want) {
		t.Fatalf("saga.events -> notification.fanout by %v, want %v", got, want)
	}
	// The old binding, as an earlier release left it, goes at the next start.
	b := dialBroker(t, s)
	if err := b.ch.ExchangeBind(contract.NotificationExchange, contract.OrderEventPattern, amqpbus.EventExchange, false, nil); err != nil {
		t.Fatal(err)
	}
	if got := keys(); len(got) != len(want)+1 {
		t.Fatalf("the old binding did not take: %v", got)
	}
	if _, err := s.Kill("notification", syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := s.StartService("notification", nil); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitReady(waitFor); err != nil {
		t.Fatal(err)
	}
	if got := keys(); !slices.Equal(got, want) {
		t.Errorf("after a restart with the old binding: %v, want %v", got, want)
	}
}
