package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/internal/workertest"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/worker"
	"github.com/sagaflow/sagaflow/workers/inventory/migrations"
)

// --- helpers ---

// newDB creates a fresh database with the inventory schema; it returns a
// pool on it and its URL.
func newDB(t *testing.T) (*pgxpool.Pool, string) {
	t.Helper()
	return workertest.DB(t, "inventory", migrations.Set)
}

// widePool opens a second, larger pool on url, so that concurrency tests
// really run many transactions at once.
func widePool(t *testing.T, url string, conns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = conns
	cfg.ConnConfig.RuntimeParams["search_path"] = "inventory"
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
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

func payloadOf[T any](t *testing.T, res worker.Result) T { return workertest.Payload[T](t, res) }

// --- inventory helpers ---

func seed(t *testing.T, pool *pgxpool.Pool, products ...contract.Product) {
	t.Helper()
	for _, p := range products {
		if _, err := pool.Exec(context.Background(), `INSERT INTO products (sku, name, price_cents, available, reserved, sold)
			VALUES ($1, $2, $3, $4, $5, $6)`, p.SKU, p.Name, p.PriceCents, p.Available, p.Reserved, p.Sold); err != nil {
			t.Fatalf("seed %s: %v", p.SKU, err)
		}
	}
}

// catalog returns every product by SKU.
func catalog(t *testing.T, pool *pgxpool.Pool) map[string]contract.Product {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT sku, name, price_cents, available, reserved, sold FROM products`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]contract.Product{}
	for rows.Next() {
		var p contract.Product
		if err := rows.Scan(&p.SKU, &p.Name, &p.PriceCents, &p.Available, &p.Reserved, &p.Sold); err != nil {
			t.Fatal(err)
		}
		out[p.SKU] = p
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func checkCatalog(t *testing.T, pool *pgxpool.Pool, want map[string]contract.Product) {
	t.Helper()
	if diff := cmp.Diff(want, catalog(t, pool)); diff != "" {
		t.Errorf("products (-want +got):\n%s", diff)
	}
}

type reservationRow struct {
	Status      string
	AmountCents int64
}

// reservations returns every reservation by order id.
func reservations(t *testing.T, pool *pgxpool.Pool) map[string]reservationRow {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT order_id, status, amount_cents FROM reservations`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]reservationRow{}
	for rows.Next() {
		var id string
		var r reservationRow
		if err := rows.Scan(&id, &r.Status, &r.AmountCents); err != nil {
			t.Fatal(err)
		}
		out[id] = r
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func checkReservations(t *testing.T, pool *pgxpool.Pool, want map[string]reservationRow) {
	t.Helper()
	if diff := cmp.Diff(want, reservations(t, pool)); diff != "" {
		t.Errorf("reservations (-want +got):\n%s", diff)
	}
}

func doReserve(t *testing.T, pool *pgxpool.Pool, orderID string, items ...contract.Item) worker.Result {
	t.Helper()
	return run(t, pool, handle, contract.InventoryReserve, contract.ReserveRequest{OrderID: orderID, Items: items})
}

func doRelease(t *testing.T, pool *pgxpool.Pool, orderID string) worker.Result {
	t.Helper()
	return run(t, pool, handle, contract.InventoryRelease, contract.OrderRef{OrderID: orderID})
}

func doCommit(t *testing.T, pool *pgxpool.Pool, orderID string) worker.Result {
	t.Helper()
	return run(t, pool, handle, contract.InventoryCommit, contract.OrderRef{OrderID: orderID})
}

func item(sku string, qty int64) contract.Item { return contract.Item{SKU: sku, Quantity: qty} }

var (
	apple  = contract.Product{SKU: "apple", Name: "Apple", PriceCents: 250, Available: 10}
	banana = contract.Product{SKU: "banana", Name: "Banana", PriceCents: 1000, Available: 5}
)

// with returns p with its stock columns set.
func with(p contract.Product, available, reserved, sold int64) contract.Product {
	p.Available, p.Reserved, p.Sold = available, reserved, sold
	return p
}

// --- reserve ---

func TestReservePricesOrderFromCatalogAndMovesStock(t *testing.T) {
	t.Parallel()
	pool, _ := newDB(t)
	seed(t, pool, apple, banana)

	res := doReserve(t, pool, "o1", item("banana", 2), item("apple", 3))

	checkVerdict(t, "reserve", res, okVerdict)
	want := contract.ReserveReply{
		Lines: []contract.PricedLine{
			{SKU: "apple", Quantity: 3, PriceCents: 250},
			{SKU: "banana", Quantity: 2, PriceCents: 1000},
		},
		AmountCents: 3*250 + 2*1000,
	}
	if diff := cmp.Diff(want, payloadOf[contract.ReserveReply](t, res)); diff != "" {
		t.Errorf("reserve reply (-want +got):\n%s", diff)
	}
	checkCatalog(t, pool, map[string]contract.Product{
		"apple":  with(apple, 7, 3, 0),
		"banana": with(banana, 3, 2, 0),
	})
	checkReservations(t, pool, map[string]reservationRow{"o1": {Status: "reserved", AmountCents: 2750}})
}

func TestReserveIsIdempotentPerOrder(t *testing.T) {
	t.Parallel()
	pool, _ := newDB(t)
	seed(t, pool, apple)

	first := doReserve(t, pool, "o1", item("apple", 4))
	// A re-sent command (new message id) for the same order.
	second := doReserve(t, pool, "o1", item("apple", 4))

	checkVerdict(t, "first reserve", first, okVerdict)
	if diff := cmp.Diff(first, second); diff != "" {
		t.Errorf("second reserve differs from the first (-first +second):\n%s", diff)
	}
	checkCatalog(t, pool, map[string]contract.Product{"apple": with(apple, 6, 4, 0)})
}

func TestReserveSumsDuplicateLines(t *testing.T) {
	t.Parallel()
	pool, _ := newDB(t)
	seed(t, pool, apple, banana)

	res := doReserve(t, pool, "o1", item("apple", 2), item("banana", 1), item("apple", 3))

	checkVerdict(t, "reserve", res, okVerdict)
	want := contract.ReserveReply{
		Lines: []contract.PricedLine{
			{SKU: "apple", Quantity: 5, PriceCents: 250},
			{SKU: "banana", Quantity: 1, PriceCents: 1000},
		},
		AmountCents: 5*250 + 1000,
	}
	if diff := cmp.Diff(want, payloadOf[contract.ReserveReply](t, res)); diff != "" {
		t.Errorf("reserve reply (-want +got):\n%s", diff)
	}
	checkCatalog(t, pool, map[string]contract.Product{
		"apple":  with(apple, 5, 5, 0),
		"banana": with(banana, 4, 1, 0),
	})
}

// An order that cannot be reserved entirely reserves nothing.
func TestReserveAllOrNone(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		items []contract.Item
		want  verdict
	}{
		{"one short line", []contract.Item{item("apple", 2), item("banana", 6)}, failed(contract.CodeOutOfStock)},
		{"short only once duplicates are summed", []contract.Item{item("banana", 3), item("apple", 1), item("banana", 3)}, failed(contract.CodeOutOfStock)},
		{"unknown sku", []contract.Item{item("cherry", 1)}, failed(contract.CodeUnknownSKU)},
		{"unknown sku beside available ones", []contract.Item{item("apple", 1), item("cherry", 1), item("banana", 1)}, failed(contract.CodeUnknownSKU)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pool, _ := newDB(t)
			seed(t, pool, apple, banana)

			res := doReserve(t, pool, "o1", tt.items...)

			checkVerdict(t, "reserve", res, tt.want)
			if res.Payload != nil {
				t.Errorf("failed reserve has payload %s", res.Payload)
			}
			checkCatalog(t, pool, map[string]contract.Product{"apple": apple, "banana": banana})
			checkReservations(t, pool, map[string]reservationRow{})
		})
	}
}

