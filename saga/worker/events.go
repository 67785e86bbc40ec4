package worker

import (
	"context"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/internal/pgtx"
)

// Event is a domain event as a subscriber sees it.
type Event struct {
	saga.Envelope
	// TraceParent is the W3C trace context the event carried, if any.
	TraceParent string
}

// Poison marks an error as permanent: the event or command that caused it
// can never be handled, and is dead-lettered at once with err as reason.
// A handler that returns it for a batch has the batch retried message by
// message, so only the culprit goes.
func Poison(err error) error { return amqpbus.Poison(err) }

// EventHandlerFunc applies a batch of new events with tx. For Subscribe,
// tx is a transaction the runtime commits together with the inbox records
// of the events, so each event is applied once per subscription even when
// delivered again; for SubscribeIdempotent see there.
type EventHandlerFunc func(ctx context.Context, tx Tx, events []Event) error

type subscription struct {
	queue string
	h     EventHandlerFunc
	inbox bool // deduplicate through the inbox
}

// Subscribe consumes a queue of domain events in batches of up to
// Config.EventPrefetch, one transaction per batch, each event applied once
// (the inbox records it). Unparseable events are dead-lettered.
func (r *Runtime) Subscribe(queue string, h EventHandlerFunc) {
	r.subs = append(r.subs, subscription{queue: queue, h: h, inbox: true})
}

// SubscribeIdempotent is Subscribe for a handler that applies an event at
// most once by itself (a unique key on the event id, say): no inbox record
// is written and no transaction is opened, so a batch costs one round trip
// when the handler issues one statement. Each statement commits on its
// own; a batch redelivered after a crash runs them all again, which their
// own keys make harmless.
func (r *Runtime) SubscribeIdempotent(queue string, h EventHandlerFunc) {
	r.subs = append(r.subs, subscription{queue: queue, h: h})
}

func (r *Runtime) consumeEvents(ctx context.Context, sub subscription) error {
	return r.bus.ConsumeBatch(ctx, amqpbus.ConsumerConfig{Queue: sub.queue, Prefetch: r.cfg.EventPrefetch, Transient: pgtx.Transient},
		func(ctx context.Context, ds []*amqp.Delivery) error { return r.deliverEvents(ctx, sub, ds) })
}

func (r *Runtime) deliverEvents(ctx context.Context, sub subscription, ds []*amqp.Delivery) error {
	start := time.Now()
	events := make([]Event, 0, len(ds))
	keys := make([]string, 0, len(ds))
	types := make([]string, 0, len(ds))
	for _, d := range ds {
		env, err := saga.Decode(d.Body)
		if err != nil {
			// The consumer takes the batch apart and dead-letters this one
			// alone, once (amqpbus isolates failed batches).
			r.observer.Handled(d.RoutingKey, "poison", 0)
			return Poison(fmt.Errorf("event %s: %w", d.MessageId, err))
		}
		ev := Event{Envelope: env}
		ev.TraceParent, _ = d.Headers["traceparent"].(string)
		events = append(events, ev)
		// One inbox entry per event and subscription: the email and the SMS
		// queue each see every event once.
		keys = append(keys, env.ID+"@"+sub.queue)
		types = append(types, env.Type)
	}
	if len(events) == 0 {
		return nil
	}
	if !sub.inbox {
		defer r.traceEvents(ctx, sub, events, start)()
		if err := sub.h(ctx, r.pool, events); err != nil {
			return err
		}
		r.observeEvents(events, start)
		return nil
	}
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("worker: begin: %w", err)
	}
	defer tx.Rollback(ctx)
	news, err := r.freshEvents(ctx, tx, sub, events, keys, types)
	if err != nil {
		return err
	}
	defer r.traceEvents(ctx, sub, news, start)()
	if len(news) > 0 {
		if err := sub.h(ctx, tx, news); err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("worker: commit: %w", err)
	}
	r.observeEvents(events, start)
	return nil
}

// traceEvents starts one span per event, child of the trace the event
// carries, and returns the function that ends them.
func (r *Runtime) traceEvents(ctx context.Context, sub subscription, events []Event, start time.Time) func() {
	spans := make([]trace.Span, 0, len(events))
	for _, ev := range events {
		ectx := otel.GetTextMapPropagator().Extract(ctx, propagation.MapCarrier{"traceparent": ev.TraceParent})
		_, span := tracer.Start(ectx, ev.Type+" process", trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithTimestamp(start), trace.WithAttributes(attribute.String("messaging.destination.name", sub.queue),
				attribute.String("messaging.message.id", ev.ID), attribute.String("saga.id", ev.SagaID)))
		spans = append(spans, span)
	}
	return func() {
		for _, sp := range spans {
			sp.End()
		}
	}
}

func (r *Runtime) observeEvents(events []Event, start time.Time) {
	each := time.Since(start) / time.Duration(len(events))
	for _, ev := range events {
		r.observer.Handled(ev.Type, "event", each)
	}
}

// freshEvents records the events in the inbox and returns those it had not
// seen; without an inbox (SubscribeIdempotent) it returns them all.
func (r *Runtime) freshEvents(ctx context.Context, tx Tx, sub subscription, events []Event, keys, types []string) ([]Event, error) {
	if !sub.inbox {
		return events, nil
	}
	rows, err := tx.Query(ctx, `INSERT INTO inbox (message_id, type)
		SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT (message_id) DO NOTHING
		RETURNING message_id`, keys, types)
	if err != nil {
		return nil, fmt.Errorf("worker: inbox: %w", err)
	}
	defer rows.Close()
	fresh := map[string]bool{}
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			return nil, fmt.Errorf("worker: inbox: %w", err)
		}
		fresh[k] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("worker: inbox: %w", err)
	}
	var news []Event
	for i, ev := range events {
		if fresh[keys[i]] {
			news = append(news, ev)
			delete(fresh, keys[i]) // a duplicate within the batch counts once
		}
	}
	return news, nil
}
