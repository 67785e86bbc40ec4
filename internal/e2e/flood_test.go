package e2e

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/orchestrator/order"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
)

// TestProductFloodIsLimitedAndKeptOffTheSagaPath: a flood of the public
// GET /products/{sku} from one client (whatever X-Forwarded-For it sends)
// is answered 429 with Retry-After beyond its rate, served from a short
// cache, and relayed to inventory on a request queue of its own, never
// the saga commands' queue; orders placed meanwhile all complete, and
// saga.dead is bounded. (Before, every GET went to inventory.commands at
// the highest priority, unlimited and uncached.)
func TestProductFloodIsLimitedAndKeptOffTheSagaPath(t *testing.T) {
	s := testenv.StartT(t, testenv.Options{Env: map[string]string{"PRODUCT_RATE": "50", "PRODUCT_BURST": "50", "PRODUCT_CACHE_TTL": "1s"}})
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Bell", 900, 10_000)
	workerQueries := func() float64 {
		r, err := testenv.Request(s.HTTP, "http://"+s.MetricsAddr("inventory"), http.MethodGet, "/metrics", nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return parseMetrics(r.Body)[`sagaflow_worker_commands_total{outcome="ok",type="inventory.get_product"}`]
	}
	before := workerQueries()
	began := time.Now()

	var ok, limited, other, badRetry atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := map[string]string{"X-Forwarded-For": "10.0.0." + strconv.Itoa(i)}
			for {
				select {
				case <-stop:
					return
				default:
				}
				r, err := s.Do(http.MethodGet, "/products/"+sk, nil, h)
				switch {
				case err != nil:
					other.Add(1)
				case r.Status == http.StatusOK:
					ok.Add(1)
				case r.Status == http.StatusTooManyRequests:
					limited.Add(1)
					if n, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || n < 1 {
						badRetry.Add(1)
					}
				default:
					other.Add(1)
				}
			}
		}()
	}
	ids := placeMany(t, s, 60, func(int) testenv.OrderSpec { return testenv.OrderSpec{Items: testenv.Items(sk, 1)} })
	views := s.WaitTerminal(t, ids, waitFor)
	time.Sleep(time.Second) // a second of flood more, for the cache's sake
	close(stop)
	wg.Wait()
	for id, v := range views {
		if v.State != order.StateCompleted {
			t.Errorf("order %s during the flood: %s (%s)", id, v.State, v.Reason)
		}
	}
	t.Logf("flood: %d answered 200, %d 429, %d other", ok.Load(), limited.Load(), other.Load())
	if limited.Load() == 0 || badRetry.Load() > 0 {
		t.Errorf("%d answers 429 (%d without a Retry-After of at least 1s), want the client limited", limited.Load(), badRetry.Load())
	}
	if other.Load() > 0 {
		t.Errorf("%d answers were neither 200 nor 429", other.Load())
	}
	// A hot SKU costs inventory at most 5 queries (4 reads make it hot)
	// per second of PRODUCT_CACHE_TTL.
	windows := time.Since(began).Seconds() + 1
	if relayed := workerQueries() - before; relayed >= float64(ok.Load())/4 || relayed > 5*windows {
		t.Errorf("inventory answered %v product queries for %d answers 200 in %.0f windows: the cache did not serve them", relayed, ok.Load(), windows)
	}

	// Product queries are bound to inventory's request queue only.
	var bindings []struct {
		Source     string `json:"source"`
		RoutingKey string `json:"routing_key"`
	}
	path := "/queues/" + url.PathEscape(s.Name) + "/" + url.PathEscape(contract.InventoryQueue) + "/bindings"
	if err := s.Servers().ManagementAPI(context.Background(), http.MethodGet, path, nil, &bindings); err != nil {
		t.Fatal(err)
	}
	for _, b := range bindings {
		if b.RoutingKey == contract.InventoryGetProduct || b.RoutingKey == contract.InventoryUpsertProduct {
			t.Errorf("%s is bound to %s: requests would stand among saga commands", b.RoutingKey, contract.InventoryQueue)
		}
	}
	var dead struct {
		Arguments map[string]any `json:"arguments"`
	}
	path = "/queues/" + url.PathEscape(s.Name) + "/" + url.PathEscape(amqpbus.DeadLetterQueue)
	if err := s.Servers().ManagementAPI(context.Background(), http.MethodGet, path, nil, &dead); err != nil {
		t.Fatal(err)
	}
	if n, _ := dead.Arguments["x-max-length"].(float64); n <= 0 || dead.Arguments["x-overflow"] != "drop-head" {
		t.Errorf("saga.dead arguments %v: want a bound (x-max-length, drop-head)", dead.Arguments)
	}
}
