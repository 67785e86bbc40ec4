package amqpbus_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/sagatest"
)

// One vhost for the whole package; every test uses queues of its own.
var (
	servers = sagatest.DefaultServers()
	vhost   sagatest.SharedVhost
)

func TestMain(m *testing.M) { sagatest.MainVhost(m, &vhost) }

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newBus dials the test vhost; the bus is closed at cleanup.
func newBus(t *testing.T, cfg amqpbus.Config) *amqpbus.Bus {
	t.Helper()
	return newBusLog(t, cfg, zerolog.Nop())
}

// logBuffer collects log lines from several goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newBusLog is newBus with a logger.
func newBusLog(t *testing.T, cfg amqpbus.Config, log zerolog.Logger) *amqpbus.Bus {
	t.Helper()
	cfg.URL = vhost.URL(t)
	if cfg.Name == "" {
		cfg.Name = "sagaflow-test " + t.Name()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	b, err := amqpbus.Dial(ctx, cfg, log)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

// declareQueue declares a uniquely named queue through the bus (so it is
// re-declared after a reconnect), with extra topology declared first.
func declareQueue(t *testing.T, b *amqpbus.Bus, o amqpbus.QueueOptions, first ...amqpbus.Topology) string {
	t.Helper()
	name := sagatest.Name("q_")
	top := amqpbus.Topology{}.Merge(first...).Merge(amqpbus.Topology{Queues: []amqpbus.Queue{{Name: name, Args: o.Args()}}})
	if err := b.Declare(testContext(t), top); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	return name
}

// requestQueue declares a uniquely named queue bound to the command
// exchange by a type of its own, and returns both: where requests and
// commands of that type arrive.
func requestQueue(t *testing.T, b *amqpbus.Bus) (queue, typ string) {
	t.Helper()
	queue, typ = sagatest.Name("q_"), sagatest.Name("test.req_")
	top := amqpbus.SagaTopology(amqpbus.QueueOptions{}).Merge(amqpbus.CommandQueue(queue, []string{typ}, amqpbus.QueueOptions{}))
	if err := b.Declare(testContext(t), top); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	return queue, typ
}

// rawChannel opens a plain channel on the bus's connection, closed at
// cleanup.
func rawChannel(t *testing.T, b *amqpbus.Bus) *amqp.Channel {
	t.Helper()
	ch, err := b.Channel(testContext(t))
	if err != nil {
		t.Fatalf("Channel: %v", err)
	}
	t.Cleanup(func() { _ = ch.Close() })
	return ch
}

// queueDepth is the number of ready messages of a queue (passive declare).
func queueDepth(t *testing.T, b *amqpbus.Bus, name string) int {
	t.Helper()
	ch, err := b.Channel(testContext(t))
	if err != nil {
		t.Fatalf("Channel: %v", err)
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(name,
		true,  // durable
		false, // auto-delete
		false, // exclusive
		false, // no-wait
		nil)
	if err != nil {
		t.Fatalf("passive declare %s: %v", name, err)
	}
	return q.Messages
}

// startConsumer runs Consume until the returned stop is called (or the
// test ends). stop returns once Consume has returned, so every delivery is
// acked or back in the queue by then.
func startConsumer(t *testing.T, b *amqpbus.Bus, cfg amqpbus.ConsumerConfig, h amqpbus.Handler) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Consume(ctx, cfg, h) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Consume(%s) = %v, want nil after its context was cancelled", cfg.Queue, err)
				}
			case <-time.After(20 * time.Second):
				t.Errorf("Consume(%s) did not return after its context was cancelled", cfg.Queue)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// collect is a handler that passes copies of deliveries to a channel and
// acks them.
func collect(out chan<- amqp.Delivery) amqpbus.Handler {
	return func(_ context.Context, d *amqp.Delivery) error {
		out <- *d
		return nil
	}
}

func receive(t *testing.T, from <-chan amqp.Delivery, timeout time.Duration, what string) amqp.Delivery {
	t.Helper()
	select {
	case d := <-from:
		return d
	case <-time.After(timeout):
		t.Fatalf("no delivery of %s within %v", what, timeout)
		return amqp.Delivery{}
	}
}

// waitFor polls cond until it holds, for what the broker does
// asynchronously.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(time.Millisecond)
	}
}

func publish(t *testing.T, b *amqpbus.Bus, msgs ...saga.Message) {
	t.Helper()
	ok, err := b.Publish(testContext(t), msgs)
	if err != nil || len(ok) != len(msgs) {
		t.Fatalf("Publish = %d of %d confirmed, %v", len(ok), len(msgs), err)
	}
}

// props are the AMQP properties a message must keep on its way.
type props struct {
	MessageID, CorrelationID, ReplyTo, Type, ContentType, Expiration string
	Priority, DeliveryMode                                           uint8
	Timestamp                                                        time.Time
	Headers                                                          map[string]any
	Body                                                             string
}

