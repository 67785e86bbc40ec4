package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/worker"
)

// Shipment statuses.
const (
	prepared  = "prepared"
	refused   = "refused"
	cancelled = "cancelled"
)

func register(rt *worker.Runtime, db *pgxpool.Pool, delay time.Duration) {
	d := &deliveries{db: db, rt: rt, wake: make(chan struct{}, 1)}
	sh := shipper{delay: delay, now: time.Now}
	rt.HandleBatch(sh.handle, contract.ShippingPrepare, contract.ShippingCancel)
	rt.Query(contract.ShippingLedger, func(ctx context.Context, cmd worker.Command) (worker.Result, error) {
		return ledger(ctx, db, cmd)
	})
	rt.Query(contract.ShippingConfirmDelivery, d.confirm)
	rt.Go(d.loop)
}

// shipment is an order's shipment as a batch sees it.
type shipment struct {
	status, country, ref string
	prepared             bool
	// deliverAt is when the carrier reports the delivery; deliveredAt is
	// set, and announced true, when it was reported with the prepare.
	deliverAt   time.Time
	deliveredAt *time.Time
	announced   bool
	isNew       bool // to insert
	changed     bool // to update
}

// shipper handles the shipping commands; the shipments it prepares are
// delivered delay later (at once, with no delay: the prepare's reply then
// carries the delivery signal).
type shipper struct {
	delay time.Duration
	now   func() time.Time
}

// handle applies a batch of shipping commands (prepare, cancel), in order:
// it locks the shipments of every order the batch names, applies the
// commands to them in memory, and writes back what changed.
func (sh shipper) handle(ctx context.Context, tx worker.Tx, cmds []worker.Command) ([]worker.Verdict, error) {
	now := sh.now().UTC().Truncate(time.Microsecond) // as PostgreSQL keeps it
	out := make([]worker.Verdict, len(cmds))
	reqs := make([]contract.PrepareRequest, len(cmds))
	var ids []string
	for i, cmd := range cmds {
		var err error
		if cmd.Type == contract.ShippingPrepare {
			err = cmd.DecodeValid(&reqs[i])
		} else {
			var ref contract.OrderRef
			err = cmd.DecodeValid(&ref)
			reqs[i].OrderID = ref.OrderID
		}
		if err != nil {
			out[i].Invalid = err
			continue
		}
		ids = append(ids, reqs[i].OrderID)
	}
	if len(ids) == 0 {
		return out, nil
	}
	ships, err := lockShipments(ctx, tx, ids)
	if err != nil {
		return nil, err
	}
	for i, cmd := range cmds {
		if out[i].Invalid != nil {
			continue
		}
		if cmd.Type == contract.ShippingPrepare {
			out[i].Result, err = prepare(ships, reqs[i], sh.delay, now)
		} else {
			out[i].Result, err = cancel(ships, reqs[i].OrderID)
		}
		if err != nil {
			return nil, err
		}
	}
	return out, save(ctx, tx, ships)
}

// lockShipments loads and locks the shipments of orders, in order id order.
func lockShipments(ctx context.Context, tx worker.Tx, orders []string) (map[string]*shipment, error) {
	slices.Sort(orders)
	rows, err := tx.Query(ctx, `SELECT order_id, status, carrier_ref, delivered_at FROM shipments
		WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE`, slices.Compact(orders))
	if err != nil {
		return nil, fmt.Errorf("lock shipments: %w", err)
	}
	defer rows.Close()
	out := map[string]*shipment{}
	for rows.Next() {
		var id string
		s := &shipment{}
		if err := rows.Scan(&id, &s.status, &s.ref, &s.deliveredAt); err != nil {
			return nil, fmt.Errorf("lock shipments: %w", err)
		}
		out[id] = s
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("lock shipments: %w", err)
	}
	return out, nil
}

