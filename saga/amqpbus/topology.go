package amqpbus

import (
	"context"
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Names the saga engine uses on the broker.
const (
	// CommandExchange is the direct exchange commands are published to,
	// routed by command type.
	CommandExchange = "saga.commands"
	// EventExchange is the topic exchange of domain events.
	EventExchange = "saga.events"
	// SignalExchange receives signals for waiting sagas, routed by their
	// name (direct); one no queue is bound for goes to the dead-letter
	// exchange.
	SignalExchange = "saga.signals"
	// ReplyQueue is the durable queue every orchestrator consumes replies
	// from: a restarted orchestrator finds its replies waiting.
	ReplyQueue = "saga.replies"
	// DeadLetterExchange receives poison, expired and unroutable messages.
	DeadLetterExchange = "saga.dlx"
	// DeadLetterQueue keeps them for an operator.
	DeadLetterQueue = "saga.dead"
)

// Exchange is an exchange to declare (always durable).
type Exchange struct {
	Name string
	Kind string // direct, topic, fanout
	Args amqp.Table
}

// Queue is a queue to declare (always durable).
type Queue struct {
	Name string
	Args amqp.Table
	// KeepExisting keeps a queue that already exists with other arguments
	// as it is (with a warning) instead of failing: for arguments added by
	// a later release, which RabbitMQ cannot change on a live queue (a
	// policy can).
	KeepExisting bool
}

// Binding binds a queue, or an exchange, to a source exchange.
type Binding struct {
	Source string
	Key    string
	// Queue is the destination queue; set it or Exchange.
	Queue string
	// Exchange is the destination exchange (exchange-to-exchange binding).
	Exchange string
}

// Topology is a set of declarations. Declare is idempotent, so every
// process declares what it uses and nobody has to start first.
type Topology struct {
	Exchanges []Exchange
	Queues    []Queue
	Bindings  []Binding
	// Unbindings are removed if they exist: bindings an earlier release
	// made that must not route any more.
	Unbindings []Binding
}

// Merge returns t with the declarations of others appended.
func (t Topology) Merge(others ...Topology) Topology {
	for _, o := range others {
		t.Exchanges = append(t.Exchanges, o.Exchanges...)
		t.Queues = append(t.Queues, o.Queues...)
		t.Bindings = append(t.Bindings, o.Bindings...)
		t.Unbindings = append(t.Unbindings, o.Unbindings...)
	}
	return t
}

// QueueType is classic or quorum.
type QueueType string

// Queue types.
const (
	Classic QueueType = "classic"
	Quorum  QueueType = "quorum"
)

// QueueOptions are the arguments of a queue. RabbitMQ 3.10 (Debian's)
// fills in nothing for us, so every argument is declared explicitly.
type QueueOptions struct {
	// Type is classic (default) or quorum. Quorum queues are replicated
	// across a cluster but, on RabbitMQ 3.10, have no priorities: MaxPriority
	// is then ignored.
	Type QueueType
	// MaxPriority enables message priorities 0..MaxPriority (classic only).
	MaxPriority uint8
	// DeadLetter routes rejected and expired messages to saga.dlx.
	DeadLetter bool
	// SingleActiveConsumer delivers to one consumer at a time, in order,
	// with the others on standby.
	SingleActiveConsumer bool
	// MaxLength bounds the queue: past it the oldest messages are dropped
	// (x-overflow drop-head); 0: unbounded.
	MaxLength int64
}

// Args renders the options as queue arguments.
func (o QueueOptions) Args() amqp.Table {
	t := amqp.Table{}
	typ := o.Type
	if typ == "" {
		typ = Classic
	}
	t["x-queue-type"] = string(typ)
	if typ == Classic {
		t["x-queue-version"] = int32(2)
	}
	if o.MaxPriority > 0 && typ == Classic {
		t["x-max-priority"] = int32(o.MaxPriority)
	}
	if o.DeadLetter {
		t["x-dead-letter-exchange"] = DeadLetterExchange
		if typ == Quorum {
			// Quorum queues drop dead letters after a delivery limit unless
			// told where to send them; at-least-once needs a 3.10 feature
			// flag we cannot assume, so the default strategy is explicit.
			t["x-dead-letter-strategy"] = "at-most-once"
		}
	}
	if o.SingleActiveConsumer {
		t["x-single-active-consumer"] = true
	}
	if o.MaxLength > 0 {
		t["x-max-length"] = o.MaxLength
		t["x-overflow"] = "drop-head"
	}
	return t
}

// SagaTopology is what the engine itself needs: the command and event
// exchanges, the reply queue, and the dead-letter exchange and queue.
// Unroutable commands go to the dead-letter exchange (alternate exchange)
// instead of vanishing.
//
// saga.dead keeps at most DeadLetterMax messages (default 100,000), the
// newest: a flood of poison or expired commands cannot fill the broker's
// disk. A saga.dead made by an earlier release without the bound is kept
// as it is (a policy bounds it: docs/operations.md).
func SagaTopology(o QueueOptions) Topology {
	replies := o
	replies.MaxPriority, replies.DeadLetter, replies.SingleActiveConsumer, replies.MaxLength = 0, true, false, 0
	dead := o
	dead.MaxPriority, dead.DeadLetter, dead.SingleActiveConsumer = 0, false, false
	if dead.MaxLength <= 0 {
		dead.MaxLength = DefaultDeadLetterMax
	}
	return Topology{
		Exchanges: []Exchange{
			{Name: DeadLetterExchange, Kind: "fanout", Args: amqp.Table{}},
			{Name: CommandExchange, Kind: "direct", Args: amqp.Table{"alternate-exchange": DeadLetterExchange}},
			{Name: EventExchange, Kind: "topic", Args: amqp.Table{}},
			{Name: SignalExchange, Kind: "direct", Args: amqp.Table{"alternate-exchange": DeadLetterExchange}},
		},
		Queues: []Queue{
			{Name: DeadLetterQueue, Args: dead.Args(), KeepExisting: true},
			{Name: ReplyQueue, Args: replies.Args()},
		},
		Bindings: []Binding{{Source: DeadLetterExchange, Key: "", Queue: DeadLetterQueue}},
	}
}

// DefaultDeadLetterMax bounds saga.dead when QueueOptions.MaxLength does
// not say otherwise.
const DefaultDeadLetterMax = 100_000

// CommandQueue declares a worker's command queue, bound to saga.commands by
// each command type it handles, with priorities and dead-lettering.
func CommandQueue(name string, types []string, o QueueOptions) Topology {
	o.DeadLetter, o.MaxLength = true, 0
	if o.MaxPriority == 0 {
		o.MaxPriority = MaxPriority
	}
	t := Topology{Queues: []Queue{{Name: name, Args: o.Args()}}}
	for _, typ := range types {
		t.Bindings = append(t.Bindings, Binding{Source: CommandExchange, Key: typ, Queue: name})
	}
	return t
}

// MaxPriority is the highest message priority of command queues.
const MaxPriority = 3

// Declare declares t now and again after every reconnect.
func (b *Bus) Declare(ctx context.Context, t Topology) error {
	if err := b.declare(func() (*amqp.Channel, error) { return b.Channel(ctx) }, t); err != nil {
		return err
	}
	b.mu.Lock()
	b.topology = append(b.topology, t)
	b.mu.Unlock()
	return nil
}

// declareAll re-declares every remembered topology on a new connection.
func (b *Bus) declareAll(conn *amqp.Connection) error {
	b.mu.Lock()
	tops := append([]Topology(nil), b.topology...)
	b.mu.Unlock()
	if len(tops) == 0 {
		return nil
	}
	for _, t := range tops {
		if err := b.declare(conn.Channel, t); err != nil {
			return err
		}
	}
	return nil
}

// declare declares t on a channel from open (a new one after a queue that
// exists with other arguments closed the last).
func (b *Bus) declare(open func() (*amqp.Channel, error), t Topology) error {
	ch, err := open()
	if err != nil {
		return err
	}
	defer func() { ch.Close() }()
	for _, q := range t.Queues {
		if _, err := ch.QueueDeclare(q.Name,
			true,  // durable
			false, // auto-delete
			false, // exclusive
			false, // no-wait
			q.Args); err != nil {
			var amqpErr *amqp.Error
			if !q.KeepExisting || !errors.As(err, &amqpErr) || amqpErr.Code != amqp.PreconditionFailed {
				return fmt.Errorf("amqpbus: declare queue %s: %w", q.Name, err)
			}
			b.log.Warn().Err(err).Str("queue", q.Name).Msg("the queue exists with other arguments; kept as it is")
			if ch, err = open(); err != nil {
				return err
			}
		}
	}
	return declareTopology(ch, t)
}

func declareTopology(ch *amqp.Channel, t Topology) error {
	for _, e := range t.Exchanges {
		if err := ch.ExchangeDeclare(e.Name, e.Kind,
			true,  // durable
			false, // auto-delete
			false, // internal
			false, // no-wait
			e.Args); err != nil {
			return fmt.Errorf("amqpbus: declare exchange %s: %w", e.Name, err)
		}
	}
	for _, bd := range t.Bindings {
		var err error
		if bd.Exchange != "" {
			err = ch.ExchangeBind(bd.Exchange, bd.Key, bd.Source, false /* no-wait */, nil)
		} else {
			err = ch.QueueBind(bd.Queue, bd.Key, bd.Source, false /* no-wait */, nil)
		}
		if err != nil {
			return fmt.Errorf("amqpbus: bind %s -> %s%s (%q): %w", bd.Source, bd.Queue, bd.Exchange, bd.Key, err)
		}
	}
	for _, bd := range t.Unbindings {
		// Unbinding what is not bound succeeds; the queue must exist.
		var err error
		if bd.Exchange != "" {
			err = ch.ExchangeUnbind(bd.Exchange, bd.Key, bd.Source, false /* no-wait */, nil)
		} else {
			err = ch.QueueUnbind(bd.Queue, bd.Key, bd.Source, nil)
		}
		if err != nil {
			return fmt.Errorf("amqpbus: unbind %s -> %s%s (%q): %w", bd.Source, bd.Queue, bd.Exchange, bd.Key, err)
		}
	}
	return nil
}

// Inspect reads a queue's ready messages and consumers (a passive
// declare), on a channel of its own kept between calls; a queue that does
// not exist is an error. It gives up when ctx is done, though the
// broker's answer may still come later (the channel is then dropped).
func (b *Bus) Inspect(ctx context.Context, queue string) (messages, consumers int, err error) {
	b.inspectMu.Lock()
	defer b.inspectMu.Unlock()
	if b.inspectCh == nil || b.inspectCh.IsClosed() {
		if b.inspectCh, err = b.Channel(ctx); err != nil {
			return 0, 0, err
		}
	}
	ch := b.inspectCh
	type answer struct {
		q   amqp.Queue
		err error
	}
	done := make(chan answer, 1)
	go func() {
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		done <- answer{q, err}
	}()
	select {
	case a := <-done:
		if a.err != nil {
			return 0, 0, fmt.Errorf("amqpbus: inspect %s: %w", queue, a.err)
		}
		return a.q.Messages, a.q.Consumers, nil
	case <-ctx.Done():
		b.inspectCh = nil
		go func() { <-done; ch.Close() }()
		return 0, 0, fmt.Errorf("amqpbus: inspect %s: %w", queue, ctx.Err())
	}
}
