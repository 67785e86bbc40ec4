package e2e

import (
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/orchestrator/api"
)

// TestRestockCannotCreatePhantomStock: an operator's PUT that names the
// version it read is refused once orders (or another operator) changed
// the product; a relative restock applies once per Idempotency-Key and
// once per message, however often it is sent or redelivered. (Before,
// PUT set stock absolutely whatever happened meanwhile, and a redelivered
// request applied again.)
func TestRestockCannotCreatePhantomStock(t *testing.T) {
	s := system(t)
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Vase", 2000, 10)
	r := s.Call(t, http.MethodGet, "/products/"+sk, nil, nil)
	read := r.Header.Get("ETag")
	if read == "" {
		t.Fatal("GET /products/{sku} has no ETag")
	}
	id := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 2)})
	s.WaitTerminal(t, []string{id}, waitFor)

	put := func(etag string) testenv.Response {
		return s.Call(t, http.MethodPut, "/admin/products/"+sk,
			map[string]any{"name": "Vase", "price_cents": 2000, "available": 15},
			map[string]string{"Authorization": "Bearer " + s.AdminToken, "If-Match": etag})
	}
	if r := put(read); r.Status != http.StatusPreconditionFailed || !contains(r.Body, api.CodePreconditionFailed) {
		t.Errorf("PUT with the version read before an order: %d %s, want 412 precondition_failed", r.Status, r.Body)
	}
	if p := s.Product(t, sk); p.Available != 8 || p.Sold != 2 {
		t.Errorf("after the refused PUT: %+v, want 8 available, 2 sold", p)
	}
	fresh := s.Call(t, http.MethodGet, "/products/"+sk, nil, nil).Header.Get("ETag")
	if r := put(fresh); r.Status != http.StatusOK {
		t.Errorf("PUT with the current version: %d %s", r.Status, r.Body)
	}

	// The same restock, sent five times at once with one key: one effect.
	key := uuid.NewString()
	var wg sync.WaitGroup
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := s.Do(http.MethodPost, "/admin/products/"+sk+"/restock", map[string]any{"delta": 5},
				map[string]string{"Authorization": "Bearer " + s.AdminToken, "Idempotency-Key": key})
			if err != nil || r.Status != http.StatusOK {
				t.Errorf("restock: %v %d %s", err, r.Status, r.Body)
			}
		}()
	}
	wg.Wait()
	if p := s.Product(t, sk); p.Available != 20 {
		t.Errorf("after one restock of +5 sent five times: %d available, want 20", p.Available)
	}
	if r := s.Admin(t, http.MethodPost, "/admin/products/"+sk+"/restock", map[string]any{"delta": -21}); r.Status != http.StatusConflict || !contains(r.Body, api.CodeInsufficientStock) {
		t.Errorf("restock below zero: %d %s, want 409 insufficient_stock", r.Status, r.Body)
	}

	// A request the broker delivers twice (same message id): one effect.
	b := dialBroker(t, s)
	replyTo, replies := b.replyQueue()
	msgID := "restock-" + uuid.NewString()
	for range 2 {
		b.command(contract.InventoryRestock, msgID, replyTo, contract.RestockProduct{SKU: sk, Delta: 3})
		next(t, replies)
	}
	if p := s.Product(t, sk); p.Available != 23 {
		t.Errorf("after a restock of +3 delivered twice: %d available, want 23", p.Available)
	}
}

func contains(body []byte, s string) bool { return strings.Contains(string(body), s) }
