package main

import (
	"context"
	"errors"
	"fmt"

	json "github.com/goccy/go-json"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga/worker"
)

// Channels.
const (
	email = "email"
	sms   = "sms"
)

func register(rt *worker.Runtime, db *pgxpool.Pool) {
	rt.Subscribe(contract.EmailQueue, sender(email))
	rt.Subscribe(contract.SMSQueue, sender(sms))
	rt.Query(contract.NotificationLedger, func(ctx context.Context, cmd worker.Command) (worker.Result, error) {
		return ledger(ctx, db, cmd)
	})
}

// outcomes are the events a customer is told about.
var outcomes = map[string]string{
	contract.EventOrderCompleted: "was delivered",
	contract.EventOrderCancelled: "was cancelled",
	contract.EventOrderRejected:  "could not be accepted",
}

// sender sends one channel's messages: one per order outcome, all of a
// batch with one INSERT. Other order events are consumed and ignored.
func sender(channel string) worker.EventHandlerFunc {
	return func(ctx context.Context, tx worker.Tx, events []worker.Event) error {
		var orders, types, recipients, bodies []string
		var ids []pgtype.UUID
		for _, ev := range events {
			what, ok := outcomes[ev.Type]
			if !ok {
				continue
			}
			var p contract.EventPayload
			var o contract.OrderEventData
			if err := errors.Join(json.Unmarshal(ev.Payload, &p), json.Unmarshal(p.Data, &o)); err != nil || o.OrderID == "" {
				return worker.Poison(fmt.Errorf("notification: event %s (%s) carries no order: %v", ev.ID, ev.Type, err))
			}
			eventID, err := uuid.Parse(ev.ID)
			if err != nil {
				return worker.Poison(fmt.Errorf("notification: event id %q: %w", ev.ID, err))
			}
			body := fmt.Sprintf("Your order %s %s.", o.OrderID, what)
			if r := contract.PublicReason(p.Reason); r != "" {
				body += " Reason: " + r
			}
			orders, types, recipients, bodies = append(orders, o.OrderID), append(types, ev.Type), append(recipients, o.CustomerID), append(bodies, body)
			ids = append(ids, pgtype.UUID{Bytes: eventID, Valid: true})
		}
		if len(orders) == 0 {
			return nil
		}
		// Sending is simulated by recording; the primary key keeps it to one
		// per order and channel whatever is redelivered.
		if _, err := tx.Exec(ctx, `INSERT INTO notifications (order_id, channel, event_id, event_type, recipient, body)
			SELECT u.order_id, $2, u.event_id, u.event_type, u.recipient, u.body
			FROM unnest($1::text[], $3::uuid[], $4::text[], $5::text[], $6::text[])
				AS u(order_id, event_id, event_type, recipient, body)
			ON CONFLICT (order_id, channel) DO NOTHING`,
			orders, channel, ids, types, recipients, bodies); err != nil {
			return fmt.Errorf("notification: record %d %s: %w", len(orders), channel, err)
		}
		return nil
	}
}

// ledger counts what was sent for an order.
func ledger(ctx context.Context, db *pgxpool.Pool, cmd worker.Command) (worker.Result, error) {
	var ref contract.OrderRef
	if err := cmd.Decode(&ref); err != nil {
		return worker.Result{}, err
	}
	var l contract.NotificationLedgerReply
	err := db.QueryRow(ctx, `SELECT count(*) FILTER (WHERE channel = 'email'), count(*) FILTER (WHERE channel = 'sms')
		FROM notifications WHERE order_id = $1`, ref.OrderID).Scan(&l.Email, &l.SMS)
	if err != nil {
		return worker.Result{}, fmt.Errorf("notification ledger: %w", err)
	}
	return worker.OK(l)
}