func propsOf(d *amqp.Delivery) props {
	return props{
		MessageID: d.MessageId, CorrelationID: d.CorrelationId, ReplyTo: d.ReplyTo, Type: d.Type,
		ContentType: d.ContentType, Expiration: d.Expiration, Priority: d.Priority,
		DeliveryMode: d.DeliveryMode, Timestamp: d.Timestamp, Headers: map[string]any(d.Headers), Body: string(d.Body),
	}
}

func TestPublishBatchConsumedOnceWithProperties(t *testing.T) {
	t.Parallel()
	b := newBus(t, amqpbus.Config{})
	q := declareQueue(t, b, amqpbus.QueueOptions{})
	const n = 500
	ts := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	msgs := make([]saga.Message, n)
	want := map[string]props{}
	for i := range msgs {
		m := saga.Message{
			Kind: saga.MessageReply, Key: q, MessageID: fmt.Sprintf("m-%03d", i), CorrelationID: fmt.Sprintf("c-%03d", i),
			Type: "test.thing", Priority: saga.Priority(i % 10),
			Timestamp: ts.Add(time.Duration(i) * time.Second),
			Headers:   map[string]string{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "i": strconv.Itoa(i)},
			Body:      fmt.Appendf(nil, `{"i":%d}`, i),
		}
		p := props{
			MessageID: m.MessageID, CorrelationID: m.CorrelationID, Type: m.Type,
			ContentType: "application/json", Priority: uint8(m.Priority), DeliveryMode: amqp.Persistent,
			Timestamp: m.Timestamp, Headers: map[string]any{"traceparent": m.Headers["traceparent"], "i": strconv.Itoa(i)},
			Body: string(m.Body),
		}
		switch i % 4 {
		case 1:
			m.TTL, p.Expiration = 90*time.Second, "90000"
		case 2:
			m.Transient, p.DeliveryMode = true, amqp.Transient
		case 3:
			m.Headers, p.Headers = nil, nil
		}
		msgs[i], want[m.MessageID] = m, p
	}

	confirmed, err := b.Publish(testContext(t), msgs)
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if diff := cmp.Diff(msgs, confirmed, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("Publish confirmed (-want +got):\n%s", diff)
	}

	var (
		mu    sync.Mutex
		count = map[string]int{}
		got   = map[string]props{}
		all   = make(chan struct{})
	)
	stop := startConsumer(t, b, amqpbus.ConsumerConfig{Queue: q, Prefetch: 100, Concurrency: 8},
		func(_ context.Context, d *amqp.Delivery) error {
			mu.Lock()
			defer mu.Unlock()
			count[d.MessageId]++
			got[d.MessageId] = propsOf(d)
			if len(got) == n && count[d.MessageId] == 1 {
				close(all)
			}
			return nil
		})
	select {
	case <-all:
	case <-time.After(30 * time.Second):
		mu.Lock()
		t.Fatalf("received %d of %d messages in 30s", len(got), n)
	}
	stop()

	mu.Lock()
	defer mu.Unlock()
	for id, c := range count {
		if c != 1 {
			t.Errorf("message %s delivered %d times, want once", id, c)
		}
	}
	if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("delivered properties (-want +got):\n%s", diff)
	}
	// Every delivery was acked: nothing went back to the queue when the
	// consumer's channel closed.
	if d := queueDepth(t, b, q); d != 0 {
		t.Errorf("queue holds %d messages after consuming all, want 0", d)
	}
}

func TestConsumeNilAcks(t *testing.T) {
	t.Parallel()
	b := newBus(t, amqpbus.Config{})
	q := declareQueue(t, b, amqpbus.QueueOptions{DeadLetter: true}, amqpbus.SagaTopology(amqpbus.QueueOptions{}))
	const n = 20
	var msgs []saga.Message
	for i := range n {
		msgs = append(msgs, saga.Message{Kind: saga.MessageReply, Key: q, MessageID: strconv.Itoa(i), Body: []byte("x")})
	}
	publish(t, b, msgs...)
	if d := queueDepth(t, b, q); d != n {
		t.Fatalf("queue holds %d messages before consuming, want %d", d, n)
	}
	got := make(chan amqp.Delivery, 2*n)
	stop := startConsumer(t, b, amqpbus.ConsumerConfig{Queue: q, Prefetch: 5}, collect(got))
	for range n {
		if d := receive(t, got, 10*time.Second, "a message"); d.Redelivered {
			t.Errorf("message %s redelivered", d.MessageId)
		}
	}
	stop()
	if len(got) != 0 {
		t.Errorf("%d more deliveries than messages", len(got))
	}
	if d := queueDepth(t, b, q); d != 0 {
		t.Errorf("queue holds %d messages after the handler returned nil for all, want 0 (acked)", d)
	}
}

// deadLetterTap declares a queue of the test's own bound to saga.dlx, a
// fanout: it receives a copy of every dead letter of the vhost, so parallel
// tests do not compete for saga.dead.
func deadLetterTap(t *testing.T, b *amqpbus.Bus) string {
	t.Helper()
	name := sagatest.Name("tap_")
	tap := amqpbus.Topology{
		Queues:   []amqpbus.Queue{{Name: name, Args: amqpbus.QueueOptions{}.Args()}},
		Bindings: []amqpbus.Binding{{Source: amqpbus.DeadLetterExchange, Queue: name}},
	}
	if err := b.Declare(testContext(t), amqpbus.SagaTopology(amqpbus.QueueOptions{}).Merge(tap)); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	return name
}

