package amqpbus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/internal/collect"
)

// Handler processes one delivery. Returning nil acks it. An error for which
// IsPoison is true dead-letters the delivery (with the error as reason) and
// acks it. An error for which ConsumerConfig.Transient is true (a
// dependency is away) requeues it after RequeueDelay, uncounted. Any other
// error counts as a failed delivery: the message goes back to the tail of
// its queue, and after ConsumerConfig.MaxDeliveries failures it is
// dead-lettered with the error as reason. Nothing is requeued forever.
type Handler func(ctx context.Context, d *amqp.Delivery) error

// Settle finishes a delivery after its handler returned: the delivery is
// acked when Settle returns nil, and requeued after RequeueDelay when it
// returns an error.
type Settle func(ctx context.Context) error

// AsyncHandler is a Handler that may finish a delivery later: it returns
// a Settle (nil to ack now) and is free to take the next delivery while
// Settle runs, for example while a reply waits for its publisher confirm.
type AsyncHandler func(ctx context.Context, d *amqp.Delivery) (Settle, error)

// ConsumerConfig configures Consume. Zero fields take the defaults.
type ConsumerConfig struct {
	// Queue to consume.
	Queue string
	// Prefetch is how many unacked deliveries the broker hands this
	// consumer (default 64).
	Prefetch int
	// Concurrency is how many deliveries are handled at once (default
	// Prefetch).
	Concurrency int
	// RequeueDelay is the pause before a transient failure is requeued, so
	// that an outage does not become a hot loop (default 1s).
	RequeueDelay time.Duration
	// StopGrace is how long in-flight handlers may run after ctx is done
	// (default 10s).
	StopGrace time.Duration
	// MaxDeliveries is how many times a message may fail (with an error
	// that is neither poison nor transient) before it is dead-lettered
	// (default 5). Between failures it goes back to the tail of its queue,
	// with the count in the x-sagaflow-deliveries header, so that the
	// messages behind it flow on.
	MaxDeliveries int
	// Transient reports whether a handler's error means a dependency is
	// away (a database restarting): such a failure is requeued after
	// RequeueDelay without counting against MaxDeliveries, and a failed
	// batch is retried whole. Context, network and broker errors always are.
	Transient func(error) bool
	// Linger is how long a batch consumer waits for more deliveries after
	// the first before it handles the batch (default 5ms). amqp091 hands
	// deliveries over one at a time, so without a linger a busy queue would
	// still be consumed in batches of one; the broker, too, spends less per
	// message on larger batches of acks and replies.
	Linger time.Duration
}

func (cfg *ConsumerConfig) defaults(prefetch int) {
	if cfg.Prefetch <= 0 {
		cfg.Prefetch = prefetch
	}
	if cfg.RequeueDelay <= 0 {
		cfg.RequeueDelay = time.Second
	}
	if cfg.MaxDeliveries <= 0 {
		cfg.MaxDeliveries = 5
	}
}

// transient reports whether err is a transient failure for cfg.
func (cfg *ConsumerConfig) transient(err error) bool {
	var amqpErr *amqp.Error
	var netErr net.Error
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrClosed) ||
		errors.Is(err, amqp.ErrClosed) || errors.As(err, &amqpErr) || errors.As(err, &netErr) || errors.Is(err, io.EOF) {
		return true // the broker, or a connection, is away
	}
	return cfg.Transient != nil && cfg.Transient(err)
}

// IsPoison reports whether err means the message can never be processed:
// it is dead-lettered instead of retried.
func IsPoison(err error) bool {
	var p *PoisonError
	return errors.As(err, &p) || errors.Is(err, saga.ErrMalformed) ||
		errors.Is(err, saga.ErrUnknownVersion) || errors.Is(err, saga.ErrUnknownCommand)
}

// PoisonError marks an error as poison for IsPoison.
type PoisonError struct{ Err error }

func (e *PoisonError) Error() string { return e.Err.Error() }
func (e *PoisonError) Unwrap() error { return e.Err }

// Poison wraps err so that IsPoison reports true.
func Poison(err error) error { return &PoisonError{Err: err} }

// Consume delivers messages of cfg.Queue to h until ctx is done, across
// reconnects: when the connection or channel is lost it consumes again on
// the next one. On stop it cancels the consumer and lets in-flight handlers
// finish (up to StopGrace); unacked deliveries go back to the queue.
func (b *Bus) Consume(ctx context.Context, cfg ConsumerConfig, h Handler) error {
	return b.ConsumeAsync(ctx, cfg, func(ctx context.Context, d *amqp.Delivery) (Settle, error) {
		return nil, h(ctx, d)
	})
}

