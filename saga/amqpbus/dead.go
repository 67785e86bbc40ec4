package amqpbus

import (
	"context"
	"fmt"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sagaflow/sagaflow/saga"
)

// DeadMessage is a message kept in saga.dead, as an operator sees it.
type DeadMessage struct {
	MessageID     string `json:"message_id"`
	Type          string `json:"type"`
	CorrelationID string `json:"correlation_id,omitempty"`
	// Reason says why it was set aside: the x-sagaflow-reason of a process
	// that dead-lettered it, or the broker's ("expired", "rejected",
	// "maxlen") for one the broker moved.
	Reason string `json:"reason"`
	// Queue is the queue it was taken from.
	Queue string `json:"queue"`
	// Exchange and RoutingKey are where it was published, and where a
	// re-drive sends it again.
	Exchange   string `json:"exchange"`
	RoutingKey string `json:"routing_key"`
	// Deliveries counts its failed deliveries (or the broker's count of
	// times it was dead-lettered).
	Deliveries int    `json:"deliveries"`
	DeadAt     string `json:"dead_at,omitempty"`
	Bytes      int    `json:"bytes"`
	// SagaID is the saga the message is about, when its body says.
	SagaID string `json:"saga_id,omitempty"`
}

func describeDead(d *amqp.Delivery) DeadMessage {
	m := DeadMessage{MessageID: d.MessageId, Type: d.Type, CorrelationID: d.CorrelationId, Bytes: len(d.Body),
		Exchange: d.Exchange, RoutingKey: d.RoutingKey}
	if env, err := saga.Decode(d.Body); err == nil {
		m.SagaID = env.SagaID
	}
	str := func(k string) string { s, _ := d.Headers[k].(string); return s }
	if r := str("x-sagaflow-reason"); r != "" {
		m.Reason, m.Queue, m.Exchange, m.RoutingKey = r, str("x-sagaflow-queue"), str("x-sagaflow-exchange"), str("x-sagaflow-routing-key")
		m.DeadAt, m.Deliveries = str("x-sagaflow-dead-at"), Deliveries(d)-1
		return m
	}
	// Moved by the broker: its x-death record says from where and why.
	if deaths, ok := d.Headers["x-death"].([]any); ok && len(deaths) > 0 {
		if x, ok := deaths[0].(amqp.Table); ok {
			m.Reason, _ = x["reason"].(string)
			m.Queue, _ = x["queue"].(string)
			m.Exchange, _ = x["exchange"].(string)
			if keys, ok := x["routing-keys"].([]any); ok && len(keys) > 0 {
				m.RoutingKey, _ = keys[0].(string)
			}
			if n, ok := x["count"].(int64); ok {
				m.Deliveries = int(n)
			}
			if t, ok := x["time"].(time.Time); ok {
				m.DeadAt = t.UTC().Format(time.RFC3339)
			}
		}
	}
	if m.Reason == "" {
		m.Reason = "unknown"
	}
	return m
}

// DeadLetters lists up to limit messages of saga.dead, oldest first,
// without taking them: they are held unacknowledged while read, then
// handed back in their order.
func (b *Bus) DeadLetters(ctx context.Context, limit int) ([]DeadMessage, error) {
	var out []DeadMessage
	err := b.holdDead(ctx, limit, func(d *amqp.Delivery) error {
		out = append(out, describeDead(d))
		return nil
	})
	return out, err
}

// Redrive publishes up to limit messages of saga.dead that match back to
// where they were published (their exchange and routing key), without the
// headers dead-lettering added, each confirmed by the broker before it
// leaves saga.dead; the others stay. A command sent again is a duplicate
// to its worker's inbox if it was carried out; a reply to a saga that
// moved on is ignored. It returns the messages re-driven.
func (b *Bus) Redrive(ctx context.Context, limit int, match func(DeadMessage) bool) ([]DeadMessage, error) {
	var out []DeadMessage
	err := b.holdDead(ctx, 0, func(d *amqp.Delivery) error {
		m := describeDead(d)
		if len(out) >= limit || !match(m) {
			return nil
		}
		if m.Exchange == "" && m.RoutingKey == "" {
			return nil // nowhere to send it
		}
		h := amqp.Table{}
		for k, v := range d.Headers {
			if !strings.HasPrefix(k, "x-sagaflow-") && k != "x-death" && !strings.HasPrefix(k, "x-first-death") && !strings.HasPrefix(k, "x-last-death") {
				h[k] = v
			}
		}
		if err := b.publishCopy(ctx, m.Exchange, m.RoutingKey, d, h); err != nil {
			return fmt.Errorf("amqpbus: re-drive %s: %w", m.MessageID, err)
		}
		if err := d.Ack(false); err != nil {
			return fmt.Errorf("amqpbus: re-drive %s: ack: %w", m.MessageID, err)
		}
		out = append(out, m)
		return nil
	})
	return out, err
}

// holdDead consumes saga.dead without acknowledging, hands each message
// (up to limit; 0: every message there) to f, and then closes the channel:
// what f did not ack goes back to the queue, in its order.
func (b *Bus) holdDead(ctx context.Context, limit int, f func(*amqp.Delivery) error) error {
	ch, err := b.Channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(DeadLetterQueue, true, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("amqpbus: %s: %w", DeadLetterQueue, err)
	}
	n := q.Messages
	if limit > 0 && limit < n {
		n = limit
	}
	if n == 0 {
		return nil
	}
	if err := ch.Qos(n, 0, false); err != nil {
		return err
	}
	ds, err := ch.ConsumeWithContext(ctx, DeadLetterQueue, "", false, false, false, false, nil)
	if err != nil {
		return err
	}
	idle := time.NewTimer(time.Second)
	defer idle.Stop()
	for seen := 0; seen < n; seen++ {
		select {
		case d, ok := <-ds:
			if !ok {
				return fmt.Errorf("amqpbus: %s: the channel closed", DeadLetterQueue)
			}
			if err := f(&d); err != nil {
				return err
			}
			idle.Reset(time.Second)
		case <-idle.C:
			return nil // fewer than counted: others took some
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
