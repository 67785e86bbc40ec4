package amqpbus

import (
	"context"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagaflow/sagaflow/saga"
)

// ReplySink takes replies in batches: a coordinator (saga/coordinator).
// HandleReplies decodes bodies and queues them, in order; it returns why
// each poison body cannot be applied (nil for the others) and a wait for
// the commit of the others.
type ReplySink interface {
	HandleReplies(ctx context.Context, bodies [][]byte) (poison []error, wait saga.ReplyWait)
}

// ServeReplies consumes the reply queue (cfg.Queue, default the bus's
// ReplyQueue) into coordinator c until ctx is done, and returns once the
// replies in hand are settled. Replies are taken in batches of up to
// maxBatch, in queue order, applied in one transaction per batch, and
// acked once it committed, in the order they were delivered. A reply that
// cannot be decoded, or that names a saga the store does not have or has
// quarantined, is dead-lettered with why, once the others committed. One
// whose application fails is retried alone, then dead-lettered (see
// ConsumerConfig.MaxDeliveries; set cfg.Transient to the store's
// classification, so that a database restart requeues instead).
func (b *Bus) ServeReplies(ctx context.Context, c ReplySink, cfg ConsumerConfig, maxBatch int) error {
	if cfg.Queue == "" {
		cfg.Queue = b.cfg.ReplyQueue
	}
	return b.serveInputs(ctx, "reply", c.HandleReplies, cfg, maxBatch)
}

// serveInputs consumes cfg.Queue in batches into handle (a coordinator's
// HandleReplies or HandleSignals): see ServeReplies.
func (b *Bus) serveInputs(ctx context.Context, what string, handle func(context.Context, [][]byte) ([]error, saga.ReplyWait),
	cfg ConsumerConfig, maxBatch int) error {
	return b.ConsumeBatchAsync(ctx, cfg, maxBatch, func(hctx context.Context, ds []*amqp.Delivery) (Settle, error) {
		bodies := make([][]byte, len(ds))
		for i, d := range ds {
			bodies[i] = d.Body
		}
		poison, wait := handle(hctx, bodies)
		if len(ds) == 1 && poison[0] != nil {
			return nil, Poison(poison[0]) // the consumer dead-letters it
		}
		// Dead letters go once the batch committed: a batch that fails is
		// taken apart by the consumer and each reply handled again alone.
		return func(sctx context.Context) error {
			dead, err := wait(sctx)
			if err != nil {
				return err
			}
			if dead == nil {
				dead = map[int]error{}
			}
			for i, why := range poison {
				if why != nil {
					dead[i] = why
				}
			}
			for i, why := range dead {
				b.log.Warn().Err(why).Str("queue", cfg.Queue).Str("message_id", ds[i].MessageId).Msg("dead-lettering a " + what)
				if err := b.DeadLetter(sctx, ds[i], cfg.Queue, why.Error()); err != nil {
					return err
				}
			}
			return nil
		}, nil
	})
}