// A failed reserve records nothing: the same order can be reserved once
// stock is back.
func TestReserveAfterOutOfStockSucceedsOnceRestocked(t *testing.T) {
	t.Parallel()
	pool, _ := newDB(t)
	seed(t, pool, banana)

	checkVerdict(t, "short reserve", doReserve(t, pool, "o1", item("banana", 8)), failed(contract.CodeOutOfStock))
	if _, err := pool.Exec(context.Background(), `UPDATE products SET available = 8 WHERE sku = 'banana'`); err != nil {
		t.Fatal(err)
	}
	checkVerdict(t, "reserve after restock", doReserve(t, pool, "o1", item("banana", 8)), okVerdict)
	checkCatalog(t, pool, map[string]contract.Product{"banana": with(banana, 0, 8, 0)})
}

// --- release ---

func TestReleaseReturnsStockAndIsIdempotent(t *testing.T) {
	t.Parallel()
	pool, _ := newDB(t)
	seed(t, pool, apple, banana)
	checkVerdict(t, "reserve", doReserve(t, pool, "o1", item("apple", 3), item("banana", 5)), okVerdict)

	checkVerdict(t, "release", doRelease(t, pool, "o1"), okVerdict)
	checkCatalog(t, pool, map[string]contract.Product{"apple": apple, "banana": banana})

	checkVerdict(t, "second release", doRelease(t, pool, "o1"), okVerdict)
	checkCatalog(t, pool, map[string]contract.Product{"apple": apple, "banana": banana})
	checkReservations(t, pool, map[string]reservationRow{"o1": {Status: "released", AmountCents: 3*250 + 5*1000}})
}

