package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	json "github.com/goccy/go-json"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/worker"
)

func register(rt *worker.Runtime, db *pgxpool.Pool) {
	rt.Subscribe(contract.AuditEventsQueue, appendEvents)
	rt.Query(contract.AuditOrderEvents, func(ctx context.Context, cmd worker.Command) (worker.Result, error) {
		return orderEvents(ctx, db, cmd)
	})
}

// appendEvents appends a batch of events with one statement; an event
// already in the log (delivered again) is skipped by its unique id.
func appendEvents(ctx context.Context, tx worker.Tx, events []worker.Event) error {
	n := len(events)
	var (
		// [16]byte, not uuid.UUID: pgx would encode a uuid.UUID through its
		// driver.Valuer, as a string parsed back (17% of audit's CPU).
		ids     = make([][16]byte, 0, n)
		sagas   = make([][16]byte, 0, n)
		seqs    = make([]int32, 0, n)
		types   = make([]string, 0, n)
		ats     = make([]time.Time, 0, n)
		bodies  = make([][]byte, 0, n)
		parents = make([]string, 0, n)
	)
	for _, ev := range events {
		id, err1 := uuid.Parse(ev.ID)
		sagaID, err2 := uuid.Parse(ev.SagaID)
		var p contract.EventPayload
		err3 := json.Unmarshal(ev.Payload, &p)
		if err := errors.Join(err1, err2, err3); err != nil {
			// Recorded as it came: an audit log keeps what it was sent.
			return worker.Poison(fmt.Errorf("audit: event %q (%s) does not carry a uuid id, saga_id and payload: %w", ev.ID, ev.Type, err))
		}
		ids, sagas, seqs = append(ids, id), append(sagas, sagaID), append(seqs, int32(p.Seq))
		types, ats = append(types, ev.Type), append(ats, ev.At)
		bodies, parents = append(bodies, ev.Payload), append(parents, ev.TraceParent)
	}
	_, err := tx.Exec(ctx, `INSERT INTO events (id, saga_id, seq, type, at, payload, trace_parent)
		SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::timestamptz[], $6::json[], $7::text[])
		ON CONFLICT (id) DO NOTHING`, ids, sagas, seqs, types, ats, bodies, parents)
	if err != nil {
		return fmt.Errorf("audit: append %d events: %w", n, err)
	}
	return nil
}

// orderEvents returns an order's trail in the order things happened.
func orderEvents(ctx context.Context, db *pgxpool.Pool, cmd worker.Command) (worker.Result, error) {
	var ref contract.OrderRef
	if err := cmd.Decode(&ref); err != nil {
		return worker.Result{}, err
	}
	id, err := uuid.Parse(ref.OrderID)
	if err != nil {
		return worker.Result{}, worker.Invalid(fmt.Errorf("order_id %q is not a uuid", ref.OrderID))
	}
	rows, err := db.Query(ctx, `SELECT id, type, at, seq, payload FROM events WHERE saga_id = $1 ORDER BY seq, pos`, id)
	if err != nil {
		return worker.Result{}, fmt.Errorf("audit: order events: %w", err)
	}
	defer rows.Close()
	out := contract.OrderEventsReply{Events: []contract.AuditEvent{}}
	for rows.Next() {
		var (
			e    contract.AuditEvent
			evID uuid.UUID
			raw  []byte
			p    contract.EventPayload
		)
		if err := rows.Scan(&evID, &e.Type, &e.At, &e.Seq, &raw); err != nil {
			return worker.Result{}, fmt.Errorf("audit: order events: %w", err)
		}
		_ = json.Unmarshal(raw, &p) // stored as received; fields are best effort
		e.ID, e.At = evID.String(), e.At.UTC()
		e.State, e.Step, e.Code, e.Message, e.Reason = p.State, p.Step, p.Code, p.Message, p.Reason
		if e.Type == saga.EventReplayed || e.Type == saga.EventCancelled || e.Type == saga.EventRedriven {
			var op saga.OperatorData
			if json.Unmarshal(p.Data, &op) == nil {
				e.Data = &op
			}
		}
		out.Events = append(out.Events, e)
	}
	if err := rows.Err(); err != nil {
		return worker.Result{}, fmt.Errorf("audit: order events: %w", err)
	}
	return worker.OK(out)
}