// getMessage polls queue until it yields message id, acking what it takes.
func getMessage(t *testing.T, b *amqpbus.Bus, queue, id string) amqp.Delivery {
	t.Helper()
	return getMessages(t, b, queue, id)[id]
}

// getMessages polls queue until it yielded every message id, acking what
// it takes, and returns them by id.
func getMessages(t *testing.T, b *amqpbus.Bus, queue string, ids ...string) map[string]amqp.Delivery {
	t.Helper()
	ch, err := b.Channel(testContext(t))
	if err != nil {
		t.Fatalf("Channel: %v", err)
	}
	defer ch.Close()
	out := map[string]amqp.Delivery{}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(out) < len(want) && time.Now().Before(deadline) {
		d, ok, err := ch.Get(queue, true /* auto-ack */)
		if err != nil {
			t.Fatalf("get from %s: %v", queue, err)
		}
		if !ok {
			time.Sleep(5 * time.Millisecond) // polling: the copy is on its way
			continue
		}
		if want[d.MessageId] {
			out[d.MessageId] = d
		}
	}
	for _, id := range ids {
		if _, ok := out[id]; !ok {
			t.Fatalf("no message %s in %s within 10s", id, queue)
		}
	}
	return out
}

func TestConsumePoisonDeadLetters(t *testing.T) {
	t.Parallel()
	b := newBus(t, amqpbus.Config{})
	var (
		mu  sync.Mutex
		ids = map[string]bool{}
	)
	t.Run("cases", func(t *testing.T) {
		for _, tc := range []struct {
			name       string
			err        error
			wantReason string
		}{
			{"Poison", amqpbus.Poison(errors.New("cannot parse order 42")), "cannot parse order 42"},
			{"wraps ErrMalformed", fmt.Errorf("decode reply: %w", saga.ErrMalformed), "decode reply: saga: malformed message"},
			{"wraps ErrUnknownVersion", fmt.Errorf("%w: v=7", saga.ErrUnknownVersion), "saga: unknown schema version: v=7"},
			{"wraps ErrUnknownCommand", fmt.Errorf("%w: %q", saga.ErrUnknownCommand, "x.y"), `saga: unknown command: "x.y"`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				tap := deadLetterTap(t, b)
				q := declareQueue(t, b, amqpbus.QueueOptions{DeadLetter: true})
				id := sagatest.Name("poison_")
				mu.Lock()
				ids[id] = true
				mu.Unlock()
				publish(t, b, saga.Message{
					Kind: saga.MessageReply, Key: q, MessageID: id, CorrelationID: "corr-" + id, Type: "test.poison",
					Headers: map[string]string{"traceparent": "tp-1"}, Body: []byte(`{"not":"valid"}`),
				})
				var calls atomic.Int32
				stop := startConsumer(t, b, amqpbus.ConsumerConfig{Queue: q, RequeueDelay: 50 * time.Millisecond},
					func(context.Context, *amqp.Delivery) error {
						calls.Add(1)
						return tc.err
					})

				d := getMessage(t, b, tap, id)
				stop()
				got := propsOf(&d)
				want := props{
					MessageID: id, CorrelationID: "corr-" + id, Type: "test.poison",
					ContentType: "application/json", DeliveryMode: amqp.Persistent, Body: `{"not":"valid"}`,
					Headers: map[string]any{
						"traceparent": "tp-1", "x-sagaflow-reason": tc.wantReason, "x-sagaflow-queue": q,
						"x-sagaflow-exchange": "", "x-sagaflow-routing-key": q, "x-sagaflow-deliveries": int32(1),
					},
				}
				ignoreDeadAt := cmpopts.IgnoreMapEntries(func(k string, _ any) bool { return k == "x-sagaflow-dead-at" })
				if diff := cmp.Diff(want, got, ignoreDeadAt, cmpopts.IgnoreFields(props{}, "Timestamp")); diff != "" {
					t.Errorf("dead letter (-want +got):\n%s", diff)
				}
				if reason, _ := d.Headers["x-sagaflow-reason"].(string); !strings.Contains(reason, tc.err.Error()) {
					t.Errorf("x-sagaflow-reason = %q, want it to contain the error %q", reason, tc.err)
				}
				if at, _ := d.Headers["x-sagaflow-dead-at"].(string); at == "" {
					t.Errorf("dead letter has no x-sagaflow-dead-at header")
				}
				// Acked, not requeued: handled once, and gone from the queue.
				if n := calls.Load(); n != 1 {
					t.Errorf("handler called %d times, want once", n)
				}
				if n := queueDepth(t, b, q); n != 0 {
					t.Errorf("queue holds %d messages after dead-lettering, want 0", n)
				}
			})
		}
	})

	// Every case left exactly one copy in saga.dead, the bus's own (the
	// broker's dead-lettering of a rejected delivery would add a second,
	// with x-death). This test is the only one that dead-letters.
	ch := rawChannel(t, b)
	copies := map[string]int{}
	for {
		d, ok, err := ch.Get(amqpbus.DeadLetterQueue, false /* auto-ack */)
		if err != nil {
			t.Fatalf("get from %s: %v", amqpbus.DeadLetterQueue, err)
		}
		if !ok {
			break
		}
		if !ids[d.MessageId] {
			continue // not ours: left unacked, back in the queue when ch closes
		}
		_ = d.Ack(false)
		copies[d.MessageId]++
		if _, ok := d.Headers["x-sagaflow-reason"]; !ok {
			t.Errorf("copy of %s in %s without x-sagaflow-reason (x-death: %v)", d.MessageId, amqpbus.DeadLetterQueue, d.Headers["x-death"])
		}
	}
	for id := range ids {
		if copies[id] != 1 {
			t.Errorf("%s holds %d copies of %s, want 1", amqpbus.DeadLetterQueue, copies[id], id)
		}
	}
}

