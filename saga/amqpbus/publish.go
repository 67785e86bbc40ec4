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

// Publish sends msgs on a confirm-mode channel, pipelined: every message is
// written before any confirm is awaited, and the channel goes back to the
// pool as soon as the writes are done, so other publishers use it while
// this one waits. (RabbitMQ confirms persistent messages once its queues
// have synced them to disk, which a busy queue does about every 200 ms:
// throughput comes from many messages in flight, never from waiting on one.)
// It returns the messages the broker confirmed; the rest failed (err says
// why) and are the caller's to retry. Confirm waits are bounded by ctx:
// amqp091-go does not abort an in-flight publish on its own. A channel that
// closes nacks its pending confirms.
func (b *Bus) Publish(ctx context.Context, msgs []saga.Message) ([]saga.Message, error) {
	if len(msgs) == 0 {
		return nil, nil
	}
	ch, gen, err := b.publishChannel(ctx)
	if err != nil {
		return nil, err
	}
	confirms := make([]*amqp.DeferredConfirmation, 0, len(msgs))
	var pubErr error
	for i := range msgs {
		m := &msgs[i]
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, m.Exchange, m.RoutingKey,
			false, // mandatory: unroutable commands go to the alternate exchange
			false, // immediate
			Publishing(m))
		if err != nil {
			pubErr = fmt.Errorf("amqpbus: publish %s: %w", m.RoutingKey, err)
			break
		}
		confirms = append(confirms, dc)
	}
	if pubErr == nil {
		b.releasePublishChannel(ch, gen)
	} else {
		ch.Close() // broken mid-batch: never reuse it
	}
	ok := make([]saga.Message, 0, len(confirms))
	for i, dc := range confirms {
		acked, err := dc.WaitContext(ctx)
		if err != nil {
			if pubErr == nil {
				pubErr = fmt.Errorf("amqpbus: confirm: %w", err)
			}
			break
		}
		if !acked {
			if pubErr == nil {
				pubErr = fmt.Errorf("amqpbus: broker nacked %s (or the channel closed)", msgs[i].RoutingKey)
			}
			continue
		}
		ok = append(ok, msgs[i])
	}
	return ok, pubErr
}

// PublishOne publishes one message and waits for its confirm.
func (b *Bus) PublishOne(ctx context.Context, m saga.Message) error {
	_, err := b.Publish(ctx, []saga.Message{m})
	return err
}

// Publishing converts a message to its AMQP form.
func Publishing(m *saga.Message) amqp.Publishing {
	p := amqp.Publishing{
		ContentType:   "application/json",
		DeliveryMode:  amqp.Persistent,
		MessageId:     m.MessageID,
		CorrelationId: m.CorrelationID,
		ReplyTo:       m.ReplyTo,
		Type:          m.Type,
		Priority:      uint8(m.Priority),
		Timestamp:     m.Timestamp,
		Body:          m.Body,
	}
	if m.Transient {
		p.DeliveryMode = amqp.Transient
	}
	if m.Expiration > 0 {
		ms := m.Expiration.Milliseconds()
		if ms < 1 {
			ms = 1
		}
		p.Expiration = strconv.FormatInt(ms, 10)
	}
	if len(m.Headers) > 0 {
		p.Headers = amqp.Table{}
		for k, v := range m.Headers {
			p.Headers[k] = v
		}
	}
	return p
}

// publishChannel takes an idle confirm-mode channel of the current
// connection, or opens one.
func (b *Bus) publishChannel(ctx context.Context) (*amqp.Channel, uint64, error) {
	_, gen, err := b.connection(ctx)
	if err != nil {
		return nil, 0, err
	}
	b.mu.Lock()
	pubs := b.pubs
	b.mu.Unlock()
	for {
		select {
		case ch := <-pubs:
			if !ch.IsClosed() {
				return ch, gen, nil
			}
			continue
		default:
		}
		break
	}
	ch, err := b.Channel(ctx)
	if err != nil {
		return nil, 0, err
	}
	if err := ch.Confirm(false /* no-wait */); err != nil {
		ch.Close()
		return nil, 0, fmt.Errorf("amqpbus: confirm mode: %w", err)
	}
	return ch, gen, nil
}

func (b *Bus) releasePublishChannel(ch *amqp.Channel, gen uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if gen != b.gen || b.closed || ch.IsClosed() {
		ch.Close()
		return
	}
	select {
	case b.pubs <- ch:
	default:
		ch.Close()
	}
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
	ch, gen, err := b.publishChannel(ctx)
	if err != nil {
		return err
	}
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, DeadLetterExchange, d.RoutingKey,
		false, // mandatory
		false, // immediate
		amqp.Publishing{
			Headers: h, ContentType: d.ContentType, DeliveryMode: amqp.Persistent,
			MessageId: d.MessageId, CorrelationId: d.CorrelationId, ReplyTo: d.ReplyTo,
			Type: d.Type, Timestamp: d.Timestamp, Body: d.Body,
		})
	if err != nil {
		ch.Close()
		return fmt.Errorf("amqpbus: dead-letter: %w", err)
	}
	acked, err := dc.WaitContext(ctx)
	if err != nil || !acked {
		ch.Close()
		if err == nil {
			err = errors.New("nacked")
		}
		return fmt.Errorf("amqpbus: dead-letter confirm: %w", err)
	}
	b.releasePublishChannel(ch, gen)
	if b.cfg.OnDeadLetter != nil {
		b.cfg.OnDeadLetter(queue, reason)
	}
	return nil
}