// ConsumeAsync is Consume with handlers that may settle their deliveries
// later. Deliveries in hand (prefetch) bound what is outstanding.
func (b *Bus) ConsumeAsync(ctx context.Context, cfg ConsumerConfig, h AsyncHandler) error {
	cfg.defaults(64)
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = cfg.Prefetch
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 10 * time.Second
	}
	// Handlers run on a context that outlives ctx by StopGrace.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	go func() {
		select {
		case <-ctx.Done():
			select {
			case <-time.After(cfg.StopGrace):
				cancelWork()
			case <-work.Done():
			}
		case <-work.Done():
		}
	}()
	return b.resume(ctx, cfg, func() error { return b.consumeOnce(ctx, work, cfg, h) })
}

// resume runs a consumer until ctx is done, starting it again (on the next
// connection, once there is one) whenever its channel is lost.
func (b *Bus) resume(ctx context.Context, cfg ConsumerConfig, once func() error) error {
	for {
		err := once()
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrClosed) {
			return err
		}
		if err != nil {
			b.log.Warn().Err(err).Str("queue", cfg.Queue).Msg("consumer stopped; resuming")
			select {
			case <-time.After(cfg.RequeueDelay):
			case <-ctx.Done():
				return nil
			}
		}
	}
}

func (b *Bus) consumeOnce(ctx, work context.Context, cfg ConsumerConfig, h AsyncHandler) error {
	ch, err := b.Channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close()
	if err := ch.Qos(cfg.Prefetch, 0, false /* global */); err != nil {
		return err
	}
	tag := cfg.Queue + "." + uuid.NewString()[:8]
	deliveries, err := ch.Consume(cfg.Queue, tag,
		false, // auto-ack
		false, // exclusive
		false, // no-local
		false, // no-wait
		nil)
	if err != nil {
		return err
	}
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			_ = ch.Cancel(tag, false /* no-wait */)
		case <-stopped:
		}
	}()
	var wg, settling sync.WaitGroup
	for range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range deliveries {
				b.handle(work, cfg, h, &d, &settling)
			}
		}()
	}
	wg.Wait()
	settling.Wait() // acks go out on this channel, before it closes
	close(stopped)
	return nil
}

func (b *Bus) handle(ctx context.Context, cfg ConsumerConfig, h AsyncHandler, d *amqp.Delivery, settling *sync.WaitGroup) {
	settle, err := h(ctx, d)
	switch {
	case err == nil && settle != nil:
		settling.Add(1)
		go func() {
			defer settling.Done()
			b.settleOne(ctx, cfg, d, settle(ctx))
		}()
	default:
		b.settleOne(ctx, cfg, d, err)
	}
}

// settleOne finishes one delivery after its handler: ack on success,
// otherwise dead-letter (poison, or out of deliveries), requeue after a
// pause (transient), or send it to the tail of its queue, counted.
func (b *Bus) settleOne(ctx context.Context, cfg ConsumerConfig, d *amqp.Delivery, err error) {
	log := func(msg string) {
		b.log.Warn().Err(err).Str("queue", cfg.Queue).Str("message_id", d.MessageId).
			Str("routing_key", d.RoutingKey).Int("deliveries", Deliveries(d)).Msg(msg)
	}
	switch {
	case err == nil:
		_ = d.Ack(false)
		return
	case IsPoison(err) || Deliveries(d) >= cfg.MaxDeliveries:
		reason := err.Error()
		if !IsPoison(err) {
			reason = fmt.Sprintf("failed %d deliveries: %s", Deliveries(d), reason)
		}
		log("dead-lettering the message")
		if dlErr := b.DeadLetter(ctx, d, cfg.Queue, reason); dlErr != nil {
			// Could not keep a copy: let the broker dead-letter it itself
			// (the queue's x-dead-letter-exchange), without our reason.
			b.log.Error().Err(dlErr).Msg("dead-letter publish failed; rejecting instead")
			_ = d.Nack(false, false /* requeue */)
			return
		}
		_ = d.Ack(false)
		return
	case !cfg.transient(err):
		log("handler failed; the message goes to the tail of its queue")
		if rerr := b.retryLater(ctx, d, cfg.Queue); rerr == nil {
			_ = d.Ack(false)
			return
		}
	default:
		log("transient failure; requeueing")
	}
	select {
	case <-time.After(cfg.RequeueDelay):
	case <-ctx.Done():
	}
	_ = d.Nack(false, true /* requeue */)
}

// BatchHandler processes a batch of deliveries. Returning nil acks them
// all; an error requeues them all after RequeueDelay. It must dead-letter
// poison deliveries itself (DeadLetter) and leave them out of its work.
type BatchHandler func(ctx context.Context, ds []*amqp.Delivery) error

// AsyncBatchHandler is a BatchHandler that may finish its batch later: it
// returns a Settle (nil to ack now) and the consumer goes on with the next
// batch while Settle runs, for example while replies wait for confirms.
type AsyncBatchHandler func(ctx context.Context, ds []*amqp.Delivery) (Settle, error)

