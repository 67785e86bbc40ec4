package amqpbus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagaflow/sagaflow/saga"
)

// Send writes msgs, in order, on one of the shared confirm-mode channels
// and returns without waiting for their confirms: messages sent one after
// the other reach the broker in that order, and the caller may send more
// while earlier ones await their confirms. (RabbitMQ confirms persistent
// messages once its queues have synced them to disk, which a busy queue
// does about every 200 ms: throughput comes from many messages in flight,
// never from waiting on one.)
//
// The returned saga.Confirms waits for the confirms, bounded by its ctx
// (amqp091-go does not abort an in-flight publish on its own); a channel
// that closes nacks its pending confirms.
func (b *Bus) Send(ctx context.Context, msgs []saga.Message) saga.Confirms {
	if len(msgs) == 0 {
		return func(context.Context) ([]saga.Message, error) { return nil, nil }
	}
	ch, err := b.publishChannel(ctx)
	if err != nil {
		return func(context.Context) ([]saga.Message, error) { return nil, err }
	}
	confirms := make([]*amqp.DeferredConfirmation, 0, len(msgs))
	var pubErr error
	for i := range msgs {
		m := &msgs[i]
		exchange, key, p := b.Publishing(m)
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key,
			false, // mandatory: unroutable commands go to the alternate exchange
			false, // immediate
			p)
		if err != nil {
			pubErr = fmt.Errorf("amqpbus: publish %s %s: %w", m.Kind, m.Type, err)
			if ctx.Err() == nil {
				// Broken mid-batch: never reuse it. (Out of time is not
				// broken: the channel is shared, and closing it would nack
				// the confirms other senders await on it.)
				b.dropPublishChannel(ch)
			}
			break
		}
		confirms = append(confirms, dc)
	}
	return func(ctx context.Context) ([]saga.Message, error) {
		ok := make([]saga.Message, 0, len(confirms))
		err := pubErr
		for i, dc := range confirms {
			acked, werr := dc.WaitContext(ctx)
			if werr != nil {
				if err == nil {
					err = fmt.Errorf("amqpbus: confirm: %w", werr)
				}
				break
			}
			if !acked {
				if err == nil {
					err = fmt.Errorf("amqpbus: broker nacked %s %s (or the channel closed)", msgs[i].Kind, msgs[i].Type)
				}
				continue
			}
			ok = append(ok, msgs[i])
		}
		return ok, err
	}
}

// Publish sends msgs (Send) and waits for their confirms.
func (b *Bus) Publish(ctx context.Context, msgs []saga.Message) ([]saga.Message, error) {
	return b.Send(ctx, msgs)(ctx)
}

// Publishing maps a message to the broker: the exchange and routing key
// it goes to, and its AMQP form. Commands and requests go to the command
// exchange, events to the event exchange and signals to the signal
// exchange, routed by their type; a
// command names the reply queue as reply_to; a reply goes straight to the
// queue its Key names (the requester's reply_to).
func (b *Bus) Publishing(m *saga.Message) (exchange, key string, p amqp.Publishing) {
	p = amqp.Publishing{
		ContentType:   "application/json",
		DeliveryMode:  amqp.Persistent,
		MessageId:     m.MessageID,
		CorrelationId: m.CorrelationID,
		Type:          m.Type,
		Priority:      uint8(m.Priority),
		Timestamp:     m.Timestamp,
		Body:          m.Body,
	}
	switch m.Kind {
	case saga.MessageCommand:
		exchange, key, p.ReplyTo = b.cfg.CommandExchange, m.Type, b.cfg.ReplyQueue
	case saga.MessageRequest:
		exchange, key = b.cfg.CommandExchange, m.Type
	case saga.MessageEvent:
		exchange, key = b.cfg.EventExchange, m.Type
	case saga.MessageSignal:
		exchange, key = SignalExchange, m.Type
	default: // a reply, or anything addressed by Key
		exchange, key = "", m.Key
	}
	if m.Transient {
		p.DeliveryMode = amqp.Transient
	}
	if m.TTL > 0 {
		p.Expiration = strconv.FormatInt(max(m.TTL.Milliseconds(), 1), 10)
	}
	if len(m.Headers) > 0 {
		p.Headers = amqp.Table{}
		for k, v := range m.Headers {
			p.Headers[k] = v
		}
	}
	return exchange, key, p
}

