package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga/worker"
)

// Reservation statuses.
const (
	reserved  = "reserved"
	released  = "released"
	committed = "committed"
)

func register(rt *worker.Runtime, db *pgxpool.Pool) {
	rt.Handle(contract.InventoryReserve, reserve)
	rt.Handle(contract.InventoryRelease, release)
	rt.Handle(contract.InventoryCommit, commit)
	rt.Query(contract.InventoryGetProduct, func(ctx context.Context, cmd worker.Command) (worker.Result, error) {
		return getProduct(ctx, db, cmd)
	})
	rt.Query(contract.InventoryUpsertProduct, func(ctx context.Context, cmd worker.Command) (worker.Result, error) {
		return upsertProduct(ctx, db, cmd)
	})
}

// reserve reserves every line of an order, or none, and prices it from the
// catalog. Products are locked in SKU order so concurrent orders cannot
// deadlock, and stock is checked under the lock: never oversold.
func reserve(ctx context.Context, tx pgx.Tx, cmd worker.Command) (worker.Result, error) {
	var req contract.ReserveRequest
	if err := cmd.Decode(&req); err != nil {
		return worker.Result{}, err
	}
	if req.OrderID == "" || len(req.Items) == 0 {
		return worker.Result{}, worker.Invalid(errors.New("order_id and items are required"))
	}
	want := map[string]int64{}
	for _, it := range req.Items {
		if it.SKU == "" || it.Quantity <= 0 {
			return worker.Result{}, worker.Invalid(fmt.Errorf("bad line %+v", it))
		}
		want[it.SKU] += it.Quantity
	}
	status, lines, amount, err := lockReservation(ctx, tx, req.OrderID)
	if err != nil {
		return worker.Result{}, err
	}
	switch status {
	case released:
		// Its release overtook it: the compensation wins.
		return worker.Fail(contract.CodeAlreadyReleased, "order %s was released before its reservation arrived", req.OrderID)
	case reserved, committed:
		return worker.OK(contract.ReserveReply{Lines: lines, AmountCents: amount})
	}
	skus := make([]string, 0, len(want))
	for s := range want {
		skus = append(skus, s)
	}
	slices.Sort(skus)
	rows, err := tx.Query(ctx, `SELECT sku, price_cents, available FROM products
		WHERE sku = ANY($1) ORDER BY sku FOR UPDATE`, skus)
	if err != nil {
		return worker.Result{}, fmt.Errorf("lock products: %w", err)
	}
	type stock struct{ price, available int64 }
	found := map[string]stock{}
	for rows.Next() {
		var sku string
		var s stock
		if err := rows.Scan(&sku, &s.price, &s.available); err != nil {
			rows.Close()
			return worker.Result{}, err
		}
		found[sku] = s
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return worker.Result{}, err
	}
	var unknown, short []string
	for _, sku := range skus {
		s, ok := found[sku]
		switch {
		case !ok:
			unknown = append(unknown, sku)
		case s.available < want[sku]:
			short = append(short, fmt.Sprintf("%s (requested %d, available %d)", sku, want[sku], s.available))
		}
	}
	if len(unknown) > 0 {
		return worker.Fail(contract.CodeUnknownSKU, "unknown sku: %s", strings.Join(unknown, ", "))
	}
	if len(short) > 0 {
		return worker.Fail(contract.CodeOutOfStock, "out of stock: %s", strings.Join(short, ", "))
	}
	qty := make([]int64, len(skus))
	lines = make([]contract.PricedLine, len(skus))
	amount = 0
	for i, sku := range skus {
		qty[i] = want[sku]
		lines[i] = contract.PricedLine{SKU: sku, Quantity: want[sku], PriceCents: found[sku].price}
		amount += want[sku] * found[sku].price
	}
	if _, err := tx.Exec(ctx, `UPDATE products p SET available = p.available - u.qty,
			reserved = p.reserved + u.qty, updated_at = now()
		FROM unnest($1::text[], $2::bigint[]) AS u(sku, qty) WHERE p.sku = u.sku`, skus, qty); err != nil {
		return worker.Result{}, fmt.Errorf("reserve stock: %w", err)
	}
	body, _ := json.Marshal(lines)
	if _, err := tx.Exec(ctx, `INSERT INTO reservations (order_id, status, lines, amount_cents)
		VALUES ($1, $2, $3, $4)`, req.OrderID, reserved, body, amount); err != nil {
		return worker.Result{}, fmt.Errorf("record reservation: %w", err)
	}
	return worker.OK(contract.ReserveReply{Lines: lines, AmountCents: amount})
}

// lockReservation loads an order's reservation for update; status is ""
// when there is none.
func lockReservation(ctx context.Context, tx pgx.Tx, orderID string) (status string, lines []contract.PricedLine, amount int64, err error) {
	var raw []byte
	err = tx.QueryRow(ctx, `SELECT status, lines, amount_cents FROM reservations WHERE order_id = $1 FOR UPDATE`,
		orderID).Scan(&status, &raw, &amount)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil, 0, nil
	}
	if err != nil {
		return "", nil, 0, fmt.Errorf("load reservation: %w", err)
	}
	if err := json.Unmarshal(raw, &lines); err != nil {
		return "", nil, 0, fmt.Errorf("reservation %s lines: %w", orderID, err)
	}
	return status, lines, amount, nil
}

func decodeRef(cmd worker.Command) (string, error) {
	var ref contract.OrderRef
	if err := cmd.Decode(&ref); err != nil {
		return "", err
	}
	if ref.OrderID == "" {
		return "", worker.Invalid(errors.New("order_id is required"))
	}
	return ref.OrderID, nil
}