// ConsumeBatch delivers messages of cfg.Queue in batches of up to
// cfg.Prefetch, taking whatever is waiting: one transaction (one commit)
// for many messages. Batches are handled one at a time, in order, so a
// single active consumer keeps its queue's order.
func (b *Bus) ConsumeBatch(ctx context.Context, cfg ConsumerConfig, h BatchHandler) error {
	return b.ConsumeBatchAsync(ctx, cfg, 0, func(ctx context.Context, ds []*amqp.Delivery) (Settle, error) {
		return nil, h(ctx, ds)
	})
}

// ConsumeBatchAsync is ConsumeBatch with handlers that may settle their
// batch later; batches hold at most maxBatch deliveries (0: Prefetch).
// Batches are acknowledged in the order they were taken, each with one
// frame (multiple ack up to its last delivery) once it and every batch
// before it have settled.
func (b *Bus) ConsumeBatchAsync(ctx context.Context, cfg ConsumerConfig, maxBatch int, h AsyncBatchHandler) error {
	cfg.defaults(256)
	if maxBatch <= 0 || maxBatch > cfg.Prefetch {
		maxBatch = cfg.Prefetch
	}
	if cfg.Linger <= 0 {
		cfg.Linger = 5 * time.Millisecond
	}
	return b.resume(ctx, cfg, func() error { return b.consumeBatchOnce(ctx, cfg, maxBatch, h) })
}

func (b *Bus) consumeBatchOnce(ctx context.Context, cfg ConsumerConfig, maxBatch int, h AsyncBatchHandler) error {
	ch, err := b.Channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close()
	if err := ch.Qos(cfg.Prefetch, 0, false /* global */); err != nil {
		return err
	}
	deliveries, err := ch.Consume(cfg.Queue, cfg.Queue+"."+uuid.NewString()[:8],
		false, // auto-ack
		false, // exclusive
		false, // no-local
		false, // no-wait
		nil)
	if err != nil {
		return err
	}
	// A batch in hand is finished even when stopping: its transaction
	// decides, and unacked deliveries would only be redelivered.
	work := context.WithoutCancel(ctx)
	// The acker settles batches in order: when a batch's turn comes, every
	// earlier delivery on this channel is settled, so one multiple ack (or
	// nack) covers the batch.
	type pending struct {
		batch []*amqp.Delivery
		done  chan error
	}
	queue := make(chan pending, cfg.Prefetch)
	ackerDone := make(chan struct{})
	go func() {
		defer close(ackerDone)
		for p := range queue {
			last := p.batch[len(p.batch)-1]
			err := <-p.done
			switch {
			case err == nil:
				_ = last.Ack(true /* multiple */)
			case cfg.transient(err):
				b.log.Warn().Err(err).Str("queue", cfg.Queue).Int("messages", len(p.batch)).
					Msg("transient failure; requeueing the batch")
				select {
				case <-time.After(cfg.RequeueDelay):
				case <-ctx.Done():
				}
				_ = last.Nack(true /* multiple */, true /* requeue */)
			default:
				b.isolate(work, cfg, h, p.batch, err)
			}
		}
	}()
	defer func() {
		close(queue)
		<-ackerDone // acks go out on this channel, before it closes
	}()
	linger := time.NewTimer(cfg.Linger)
	defer linger.Stop()
	for {
		got, _, closed := collect.Batch(ctx, deliveries, nil, maxBatch, linger, cfg.Linger, nil)
		if len(got) == 0 {
			return nil // stopping, or the channel is gone (resume consumes again)
		}
		batch := make([]*amqp.Delivery, len(got))
		for i := range got {
			batch[i] = &got[i]
		}
		p := pending{batch: batch, done: make(chan error, 1)}
		settle, err := h(work, batch)
		switch {
		case err != nil:
			p.done <- err
		case settle == nil:
			p.done <- nil
		default:
			go func() { p.done <- settle(work) }()
		}
		queue <- p
		if closed {
			return nil
		}
	}
}

// isolate handles a batch that failed, message by message: the ones that
// succeed alone are acked, each failing one is settled by itself
// (settleOne), so that one bad message fails nobody else's.
func (b *Bus) isolate(ctx context.Context, cfg ConsumerConfig, h AsyncBatchHandler, batch []*amqp.Delivery, batchErr error) {
	if len(batch) == 1 {
		b.settleOne(ctx, cfg, batch[0], batchErr)
		return
	}
	b.log.Warn().Err(batchErr).Str("queue", cfg.Queue).Int("messages", len(batch)).
		Msg("batch failed; handling its messages one by one")
	for _, d := range batch {
		settle, err := h(ctx, []*amqp.Delivery{d})
		if err == nil && settle != nil {
			err = settle(ctx)
		}
		b.settleOne(ctx, cfg, d, err)
	}
}