// A release that overtakes its reserve wins: the late reserve is a no-op.
func TestReleaseBeforeReserveMakesLateReserveFail(t *testing.T) {
	t.Parallel()
	pool, _ := newDB(t)
	seed(t, pool, apple)

	checkVerdict(t, "early release", doRelease(t, pool, "o1"), okVerdict)
	checkReservations(t, pool, map[string]reservationRow{"o1": {Status: "released"}})

	checkVerdict(t, "late reserve", doReserve(t, pool, "o1", item("apple", 2)), failed(contract.CodeAlreadyReleased))
	checkCatalog(t, pool, map[string]contract.Product{"apple": apple})
	checkReservations(t, pool, map[string]reservationRow{"o1": {Status: "released"}})

	// The release is still idempotent, and a re-sent reserve still loses.
	checkVerdict(t, "second release", doRelease(t, pool, "o1"), okVerdict)
	checkVerdict(t, "re-sent reserve", doReserve(t, pool, "o1", item("apple", 2)), failed(contract.CodeAlreadyReleased))
	checkCatalog(t, pool, map[string]contract.Product{"apple": apple})
}

// --- commit ---

func TestCommitMovesReservedToSoldAndIsIdempotent(t *testing.T) {
	t.Parallel()
	pool, _ := newDB(t)
	seed(t, pool, apple, banana)
	reserved := doReserve(t, pool, "o1", item("apple", 3), item("banana", 1))
	checkVerdict(t, "reserve", reserved, okVerdict)
	sold := map[string]contract.Product{"apple": with(apple, 7, 0, 3), "banana": with(banana, 4, 0, 1)}

	checkVerdict(t, "commit", doCommit(t, pool, "o1"), okVerdict)
	checkCatalog(t, pool, sold)

	checkVerdict(t, "second commit", doCommit(t, pool, "o1"), okVerdict)
	checkCatalog(t, pool, sold)
	checkReservations(t, pool, map[string]reservationRow{"o1": {Status: "committed", AmountCents: 3*250 + 1000}})

	// A reserve re-sent after the commit answers as before and moves nothing.
	again := doReserve(t, pool, "o1", item("apple", 3), item("banana", 1))
	if diff := cmp.Diff(reserved, again); diff != "" {
		t.Errorf("reserve after commit (-first reply +got):\n%s", diff)
	}
	checkCatalog(t, pool, sold)
}

func TestCommitWithoutReservationFails(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup func(t *testing.T, pool *pgxpool.Pool)
		want  map[string]reservationRow // reservations afterwards
	}{
		{"no reservation", func(*testing.T, *pgxpool.Pool) {}, map[string]reservationRow{}},
		{"released reservation", func(t *testing.T, pool *pgxpool.Pool) {
			checkVerdict(t, "reserve", doReserve(t, pool, "o1", item("apple", 2)), okVerdict)
			checkVerdict(t, "release", doRelease(t, pool, "o1"), okVerdict)
		}, map[string]reservationRow{"o1": {Status: "released", AmountCents: 500}}},
		{"release recorded before any reserve", func(t *testing.T, pool *pgxpool.Pool) {
			checkVerdict(t, "release", doRelease(t, pool, "o1"), okVerdict)
		}, map[string]reservationRow{"o1": {Status: "released"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pool, _ := newDB(t)
			seed(t, pool, apple)
			tt.setup(t, pool)

			checkVerdict(t, "commit", doCommit(t, pool, "o1"), failed(contract.CodeNotReserved))
			checkCatalog(t, pool, map[string]contract.Product{"apple": apple})
			checkReservations(t, pool, tt.want)
		})
	}
}

func TestReleaseAfterCommitFails(t *testing.T) {
	t.Parallel()
	pool, _ := newDB(t)
	seed(t, pool, apple)
	checkVerdict(t, "reserve", doReserve(t, pool, "o1", item("apple", 4)), okVerdict)
	checkVerdict(t, "commit", doCommit(t, pool, "o1"), okVerdict)

	checkVerdict(t, "release", doRelease(t, pool, "o1"), failed(contract.CodeNotReserved))
	checkCatalog(t, pool, map[string]contract.Product{"apple": with(apple, 6, 0, 4)})
	checkReservations(t, pool, map[string]reservationRow{"o1": {Status: "committed", AmountCents: 1000}})
}

// --- invalid commands ---

