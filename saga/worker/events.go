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

// EventHandlerFunc applies a batch of events. It must apply each event at
// most once by itself (a unique key on the event id, say): an event can be
// delivered again (a redelivery after a crash, a copy the outbox published
// twice). tx is the pool: each statement commits on its own, and a batch
// redelivered after a crash runs them all again, which their own keys
// make harmless; one statement per batch costs one round trip.
type EventHandlerFunc func(ctx context.Context, tx Tx, events []Event) error

type subscription struct {
	queue string
	h     EventHandlerFunc
}

// Subscribe consumes a queue of domain events in batches of up to
// Config.EventPrefetch. A batch that fails is retried event by event, and
// an event that cannot be read or handled goes to the dead letters alone
// (amqpbus isolates it); see EventHandlerFunc for what a handler owes.
func (r *Runtime) Subscribe(queue string, h EventHandlerFunc) {
	r.subs = append(r.subs, subscription{queue: queue, h: h})
}

func (r *Runtime) consumeEvents(ctx context.Context, sub subscription) error {
	return r.bus.ConsumeBatch(ctx, amqpbus.ConsumerConfig{Queue: sub.queue, Prefetch: r.cfg.EventPrefetch, Transient: pgtx.Transient},
		func(ctx context.Context, ds []*amqp.Delivery) error { return r.deliverEvents(ctx, sub, ds) })
}

func (r *Runtime) deliverEvents(ctx context.Context, sub subscription, ds []*amqp.Delivery) error {
	start := time.Now()
	events := make([]Event, 0, len(ds))
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
	}
	if len(events) == 0 {
		return nil
	}
	defer r.traceEvents(ctx, sub, events, start)()
	if err := sub.h(ctx, r.pool, events); err != nil {
		return err
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
