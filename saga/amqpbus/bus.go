// Package amqpbus is sagaflow's RabbitMQ transport: one supervised
// connection per process that reconnects with backoff and re-declares its
// topology, confirmed and pipelined publishing, consumers with manual acks
// that resume after a reconnect, RPC over direct reply-to, and dead-letters
// with a reason.
//
// Why not amqp091-go's own recovery: it is opt-in, marked experimental, and
// fails unconfirmed publishes when a channel resets. sagaflow needs neither
// surprise: publishes come from an outbox (a failed publish is simply
// retried), and consumers are idempotent. So the supervision is plain and
// lives here once: a lost connection is redialed, every consumer opens a new
// channel and consumes again, and publishers take a fresh channel.
package amqpbus

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
)

// Config configures a Bus. Zero fields take the documented defaults.
type Config struct {
	// URL of the broker (default "amqp://guest:guest@127.0.0.1:5672/").
	URL string
	// Name is shown as the connection name in the management UI.
	Name string
	// DialTimeout bounds one connection attempt (default 5s).
	DialTimeout time.Duration
	// ReconnectMin and ReconnectMax bound the backoff between reconnection
	// attempts (defaults 100ms and 5s).
	ReconnectMin, ReconnectMax time.Duration
	// Heartbeat detects a dead peer (default 10s).
	Heartbeat time.Duration
	// PublishChannels is how many confirm-mode channels publishing may use
	// concurrently (default 1: messages sent one after the other, by any
	// sender of the process, then reach the broker in that order; one
	// channel carries far more than a saga process publishes).
	PublishChannels int
	// OnDeadLetter, when set, is called after each message this process
	// dead-lettered (for metrics).
	OnDeadLetter func(queue, reason string)
	// OnReconnect, when set, is called each time a lost connection is
	// dialed again (for metrics).
	OnReconnect func()
	// CommandExchange receives commands and requests, routed by their type
	// (default CommandExchange, "saga.commands").
	CommandExchange string
	// EventExchange receives events, routed by their type (default
	// EventExchange, "saga.events").
	EventExchange string
	// ReplyQueue is where workers answer commands: every coordinator
	// consumes it (default ReplyQueue, "saga.replies").
	ReplyQueue string
}

func (c Config) withDefaults() Config {
	if c.URL == "" {
		c.URL = "amqp://guest:guest@127.0.0.1:5672/"
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.ReconnectMin <= 0 {
		c.ReconnectMin = 100 * time.Millisecond
	}
	if c.ReconnectMax <= 0 {
		c.ReconnectMax = 5 * time.Second
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 10 * time.Second
	}
	if c.PublishChannels <= 0 {
		c.PublishChannels = 1
	}
	if c.CommandExchange == "" {
		c.CommandExchange = CommandExchange
	}
	if c.EventExchange == "" {
		c.EventExchange = EventExchange
	}
	if c.ReplyQueue == "" {
		c.ReplyQueue = ReplyQueue
	}
	return c
}

// ErrClosed is returned after Close.
var ErrClosed = errors.New("amqpbus: closed")

// Bus is a supervised connection to RabbitMQ, safe for concurrent use.
type Bus struct {
	cfg Config
	log zerolog.Logger

	mu       sync.Mutex
	conn     *amqp.Connection
	ready    chan struct{} // closed while conn is usable
	lastErr  error
	topology []Topology
	closed   bool
	done     chan struct{}

	// pubs are the confirm-mode channels of the current connection, shared
	// by every publisher (amqp091 channels take concurrent publishes) and
	// closed only when broken or with their connection: closing a channel
	// nacks the confirms others still await on it.
	pubs    []*amqp.Channel
	pubNext int
	gen     uint64 // connection generation, bumped on every reconnect
	rpc     *rpcClient

	inspectMu sync.Mutex
	inspectCh *amqp.Channel // Inspect's channel, kept between calls
}

// Dial connects to the broker. The first connection must succeed within
// ctx: a wrong URL is an error at start, not a retry loop. Later losses are
// repaired in the background.
func Dial(ctx context.Context, cfg Config, log zerolog.Logger) (*Bus, error) {
	cfg = cfg.withDefaults()
	b := &Bus{cfg: cfg, log: log, ready: make(chan struct{}), done: make(chan struct{})}
	conn, err := b.dial()
	if err != nil {
		return nil, fmt.Errorf("amqpbus: connect %s: %w", redact(cfg.URL), err)
	}
	if ctx.Err() != nil {
		conn.Close()
		return nil, ctx.Err()
	}
	b.install(conn)
	b.rpc = newRPC(b)
	go b.supervise(conn)
	return b, nil
}

func (b *Bus) dial() (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	if b.cfg.Name != "" {
		props.SetClientConnectionName(b.cfg.Name)
	}
	return amqp.DialConfig(b.cfg.URL, amqp.Config{
		Heartbeat:  b.cfg.Heartbeat,
		Properties: props,
		// Bounds the TCP connect and the AMQP handshake: a server that
		// accepts and then says nothing must not hang Dial or a reconnect.
		Dial: amqp.DefaultDial(b.cfg.DialTimeout),
	})
}

// install makes conn the current connection and wakes everyone waiting.
// It reports false, leaving conn to the caller, once the bus is closed.
func (b *Bus) install(conn *amqp.Connection) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	b.conn = conn
	b.gen++
	b.lastErr = nil
	b.pubs = make([]*amqp.Channel, b.cfg.PublishChannels)
	close(b.ready)
	return true
}