func TestConsumeTransientErrorRequeues(t *testing.T) {
	t.Parallel()
	b := newBus(t, amqpbus.Config{})
	q := declareQueue(t, b, amqpbus.QueueOptions{})
	const delay = 50 * time.Millisecond
	type call struct {
		at          time.Time
		redelivered bool
	}
	calls := make(chan call, 10)
	var n atomic.Int32
	unavailable := errors.New("database unavailable")
	stop := startConsumer(t, b, amqpbus.ConsumerConfig{Queue: q, RequeueDelay: delay,
		Transient: func(err error) bool { return errors.Is(err, unavailable) }},
		func(_ context.Context, d *amqp.Delivery) error {
			calls <- call{time.Now(), d.Redelivered}
			if n.Add(1) == 1 {
				return unavailable
			}
			return nil
		})
	publish(t, b, saga.Message{Kind: saga.MessageReply, Key: q, MessageID: "m-1", Body: []byte("x")})

	var got []call
	for range 2 {
		select {
		case c := <-calls:
			got = append(got, c)
		case <-time.After(10 * time.Second):
			t.Fatalf("message delivered %d times within 10s, want twice", len(got))
		}
	}
	stop()
	if len(calls) != 0 {
		t.Errorf("handler called %d more times after succeeding", len(calls))
	}
	if got[0].redelivered || !got[1].redelivered {
		t.Errorf("redelivered flags = %v, %v; want false, true", got[0].redelivered, got[1].redelivered)
	}
	if gap := got[1].at.Sub(got[0].at); gap < delay {
		t.Errorf("redelivered %v after the failure, want at least the RequeueDelay %v", gap, delay)
	}
	if d := queueDepth(t, b, q); d != 0 {
		t.Errorf("queue holds %d messages, want 0", d)
	}
}

// TestConsumeFailingMessageIsRetriedAtTheTailThenDeadLettered: a message
// whose handler keeps failing (neither poison nor transient) goes to the
// back of its queue, counted, so the message behind it is handled; after
// MaxDeliveries failures it is dead-lettered with the reason, its source
// queue and the count.
func TestConsumeFailingMessageIsRetriedAtTheTailThenDeadLettered(t *testing.T) {
	t.Parallel()
	b := newBus(t, amqpbus.Config{})
	tap := deadLetterTap(t, b)
	q := declareQueue(t, b, amqpbus.QueueOptions{DeadLetter: true})
	bad, good := sagatest.Name("bad_"), sagatest.Name("good_")
	var badCalls atomic.Int32
	handled := make(chan amqp.Delivery, 10)
	stop := startConsumer(t, b, amqpbus.ConsumerConfig{Queue: q, Prefetch: 1, Concurrency: 1, MaxDeliveries: 3, RequeueDelay: 10 * time.Millisecond},
		func(_ context.Context, d *amqp.Delivery) error {
			if d.MessageId == bad {
				badCalls.Add(1)
				return errors.New(`insert notification: invalid byte sequence for encoding "UTF8": 0x00`)
			}
			handled <- *d
			return nil
		})
	defer stop()
	publish(t, b, saga.Message{Kind: saga.MessageReply, Key: q, MessageID: bad, Body: []byte("x")},
		saga.Message{Kind: saga.MessageReply, Key: q, MessageID: good, Body: []byte("y")})
	if d := receive(t, handled, 10*time.Second, "the message behind the failing one"); d.MessageId != good {
		t.Errorf("handled %s, want %s", d.MessageId, good)
	}
	d := getMessage(t, b, tap, bad)
	if n := badCalls.Load(); n != 3 {
		t.Errorf("the failing message was handled %d times, want MaxDeliveries = 3", n)
	}
	reason, _ := d.Headers["x-sagaflow-reason"].(string)
	if !strings.Contains(reason, "failed 3 deliveries") || !strings.Contains(reason, "0x00") {
		t.Errorf("x-sagaflow-reason = %q, want the count and the handler's error", reason)
	}
	if got, _ := d.Headers["x-sagaflow-queue"].(string); got != q {
		t.Errorf("x-sagaflow-queue = %q, want %q", got, q)
	}
	if got := d.Headers["x-sagaflow-deliveries"]; got != int32(3) {
		t.Errorf("x-sagaflow-deliveries = %v, want 3", got)
	}
	waitFor(t, 10*time.Second, "the queue to be empty", func() bool { return queueDepth(t, b, q) == 0 })
}