func TestInvalidPayloadsAreRejected(t *testing.T) {
	t.Parallel()
	pool, _ := newDB(t)
	seed(t, pool, apple)
	inTxCall := func(h worker.BatchHandlerFunc) func(context.Context, worker.Command) (worker.Result, error) {
		return func(ctx context.Context, cmd worker.Command) (worker.Result, error) { return inTx(ctx, pool, h, cmd) }
	}
	onPool := func(q func(context.Context, *pgxpool.Pool, worker.Command) (worker.Result, error)) func(context.Context, worker.Command) (worker.Result, error) {
		return func(ctx context.Context, cmd worker.Command) (worker.Result, error) { return q(ctx, pool, cmd) }
	}
	onTx := func(q func(context.Context, worker.Tx, worker.Command) (worker.Result, error)) func(context.Context, worker.Command) (worker.Result, error) {
		return func(ctx context.Context, cmd worker.Command) (worker.Result, error) { return q(ctx, pool, cmd) }
	}
	tests := []struct {
		name    string
		typ     string
		call    func(context.Context, worker.Command) (worker.Result, error)
		payload string
	}{
		{"reserve bad JSON", contract.InventoryReserve, inTxCall(handle), `{"order_id":`},
		{"reserve not an object", contract.InventoryReserve, inTxCall(handle), `"o1"`},
		{"reserve empty payload", contract.InventoryReserve, inTxCall(handle), ``},
		{"reserve unknown field", contract.InventoryReserve, inTxCall(handle), `{"order_id":"o1","items":[{"sku":"apple","quantity":1}],"coupon":"FREE"}`},
		{"reserve unknown line field", contract.InventoryReserve, inTxCall(handle), `{"order_id":"o1","items":[{"sku":"apple","qty":1}]}`},
		{"reserve quantity 0", contract.InventoryReserve, inTxCall(handle), `{"order_id":"o1","items":[{"sku":"apple","quantity":0}]}`},
		{"reserve negative quantity", contract.InventoryReserve, inTxCall(handle), `{"order_id":"o1","items":[{"sku":"apple","quantity":-1}]}`},
		{"reserve one bad line among good ones", contract.InventoryReserve, inTxCall(handle), `{"order_id":"o1","items":[{"sku":"apple","quantity":1},{"sku":"apple","quantity":0}]}`},
		{"reserve missing order_id", contract.InventoryReserve, inTxCall(handle), `{"items":[{"sku":"apple","quantity":1}]}`},
		{"reserve no items", contract.InventoryReserve, inTxCall(handle), `{"order_id":"o1","items":[]}`},
		{"reserve empty sku", contract.InventoryReserve, inTxCall(handle), `{"order_id":"o1","items":[{"sku":"","quantity":1}]}`},
		{"release bad JSON", contract.InventoryRelease, inTxCall(handle), `not json`},
		{"release missing order_id", contract.InventoryRelease, inTxCall(handle), `{}`},
		{"release unknown field", contract.InventoryRelease, inTxCall(handle), `{"order_id":"o1","all":true}`},
		{"commit missing order_id", contract.InventoryCommit, inTxCall(handle), `{"order_id":""}`},
		{"commit unknown field", contract.InventoryCommit, inTxCall(handle), `{"order_id":"o1","force":true}`},
		{"get_product bad JSON", contract.InventoryGetProduct, onPool(getProduct), `{`},
		{"get_product unknown field", contract.InventoryGetProduct, onPool(getProduct), `{"sku":"apple","id":1}`},
		{"upsert missing sku", contract.InventoryUpsertProduct, onTx(upsertProduct), `{"name":"Apple","price_cents":1,"available":1}`},
		{"upsert missing name", contract.InventoryUpsertProduct, onTx(upsertProduct), `{"sku":"apple","price_cents":1,"available":1}`},
		{"upsert negative price", contract.InventoryUpsertProduct, onTx(upsertProduct), `{"sku":"apple","name":"Apple","price_cents":-1,"available":1}`},
		{"upsert negative available", contract.InventoryUpsertProduct, onTx(upsertProduct), `{"sku":"apple","name":"Apple","price_cents":1,"available":-1}`},
		{"upsert unknown field", contract.InventoryUpsertProduct, onTx(upsertProduct), `{"sku":"apple","name":"Apple","price_cents":1,"available":1,"reserved":0}`},
		{"restock no delta", contract.InventoryRestock, onTx(restockProduct), `{"sku":"apple"}`},
		{"restock no sku", contract.InventoryRestock, onTx(restockProduct), `{"delta":3}`},
		{"restock unknown field", contract.InventoryRestock, onTx(restockProduct), `{"sku":"apple","delta":3,"set":1}`},
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
	// None of them changed anything.
	checkCatalog(t, pool, map[string]contract.Product{"apple": apple})
	checkReservations(t, pool, map[string]reservationRow{})
}

// --- catalog queries ---

// ignoreVersion leaves out the version, which every change moves on.
var ignoreVersion = cmpopts.IgnoreFields(contract.Product{}, "Version")

func TestGetProduct(t *testing.T) {
	t.Parallel()
	pool, _ := newDB(t)
	seed(t, pool, with(apple, 3, 2, 1))
	ctx := context.Background()

	res, err := getProduct(ctx, pool, command(t, contract.InventoryGetProduct, contract.ProductRef{SKU: "apple"}))
	if err != nil {
		t.Fatal(err)
	}
	checkVerdict(t, "get known", res, okVerdict)
	if diff := cmp.Diff(with(apple, 3, 2, 1), payloadOf[contract.Product](t, res), ignoreVersion); diff != "" {
		t.Errorf("product (-want +got):\n%s", diff)
	}

	res, err = getProduct(ctx, pool, command(t, contract.InventoryGetProduct, contract.ProductRef{SKU: "durian"}))
	if err != nil {
		t.Fatal(err)
	}
	checkVerdict(t, "get unknown", res, failed(contract.CodeNotFound))
}

// Upsert sets name, price and available stock and leaves reserved and sold
// alone; reservations keep the price they were made at.
func TestUpsertProduct(t *testing.T) {
	t.Parallel()
	pool, _ := newDB(t)
	ctx := context.Background()
	upsert := func(u contract.UpsertProduct) contract.Product {
		t.Helper()
		res, err := upsertProduct(ctx, pool, command(t, contract.InventoryUpsertProduct, u))
		if err != nil {
			t.Fatal(err)
		}
		checkVerdict(t, "upsert", res, okVerdict)
		return payloadOf[contract.Product](t, res)
	}

	created := upsert(contract.UpsertProduct{SKU: "pear", Name: "Pear", PriceCents: 300, Available: 7})
	want := contract.Product{SKU: "pear", Name: "Pear", PriceCents: 300, Available: 7}
	if diff := cmp.Diff(want, created, ignoreVersion); diff != "" {
		t.Errorf("created product (-want +got):\n%s", diff)
	}

	checkVerdict(t, "reserve o1", doReserve(t, pool, "o1", item("pear", 3)), okVerdict)
	checkVerdict(t, "commit o1", doCommit(t, pool, "o1"), okVerdict)
	checkVerdict(t, "reserve o2", doReserve(t, pool, "o2", item("pear", 2)), okVerdict)

	updated := upsert(contract.UpsertProduct{SKU: "pear", Name: "Ripe pear", PriceCents: 350, Available: 40})
	want = contract.Product{SKU: "pear", Name: "Ripe pear", PriceCents: 350, Available: 40, Reserved: 2, Sold: 3}
	if diff := cmp.Diff(want, updated, ignoreVersion); diff != "" {
		t.Errorf("updated product (-want +got):\n%s", diff)
	}
	res, err := getProduct(ctx, pool, command(t, contract.InventoryGetProduct, contract.ProductRef{SKU: "pear"}))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, payloadOf[contract.Product](t, res), ignoreVersion); diff != "" {
		t.Errorf("product after upsert (-want +got):\n%s", diff)
	}

	// Setting the same values again is idempotent.
	if diff := cmp.Diff(want, upsert(contract.UpsertProduct{SKU: "pear", Name: "Ripe pear", PriceCents: 350, Available: 40}), ignoreVersion); diff != "" {
		t.Errorf("repeated upsert (-want +got):\n%s", diff)
	}

	checkVerdict(t, "release o2", doRelease(t, pool, "o2"), okVerdict)
	checkCatalog(t, pool, map[string]contract.Product{
		"pear": {SKU: "pear", Name: "Ripe pear", PriceCents: 350, Available: 42, Reserved: 0, Sold: 3},
	})
	checkReservations(t, pool, map[string]reservationRow{
		"o1": {Status: "committed", AmountCents: 900},
		"o2": {Status: "released", AmountCents: 600},
	})
}

