package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

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
	rt.HandleBatch(handle, contract.PaymentCharge, contract.PaymentRefund)
	rt.Query(contract.PaymentLedger, func(ctx context.Context, cmd worker.Command) (worker.Result, error) {
		return ledger(ctx, db, cmd)
	})
}

// payment is an order's payment as a batch sees it.
type payment struct {
	customer        string
	status          string
	charged, refund int64
	ref, code       string
	isNew           bool // to insert
	changed         bool // to update
}

// handle applies a batch of payment commands (charge, refund), in order:
// it locks the payments of every order the batch names, applies the
// commands to them in memory, and writes back what changed.
func handle(ctx context.Context, tx worker.Tx, cmds []worker.Command) ([]worker.Verdict, error) {
	out := make([]worker.Verdict, len(cmds))
	charges := make([]contract.ChargeRequest, len(cmds))
	var ids []string
	for i, cmd := range cmds {
		var err error
		if cmd.Type == contract.PaymentCharge {
			err = cmd.DecodeValid(&charges[i])
		} else {
			var ref contract.OrderRef
			err = cmd.DecodeValid(&ref)
			charges[i].OrderID = ref.OrderID
		}
		if err != nil {
			out[i].Invalid = err
			continue
		}
		ids = append(ids, charges[i].OrderID)
	}
	if len(ids) == 0 {
		return out, nil
	}
	pays, err := lockPayments(ctx, tx, ids)
	if err != nil {
		return nil, err
	}
	for i, cmd := range cmds {
		if out[i].Invalid != nil {
			continue
		}
		if cmd.Type == contract.PaymentCharge {
			out[i].Result, err = charge(pays, charges[i])
		} else {
			out[i].Result, err = refund(pays, charges[i].OrderID)
		}
		if err != nil {
			return nil, err
		}
	}
	return out, save(ctx, tx, pays)
}

// lockPayments loads and locks the payments of orders, in order id order.
func lockPayments(ctx context.Context, tx worker.Tx, orders []string) (map[string]*payment, error) {
	slices.Sort(orders)
	rows, err := tx.Query(ctx, `SELECT order_id, status, charged_cents, refunded_cents, gateway_ref, decline_code
		FROM payments WHERE order_id = ANY($1) ORDER BY order_id FOR UPDATE`, slices.Compact(orders))
	if err != nil {
		return nil, fmt.Errorf("lock payments: %w", err)
	}
	defer rows.Close()
	out := map[string]*payment{}
	for rows.Next() {
		var id string
		p := &payment{}
		if err := rows.Scan(&id, &p.status, &p.charged, &p.refund, &p.ref, &p.code); err != nil {
			return nil, fmt.Errorf("lock payments: %w", err)
		}
		out[id] = p
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("lock payments: %w", err)
	}
	return out, nil
}

// charge charges an order once. The simulated gateway declines
// tok_decline. A refund recorded first makes the charge a no-op.
func charge(pays map[string]*payment, req contract.ChargeRequest) (worker.Result, error) {
	if p := pays[req.OrderID]; p != nil {
		switch p.status {
		case charged:
			return worker.OK(contract.ChargeReply{PaymentID: p.ref, ChargedCents: p.charged})
		case declined:
			return worker.Fail(contract.CodeCardDeclined, "the card was declined")
		default: // refunded
			return worker.Fail(contract.CodeAlreadyRefunded, "order %s was refunded before its charge arrived", req.OrderID)
		}
	}
	if req.AmountCents == 0 {
		// Nothing to charge (a product priced 0): recorded as charged, the
		// gateway is not asked, so it cannot decline.
		p := &payment{customer: req.CustomerID, status: charged, ref: "free_" + uuid.NewString(), isNew: true}
		pays[req.OrderID] = p
		return worker.OK(contract.ChargeReply{PaymentID: p.ref})
	}
	if req.PaymentToken == contract.DeclineToken {
		pays[req.OrderID] = &payment{customer: req.CustomerID, status: declined, code: contract.CodeCardDeclined, isNew: true}
		return worker.Fail(contract.CodeCardDeclined, "the card was declined")
	}
	p := &payment{customer: req.CustomerID, status: charged, charged: req.AmountCents, ref: "pay_" + uuid.NewString(), isNew: true}
	pays[req.OrderID] = p
	return worker.OK(contract.ChargeReply{PaymentID: p.ref, ChargedCents: p.charged})
}

// refund refunds whatever was charged. With no payment yet it records the
// refund, so a charge arriving late becomes a no-op.
func refund(pays map[string]*payment, orderID string) (worker.Result, error) {
	p := pays[orderID]
	switch {
	case p == nil:
		pays[orderID] = &payment{status: refunded, isNew: true}
		return worker.OK(contract.RefundReply{})
	case p.status == refunded || p.status == declined:
		return worker.OK(contract.RefundReply{RefundedCents: p.refund})
	}
	p.status, p.refund, p.changed = refunded, p.charged, true
	return worker.OK(contract.RefundReply{RefundedCents: p.charged})
}

// save writes the batch's new payments (a plain insert: a copy of a command
// running concurrently elsewhere fails it, and the batch is retried) and
// its refunds, in one round trip.
func save(ctx context.Context, tx worker.Tx, pays map[string]*payment) error {
	var (
		ids, customers, statuses, refs, codes []string
		charged, refunds                      []int64
		refundedIDs                           []string
	)
	for _, id := range slices.Sorted(maps.Keys(pays)) {
		p := pays[id]
		switch {
		case p.isNew:
			ids, customers, statuses = append(ids, id), append(customers, p.customer), append(statuses, p.status)
			charged, refunds = append(charged, p.charged), append(refunds, p.refund)
			refs, codes = append(refs, p.ref), append(codes, p.code)
		case p.changed:
			refundedIDs = append(refundedIDs, id)
		}
	}
	b := &pgx.Batch{}
	if len(ids) > 0 {
		b.Queue(`INSERT INTO payments (order_id, customer_id, status, charged_cents, refunded_cents, gateway_ref, decline_code)
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::text[])`,
			ids, customers, statuses, charged, refunds, refs, codes)
	}
	if len(refundedIDs) > 0 {
		b.Queue(`UPDATE payments SET status = $2, refunded_cents = charged_cents, updated_at = now()
			WHERE order_id = ANY($1)`, refundedIDs, refunded)
	}
	if b.Len() == 0 {
		return nil
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("save payments: %w", err)
	}
	return nil
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
