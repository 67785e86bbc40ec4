package main

import (
	"context"
	"errors"
	"fmt"
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
	rt.Handle(contract.ShippingPrepare, prepare)
	rt.Handle(contract.ShippingCancel, cancel)
	rt.Query(contract.ShippingLedger, func(ctx context.Context, cmd worker.Command) (worker.Result, error) {
		return ledger(ctx, db, cmd)
	})
}

func lockShipment(ctx context.Context, tx pgx.Tx, orderID string) (status, ref string, err error) {
	err = tx.QueryRow(ctx, `SELECT status, carrier_ref FROM shipments WHERE order_id = $1 FOR UPDATE`, orderID).
		Scan(&status, &ref)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", nil
	}
	if err != nil {
		return "", "", fmt.Errorf("load shipment: %w", err)
	}
	return status, ref, nil
}

// prepare books a shipment with the simulated carrier, which refuses
// country ZZ. A cancellation recorded first makes it a no-op.
func prepare(ctx context.Context, tx pgx.Tx, cmd worker.Command) (worker.Result, error) {
	var req contract.PrepareRequest
	if err := cmd.Decode(&req); err != nil {
		return worker.Result{}, err
	}
	if req.OrderID == "" || req.ShippingAddress.Country == "" {
		return worker.Result{}, worker.Invalid(errors.New("order_id and shipping_address.country are required"))
	}
	status, ref, err := lockShipment(ctx, tx, req.OrderID)
	if err != nil {
		return worker.Result{}, err
	}
	switch status {
	case prepared:
		return worker.OK(contract.PrepareReply{TrackingNumber: ref})
	case refused:
		return worker.Fail(contract.CodeCarrierRefused, "the carrier does not ship to %s", req.ShippingAddress.Country)
	case cancelled:
		return worker.Fail(contract.CodeAlreadyCanceled, "order %s was cancelled before its shipment arrived", req.OrderID)
	}
	country := strings.ToUpper(req.ShippingAddress.Country)
	if country == contract.RefusedCountry {
		if _, err := tx.Exec(ctx, `INSERT INTO shipments (order_id, status, country) VALUES ($1, $2, $3)`,
			req.OrderID, refused, country); err != nil {
			return worker.Result{}, fmt.Errorf("record refusal: %w", err)
		}
		return worker.Fail(contract.CodeCarrierRefused, "the carrier does not ship to %s", country)
	}
	ref = "trk_" + uuid.NewString()
	if _, err := tx.Exec(ctx, `INSERT INTO shipments (order_id, status, country, carrier_ref, prepared)
		VALUES ($1, $2, $3, $4, true)`, req.OrderID, prepared, country, ref); err != nil {
		return worker.Result{}, fmt.Errorf("record shipment: %w", err)
	}
	return worker.OK(contract.PrepareReply{TrackingNumber: ref})
}

// cancel cancels a shipment. With none yet it records the cancellation, so
// a prepare arriving late becomes a no-op.
func cancel(ctx context.Context, tx pgx.Tx, cmd worker.Command) (worker.Result, error) {
	var ref contract.OrderRef
	if err := cmd.Decode(&ref); err != nil {
		return worker.Result{}, err
	}
	if ref.OrderID == "" {
		return worker.Result{}, worker.Invalid(errors.New("order_id is required"))
	}
	status, _, err := lockShipment(ctx, tx, ref.OrderID)
	if err != nil {
		return worker.Result{}, err
	}
	switch status {
	case "":
		_, err = tx.Exec(ctx, `INSERT INTO shipments (order_id, status) VALUES ($1, $2)`, ref.OrderID, cancelled)
	case prepared:
		_, err = tx.Exec(ctx, `UPDATE shipments SET status = $2, updated_at = now() WHERE order_id = $1`,
			ref.OrderID, cancelled)
	}
	if err != nil {
		return worker.Result{}, fmt.Errorf("cancel shipment: %w", err)
	}
	return worker.OK(nil)
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