// --- concurrency ---

// runAll runs every command through h at once, each in its own
// transaction, and returns the results and errors in order.
func runAll(pool *pgxpool.Pool, h worker.BatchHandlerFunc, cmds []worker.Command) ([]worker.Result, []error) {
	results := make([]worker.Result, len(cmds))
	errs := make([]error, len(cmds))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range cmds {
		wg.Go(func() {
			<-start
			results[i], errs[i] = inTx(context.Background(), pool, h, cmds[i])
		})
	}
	close(start)
	wg.Wait()
	return results, errs
}

func checkNoErrors(t *testing.T, what string, errs []error) {
	t.Helper()
	n := 0
	for i, err := range errs {
		if err != nil {
			if n < 5 {
				t.Errorf("%s #%d: %v", what, i, err)
			}
			n++
		}
	}
	if n > 0 {
		t.Fatalf("%s: %d of %d failed with an error", what, n, len(errs))
	}
}

func tally(results []worker.Result) map[verdict]int {
	out := map[verdict]int{}
	for _, r := range results {
		out[verdict{Status: r.Status, Code: r.Code}]++
	}
	return out
}

func refCommands(t *testing.T, typ string, orderIDs []string) []worker.Command {
	t.Helper()
	cmds := make([]worker.Command, len(orderIDs))
	for i, id := range orderIDs {
		cmds[i] = command(t, typ, contract.OrderRef{OrderID: id})
	}
	return cmds
}