// prepare books a shipment with the simulated carrier, which refuses
// country ZZ. A cancellation recorded first makes it a no-op. The carrier
// delivers delay later; with no delay, at once: the reply carries the
// delivery signal (kept in the inbox with it, sent again if the prepare
// is).
func prepare(ships map[string]*shipment, req contract.PrepareRequest, delay time.Duration, now time.Time) (worker.Result, error) {
	if s := ships[req.OrderID]; s != nil {
		switch s.status {
		case prepared:
			res, err := worker.OK(contract.PrepareReply{TrackingNumber: s.ref})
			if err == nil && s.deliveredAt != nil {
				// Delivered already: say so again (the order ignores copies).
				sig, serr := deliveredSignal(req.OrderID, *s.deliveredAt)
				res.Signals, err = []saga.Signal{sig}, serr
			}
			return res, err
		case refused:
			return worker.Fail(contract.CodeCarrierRefused, "the carrier does not ship to %s", req.ShippingAddress.Country)
		default: // cancelled
			return worker.Fail(contract.CodeAlreadyCanceled, "order %s was cancelled before its shipment arrived", req.OrderID)
		}
	}
	country := strings.ToUpper(req.ShippingAddress.Country)
	if country == contract.RefusedCountry {
		ships[req.OrderID] = &shipment{status: refused, country: country, isNew: true}
		return worker.Fail(contract.CodeCarrierRefused, "the carrier does not ship to %s", country)
	}
	s := &shipment{status: prepared, country: country, ref: "trk_" + uuid.NewString(), prepared: true, isNew: true,
		deliverAt: now.Add(delay)}
	ships[req.OrderID] = s
	res, err := worker.OK(contract.PrepareReply{TrackingNumber: s.ref})
	if err != nil || delay > 0 {
		return res, err
	}
	s.deliveredAt, s.announced = &now, true
	sig, err := deliveredSignal(req.OrderID, now)
	res.Signals = []saga.Signal{sig}
	return res, err
}

// deliveredSignal is the signal that tells an order its shipment arrived.
func deliveredSignal(orderID string, at time.Time) (saga.Signal, error) {
	p, err := json.Marshal(contract.Delivered{DeliveredAt: at.UTC()})
	return saga.Signal{Name: contract.ShippingDelivered, Key: contract.DeliveredKey(orderID), Payload: p}, err
}

// cancel cancels a shipment. With none yet it records the cancellation, so
// a prepare arriving late becomes a no-op.
func cancel(ships map[string]*shipment, orderID string) (worker.Result, error) {
	s := ships[orderID]
	switch {
	case s == nil:
		ships[orderID] = &shipment{status: cancelled, isNew: true}
	case s.status == prepared:
		s.status, s.changed = cancelled, true
	}
	return worker.OK(nil)
}

// save writes the batch's new shipments (a plain insert: a copy of a
// command running concurrently elsewhere fails it, and the batch is
// retried) and its cancellations, in one round trip.
func save(ctx context.Context, tx worker.Tx, ships map[string]*shipment) error {
	var (
		ids, statuses, countries, refs []string
		booked, announced              []bool
		deliverAt                      []pgtype.Timestamptz
		deliveredAt                    []pgtype.Timestamptz
		cancelledIDs                   []string
	)
	for _, id := range slices.Sorted(maps.Keys(ships)) {
		s := ships[id]
		switch {
		case s.isNew:
			ids, statuses, countries = append(ids, id), append(statuses, s.status), append(countries, s.country)
			refs, booked = append(refs, s.ref), append(booked, s.prepared)
			deliverAt = append(deliverAt, pgtype.Timestamptz{Time: s.deliverAt, Valid: s.prepared})
			deliveredAt = append(deliveredAt, pgtype.Timestamptz{Time: ptrTime(s.deliveredAt), Valid: s.deliveredAt != nil})
			announced = append(announced, s.announced)
		case s.changed:
			cancelledIDs = append(cancelledIDs, id)
		}
	}
	b := &pgx.Batch{}
	if len(ids) > 0 {
		b.Queue(`INSERT INTO shipments (order_id, status, country, carrier_ref, prepared, deliver_at, delivered_at, announced)
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[],
				$6::timestamptz[], $7::timestamptz[], $8::bool[])`,
			ids, statuses, countries, refs, booked, deliverAt, deliveredAt, announced)
	}
	if len(cancelledIDs) > 0 {
		b.Queue(`UPDATE shipments SET status = $2, updated_at = now() WHERE order_id = ANY($1)`, cancelledIDs, cancelled)
	}
	if b.Len() == 0 {
		return nil
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("save shipments: %w", err)
	}
	return nil
}