// TestConsumeBatchIsolatesAFailingMessage: a batch that fails is retried
// message by message; the good ones of the batch are handled, the bad one
// alone is counted and, in the end, dead-lettered; a poison one goes at
// once.
func TestConsumeBatchIsolatesAFailingMessage(t *testing.T) {
	t.Parallel()
	b := newBus(t, amqpbus.Config{})
	tap := deadLetterTap(t, b)
	q := declareQueue(t, b, amqpbus.QueueOptions{DeadLetter: true})
	bad, poison := sagatest.Name("bad_"), sagatest.Name("poison_")
	goods := []string{sagatest.Name("good_"), sagatest.Name("good_"), sagatest.Name("good_")}
	var msgs []saga.Message
	for _, id := range []string{goods[0], bad, goods[1], poison, goods[2]} {
		msgs = append(msgs, saga.Message{Kind: saga.MessageReply, Key: q, MessageID: id, Body: []byte(id)})
	}
	publish(t, b, msgs...) // before the consumer: one batch
	var (
		mu      sync.Mutex
		done    = map[string]int{}
		batches []int
	)
	ctx, cancel := context.WithCancel(context.Background())
	consumed := make(chan error, 1)
	go func() {
		consumed <- b.ConsumeBatch(ctx, amqpbus.ConsumerConfig{Queue: q, Prefetch: 16, MaxDeliveries: 2, RequeueDelay: 10 * time.Millisecond},
			func(_ context.Context, ds []*amqp.Delivery) error {
				mu.Lock()
				defer mu.Unlock()
				batches = append(batches, len(ds))
				for _, d := range ds {
					switch d.MessageId {
					case bad:
						return errors.New("row refused")
					case poison:
						return amqpbus.Poison(errors.New("not an event"))
					}
				}
				for _, d := range ds {
					done[d.MessageId]++
				}
				return nil
			})
	}()
	defer func() { cancel(); <-consumed }()
	dead := getMessages(t, b, tap, bad, poison)
	if got := dead[poison].Headers["x-sagaflow-deliveries"]; got != int32(1) {
		t.Errorf("poison dead-lettered after %v deliveries, want 1 (at once)", got)
	}
	if got := dead[bad].Headers["x-sagaflow-deliveries"]; got != int32(2) {
		t.Errorf("failing message dead-lettered after %v deliveries, want MaxDeliveries = 2", got)
	}
	waitFor(t, 10*time.Second, "the good messages to be handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return done[goods[0]] > 0 && done[goods[1]] > 0 && done[goods[2]] > 0
	})
	mu.Lock()
	defer mu.Unlock()
	for _, id := range goods {
		if done[id] != 1 {
			t.Errorf("good message handled %d times, want once", done[id])
		}
	}
	if batches[0] != len(msgs) {
		t.Logf("first batch held %d of %d messages", batches[0], len(msgs))
	}
	if n := queueDepth(t, b, q); n != 0 {
		t.Errorf("queue holds %d messages, want 0", n)
	}
}

// startResponder answers every request of queue with "echo:" + its body,
// to d.ReplyTo with d.CorrelationId, and records the requests.
func startResponder(t *testing.T, b *amqpbus.Bus, queue string, requests chan<- amqp.Delivery) {
	t.Helper()
	startConsumer(t, b, amqpbus.ConsumerConfig{Queue: queue, Prefetch: 16, RequeueDelay: 50 * time.Millisecond},
		func(ctx context.Context, d *amqp.Delivery) error {
			if requests != nil {
				requests <- *d
			}
			_, err := b.Publish(ctx, []saga.Message{{
				Kind: saga.MessageReply, Key: d.ReplyTo, MessageID: "reply-" + d.MessageId,
				CorrelationID: d.CorrelationId, Type: d.Type + ".reply", Transient: true,
				Body: append([]byte("echo:"), d.Body...),
			}})
			return err
		})
}