// moveStock applies a reservation's lines to the products, in SKU order.
func moveStock(ctx context.Context, tx pgx.Tx, lines []contract.PricedLine, sql string) error {
	skus := make([]string, len(lines))
	qty := make([]int64, len(lines))
	for i, l := range lines {
		skus[i], qty[i] = l.SKU, l.Quantity
	}
	if _, err := tx.Exec(ctx, `SELECT 1 FROM products WHERE sku = ANY($1) ORDER BY sku FOR UPDATE`, skus); err != nil {
		return fmt.Errorf("lock products: %w", err)
	}
	if _, err := tx.Exec(ctx, sql, skus, qty); err != nil {
		return fmt.Errorf("move stock: %w", err)
	}
	return nil
}

// release returns a reservation's stock. With no reservation yet it
// records a release, so a reservation arriving late becomes a no-op.
func release(ctx context.Context, tx pgx.Tx, cmd worker.Command) (worker.Result, error) {
	orderID, err := decodeRef(cmd)
	if err != nil {
		return worker.Result{}, err
	}
	status, lines, _, err := lockReservation(ctx, tx, orderID)
	if err != nil {
		return worker.Result{}, err
	}
	switch status {
	case "":
		if _, err := tx.Exec(ctx, `INSERT INTO reservations (order_id, status) VALUES ($1, $2)`, orderID, released); err != nil {
			return worker.Result{}, fmt.Errorf("record release: %w", err)
		}
		return worker.OK(map[string]any{"released": 0})
	case released:
		return worker.OK(map[string]any{"released": 0})
	case committed:
		return worker.Fail(contract.CodeNotReserved, "order %s is committed: its stock is sold", orderID)
	}
	if err := moveStock(ctx, tx, lines, `UPDATE products p SET available = p.available + u.qty,
			reserved = p.reserved - u.qty, updated_at = now()
		FROM unnest($1::text[], $2::bigint[]) AS u(sku, qty) WHERE p.sku = u.sku`); err != nil {
		return worker.Result{}, err
	}
	if _, err := tx.Exec(ctx, `UPDATE reservations SET status = $2, updated_at = now() WHERE order_id = $1`,
		orderID, released); err != nil {
		return worker.Result{}, fmt.Errorf("release: %w", err)
	}
	return worker.OK(map[string]any{"released": len(lines)})
}

// commit turns a reservation into a sale.
func commit(ctx context.Context, tx pgx.Tx, cmd worker.Command) (worker.Result, error) {
	orderID, err := decodeRef(cmd)
	if err != nil {
		return worker.Result{}, err
	}
	status, lines, _, err := lockReservation(ctx, tx, orderID)
	if err != nil {
		return worker.Result{}, err
	}
	switch status {
	case committed:
		return worker.OK(nil)
	case reserved:
	default:
		return worker.Fail(contract.CodeNotReserved, "order %s has no reservation to commit (status %q)", orderID, status)
	}
	if err := moveStock(ctx, tx, lines, `UPDATE products p SET reserved = p.reserved - u.qty,
			sold = p.sold + u.qty, updated_at = now()
		FROM unnest($1::text[], $2::bigint[]) AS u(sku, qty) WHERE p.sku = u.sku`); err != nil {
		return worker.Result{}, err
	}
	if _, err := tx.Exec(ctx, `UPDATE reservations SET status = $2, updated_at = now() WHERE order_id = $1`,
		orderID, committed); err != nil {
		return worker.Result{}, fmt.Errorf("commit: %w", err)
	}
	return worker.OK(nil)
}

func getProduct(ctx context.Context, db *pgxpool.Pool, cmd worker.Command) (worker.Result, error) {
	var ref contract.ProductRef
	if err := cmd.Decode(&ref); err != nil {
		return worker.Result{}, err
	}
	var p contract.Product
	err := db.QueryRow(ctx, `SELECT sku, name, price_cents, available, reserved, sold FROM products WHERE sku = $1`,
		ref.SKU).Scan(&p.SKU, &p.Name, &p.PriceCents, &p.Available, &p.Reserved, &p.Sold)
	if errors.Is(err, pgx.ErrNoRows) {
		return worker.Fail(contract.CodeNotFound, "no product %q", ref.SKU)
	}
	if err != nil {
		return worker.Result{}, fmt.Errorf("get product: %w", err)
	}
	return worker.OK(p)
}

// upsertProduct creates a product or sets its name, price and available
// stock; reserved and sold are left alone. Setting is idempotent, so it
// needs no inbox.
func upsertProduct(ctx context.Context, db *pgxpool.Pool, cmd worker.Command) (worker.Result, error) {
	var u contract.UpsertProduct
	if err := cmd.Decode(&u); err != nil {
		return worker.Result{}, err
	}
	if u.SKU == "" || u.Name == "" || u.PriceCents < 0 || u.Available < 0 {
		return worker.Result{}, worker.Invalid(fmt.Errorf("bad product %+v", u))
	}
	var p contract.Product
	err := db.QueryRow(ctx, `INSERT INTO products (sku, name, price_cents, available)
		VALUES ($1, $2, $3, $4)
		ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, price_cents = EXCLUDED.price_cents,
			available = EXCLUDED.available, updated_at = now()
		RETURNING sku, name, price_cents, available, reserved, sold`,
		u.SKU, u.Name, u.PriceCents, u.Available).Scan(&p.SKU, &p.Name, &p.PriceCents, &p.Available, &p.Reserved, &p.Sold)
	if err != nil {
		return worker.Result{}, fmt.Errorf("upsert product: %w", err)
	}
	return worker.OK(p)
}
