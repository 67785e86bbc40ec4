package amqpbus

import (
	"context"

	"github.com/sagaflow/sagaflow/saga"
)

// SignalQueue is the queue of the signals coordinators wait for, shared by
// every orchestrator of a system like the reply queue (a queue and an
// exchange may share a name: they are apart in AMQP).
const SignalQueue = "saga.signals"

// SignalSink takes signals in batches: a coordinator (saga/coordinator),
// as ReplySink takes replies.
type SignalSink interface {
	HandleSignals(ctx context.Context, bodies [][]byte) (poison []error, wait saga.ReplyWait)
}

// SignalTopology declares the signal queue, bound to the signal exchange
// (SagaTopology declares it) by the name of each signal a definition waits
// for (saga.Step.Wait), with dead-lettering. A signal is published as a
// saga.MessageSignal (saga.SignalMessage), through the sender's outbox or
// inbox like any message.
func SignalTopology(names []string, o QueueOptions) Topology {
	o.MaxPriority, o.DeadLetter, o.SingleActiveConsumer, o.MaxLength = 0, true, false, 0
	t := Topology{Queues: []Queue{{Name: SignalQueue, Args: o.Args()}}}
	for _, n := range names {
		t.Bindings = append(t.Bindings, Binding{Source: SignalExchange, Key: n, Queue: SignalQueue})
	}
	return t
}

// ServeSignals consumes the signal queue (cfg.Queue, default SignalQueue)
// into coordinator c until ctx is done, in batches of up to maxBatch
// applied in one transaction each, like ServeReplies. A signal that does
// not decode, is for a saga the store does not have (or has quarantined),
// or that the saga does not wait for (saga.ErrNotWaiting) is dead-lettered
// with why: recorded, never dropped.
func (b *Bus) ServeSignals(ctx context.Context, c SignalSink, cfg ConsumerConfig, maxBatch int) error {
	if cfg.Queue == "" {
		cfg.Queue = SignalQueue
	}
	return b.serveInputs(ctx, "signal", c.HandleSignals, cfg, maxBatch)
}