func TestCallRoundTrip(t *testing.T) {
	t.Parallel()
	b := newBus(t, amqpbus.Config{})
	q, typ := requestQueue(t, b)
	const n = 20
	requests := make(chan amqp.Delivery, n)
	startResponder(t, b, q, requests)

	const timeout = 10 * time.Second
	type result struct {
		corr, body string
		err        error
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			m := saga.Message{Type: typ, Body: fmt.Appendf(nil, "req-%d", i)}
			if i%2 == 0 {
				m.CorrelationID = fmt.Sprintf("corr-%d", i) // else Call makes one up
			}
			d, err := b.Call(ctx, m)
			if err != nil {
				results[i].err = err
				return
			}
			results[i] = result{corr: d.CorrelationId, body: string(d.Body)}
		})
	}
	wg.Wait()
	for i, r := range results {
		if r.err != nil {
			t.Errorf("Call %d: %v", i, r.err)
			continue
		}
		if want := fmt.Sprintf("echo:req-%d", i); r.body != want {
			t.Errorf("Call %d got reply %q, want %q", i, r.body, want)
		}
		if i%2 == 0 && r.corr != fmt.Sprintf("corr-%d", i) {
			t.Errorf("Call %d got correlation id %q, want corr-%d", i, r.corr, i)
		}
		if r.corr == "" {
			t.Errorf("Call %d: reply without correlation id", i)
		}
	}
	// The requests: transient, answerable over direct reply-to, expiring
	// with the caller's deadline.
	close(requests)
	for d := range requests {
		if d.DeliveryMode != amqp.Transient {
			t.Errorf("request %s delivery mode %d, want transient", d.CorrelationId, d.DeliveryMode)
		}
		if !strings.HasPrefix(d.ReplyTo, "amq.rabbitmq.reply-to") {
			t.Errorf("request %s reply-to %q, want direct reply-to", d.CorrelationId, d.ReplyTo)
		}
		if ms, err := strconv.Atoi(d.Expiration); err != nil || ms <= 0 || ms > int(timeout.Milliseconds()) {
			t.Errorf("request %s expiration %q, want 1..%d ms", d.CorrelationId, d.Expiration, timeout.Milliseconds())
		}
		if d.MessageId != d.CorrelationId {
			t.Errorf("request message id %q, want its correlation id %q", d.MessageId, d.CorrelationId)
		}
	}
}

