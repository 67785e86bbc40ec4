package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga/worker"
)

// Payment statuses.
const (
	charged  = "charged"
	declined = "declined"
	refunded = "refunded"
)

func register(rt *worker.Runtime, db *pgxpool.Pool) {
	rt.Handle(contract.PaymentCharge, charge)
	rt.Handle(contract.PaymentRefund, refund)
	rt.Query(contract.PaymentLedger, func(ctx context.Context, cmd worker.Command) (worker.Result, error) {
		return ledger(ctx, db, cmd)
	})
}

type payment struct {
	status          string
	charged, refund int64
	ref, code       string
}

// lockPayment loads an order's payment for update; status is "" when
// there is none.
func lockPayment(ctx context.Context, tx pgx.Tx, orderID string) (payment, error) {
	var p payment
	err := tx.QueryRow(ctx, `SELECT status, charged_cents, refunded_cents, gateway_ref, decline_code
		FROM payments WHERE order_id = $1 FOR UPDATE`, orderID).Scan(&p.status, &p.charged, &p.refund, &p.ref, &p.code)
	if errors.Is(err, pgx.ErrNoRows) {
		return payment{}, nil
	}
	if err != nil {
		return payment{}, fmt.Errorf("load payment: %w", err)
	}
	return p, nil
}

// charge charges an order once. The simulated gateway declines
// tok_decline. A refund recorded first makes the charge a no-op.
func charge(ctx context.Context, tx pgx.Tx, cmd worker.Command) (worker.Result, error) {
	var req contract.ChargeRequest
	if err := cmd.Decode(&req); err != nil {
		return worker.Result{}, err
	}
	if req.OrderID == "" || req.AmountCents <= 0 || req.PaymentToken == "" {
		return worker.Result{}, worker.Invalid(errors.New("order_id, a positive amount_cents and payment_token are required"))
	}
	p, err := lockPayment(ctx, tx, req.OrderID)
	if err != nil {
		return worker.Result{}, err
	}
	switch p.status {
	case charged:
		return worker.OK(contract.ChargeReply{PaymentID: p.ref, ChargedCents: p.charged})
	case declined:
		return worker.Fail(contract.CodeCardDeclined, "the card was declined")
	case refunded:
		return worker.Fail(contract.CodeAlreadyRefunded, "order %s was refunded before its charge arrived", req.OrderID)
	}
	if req.PaymentToken == contract.DeclineToken {
		if _, err := tx.Exec(ctx, `INSERT INTO payments (order_id, customer_id, status, decline_code)
			VALUES ($1, $2, $3, $4)`, req.OrderID, req.CustomerID, declined, contract.CodeCardDeclined); err != nil {
			return worker.Result{}, fmt.Errorf("record decline: %w", err)
		}
		return worker.Fail(contract.CodeCardDeclined, "the card was declined")
	}
	ref := "pay_" + uuid.NewString()
	if _, err := tx.Exec(ctx, `INSERT INTO payments (order_id, customer_id, status, charged_cents, gateway_ref)
		VALUES ($1, $2, $3, $4, $5)`, req.OrderID, req.CustomerID, charged, req.AmountCents, ref); err != nil {
		return worker.Result{}, fmt.Errorf("record charge: %w", err)
	}
	return worker.OK(contract.ChargeReply{PaymentID: ref, ChargedCents: req.AmountCents})
}

// refund refunds whatever was charged. With no payment yet it records the
// refund, so a charge arriving late becomes a no-op.
func refund(ctx context.Context, tx pgx.Tx, cmd worker.Command) (worker.Result, error) {
	var ref contract.OrderRef
	if err := cmd.Decode(&ref); err != nil {
		return worker.Result{}, err
	}
	if ref.OrderID == "" {
		return worker.Result{}, worker.Invalid(errors.New("order_id is required"))
	}
	p, err := lockPayment(ctx, tx, ref.OrderID)
	if err != nil {
		return worker.Result{}, err
	}
	switch p.status {
	case "":
		if _, err := tx.Exec(ctx, `INSERT INTO payments (order_id, status) VALUES ($1, $2)`, ref.OrderID, refunded); err != nil {
			return worker.Result{}, fmt.Errorf("record refund: %w", err)
		}
		return worker.OK(contract.RefundReply{})
	case refunded, declined:
		return worker.OK(contract.RefundReply{RefundedCents: p.refund})
	}
	if _, err := tx.Exec(ctx, `UPDATE payments SET status = $2, refunded_cents = charged_cents, updated_at = now()
		WHERE order_id = $1`, ref.OrderID, refunded); err != nil {
		return worker.Result{}, fmt.Errorf("refund: %w", err)
	}
	return worker.OK(contract.RefundReply{RefundedCents: p.charged})
}

// ledger reports what this service recorded for an order.
func ledger(ctx context.Context, db *pgxpool.Pool, cmd worker.Command) (worker.Result, error) {
	var ref contract.OrderRef
	if err := cmd.Decode(&ref); err != nil {
		return worker.Result{}, err
	}
	var l contract.PaymentLedgerReply
	err := db.QueryRow(ctx, `SELECT charged_cents, refunded_cents FROM payments WHERE order_id = $1`, ref.OrderID).
		Scan(&l.ChargedCents, &l.RefundedCents)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return worker.Result{}, fmt.Errorf("payment ledger: %w", err)
	}
	return worker.OK(l)
}
