package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga/worker"
)

// Shipment statuses.
const (
	prepared  = "prepared"
	refused   = "refused"
	cancelled = "cancelled"
)

func register(rt *worker.Runtime, db *pgxpool.Pool) {
	rt.HandleBatch(handle, contract.ShippingPrepare, contract.ShippingCancel)
	rt.Query(contract.ShippingLedger, func(ctx context.Context, cmd worker.Command) (worker.Result, error) {
		return ledger(ctx, db, cmd)
	})
}

// shipment is an order's shipment as a batch sees it.
type shipment struct {
	status, country, ref string
	prepared             bool
	isNew                bool // to insert
	changed              bool // to update
}

// handle applies a batch of shipping commands (prepare, cancel), in order:
// it locks the shipments of every order the batch names, applies the
// commands to them in memory, and writes back what changed.
func handle(ctx context.Context, tx worker.Tx, cmds []worker.Command) ([]worker.Verdict, error) {
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
			out[i].Result, err = prepare(ships, reqs[i])
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
	rows, err := tx.Query(ctx, `SELECT order_id, status, carrier_ref FROM shipments
		WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE`, slices.Compact(orders))
	if err != nil {
		return nil, fmt.Errorf("lock shipments: %w", err)
	}
	defer rows.Close()
	out := map[string]*shipment{}
	for rows.Next() {
		var id string
		s := &shipment{}
		if err := rows.Scan(&id, &s.status, &s.ref); err != nil {
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
// country ZZ. A cancellation recorded first makes it a no-op.
func prepare(ships map[string]*shipment, req contract.PrepareRequest) (worker.Result, error) {
	if s := ships[req.OrderID]; s != nil {
		switch s.status {
		case prepared:
			return worker.OK(contract.PrepareReply{TrackingNumber: s.ref})
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
	s := &shipment{status: prepared, country: country, ref: "trk_" + uuid.NewString(), prepared: true, isNew: true}
	ships[req.OrderID] = s
	return worker.OK(contract.PrepareReply{TrackingNumber: s.ref})
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
		booked                         []bool
		cancelledIDs                   []string
	)
	for _, id := range slices.Sorted(maps.Keys(ships)) {
		s := ships[id]
		switch {
		case s.isNew:
			ids, statuses, countries = append(ids, id), append(statuses, s.status), append(countries, s.country)
			refs, booked = append(refs, s.ref), append(booked, s.prepared)
		case s.changed:
			cancelledIDs = append(cancelledIDs, id)
		}
	}
	b := &pgx.Batch{}
	if len(ids) > 0 {
		b.Queue(`INSERT INTO shipments (order_id, status, country, carrier_ref, prepared)
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[])`,
			ids, statuses, countries, refs, booked)
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