func ptrTime(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

// deliveries reports deliveries that fall due: SIM_DELIVERY_DELAY after a
// prepare, or at once when a customer confirms receipt.
type deliveries struct {
	db   *pgxpool.Pool
	rt   *worker.Runtime
	wake chan struct{}
}

// confirm is a customer's confirmation of receipt, relayed by the API: a
// prepared shipment falls due now, and is announced again if it was
// already (a signal that went astray, or an order stuck for want of it,
// gets another one; the order ignores copies, and delivered_at stays the
// first); without a prepared shipment, the answer is not_shipped.
func (d *deliveries) confirm(ctx context.Context, cmd worker.Command) (worker.Result, error) {
	var ref contract.OrderRef
	if err := cmd.DecodeValid(&ref); err != nil {
		return worker.Result{}, err
	}
	tag, err := d.db.Exec(ctx, `UPDATE shipments SET deliver_at = LEAST(deliver_at, now()), announced = false, updated_at = now()
		WHERE order_id = $1 AND status = $2`, ref.OrderID, prepared)
	if err != nil {
		return worker.Result{}, fmt.Errorf("confirm delivery: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return worker.OK(contract.DeliveryReply{Status: contract.DeliveryNotShipped})
	}
	select {
	case d.wake <- struct{}{}:
	default:
	}
	return worker.OK(contract.DeliveryReply{Status: contract.DeliveryConfirmed})
}

// deliveryLease is how long a delivery claimed by a pass waits before
// another pass sends its signal again (the first one crashed, or the
// broker was away).
const deliveryLease = 30 * time.Second

// loop reports due deliveries every quarter second, and at once after a
// confirmation, until ctx is done.
func (d *deliveries) loop(ctx context.Context) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		for ctx.Err() == nil && d.pass(ctx) {
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-d.wake:
		}
	}
}

// pass reports up to 100 due deliveries and says whether more may wait:
// it claims them (marks them delivered, and leased), sends their signals
// and waits for the broker's confirms, then marks them announced.
func (d *deliveries) pass(ctx context.Context) (more bool) {
	const limit = 100
	rows, err := d.db.Query(ctx, `UPDATE shipments s SET delivered_at = coalesce(s.delivered_at, now()),
			deliver_at = now() + $2 * interval '1 millisecond', updated_at = now()
		FROM (SELECT order_id FROM shipments WHERE deliver_at <= now() AND NOT announced AND status = $1
			ORDER BY deliver_at LIMIT $3 FOR UPDATE SKIP LOCKED) due
		WHERE s.order_id = due.order_id
		RETURNING s.order_id, s.delivered_at`, prepared, deliveryLease.Milliseconds(), limit)
	if err != nil {
		d.failed(ctx, "claim due deliveries", err)
		return false
	}
	var orders []string
	var sigs []worker.SagaSignal
	for rows.Next() {
		var id string
		var at time.Time
		if err := rows.Scan(&id, &at); err != nil {
			rows.Close()
			d.failed(ctx, "claim due deliveries", err)
			return false
		}
		sig, err := deliveredSignal(id, at)
		if err != nil {
			continue
		}
		orders, sigs = append(orders, id), append(sigs, worker.SagaSignal{SagaID: id, Signal: sig})
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		d.failed(ctx, "claim due deliveries", err)
		return false
	}
	if len(sigs) == 0 {
		return false
	}
	if err := d.rt.Signal(ctx, sigs...); err != nil {
		d.failed(ctx, "send delivery signals (their lease expires, then they are sent again)", err)
		return false
	}
	if _, err := d.db.Exec(ctx, `UPDATE shipments SET announced = true WHERE order_id = ANY($1)`, orders); err != nil {
		d.failed(ctx, "mark deliveries announced (they are sent again after their lease)", err)
		return false
	}
	return len(orders) == limit
}

// failed logs a pass's failure, unless the worker is stopping.
func (d *deliveries) failed(ctx context.Context, what string, err error) {
	if ctx.Err() == nil {
		log := d.rt.Logger()
		log.Warn().Err(err).Msg("deliveries: " + what)
	}
}

// ledger reports what this service recorded for an order.
func ledger(ctx context.Context, db *pgxpool.Pool, cmd worker.Command) (worker.Result, error) {
	var ref contract.OrderRef
	if err := cmd.Decode(&ref); err != nil {
		return worker.Result{}, err
	}
	var l contract.ShipmentLedgerReply
	err := db.QueryRow(ctx, `SELECT prepared::int, (prepared AND status = 'cancelled')::int
		FROM shipments WHERE order_id = $1`, ref.OrderID).Scan(&l.Prepared, &l.Cancelled)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return worker.Result{}, fmt.Errorf("shipment ledger: %w", err)
	}
	return worker.OK(l)
}