func TestCallNoReply(t *testing.T) {
	t.Parallel()
	b := newBus(t, amqpbus.Config{})
	const timeout = 300 * time.Millisecond
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// Nobody consumes this type: the request goes nowhere (the command
	// exchange's alternate exchange takes it).
	d, err := b.Call(ctx, saga.Message{Type: sagatest.Name("query.lost_"), Body: []byte("?")})
	elapsed := time.Since(start)
	if d != nil || !errors.Is(err, amqpbus.ErrNoReply) {
		t.Fatalf("Call = %v, %v; want an error wrapping ErrNoReply", d, err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Call error %v does not wrap context.DeadlineExceeded", err)
	}
	if elapsed < timeout || elapsed > timeout+2*time.Second {
		t.Errorf("Call returned after %v, want about the context's %v", elapsed, timeout)
	}
}

func TestPriorityQueueDeliversHighFirst(t *testing.T) {
	t.Parallel()
	b := newBus(t, amqpbus.Config{})
	typ := sagatest.Name("test.cmd_")
	q := sagatest.Name("q_")
	if err := b.Declare(testContext(t), amqpbus.SagaTopology(amqpbus.QueueOptions{}).
		Merge(amqpbus.CommandQueue(q, []string{typ}, amqpbus.QueueOptions{}))); err != nil {
		t.Fatalf("Declare: %v", err)
	}
	var msgs, wantOrder []string
	var batch []saga.Message
	for i := range 50 {
		id := fmt.Sprintf("low-%02d", i)
		batch = append(batch, saga.Message{Kind: saga.MessageCommand, Type: typ, MessageID: id, Priority: 1, Body: []byte(id)})
		msgs = append(msgs, id)
	}
	for i := range 5 {
		id := fmt.Sprintf("high-%d", i)
		batch = append(batch, saga.Message{Kind: saga.MessageCommand, Type: typ, MessageID: id, Priority: 9, Body: []byte(id)})
		wantOrder = append(wantOrder, id)
	}
	wantOrder = append(wantOrder, msgs...)
	publish(t, b, batch...)
	if d := queueDepth(t, b, q); d != len(batch) {
		t.Fatalf("queue holds %d messages before consuming, want %d", d, len(batch))
	}

	got := make(chan amqp.Delivery, len(batch))
	stop := startConsumer(t, b, amqpbus.ConsumerConfig{Queue: q, Prefetch: 1, Concurrency: 1}, collect(got))
	var order []string
	for range batch {
		order = append(order, receive(t, got, 10*time.Second, "a command").MessageId)
	}
	stop()
	if diff := cmp.Diff(wantOrder, order); diff != "" {
		t.Errorf("consumption order (-want +got):\n%s", diff)
	}
}

func TestPublishToMissingExchange(t *testing.T) {
	t.Parallel()
	b := newBus(t, amqpbus.Config{PublishChannels: 1, EventExchange: sagatest.Name("missing_")})
	q := declareQueue(t, b, amqpbus.QueueOptions{})
	ctx := testContext(t)
	var bad []saga.Message
	for i := range 3 {
		bad = append(bad, saga.Message{Kind: saga.MessageEvent, Type: "k", MessageID: strconv.Itoa(i), Body: []byte("x")})
	}
	ok, err := b.Publish(ctx, bad)
	if err == nil || len(ok) != 0 {
		t.Errorf("Publish to a missing exchange = %d confirmed, %v; want none and an error", len(ok), err)
	}
	// The broken channel is not reused.
	got := make(chan amqp.Delivery, 1)
	startConsumer(t, b, amqpbus.ConsumerConfig{Queue: q}, collect(got))
	publish(t, b, saga.Message{Kind: saga.MessageReply, Key: q, MessageID: "after", Body: []byte("x")})
	if d := receive(t, got, 10*time.Second, "the message published after the failure"); d.MessageId != "after" {
		t.Errorf("received %q, want %q", d.MessageId, "after")
	}
}

// TestReconnect closes every connection of the vhost, so it does not run in
// parallel (parallel tests start after it).
func TestReconnect(t *testing.T) {
	var logs logBuffer
	b := newBusLog(t, amqpbus.Config{ReconnectMin: 200 * time.Millisecond, ReconnectMax: time.Second}, zerolog.New(&logs))
	ctx := testContext(t)
	q := declareQueue(t, b, amqpbus.QueueOptions{})
	gone := declareQueue(t, b, amqpbus.QueueOptions{DeadLetter: true}, amqpbus.SagaTopology(amqpbus.QueueOptions{}))
	rpcQ, rpcType := requestQueue(t, b)

	got := make(chan amqp.Delivery, 16)
	startConsumer(t, b, amqpbus.ConsumerConfig{Queue: q, RequeueDelay: 50 * time.Millisecond}, collect(got))
	startResponder(t, b, rpcQ, nil)
	call := func(what string) {
		t.Helper()
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		d, err := b.Call(cctx, saga.Message{Type: rpcType, Body: []byte(what)})
		if err != nil {
			t.Fatalf("Call %s: %v", what, err)
		}
		if string(d.Body) != "echo:"+what {
			t.Errorf("Call %s got %q", what, d.Body)
		}
	}
	publish(t, b, saga.Message{Kind: saga.MessageReply, Key: q, MessageID: "before", Body: []byte("x")})
	if d := receive(t, got, 10*time.Second, "the message before the outage"); d.MessageId != "before" {
		t.Fatalf("received %q, want before", d.MessageId)
	}
	call("before")
	// Deleted behind the bus's back: only the re-declaration on reconnect
	// brings it back.
	if _, err := rawChannel(t, b).QueueDelete(gone, false, false, false); err != nil {
		t.Fatalf("delete queue: %v", err)
	}

	ctl := make(chan error, 1)
	go func() {
		_, err := servers.CloseConnections(testContext(t), vhost.Name)
		ctl <- err
	}()
	// Err() reports the outage only while it lasts (a few hundred ms); the
	// log says it for good.
	waitFor(t, 30*time.Second, "the bus to log the lost connection and its reconnect", func() bool {
		return strings.Contains(logs.String(), "rabbitmq: reconnected")
	})
	if !strings.Contains(logs.String(), `"error":"connection lost`) {
		t.Errorf("the bus logged no lost connection before reconnecting:\n%s", logs.String())
	}
	waitFor(t, 10*time.Second, "the bus to report itself connected (Err() == nil)", func() bool { return b.Err() == nil })
	if err := <-ctl; err != nil {
		t.Fatal(err)
	}

	// Publishing works again and the running consumer resumed.
	publish(t, b, saga.Message{Kind: saga.MessageReply, Key: q, MessageID: "after", Body: []byte("x")})
	if d := receive(t, got, 10*time.Second, "the message after the reconnect"); d.MessageId != "after" {
		t.Errorf("received %q, want after", d.MessageId)
	}
	// The topology was declared again.
	if d := queueDepth(t, b, gone); d != 0 {
		t.Errorf("re-declared queue holds %d messages, want 0", d)
	}
	publish(t, b, saga.Message{Kind: saga.MessageReply, Key: gone, MessageID: "routed", Body: []byte("x")})
	waitFor(t, 5*time.Second, "the message in the re-declared queue", func() bool { return queueDepth(t, b, gone) == 1 })
	// RPC opens a new reply consumer.
	call("after")
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

func TestDialWrongPortFailsFast(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	url := fmt.Sprintf("amqp://guest:s3cret@127.0.0.1:%d/", port)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	b, err := amqpbus.Dial(ctx, amqpbus.Config{URL: url}, zerolog.Nop())
	elapsed := time.Since(start)
	if err == nil {
		b.Close()
		t.Fatalf("Dial to a closed port succeeded")
	}
	if elapsed > 3*time.Second {
		t.Errorf("Dial took %v to fail, want it to fail fast", elapsed)
	}
	msg := err.Error()
	for _, want := range []string{"amqpbus: connect", fmt.Sprintf("127.0.0.1:%d", port), "connection refused"} {
		if !strings.Contains(msg, want) {
			t.Errorf("Dial error %q does not mention %q", msg, want)
		}
	}
	if strings.Contains(msg, "s3cret") {
		t.Errorf("Dial error %q leaks the password", msg)
	}
}

// TestDialSilentServer dials a port that accepts connections but never
// speaks AMQP (a wrong service, a stuck proxy): Dial must give up within
// its context and DialTimeout instead of hanging in the handshake.
func TestDialSilentServer(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	release := func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}
	defer release()

	const ctxTimeout, dialTimeout = time.Second, 500 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), ctxTimeout)
	defer cancel()
	url := fmt.Sprintf("amqp://guest:guest@%s/", ln.Addr())
	type result struct {
		b   *amqpbus.Bus
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		b, err := amqpbus.Dial(ctx, amqpbus.Config{URL: url, DialTimeout: dialTimeout}, zerolog.Nop())
		done <- result{b, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(ctxTimeout + 5*time.Second):
		t.Errorf("Dial to a server that never answers still blocks after %v (context %v, DialTimeout %v)",
			time.Since(start), ctxTimeout, dialTimeout)
		release() // unblock it, so that it does not leak
		r = <-done
	}
	if r.err == nil {
		r.b.Close()
		t.Fatalf("Dial to a server that never answers succeeded")
	}
}