// supervise waits for the connection to close and redials with backoff,
// re-declaring every topology before anyone uses the new connection.
func (b *Bus) supervise(conn *amqp.Connection) {
	for {
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 4))
	wait:
		for {
			select {
			case bl, ok := <-blocked:
				if ok {
					b.log.Warn().Bool("active", bl.Active).Str("reason", bl.Reason).Msg("rabbitmq: connection blocked by the broker")
					continue
				}
				blocked = nil
			case amqpErr := <-closed:
				b.mu.Lock()
				if b.closed {
					b.mu.Unlock()
					return
				}
				b.ready = make(chan struct{})
				b.lastErr = errors.New("connection lost")
				if amqpErr != nil {
					b.lastErr = fmt.Errorf("connection lost: %w", amqpErr)
				}
				b.mu.Unlock()
				b.log.Warn().Err(b.Err()).Msg("rabbitmq: connection lost, reconnecting")
				break wait
			case <-b.done:
				return
			}
		}
		bo := backoff.NewExponentialBackOff()
		bo.InitialInterval, bo.MaxInterval = b.cfg.ReconnectMin, b.cfg.ReconnectMax
		for attempt := 1; ; attempt++ {
			select {
			case <-b.done:
				return
			case <-time.After(bo.NextBackOff()):
			}
			c, err := b.dial()
			if err == nil {
				if err = b.declareAll(c); err != nil {
					c.Close()
				}
			}
			if err != nil {
				b.mu.Lock()
				b.lastErr = fmt.Errorf("reconnecting (attempt %d): %w", attempt, err)
				b.mu.Unlock()
				if attempt == 1 || attempt%20 == 0 {
					b.log.Warn().Err(err).Int("attempt", attempt).Msg("rabbitmq: reconnect failed")
				}
				continue
			}
			if !b.install(c) {
				c.Close()
				return
			}
			b.log.Info().Int("attempts", attempt).Msg("rabbitmq: reconnected")
			if b.cfg.OnReconnect != nil {
				b.cfg.OnReconnect()
			}
			conn = c
			break
		}
	}
}

// Err says why the bus is not usable now, or nil when it is.
func (b *Bus) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	select {
	case <-b.ready:
		return nil
	default:
	}
	if b.lastErr != nil {
		return b.lastErr
	}
	return errors.New("not connected")
}

// connection waits until a connection is usable, or ctx is done.
func (b *Bus) connection(ctx context.Context) (*amqp.Connection, uint64, error) {
	for {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return nil, 0, ErrClosed
		}
		ready, conn, gen := b.ready, b.conn, b.gen
		b.mu.Unlock()
		select {
		case <-ready:
			if !conn.IsClosed() {
				return conn, gen, nil
			}
			// Closed but the supervisor has not noticed yet.
			select {
			case <-time.After(10 * time.Millisecond):
			case <-ctx.Done():
				return nil, 0, ctx.Err()
			}
		case <-ctx.Done():
			return nil, 0, fmt.Errorf("amqpbus: %w (broker: %v)", ctx.Err(), b.Err())
		case <-b.done:
			return nil, 0, ErrClosed
		}
	}
}

// Channel opens a channel on the current connection, waiting for one.
func (b *Bus) Channel(ctx context.Context) (*amqp.Channel, error) {
	for {
		conn, _, err := b.connection(ctx)
		if err != nil {
			return nil, err
		}
		ch, err := conn.Channel()
		if err == nil {
			return ch, nil
		}
		if conn.IsClosed() {
			continue // lost meanwhile: wait for the next one
		}
		return nil, fmt.Errorf("amqpbus: open channel: %w", err)
	}
}

// Close stops the supervisor and closes the connection. It is safe to call
// more than once.
func (b *Bus) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	close(b.done)
	conn := b.conn
	b.mu.Unlock()
	if conn != nil && !conn.IsClosed() {
		return conn.Close()
	}
	return nil
}

// redact hides the password of a URL for logs and errors.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}