// 200 orders race for 50 units: exactly 50 win, stock is never oversold,
// and initial stock = available + reserved + sold throughout.
func TestConcurrentReservesNeverOversell(t *testing.T) {
	t.Parallel()
	_, url := newDB(t)
	pool := widePool(t, url, 20)
	hot := contract.Product{SKU: "hot", Name: "Hot item", PriceCents: 999, Available: 50}
	seed(t, pool, hot)

	const orders = 200
	cmds := make([]worker.Command, orders)
	for i := range cmds {
		cmds[i] = command(t, contract.InventoryReserve, contract.ReserveRequest{
			OrderID: fmt.Sprintf("o%03d", i), Items: []contract.Item{item("hot", 1)},
		})
	}
	results, errs := runAll(pool, handle, cmds)
	checkNoErrors(t, "reserve", errs)

	want := map[verdict]int{okVerdict: 50, failed(contract.CodeOutOfStock): 150}
	if diff := cmp.Diff(want, tally(results)); diff != "" {
		t.Errorf("reserve verdicts (-want +got):\n%s", diff)
	}
	checkCatalog(t, pool, map[string]contract.Product{"hot": with(hot, 0, 50, 0)})
	var winners []string
	for i, r := range results {
		if r.Status == saga.ReplyOK {
			winners = append(winners, fmt.Sprintf("o%03d", i))
		}
	}
	wantRes := map[string]reservationRow{}
	for _, id := range winners {
		wantRes[id] = reservationRow{Status: "reserved", AmountCents: 999}
	}
	checkReservations(t, pool, wantRes)

	// Settle the winners concurrently: half sold, half released.
	half := len(winners) / 2
	results, errs = runAll(pool, handle, refCommands(t, contract.InventoryCommit, winners[:half]))
	checkNoErrors(t, "commit", errs)
	if diff := cmp.Diff(map[verdict]int{okVerdict: half}, tally(results)); diff != "" {
		t.Errorf("commit verdicts (-want +got):\n%s", diff)
	}
	results, errs = runAll(pool, handle, refCommands(t, contract.InventoryRelease, winners[half:]))
	checkNoErrors(t, "release", errs)
	if diff := cmp.Diff(map[verdict]int{okVerdict: len(winners) - half}, tally(results)); diff != "" {
		t.Errorf("release verdicts (-want +got):\n%s", diff)
	}

	got := catalog(t, pool)["hot"]
	if diff := cmp.Diff(with(hot, 25, 0, 25), got); diff != "" {
		t.Errorf("final stock (-want +got):\n%s", diff)
	}
	if total := got.Available + got.Reserved + got.Sold; total != 50 {
		t.Errorf("available+reserved+sold = %d, want the initial 50", total)
	}
}

// Orders over the same SKUs listed in opposite orders, reserved and then
// settled all at once, never deadlock.
func TestConcurrentMultiLineOrdersDoNotDeadlock(t *testing.T) {
	t.Parallel()
	_, url := newDB(t)
	pool := widePool(t, url, 20)
	a := contract.Product{SKU: "a", Name: "A", PriceCents: 1, Available: 1000}
	b := contract.Product{SKU: "b", Name: "B", PriceCents: 10, Available: 1000}
	c := contract.Product{SKU: "c", Name: "C", PriceCents: 100, Available: 1000}
	seed(t, pool, a, b, c)

	const orders = 300
	ids := make([]string, orders)
	cmds := make([]worker.Command, orders)
	for i := range cmds {
		items := []contract.Item{item("a", 1), item("b", 2), item("c", 1)}
		if i%2 == 1 {
			items = []contract.Item{item("c", 1), item("b", 2), item("a", 1)}
		}
		ids[i] = fmt.Sprintf("o%03d", i)
		cmds[i] = command(t, contract.InventoryReserve, contract.ReserveRequest{OrderID: ids[i], Items: items})
	}
	results, errs := runAll(pool, handle, cmds)
	checkNoErrors(t, "reserve", errs)
	if diff := cmp.Diff(map[verdict]int{okVerdict: orders}, tally(results)); diff != "" {
		t.Errorf("reserve verdicts (-want +got):\n%s", diff)
	}
	checkCatalog(t, pool, map[string]contract.Product{
		"a": with(a, 700, 300, 0), "b": with(b, 400, 600, 0), "c": with(c, 700, 300, 0),
	})

	// Commits and releases interleaved, all at once.
	settle := make([]worker.Command, orders)
	for i, id := range ids {
		typ := contract.InventoryCommit
		if i%2 == 1 {
			typ = contract.InventoryRelease
		}
		settle[i] = command(t, typ, contract.OrderRef{OrderID: id})
	}
	results, errs = runAll(pool, handle, settle)
	checkNoErrors(t, "settle", errs)
	if diff := cmp.Diff(map[verdict]int{okVerdict: orders}, tally(results)); diff != "" {
		t.Errorf("settle verdicts (-want +got):\n%s", diff)
	}
	checkCatalog(t, pool, map[string]contract.Product{
		"a": with(a, 850, 0, 150), "b": with(b, 700, 0, 300), "c": with(c, 850, 0, 150),
	})
}

// --- batches ---

func reserveCmd(t *testing.T, orderID string, items ...contract.Item) worker.Command {
	return command(t, contract.InventoryReserve, contract.ReserveRequest{OrderID: orderID, Items: items})
}