// publishChannel returns one of the shared confirm-mode channels of the
// current connection, round robin, opening it if needed.
func (b *Bus) publishChannel(ctx context.Context) (*amqp.Channel, error) {
	for {
		conn, gen, err := b.connection(ctx)
		if err != nil {
			return nil, err
		}
		b.mu.Lock()
		if gen != b.gen {
			b.mu.Unlock()
			continue
		}
		i := b.pubNext % len(b.pubs)
		b.pubNext++
		if ch := b.pubs[i]; ch != nil && !ch.IsClosed() {
			b.mu.Unlock()
			return ch, nil
		}
		// Open it under the lock, so that two publishers do not both open it.
		ch, err := conn.Channel()
		if err == nil {
			if err = ch.Confirm(false /* no-wait */); err != nil {
				ch.Close()
			}
		}
		if err != nil {
			b.mu.Unlock()
			if conn.IsClosed() {
				continue // lost meanwhile: wait for the next one
			}
			return nil, fmt.Errorf("amqpbus: open a confirm-mode channel: %w", err)
		}
		b.pubs[i] = ch
		b.mu.Unlock()
		return ch, nil
	}
}

// dropPublishChannel closes a broken publish channel and forgets it.
func (b *Bus) dropPublishChannel(ch *amqp.Channel) {
	b.mu.Lock()
	for i, c := range b.pubs {
		if c == ch {
			b.pubs[i] = nil
		}
	}
	b.mu.Unlock()
	ch.Close()
}

// DeadLetter publishes a copy of a delivery to saga.dlx with the reason in
// the x-sagaflow-reason header (and where it came from), and waits for the
// confirm. Ack the delivery afterwards: nothing is dropped silently and
// nothing is requeued forever.
func (b *Bus) DeadLetter(ctx context.Context, d *amqp.Delivery, queue, reason string) error {
	h := amqp.Table{}
	for k, v := range d.Headers {
		h[k] = v
	}
	h["x-sagaflow-reason"] = reason
	h["x-sagaflow-queue"] = queue
	h["x-sagaflow-exchange"] = d.Exchange
	h["x-sagaflow-routing-key"] = d.RoutingKey
	h["x-sagaflow-dead-at"] = time.Now().UTC().Format(time.RFC3339Nano)
	h[DeliveriesHeader] = int32(Deliveries(d))
	kept := *d
	kept.Expiration = "" // kept for an operator: it must not expire in saga.dead
	if err := b.publishCopy(ctx, DeadLetterExchange, d.RoutingKey, &kept, h); err != nil {
		return fmt.Errorf("amqpbus: dead-letter: %w", err)
	}
	if b.cfg.OnDeadLetter != nil {
		b.cfg.OnDeadLetter(queue, reason)
	}
	return nil
}

// DeliveriesHeader counts the failed deliveries of a message that a
// consumer handed back to its queue's tail (see ConsumerConfig.MaxDeliveries).
const DeliveriesHeader = "x-sagaflow-deliveries"

// Deliveries is how many times d was delivered to a handler that failed
// it, this delivery included: 1 on a first delivery.
func Deliveries(d *amqp.Delivery) int {
	n := 0
	switch v := d.Headers[DeliveriesHeader].(type) {
	case int32:
		n = int(v)
	case int64:
		n = int(v)
	case int:
		n = v
	}
	return n + 1
}

// retryLater puts a copy of d at the tail of queue with its failed
// deliveries counted; the caller acks d once it returns nil.
func (b *Bus) retryLater(ctx context.Context, d *amqp.Delivery, queue string) error {
	h := amqp.Table{}
	for k, v := range d.Headers {
		h[k] = v
	}
	h[DeliveriesHeader] = int32(Deliveries(d))
	return b.publishCopy(ctx, "", queue, d, h)
}

// publishCopy publishes d's body and properties with headers h, and waits
// for the broker's confirm.
func (b *Bus) publishCopy(ctx context.Context, exchange, key string, d *amqp.Delivery, h amqp.Table) error {
	ch, err := b.publishChannel(ctx)
	if err != nil {
		return err
	}
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key,
		false, // mandatory
		false, // immediate
		amqp.Publishing{
			Headers: h, ContentType: d.ContentType, DeliveryMode: amqp.Persistent,
			MessageId: d.MessageId, CorrelationId: d.CorrelationId, ReplyTo: d.ReplyTo,
			Type: d.Type, Timestamp: d.Timestamp, Priority: d.Priority, Expiration: d.Expiration, Body: d.Body,
		})
	if err != nil {
		b.dropPublishChannel(ch)
		return err
	}
	acked, err := dc.WaitContext(ctx)
	if err != nil || !acked {
		if err == nil {
			err = errors.New("nacked")
		}
		return fmt.Errorf("confirm: %w", err)
	}
	return nil
}
