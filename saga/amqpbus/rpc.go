package amqpbus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagaflow/sagaflow/saga"
)

// directReplyTo is RabbitMQ's pseudo-queue for RPC replies: no queue to
// declare or clean up, replies go straight to the caller's channel.
const directReplyTo = "amq.rabbitmq.reply-to"

// ErrNoReply is returned by Call when no reply came in time.
var ErrNoReply = errors.New("amqpbus: no reply")

// rpcClient multiplexes calls over one channel consuming direct reply-to.
type rpcClient struct {
	b       *Bus
	mu      sync.Mutex
	ch      *amqp.Channel
	pending map[string]waiter
}

type waiter struct {
	ch *amqp.Channel // the channel the request went out on
	w  chan amqp.Delivery
}

func newRPC(b *Bus) *rpcClient {
	return &rpcClient{b: b, pending: map[string]waiter{}}
}

// Call publishes m as a request and waits for its reply until ctx is done.
// The request is transient and expires with ctx's deadline (or after 30s),
// so a request nobody answered in time is dead-lettered rather than
// executed long after the caller gave up.
func (b *Bus) Call(ctx context.Context, m saga.Message) (*amqp.Delivery, error) {
	return b.rpc.call(ctx, m)
}

func (r *rpcClient) call(ctx context.Context, m saga.Message) (*amqp.Delivery, error) {
	ch, err := r.channel(ctx)
	if err != nil {
		return nil, noReply(ctx, m, err)
	}
	if m.CorrelationID == "" {
		m.CorrelationID = uuid.NewString()
	}
	if m.MessageID == "" {
		m.MessageID = m.CorrelationID
	}
	m.Kind = saga.MessageRequest
	m.Transient = true
	ttl := 30 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		ttl = time.Until(dl)
	}
	m.TTL = ttl
	wait := make(chan amqp.Delivery, 1)
	r.mu.Lock()
	r.pending[m.CorrelationID] = waiter{ch: ch, w: wait}
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.pending, m.CorrelationID)
		r.mu.Unlock()
	}()
	exchange, key, p := r.b.Publishing(&m)
	p.ReplyTo = directReplyTo
	if err := ch.PublishWithContext(ctx, exchange, key,
		false, // mandatory
		false, // immediate
		p); err != nil {
		return nil, noReply(ctx, m, err)
	}
	select {
	case d, ok := <-wait:
		if !ok {
			return nil, fmt.Errorf("amqpbus: call %s: connection lost", m.Type)
		}
		return &d, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w to %s: %w", ErrNoReply, m.Type, ctx.Err())
	}
}

// noReply is the error of a call that failed before its request left: one
// whose time ran out meanwhile wraps ErrNoReply, like one that waited in vain.
func noReply(ctx context.Context, m saga.Message, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w to %s: %w", ErrNoReply, m.Type, ctx.Err())
	}
	return fmt.Errorf("amqpbus: call %s: %w", m.Type, err)
}

// channel returns the RPC channel, opening it (and its reply consumer) on
// the current connection when needed.
func (r *rpcClient) channel(ctx context.Context) (*amqp.Channel, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ch != nil && !r.ch.IsClosed() {
		return r.ch, nil
	}
	ch, err := r.b.Channel(ctx)
	if err != nil {
		return nil, err
	}
	replies, err := ch.Consume(directReplyTo, "",
		true,  // auto-ack: required by direct reply-to
		false, // exclusive
		false, // no-local
		false, // no-wait
		nil)
	if err != nil {
		ch.Close()
		return nil, fmt.Errorf("amqpbus: consume %s: %w", directReplyTo, err)
	}
	r.ch = ch
	go r.dispatch(ch, replies)
	return ch, nil
}

// dispatch hands each reply to its caller; when the channel dies, callers
// still waiting on it are told at once instead of timing out.
func (r *rpcClient) dispatch(ch *amqp.Channel, replies <-chan amqp.Delivery) {
	for d := range replies {
		r.mu.Lock()
		w := r.pending[d.CorrelationId]
		r.mu.Unlock()
		if w.w != nil {
			select {
			case w.w <- d:
			default:
			}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ch == ch {
		r.ch = nil
	}
	for id, w := range r.pending {
		if w.ch == ch {
			close(w.w)
			delete(r.pending, id)
		}
	}
}
