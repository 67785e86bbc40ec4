package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
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
	contract.EventOrderCompleted: "is confirmed and on its way",
	contract.EventOrderCancelled: "was cancelled",
	contract.EventOrderRejected:  "could not be accepted",
}

// sender sends one channel's messages: one per order outcome. Other order
// events are consumed and ignored.
func sender(channel string) worker.EventHandlerFunc {
	return func(ctx context.Context, tx pgx.Tx, events []worker.Event) error {
		for _, ev := range events {
			what, ok := outcomes[ev.Type]
			if !ok {
				continue
			}
			var p contract.EventPayload
			var o contract.OrderEventData
			if err := errors.Join(json.Unmarshal(ev.Payload, &p), json.Unmarshal(p.Data, &o)); err != nil || o.OrderID == "" {
				return fmt.Errorf("notification: event %s (%s) carries no order: %v", ev.ID, ev.Type, err)
			}
			body := fmt.Sprintf("Your order %s %s.", o.OrderID, what)
			if p.Reason != "" {
				body += " Reason: " + p.Reason
			}
			eventID, err := uuid.Parse(ev.ID)
			if err != nil {
				return fmt.Errorf("notification: event id %q: %w", ev.ID, err)
			}
			// Sending is simulated by recording; the primary key keeps it to
			// one per order and channel whatever is redelivered.
			if _, err := tx.Exec(ctx, `INSERT INTO notifications (order_id, channel, event_id, event_type, recipient, body)
				VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id, channel) DO NOTHING`,
				o.OrderID, channel, eventID, ev.Type, o.CustomerID, body); err != nil {
				return fmt.Errorf("notification: record %s: %w", channel, err)
			}
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
