package amqpbus

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagaflow/sagaflow/saga"
)

// SignalQueue is the queue of the signals coordinators wait for, shared by
// every orchestrator of a system like the reply queue.
const SignalQueue = "saga.signals"

// SignalSink takes signals: a coordinator (saga/coordinator).
type SignalSink interface {
	Signal(ctx context.Context, id uuid.UUID, sig saga.Signal) (saga.Instance, error)
}

// SignalTopology declares the signal queue, bound to the event exchange by
// the name of each signal a definition waits for (saga.Step.Wait), with
// dead-lettering. A signal is published like an event (through the
// sender's outbox or inbox, like any message): its routing key and type
// are the signal's name.
func SignalTopology(names []string, o QueueOptions) Topology {
	o.MaxPriority, o.DeadLetter, o.SingleActiveConsumer, o.MaxLength = 0, true, false, 0
	t := Topology{Queues: []Queue{{Name: SignalQueue, Args: o.Args()}}}
	for _, n := range names {
		t.Bindings = append(t.Bindings, Binding{Source: EventExchange, Key: n, Queue: SignalQueue})
	}
	return t
}

// SignalOf reads a signal from an event's envelope: the type is its name,
// the id its idempotency key, saga_id the saga it is for, the payload what
// joins the saga's data.
func SignalOf(body []byte) (uuid.UUID, saga.Signal, error) {
	env, err := saga.Decode(body)
	if err != nil {
		return uuid.Nil, saga.Signal{}, err
	}
	id, err := uuid.Parse(env.SagaID)
	if err != nil {
		return uuid.Nil, saga.Signal{}, fmt.Errorf("%w: signal %s: saga_id %q is not a UUID", saga.ErrMalformed, env.ID, env.SagaID)
	}
	return id, saga.Signal{Name: env.Type, Key: env.ID, Payload: env.Payload}, nil
}

// ServeSignals consumes the signal queue (cfg.Queue, default SignalQueue)
// into coordinator c until ctx is done. A signal that does not decode, is
// for a saga the store does not have (or has quarantined), or that the
// saga does not wait for (saga.ErrNotWaiting) is dead-lettered with why:
// recorded, never dropped.
// A failure of the store is retried (set cfg.Transient to the store's
// classification, so that a database restart requeues).
func (b *Bus) ServeSignals(ctx context.Context, c SignalSink, cfg ConsumerConfig) error {
	if cfg.Queue == "" {
		cfg.Queue = SignalQueue
	}
	return b.Consume(ctx, cfg, func(hctx context.Context, d *amqp.Delivery) error {
		id, sig, err := SignalOf(d.Body)
		if err != nil {
			return Poison(err)
		}
		if _, err := c.Signal(hctx, id, sig); err != nil {
			if errors.Is(err, saga.ErrNotWaiting) || errors.Is(err, saga.ErrNotFound) || errors.Is(err, saga.ErrInvalidSignal) ||
				errors.Is(err, saga.ErrQuarantined) {
				return Poison(fmt.Errorf("signal %s %s for saga %s: %w", sig.Name, sig.Key, id, err))
			}
			return err
		}
		return nil
	})
}
