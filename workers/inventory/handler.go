package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	json "github.com/goccy/go-json"
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
	rt.HandleBatch(handle, contract.InventoryReserve, contract.InventoryRelease, contract.InventoryCommit)
	rt.Query(contract.InventoryGetProduct, func(ctx context.Context, cmd worker.Command) (worker.Result, error) {
		return getProduct(ctx, db, cmd)
	})
	// Operator actions go through the inbox: a request redelivered by the
	// broker, or sent again with the same Idempotency-Key, has one effect.
	rt.Handle(contract.InventoryUpsertProduct, upsertProduct)
	rt.Handle(contract.InventoryRestock, restockProduct)
}

// reservation is an order's reservation as a batch sees it.
type reservation struct {
	status  string
	lines   []contract.PricedLine
	amount  int64
	isNew   bool // to insert
	changed bool // to update
}

// stock is a product as a batch sees it, with what the batch moved.
type stock struct {
	price, available             int64
	dAvailable, dReserved, dSold int64
}

// batch is the state one call of handle works on: the reservations its
// commands name and the products they touch, locked.
type batch struct {
	res  map[string]*reservation
	prod map[string]*stock
}

// handle applies a batch of inventory commands (reserve, release, commit),
// in order. It locks every reservation the batch names, then every product
// those reservations and the new orders touch, each in key order (so that
// concurrent batches cannot deadlock, and stock is checked under the
// lock: never oversold); it applies the commands to that state in memory
// and writes back what changed, one statement per kind of change.
func handle(ctx context.Context, tx worker.Tx, cmds []worker.Command) ([]worker.Verdict, error) {
	out := make([]worker.Verdict, len(cmds))
	reserves := make([]contract.ReserveRequest, len(cmds))
	orders := make([]string, len(cmds))
	var ids, skus []string
	for i, cmd := range cmds {
		var err error
		if cmd.Type == contract.InventoryReserve {
			err = cmd.DecodeValid(&reserves[i])
			orders[i] = reserves[i].OrderID
		} else {
			var ref contract.OrderRef
			err = cmd.DecodeValid(&ref)
			orders[i] = ref.OrderID
		}
		if err != nil {
			out[i].Invalid = err
			continue
		}
		ids = append(ids, orders[i])
		for _, it := range reserves[i].Items {
			skus = append(skus, it.SKU)
		}
	}
	if len(ids) == 0 {
		return out, nil
	}
	b, err := lock(ctx, tx, ids, skus)
	if err != nil {
		return nil, err
	}
	for i, cmd := range cmds {
		if out[i].Invalid != nil {
			continue
		}
		switch cmd.Type {
		case contract.InventoryReserve:
			out[i].Result, err = b.reserve(reserves[i])
		case contract.InventoryRelease:
			out[i].Result, err = b.release(orders[i])
		case contract.InventoryCommit:
			out[i].Result, err = b.commit(orders[i])
		}
		if err != nil {
			return nil, err
		}
	}
	return out, b.save(ctx, tx)
}