// Within one batch, orders take the stock in their order: each sees what
// the ones before it left.
func TestBatchReservesShareStockInOrder(t *testing.T) {
	t.Parallel()
	pool, _ := newDB(t)
	seed(t, pool, banana) // 5 available

	vs := workertest.RunBatch(t, pool, handle,
		reserveCmd(t, "o1", item("banana", 2)),
		reserveCmd(t, "o2", item("banana", 2)),
		reserveCmd(t, "o3", item("banana", 2)), // 1 left: refused
		reserveCmd(t, "o4", item("banana", 1)),
		reserveCmd(t, "o5", item("banana", 1)), // none left
	)
	want := []verdict{okVerdict, okVerdict, failed(contract.CodeOutOfStock), okVerdict, failed(contract.CodeOutOfStock)}
	if diff := cmp.Diff(want, workertest.Verdicts(vs)); diff != "" {
		t.Errorf("verdicts (-want +got):\n%s", diff)
	}
	checkCatalog(t, pool, map[string]contract.Product{"banana": with(banana, 0, 5, 0)})
	checkReservations(t, pool, map[string]reservationRow{
		"o1": {"reserved", 2000}, "o2": {"reserved", 2000}, "o4": {"reserved", 1000},
	})
}

// A batch mixing every command, over orders in every state, moves stock
// exactly as the commands would one by one; an invalid command among them
// changes nothing.
func TestBatchOfMixedCommandsMovesStockAsOneByOne(t *testing.T) {
	t.Parallel()
	pool, _ := newDB(t)
	seed(t, pool, apple, banana)
	checkVerdict(t, "reserve o1", doReserve(t, pool, "o1", item("apple", 2)), okVerdict)
	checkVerdict(t, "reserve o2", doReserve(t, pool, "o2", item("apple", 1), item("banana", 1)), okVerdict)
	checkVerdict(t, "reserve o3", doReserve(t, pool, "o3", item("banana", 1)), okVerdict)
	checkVerdict(t, "commit o3", doCommit(t, pool, "o3"), okVerdict)

	vs := workertest.RunBatch(t, pool, handle,
		command(t, contract.InventoryCommit, contract.OrderRef{OrderID: "o1"}),
		command(t, contract.InventoryRelease, contract.OrderRef{OrderID: "o2"}),
		reserveCmd(t, "o5", item("banana", 4)),                                  // o2's banana is back: 4 available
		command(t, contract.InventoryRelease, contract.OrderRef{OrderID: "o3"}), // sold: refused
		command(t, contract.InventoryRelease, contract.OrderRef{OrderID: "o6"}), // before its reserve
		command(t, contract.InventoryCommit, contract.OrderRef{OrderID: "o7"}),  // nothing to commit
		command(t, contract.InventoryCommit, `{"order_id":""}`),
		reserveCmd(t, "o8", item("kiwi", 1)),
	)
	want := []verdict{
		okVerdict, okVerdict, okVerdict, failed(contract.CodeNotReserved), okVerdict,
		failed(contract.CodeNotReserved), workertest.Invalid, failed(contract.CodeUnknownSKU),
	}
	if diff := cmp.Diff(want, workertest.Verdicts(vs)); diff != "" {
		t.Errorf("verdicts (-want +got):\n%s", diff)
	}
	checkCatalog(t, pool, map[string]contract.Product{
		"apple":  with(apple, 8, 0, 2),
		"banana": with(banana, 0, 4, 1),
	})
	checkReservations(t, pool, map[string]reservationRow{
		"o1": {"committed", 500}, "o2": {"released", 1250}, "o3": {"committed", 1000},
		"o5": {"reserved", 4000}, "o6": {"released", 0},
	})
	// The release recorded in the batch makes o6's late reserve a no-op.
	checkVerdict(t, "late reserve o6", doReserve(t, pool, "o6", item("apple", 1)), failed(contract.CodeAlreadyReleased))
}

// Commands for one order inside one call apply in order.
func TestBatchAppliesCommandsOfOneOrderInOrder(t *testing.T) {
	t.Parallel()
	pool, _ := newDB(t)
	seed(t, pool, apple)

	vs := workertest.RunBatch(t, pool, handle,
		reserveCmd(t, "o1", item("apple", 3)),
		command(t, contract.InventoryCommit, contract.OrderRef{OrderID: "o1"}),
		reserveCmd(t, "o2", item("apple", 3)),
		command(t, contract.InventoryRelease, contract.OrderRef{OrderID: "o2"}),
		command(t, contract.InventoryRelease, contract.OrderRef{OrderID: "o3"}),
		reserveCmd(t, "o3", item("apple", 1)),
	)
	want := []verdict{okVerdict, okVerdict, okVerdict, okVerdict, okVerdict, failed(contract.CodeAlreadyReleased)}
	if diff := cmp.Diff(want, workertest.Verdicts(vs)); diff != "" {
		t.Errorf("verdicts (-want +got):\n%s", diff)
	}
	checkCatalog(t, pool, map[string]contract.Product{"apple": with(apple, 7, 0, 3)})
	checkReservations(t, pool, map[string]reservationRow{
		"o1": {"committed", 750}, "o2": {"released", 750}, "o3": {"released", 0},
	})
}