func TestCloseIdempotent(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	b, err := amqpbus.Dial(ctx, amqpbus.Config{URL: vhost.URL(t)}, zerolog.Nop())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	if err := b.Err(); err != nil {
		t.Fatalf("Err() on a fresh bus = %v, want nil", err)
	}
	for i := range 3 {
		if err := b.Close(); err != nil {
			t.Errorf("Close #%d = %v, want nil", i+1, err)
		}
	}
	if err := b.Err(); !errors.Is(err, amqpbus.ErrClosed) {
		t.Errorf("Err() after Close = %v, want ErrClosed", err)
	}
	if _, err := b.Publish(ctx, []saga.Message{{Kind: saga.MessageReply, Key: "x", Body: []byte("x")}}); !errors.Is(err, amqpbus.ErrClosed) {
		t.Errorf("Publish after Close = %v, want ErrClosed", err)
	}
	if _, err := b.Channel(ctx); !errors.Is(err, amqpbus.ErrClosed) {
		t.Errorf("Channel after Close = %v, want ErrClosed", err)
	}
	if err := b.Declare(ctx, amqpbus.Topology{}); !errors.Is(err, amqpbus.ErrClosed) {
		t.Errorf("Declare after Close = %v, want ErrClosed", err)
	}
	if _, err := b.Call(ctx, saga.Message{Kind: saga.MessageReply, Key: "x"}); !errors.Is(err, amqpbus.ErrClosed) {
		t.Errorf("Call after Close = %v, want ErrClosed", err)
	}
}

// TestDeclareKeepsAnExistingQueueWithOtherArguments: a queue an earlier
// release declared without an argument this one adds (saga.dead's bound)
// is kept, not a failure to start; other queues of the topology are
// declared regardless.
func TestDeclareKeepsAnExistingQueueWithOtherArguments(t *testing.T) {
	t.Parallel()
	b := newBus(t, amqpbus.Config{})
	old, other := sagatest.Name("dead_"), sagatest.Name("q_")
	if _, err := rawChannel(t, b).QueueDeclare(old, true, false, false, false, amqpbus.QueueOptions{}.Args()); err != nil {
		t.Fatal(err)
	}
	bounded := amqpbus.QueueOptions{MaxLength: 10}.Args()
	strict := amqpbus.Topology{Queues: []amqpbus.Queue{{Name: old, Args: bounded}}}
	if err := b.Declare(testContext(t), strict); err == nil {
		t.Fatal("declaring an existing queue with other arguments succeeded without KeepExisting")
	}
	kept := amqpbus.Topology{Queues: []amqpbus.Queue{{Name: old, Args: bounded, KeepExisting: true}, {Name: other, Args: amqpbus.QueueOptions{}.Args()}}}
	if err := b.Declare(testContext(t), kept); err != nil {
		t.Fatalf("Declare with KeepExisting: %v", err)
	}
	if _, err := rawChannel(t, b).QueueDeclarePassive(other, true, false, false, false, nil); err != nil {
		t.Errorf("the queue after the kept one was not declared: %v", err)
	}
}

// TestPublishingMapsKindsToTheBroker: the engine's messages name no
// exchange, queue or reply address; the bus maps each kind.
func TestPublishingMapsKindsToTheBroker(t *testing.T) {
	b := newBus(t, amqpbus.Config{})
	for _, tc := range []struct {
		m                      saga.Message
		exchange, key, replyTo string
	}{
		{saga.Message{Kind: saga.MessageCommand, Type: "payment.charge"}, amqpbus.CommandExchange, "payment.charge", amqpbus.ReplyQueue},
		{saga.Message{Kind: saga.MessageRequest, Type: "inventory.get_product"}, amqpbus.CommandExchange, "inventory.get_product", ""},
		{saga.Message{Kind: saga.MessageEvent, Type: "order.completed"}, amqpbus.EventExchange, "order.completed", ""},
		{saga.Message{Kind: saga.MessageSignal, Type: "shipping.delivered"}, amqpbus.SignalExchange, "shipping.delivered", ""},
		{saga.Message{Kind: saga.MessageReply, Type: "payment.charge.reply", Key: "amq.rabbitmq.reply-to.x"}, "", "amq.rabbitmq.reply-to.x", ""},
	} {
		exchange, key, p := b.Publishing(&tc.m)
		if exchange != tc.exchange || key != tc.key || p.ReplyTo != tc.replyTo {
			t.Errorf("%s %s: exchange %q, key %q, reply_to %q; want %q, %q, %q",
				tc.m.Kind, tc.m.Type, exchange, key, p.ReplyTo, tc.exchange, tc.key, tc.replyTo)
		}
	}
}
