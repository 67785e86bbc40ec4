package testenv

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"

	json "github.com/goccy/go-json"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/orchestrator/api"
	"github.com/sagaflow/sagaflow/orchestrator/order"
)

// Response is an HTTP response, read whole.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Decode unmarshals the body into v.
func (r Response) Decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("decode %d response %q: %v", r.Status, r.Body, err)
	}
}

// ErrorBody is the API's error envelope.
type ErrorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// Do sends a request to the deployment's orchestrator: to its admin
// listener for the admin paths (AdminPath), else to its API; see Request.
func (s *System) Do(method, path string, body any, headers map[string]string) (Response, error) {
	base := s.BaseURL
	if AdminPath(path) {
		base = s.AdminURL
	}
	return Request(s.HTTP, base, method, path, body, headers)
}

// Request sends a request to base+path. A body that is not []byte is
// marshalled to JSON; Content-Type defaults to application/json when there
// is a body, and an empty header value removes the header.
func Request(hc *http.Client, base, method, path string, body any, headers map[string]string) (Response, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			return Response{}, err
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		return Response{}, err
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range headers {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return Response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return Response{Status: resp.StatusCode, Header: resp.Header, Body: b}, err
}

// Call is Do that fails the test on a transport error.
func (s *System) Call(t testing.TB, method, path string, body any, headers map[string]string) Response {
	t.Helper()
	r, err := s.Do(method, path, body, headers)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

// Admin is Call with the admin bearer token.
func (s *System) Admin(t testing.TB, method, path string, body any) Response {
	t.Helper()
	return s.Call(t, method, path, body, map[string]string{"Authorization": "Bearer " + s.AdminToken})
}

// PutProduct creates or restocks a product, failing the test unless 200.
func (s *System) PutProduct(t testing.TB, sku, name string, priceCents, available int64) {
	t.Helper()
	r := s.Admin(t, http.MethodPut, "/admin/products/"+sku,
		map[string]any{"name": name, "price_cents": priceCents, "available": available})
	if r.Status != http.StatusOK {
		t.Fatalf("PUT product %s: %d %s", sku, r.Status, r.Body)
	}
}

// Product reads a product, failing the test unless 200.
func (s *System) Product(t testing.TB, sku string) contract.Product {
	t.Helper()
	r := s.Call(t, http.MethodGet, "/products/"+sku, nil, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("GET product %s: %d %s", sku, r.Status, r.Body)
	}
	var p contract.Product
	r.Decode(t, &p)
	return p
}

// OrderSpec is an order to place; zero fields take working defaults.
type OrderSpec struct {
	Items    []contract.Item
	Token    string // default tok_visa
	Country  string // default US
	Priority string // default normal
	Customer string // default c-1
	Key      string // Idempotency-Key, none by default
}

// Body renders the spec as a POST /orders body.
func (o OrderSpec) Body() map[string]any {
	def := func(v, d string) string {
		if v == "" {
			return d
		}
		return v
	}
	return map[string]any{
		"customer_id": def(o.Customer, "c-1"), "items": o.Items,
		"payment_token":    def(o.Token, "tok_visa"),
		"shipping_address": map[string]string{"line1": "1 Main St", "city": "Springfield", "country": def(o.Country, "US")},
		"priority":         def(o.Priority, "normal"),
	}
}

// PlaceE places an order without a testing.T, for use from goroutines.
func (s *System) PlaceE(o OrderSpec) (Response, string, error) {
	var h map[string]string
	if o.Key != "" {
		h = map[string]string{"Idempotency-Key": o.Key}
	}
	r, err := s.Do(http.MethodPost, "/orders", o.Body(), h)
	if err != nil {
		return r, "", err
	}
	var acc struct {
		OrderID string `json:"order_id"`
	}
	if r.Status == http.StatusAccepted {
		if err := json.Unmarshal(r.Body, &acc); err != nil {
			return r, "", err
		}
	}
	return r, acc.OrderID, nil
}

// Place places an order and returns its id, failing the test unless 202.
func (s *System) Place(t testing.TB, o OrderSpec) string {
	t.Helper()
	r, id, err := s.PlaceE(o)
	if err != nil || r.Status != http.StatusAccepted || id == "" {
		t.Fatalf("POST /orders: %v %d %s", err, r.Status, r.Body)
	}
	return id
}

// Order reads an order, failing the test unless 200.
func (s *System) Order(t testing.TB, id string) order.View {
	t.Helper()
	r := s.Call(t, http.MethodGet, "/orders/"+id, nil, nil)
	if r.Status != http.StatusOK {
		t.Fatalf("GET order %s: %d %s", id, r.Status, r.Body)
	}
	var v order.View
	r.Decode(t, &v)
	return v
}

// Terminal reports whether an order state is terminal.
func Terminal(state string) bool {
	return state == order.StateCompleted || state == order.StateRejected || state == order.StateCancelled
}

// WaitTerminal polls orders until each is terminal, failing the test with
// the stragglers' states after timeout.
func (s *System) WaitTerminal(t testing.TB, ids []string, timeout time.Duration) map[string]order.View {
	t.Helper()
	out := make(map[string]order.View, len(ids))
	pending := append([]string(nil), ids...)
	deadline := time.Now().Add(timeout)
	for len(pending) > 0 {
		var still []string
		for _, id := range pending {
			r, err := s.Do(http.MethodGet, "/orders/"+id, nil, nil)
			if err != nil || r.Status != http.StatusOK {
				still = append(still, id)
				continue
			}
			var v order.View
			r.Decode(t, &v)
			out[id] = v
			if !Terminal(v.State) {
				still = append(still, id)
			}
		}
		pending = still
		if len(pending) == 0 {
			break
		}
		if time.Now().After(deadline) {
			states := map[string]int{}
			for _, id := range pending {
				states[out[id].State]++
			}
			t.Fatalf("%d of %d orders not terminal after %s: %v (first: %s)", len(pending), len(ids), timeout, states, pending[0])
		}
		time.Sleep(100 * time.Millisecond)
	}
	return out
}

// Ledger asks the admin API what the workers recorded for an order.
func (s *System) Ledger(t testing.TB, id string) Books {
	t.Helper()
	r := s.Admin(t, http.MethodGet, "/admin/orders/"+id+"/ledger", nil)
	if r.Status != http.StatusOK {
		t.Fatalf("GET ledger %s: %d %s", id, r.Status, r.Body)
	}
	var l api.Ledger
	r.Decode(t, &l)
	if len(l.Unanswered) > 0 || l.Payment == nil || l.Shipment == nil || l.Notifications == nil {
		t.Fatalf("GET ledger %s: %s did not answer: %s", id, l.Unanswered, r.Body)
	}
	return Books{Payment: *l.Payment, Shipment: *l.Shipment, Notifications: *l.Notifications}
}

// Books are an order's ledger when every service answered.
type Books struct {
	Payment       contract.PaymentLedgerReply
	Shipment      contract.ShipmentLedgerReply
	Notifications contract.NotificationLedgerReply
}

// WaitLedger polls an order's ledger until it equals want (the services
// record asynchronously: notifications follow the outcome) and returns the
// last one seen, for the caller's diff.
func (s *System) WaitLedger(t testing.TB, id string, want Books, timeout time.Duration) Books {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := s.Ledger(t, id)
		if got == want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Items is shorthand for order lines: Items("sku-a", 2, "sku-b", 1).
func Items(pairs ...any) []contract.Item {
	var out []contract.Item
	for i := 0; i+1 < len(pairs); i += 2 {
		out = append(out, contract.Item{SKU: pairs[i].(string), Quantity: int64(pairs[i+1].(int))})
	}
	return out
}