// lock loads and locks the reservations of orders, then the products of
// skus and of those reservations' lines.
func lock(ctx context.Context, tx worker.Tx, orders, skus []string) (*batch, error) {
	b := &batch{res: map[string]*reservation{}, prod: map[string]*stock{}}
	slices.Sort(orders)
	rows, err := tx.Query(ctx, `SELECT order_id, status, lines, amount_cents FROM reservations
		WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE`, slices.Compact(orders))
	if err != nil {
		return nil, fmt.Errorf("lock reservations: %w", err)
	}
	for rows.Next() {
		var id string
		var raw []byte
		r := &reservation{}
		if err := rows.Scan(&id, &r.status, &raw, &r.amount); err != nil {
			rows.Close()
			return nil, fmt.Errorf("lock reservations: %w", err)
		}
		if err := json.Unmarshal(raw, &r.lines); err != nil {
			rows.Close()
			return nil, fmt.Errorf("reservation %s lines: %w", id, err)
		}
		b.res[id] = r
		for _, l := range r.lines {
			skus = append(skus, l.SKU)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("lock reservations: %w", err)
	}
	if len(skus) == 0 {
		return b, nil
	}
	slices.Sort(skus)
	rows, err = tx.Query(ctx, `SELECT sku, price_cents, available FROM products
		WHERE sku = ANY($1) ORDER BY sku FOR UPDATE`, slices.Compact(skus))
	if err != nil {
		return nil, fmt.Errorf("lock products: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var sku string
		p := &stock{}
		if err := rows.Scan(&sku, &p.price, &p.available); err != nil {
			return nil, fmt.Errorf("lock products: %w", err)
		}
		b.prod[sku] = p
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("lock products: %w", err)
	}
	return b, nil
}

// reserve reserves every line of an order, or none, and prices it from
// the catalog.
func (b *batch) reserve(req contract.ReserveRequest) (worker.Result, error) {
	if r := b.res[req.OrderID]; r != nil {
		switch r.status {
		case released:
			// Its release overtook it: the compensation wins.
			return worker.Fail(contract.CodeAlreadyReleased, "order %s was released before its reservation arrived", req.OrderID)
		default: // reserved or committed: reserved before
			return worker.OK(contract.ReserveReply{Lines: r.lines, AmountCents: r.amount})
		}
	}
	want := map[string]int64{}
	for _, it := range req.Items {
		want[it.SKU] += it.Quantity
	}
	skus := make([]string, 0, len(want))
	for s := range want {
		skus = append(skus, s)
	}
	slices.Sort(skus)
	var unknown, short []string
	for _, sku := range skus {
		p, ok := b.prod[sku]
		switch {
		case !ok:
			unknown = append(unknown, sku)
		case p.available < want[sku]:
			short = append(short, fmt.Sprintf("%s (requested %d, available %d)", sku, want[sku], p.available))
		}
	}
	if len(unknown) > 0 {
		return worker.Fail(contract.CodeUnknownSKU, "unknown sku: %s", strings.Join(unknown, ", "))
	}
	if len(short) > 0 {
		return worker.Fail(contract.CodeOutOfStock, "out of stock: %s", strings.Join(short, ", "))
	}
	r := &reservation{status: reserved, isNew: true, lines: make([]contract.PricedLine, len(skus))}
	for i, sku := range skus {
		p, q := b.prod[sku], want[sku]
		p.available -= q
		p.dAvailable -= q
		p.dReserved += q
		r.lines[i] = contract.PricedLine{SKU: sku, Quantity: q, PriceCents: p.price}
		r.amount += q * p.price
	}
	b.res[req.OrderID] = r
	return worker.OK(contract.ReserveReply{Lines: r.lines, AmountCents: r.amount})
}

// lines returns the locked products of a reservation's lines; a product
// that is gone is an error (retried, then an operator's case), never a
// stock move into nothing.
func (b *batch) lines(orderID string, r *reservation) ([]*stock, error) {
	out := make([]*stock, len(r.lines))
	for i, l := range r.lines {
		if out[i] = b.prod[l.SKU]; out[i] == nil {
			return nil, fmt.Errorf("reservation %s: product %s is gone", orderID, l.SKU)
		}
	}
	return out, nil
}

// release returns a reservation's stock. With no reservation yet it
// records a release, so a reservation arriving late becomes a no-op.
func (b *batch) release(orderID string) (worker.Result, error) {
	r := b.res[orderID]
	switch {
	case r == nil:
		b.res[orderID] = &reservation{status: released, isNew: true}
		return worker.OK(map[string]any{"released": 0})
	case r.status == released:
		return worker.OK(map[string]any{"released": 0})
	case r.status == committed:
		return worker.Fail(contract.CodeNotReserved, "order %s is committed: its stock is sold", orderID)
	}
	prods, err := b.lines(orderID, r)
	if err != nil {
		return worker.Result{}, err
	}
	for i, l := range r.lines {
		p := prods[i]
		p.available += l.Quantity
		p.dAvailable += l.Quantity
		p.dReserved -= l.Quantity
	}
	r.status, r.changed = released, true
	return worker.OK(map[string]any{"released": len(r.lines)})
}

// commit turns a reservation into a sale.
func (b *batch) commit(orderID string) (worker.Result, error) {
	r := b.res[orderID]
	status := ""
	if r != nil {
		status = r.status
	}
	switch status {
	case committed:
		return worker.OK(nil)
	case reserved:
	default:
		return worker.Fail(contract.CodeNotReserved, "order %s has no reservation to commit (status %q)", orderID, status)
	}
	prods, err := b.lines(orderID, r)
	if err != nil {
		return worker.Result{}, err
	}
	for i, l := range r.lines {
		prods[i].dReserved -= l.Quantity
		prods[i].dSold += l.Quantity
	}
	r.status, r.changed = committed, true
	return worker.OK(nil)
}

// save writes what the batch changed, in one round trip: the products'
// stock, the new reservations (a plain insert: a copy of a command running
// concurrently elsewhere fails it, and the batch is retried) and the
// changed ones, each in key order like the locks.
func (b *batch) save(ctx context.Context, tx worker.Tx) error {
	var (
		skus                   []string
		dAvail, dRes, dSold    []int64
		newIDs, newStatus      []string
		newLines               [][]byte
		newAmount              []int64
		changedIDs, changedSts []string
	)
	for _, sku := range slices.Sorted(maps.Keys(b.prod)) {
		p := b.prod[sku]
		if p.dAvailable != 0 || p.dReserved != 0 || p.dSold != 0 {
			skus, dAvail, dRes, dSold = append(skus, sku), append(dAvail, p.dAvailable), append(dRes, p.dReserved), append(dSold, p.dSold)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(b.res)) {
		r := b.res[id]
		switch {
		case r.isNew:
			lines := r.lines
			if lines == nil {
				lines = []contract.PricedLine{}
			}
			body, err := json.Marshal(lines)
			if err != nil {
				return fmt.Errorf("reservation %s lines: %w", id, err)
			}
			newIDs, newStatus, newLines, newAmount = append(newIDs, id), append(newStatus, r.status), append(newLines, body), append(newAmount, r.amount)
		case r.changed:
			changedIDs, changedSts = append(changedIDs, id), append(changedSts, r.status)
		}
	}
	q := &pgx.Batch{}
	if len(skus) > 0 {
		q.Queue(`UPDATE products p SET available = p.available + u.da, reserved = p.reserved + u.dr,
				sold = p.sold + u.ds, version = p.version + 1, updated_at = now()
			FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS u(sku, da, dr, ds)
			WHERE p.sku = u.sku`, skus, dAvail, dRes, dSold)
	}
	if len(newIDs) > 0 {
		q.Queue(`INSERT INTO reservations (order_id, status, lines, amount_cents)
			SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::bigint[])`, newIDs, newStatus, newLines, newAmount)
	}
	if len(changedIDs) > 0 {
		q.Queue(`UPDATE reservations r SET status = u.status, updated_at = now()
			FROM unnest($1::text[], $2::text[]) AS u(order_id, status) WHERE r.order_id = u.order_id`, changedIDs, changedSts)
	}
	if q.Len() == 0 {
		return nil
	}
	if err := tx.SendBatch(ctx, q).Close(); err != nil {
		return fmt.Errorf("save stock and reservations: %w", err)
	}
	return nil
}

const productColumns = `sku, name, price_cents, available, reserved, sold, version`

func scanProduct(row pgx.Row, p *contract.Product) error {
	return row.Scan(&p.SKU, &p.Name, &p.PriceCents, &p.Available, &p.Reserved, &p.Sold, &p.Version)
}

func getProduct(ctx context.Context, db *pgxpool.Pool, cmd worker.Command) (worker.Result, error) {
	var ref contract.ProductRef
	if err := cmd.Decode(&ref); err != nil {
		return worker.Result{}, err
	}
	var p contract.Product
	err := scanProduct(db.QueryRow(ctx, `SELECT `+productColumns+` FROM products WHERE sku = $1`, ref.SKU), &p)
	if errors.Is(err, pgx.ErrNoRows) {
		return worker.Fail(contract.CodeNotFound, "no product %q", ref.SKU)
	}
	if err != nil {
		return worker.Result{}, fmt.Errorf("get product: %w", err)
	}
	return worker.OK(p)
}

// upsertProduct creates a product or sets its name, price and available
// stock; reserved and sold are left alone. With IfVersion, only while the
// product is at that version (every change of its stock moves it on, an
// order's reservation too): two operators, or an operator and the orders,
// cannot silently overwrite each other.
func upsertProduct(ctx context.Context, tx worker.Tx, cmd worker.Command) (worker.Result, error) {
	var u contract.UpsertProduct
	if err := cmd.Decode(&u); err != nil {
		return worker.Result{}, err
	}
	if u.SKU == "" || u.Name == "" || u.PriceCents < 0 || u.Available < 0 || u.IfVersion < 0 {
		return worker.Result{}, worker.Invalid(fmt.Errorf("bad product %+v", u))
	}
	var p contract.Product
	var err error
	if u.IfVersion > 0 {
		err = scanProduct(tx.QueryRow(ctx, `UPDATE products SET name = $2, price_cents = $3, available = $4,
			version = version + 1, updated_at = now()
			WHERE sku = $1 AND version = $5 RETURNING `+productColumns,
			u.SKU, u.Name, u.PriceCents, u.Available, u.IfVersion), &p)
		if errors.Is(err, pgx.ErrNoRows) {
			return versionConflict(ctx, tx, u.SKU, u.IfVersion)
		}
	} else {
		err = scanProduct(tx.QueryRow(ctx, `INSERT INTO products (sku, name, price_cents, available)
			VALUES ($1, $2, $3, $4)
			ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, price_cents = EXCLUDED.price_cents,
				available = EXCLUDED.available, version = products.version + 1, updated_at = now()
			RETURNING `+productColumns,
			u.SKU, u.Name, u.PriceCents, u.Available), &p)
	}
	if err != nil {
		return worker.Result{}, fmt.Errorf("upsert product: %w", err)
	}
	return worker.OK(p)
}

// versionConflict answers a compare-and-set that found the product at
// another version, or no product.
func versionConflict(ctx context.Context, tx worker.Tx, sku string, want int64) (worker.Result, error) {
	var at int64
	err := tx.QueryRow(ctx, `SELECT version FROM products WHERE sku = $1`, sku).Scan(&at)
	if errors.Is(err, pgx.ErrNoRows) {
		return worker.Fail(contract.CodeNotFound, "no product %q", sku)
	}
	if err != nil {
		return worker.Result{}, fmt.Errorf("product version: %w", err)
	}
	return worker.Fail(contract.CodeVersionMismatch, "product %q is at version %d, not %d", sku, at, want)
}

// restockProduct adds delta (negative: removes) to a product's available
// stock, which never goes below zero. Recorded in the inbox like a
// command: one effect per request.
func restockProduct(ctx context.Context, tx worker.Tx, cmd worker.Command) (worker.Result, error) {
	var r contract.RestockProduct
	if err := cmd.Decode(&r); err != nil {
		return worker.Result{}, err
	}
	if r.SKU == "" || r.Delta == 0 {
		return worker.Result{}, worker.Invalid(fmt.Errorf("bad restock %+v", r))
	}
	var p contract.Product
	err := scanProduct(tx.QueryRow(ctx, `UPDATE products SET available = available + $2, version = version + 1,
		updated_at = now() WHERE sku = $1 AND available + $2 >= 0 RETURNING `+productColumns, r.SKU, r.Delta), &p)
	if errors.Is(err, pgx.ErrNoRows) {
		var available int64
		err := tx.QueryRow(ctx, `SELECT available FROM products WHERE sku = $1`, r.SKU).Scan(&available)
		if errors.Is(err, pgx.ErrNoRows) {
			return worker.Fail(contract.CodeNotFound, "no product %q", r.SKU)
		}
		if err != nil {
			return worker.Result{}, fmt.Errorf("restock: %w", err)
		}
		return worker.Fail(contract.CodeInsufficientStock, "product %q has %d available, cannot remove %d", r.SKU, available, -r.Delta)
	}
	if err != nil {
		return worker.Result{}, fmt.Errorf("restock: %w", err)
	}
	return worker.OK(p)
}