// A reservation whose product has disappeared (by hand: the API never
// deletes products) fails its release or commit as a transient error, to
// be retried and then left to an operator, instead of moving stock into
// nothing or crashing the worker.
func TestSettlingAReservationOfAVanishedProductIsAnError(t *testing.T) {
	t.Parallel()
	pool, _ := newDB(t)
	seed(t, pool, apple)
	checkVerdict(t, "reserve", doReserve(t, pool, "o1", item("apple", 2)), okVerdict)
	if _, err := pool.Exec(context.Background(), `DELETE FROM products WHERE sku = 'apple'`); err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{contract.InventoryCommit, contract.InventoryRelease} {
		_, err := inTx(context.Background(), pool, handle, command(t, typ, contract.OrderRef{OrderID: "o1"}))
		if err == nil || !strings.Contains(err.Error(), "product apple is gone") {
			t.Errorf("%s: error = %v, want one naming the vanished product", typ, err)
		}
	}
	checkReservations(t, pool, map[string]reservationRow{"o1": {"reserved", 500}})
}

// TestUpsertCompareAndSet: an upsert naming the version it read applies
// only while the product is at it; an order's reservation moves the
// version on too, so an operator's stale stock figure cannot overwrite
// what orders did meanwhile (phantom stock).
func TestUpsertCompareAndSet(t *testing.T) {
	t.Parallel()
	pool, _ := newDB(t)
	ctx := context.Background()
	upsert := func(u contract.UpsertProduct) worker.Result {
		t.Helper()
		res, err := upsertProduct(ctx, pool, command(t, contract.InventoryUpsertProduct, u))
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	read := payloadOf[contract.Product](t, upsert(contract.UpsertProduct{SKU: "fig", Name: "Fig", PriceCents: 100, Available: 10}))
	checkVerdict(t, "reserve o1", doReserve(t, pool, "o1", item("fig", 2)), okVerdict)
	// The operator set 15 from the figure they read (10): refused.
	stale := upsert(contract.UpsertProduct{SKU: "fig", Name: "Fig", PriceCents: 100, Available: 15, IfVersion: read.Version})
	checkVerdict(t, "stale upsert", stale, failed(contract.CodeVersionMismatch))
	res, err := getProduct(ctx, pool, command(t, contract.InventoryGetProduct, contract.ProductRef{SKU: "fig"}))
	if err != nil {
		t.Fatal(err)
	}
	now := payloadOf[contract.Product](t, res)
	if now.Available != 8 || now.Reserved != 2 {
		t.Fatalf("after the refused upsert: %+v, want 8 available, 2 reserved", now)
	}
	fresh := upsert(contract.UpsertProduct{SKU: "fig", Name: "Fig", PriceCents: 100, Available: 13, IfVersion: now.Version})
	checkVerdict(t, "fresh upsert", fresh, okVerdict)
	if p := payloadOf[contract.Product](t, fresh); p.Available != 13 || p.Version != now.Version+1 {
		t.Errorf("after the fresh upsert: %+v, want 13 available at version %d", p, now.Version+1)
	}
	checkVerdict(t, "upsert of a missing product with a version",
		upsert(contract.UpsertProduct{SKU: "kiwi", Name: "Kiwi", PriceCents: 1, Available: 1, IfVersion: 3}), failed(contract.CodeNotFound))
}

// TestRestockIsRelative: a restock adds to what is there, whatever orders
// did meanwhile, and never takes available stock below zero.
func TestRestockIsRelative(t *testing.T) {
	t.Parallel()
	pool, _ := newDB(t)
	ctx := context.Background()
	seed(t, pool, with(apple, 10, 0, 0))
	restock := func(sku string, delta int64) worker.Result {
		t.Helper()
		res, err := restockProduct(ctx, pool, command(t, contract.InventoryRestock, contract.RestockProduct{SKU: sku, Delta: delta}))
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	checkVerdict(t, "reserve o1", doReserve(t, pool, "o1", item("apple", 4)), okVerdict)
	res := restock("apple", 5)
	checkVerdict(t, "restock +5", res, okVerdict)
	if p := payloadOf[contract.Product](t, res); p.Available != 11 || p.Reserved != 4 {
		t.Errorf("after +5: %+v, want 11 available, 4 reserved", p)
	}
	checkVerdict(t, "restock -12", restock("apple", -12), failed(contract.CodeInsufficientStock))
	checkVerdict(t, "restock -11", restock("apple", -11), okVerdict)
	checkVerdict(t, "restock unknown", restock("durian", 1), failed(contract.CodeNotFound))
}
