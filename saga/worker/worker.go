// Package worker is the runtime of a thin saga worker: it consumes a
// command queue, deduplicates commands by message id (the inbox), runs the
// business handler and records the processed command with its reply in the
// same transaction as the effect, then replies.
//
// A redelivered or re-sent command finds its stored reply and has no second
// effect. A handler's Go error is transient: the transaction rolls back and
// the command is retried (inline, then by the saga); a business failure is
// a Result with Status failed and a stable code, and it compensates.
package worker

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	json "github.com/goccy/go-json"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"golang.org/x/sync/errgroup"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/internal/pgtx"
)

// Command is a decoded command as a handler sees it.
type Command struct {
	saga.Envelope
	// Redelivered is the broker's flag: this delivery may have been seen.
	Redelivered bool
}

// Decode unmarshals the payload into v, refusing unknown fields. An error
// makes the command invalid: it is answered failed/invalid_command and a
// copy is dead-lettered.
func (c Command) Decode(v any) error {
	dec := json.NewDecoder(bytes.NewReader(c.Payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Invalid(fmt.Errorf("%s payload: %w", c.Type, err))
	}
	if !saga.AtEOF(dec) {
		return Invalid(fmt.Errorf("%s payload: data after the JSON value", c.Type))
	}
	return nil
}

// Validator is a payload that checks itself.
type Validator interface{ Validate() error }

// DecodeValid decodes the payload into v (Decode) and validates it: a
// payload that fails either makes the command invalid.
func (c Command) DecodeValid(v Validator) error {
	if err := c.Decode(v); err != nil {
		return err
	}
	if err := v.Validate(); err != nil {
		return Invalid(fmt.Errorf("%s payload: %w", c.Type, err))
	}
	return nil
}

// InvalidError marks a command that can never succeed as sent.
type InvalidError struct{ Err error }

func (e *InvalidError) Error() string { return "invalid command: " + e.Err.Error() }
func (e *InvalidError) Unwrap() error { return e.Err }

// Invalid wraps err as an InvalidError.
func Invalid(err error) error { return &InvalidError{Err: err} }

// CodeInvalidCommand is the failure code of an invalid command.
const CodeInvalidCommand = "invalid_command"

// Result is a handler's verdict.
type Result struct {
	Status  saga.ReplyStatus `json:"status"`
	Code    string           `json:"code,omitempty"`
	Message string           `json:"message,omitempty"`
	Payload json.RawMessage  `json:"payload,omitempty"`
	// Signals are news for the command's saga, for a step that waits for
	// them (saga.Step.Wait). They are kept in the inbox with the reply, in
	// the handler's transaction, and published with it: a redelivered
	// command publishes them again, and the saga ignores the copies (same
	// key). Commands only: a query's signals are not sent.
	Signals []saga.Signal `json:"signals,omitempty"`
}

// OK is a success with a payload (marshalled to JSON; nil for none).
func OK(payload any) (Result, error) {
	if payload == nil {
		return Result{Status: saga.ReplyOK}, nil
	}
	b, err := json.Marshal(payload)
	if err != nil {
		return Result{}, fmt.Errorf("worker: marshal reply: %w", err)
	}
	return Result{Status: saga.ReplyOK, Payload: b}, nil
}

// Fail is a business failure with a stable code.
func Fail(code, format string, args ...any) (Result, error) {
	return Result{Status: saga.ReplyFailed, Code: code, Message: fmt.Sprintf(format, args...)}, nil
}

// Tx is the transaction a handler works in: statements only, since the
// runtime begins and commits it (with the inbox records of the commands).
// A pgx.Tx is one, and so is a pooled connection inside a transaction.
type Tx interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// HandlerFunc performs a command's effect inside tx. The runtime commits tx
// together with the inbox record of the command and its reply.
type HandlerFunc func(ctx context.Context, tx Tx, cmd Command) (Result, error)

// Verdict is a batch handler's answer to one command: its Result, or
// Invalid (an *InvalidError) for a command that can never succeed as sent.
type Verdict struct {
	Result
	Invalid error
}

// BatchHandlerFunc performs the effects of several commands inside tx, in
// the order given, and returns one verdict per command, index-aligned. A
// batch handler loads what all its commands need with a few statements and
// writes with a few more, instead of a few per command: that is where a
// busy worker's time goes. A command it marks Invalid must have had no
// effect (the others of the batch commit). An error is transient and fails
// the whole batch: the runtime rolls it back and runs each command alone.
type BatchHandlerFunc func(ctx context.Context, tx Tx, cmds []Command) ([]Verdict, error)

// handler is a registered batch handler; commands of the types it was
// registered for are handed to it together.
type handler struct{ fn BatchHandlerFunc }

// perCommand runs a HandlerFunc as a batch handler, one command after the
// other.
func perCommand(h HandlerFunc) BatchHandlerFunc {
	return func(ctx context.Context, tx Tx, cmds []Command) ([]Verdict, error) {
		out := make([]Verdict, len(cmds))
		for i, cmd := range cmds {
			res, err := h(ctx, tx, cmd)
			switch {
			case isInvalid(err):
				out[i].Invalid = err
			case err != nil:
				return nil, err
			default:
				out[i].Result = res
			}
		}
		return out, nil
	}
}

// QueryFunc answers a read-only or naturally idempotent request; it is not
// recorded in the inbox.
type QueryFunc func(ctx context.Context, cmd Command) (Result, error)

// Config configures a Runtime. Zero fields take the documented defaults.
type Config struct {
	// Queue is the command queue to consume (saga commands); empty for a
	// worker that only answers requests.
	Queue string
	// RequestQueue is the queue of requests relayed by an API (queries,
	// operator actions): consumed by a consumer of its own, one batch at a
	// time, so that a flood of requests never stands ahead of saga
	// commands, nor takes more than a batch's share of the database.
	// Empty: none.
	RequestQueue string
	// RequestPrefetch is the most requests in hand, and per batch
	// (default 16).
	RequestPrefetch int
	// Prefetch is how many unacked commands the broker hands over
	// (default 64).
	Prefetch int
	// Batch is the most commands applied in one transaction (default 32).
	// Commands waiting in the queue are taken together: one commit for
	// many. Larger batches commit less often but blur priorities: a batch
	// finishes together, whatever the priorities of its commands.
	Batch int
	// EventPrefetch is how many events of a subscription the broker hands
	// over, and the largest batch applied in one transaction (default 256).
	EventPrefetch int
	// Retries is how many times a transient failure is retried inline
	// before the worker replies "retry" and leaves it to the saga (default 2).
	Retries int
	// RetryBackoff is the first pause between inline retries (default 50ms).
	RetryBackoff time.Duration
	// Simulate adds latency and failures, for demos and fault tests.
	Simulate Simulation
	// IDName is the domain's name for a saga id ("order_id"); log lines
	// about a command carry the saga id under this name too.
	IDName string
	// InboxRetention is how long processed commands stay in the inbox
	// (default 7 days): a copy of a command redelivered or re-sent within
	// it finds its reply; older entries are deleted, in batches, every
	// hour at most. Keep it well above the longest a saga retries a step.
	InboxRetention time.Duration
	// Service names the worker in the replies it sends when it cannot
	// finish a command now: code "<Service>_unavailable", message "the
	// <Service> service failed temporarily" (default: Queue up to its
	// first dot). The error itself stays in this worker's log, never in a
	// reply, where it would reach an order's reason and a customer.
	Service string
}

// Simulation makes a worker slow or unreliable on purpose.
type Simulation struct {
	// Latency is added before each command is handled.
	Latency time.Duration
	// FailureRate is the probability (0..1) that handling a command fails
	// transiently before its effect.
	FailureRate float64
	// DropReplyRate is the probability (0..1) that a reply is lost after
	// the effect committed: the saga's retry must get the stored reply.
	DropReplyRate float64
	// DropFirstReply loses the first reply to each message id (this
	// process's memory): the deterministic form of DropReplyRate, for tests.
	DropFirstReply bool
}

// Runtime runs a worker's handlers. Register handlers, then Run.
type Runtime struct {
	cfg      Config
	pool     *pgxpool.Pool
	bus      *amqpbus.Bus
	log      zerolog.Logger
	handlers map[string]*handler
	queries  map[string]QueryFunc
	subs     []subscription
	tasks    []func(ctx context.Context)
	observer Observer

	droppedMu sync.Mutex
	dropped   map[string]bool // message ids whose first reply was dropped
}

// Observer is told about each command handled; metrics hang here.
type Observer interface {
	Handled(typ, outcome string, d time.Duration)
}

type nopObserver struct{}

func (nopObserver) Handled(string, string, time.Duration) {}

// New returns a runtime; pool's search_path must reach the worker's inbox
// table.
func New(cfg Config, pool *pgxpool.Pool, bus *amqpbus.Bus, log zerolog.Logger) *Runtime {
	if cfg.Prefetch <= 0 {
		cfg.Prefetch = 64
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 32
	}
	if cfg.EventPrefetch <= 0 {
		cfg.EventPrefetch = 256
	}
	if cfg.Retries < 0 {
		cfg.Retries = 0
	} else if cfg.Retries == 0 {
		cfg.Retries = 2
	}
	if cfg.RetryBackoff <= 0 {
		cfg.RetryBackoff = 50 * time.Millisecond
	}
	if cfg.RequestPrefetch <= 0 {
		cfg.RequestPrefetch = 16
	}
	if cfg.InboxRetention <= 0 {
		cfg.InboxRetention = 7 * 24 * time.Hour
	}
	if cfg.Service == "" {
		cfg.Service, _, _ = strings.Cut(cmp.Or(cfg.Queue, cfg.RequestQueue), ".")
	}
	return &Runtime{
		cfg: cfg, pool: pool, bus: bus, log: log.With().Str("queue", cfg.Queue).Logger(),
		handlers: map[string]*handler{}, queries: map[string]QueryFunc{}, observer: nopObserver{},
	}
}

// SetObserver sets the observer of handled commands.
func (r *Runtime) SetObserver(o Observer) { r.observer = o }

// Handle registers the handler of an idempotent command type.
func (r *Runtime) Handle(typ string, h HandlerFunc) { r.handlers[typ] = &handler{fn: perCommand(h)} }

// HandleBatch registers one batch handler for several command types: the
// commands of those types in a delivered batch reach it together, in
// delivery order (highest priority first).
func (r *Runtime) HandleBatch(h BatchHandlerFunc, types ...string) {
	hd := &handler{fn: h}
	for _, t := range types {
		r.handlers[t] = hd
	}
}

// Query registers the handler of a query type.
func (r *Runtime) Query(typ string, q QueryFunc) { r.queries[typ] = q }

// Logger is the runtime's logger, for a worker's own loops.
func (r *Runtime) Logger() zerolog.Logger { return r.log }

// SagaSignal is a signal and the saga it is for.
type SagaSignal struct {
	SagaID string
	saga.Signal
}

// Go runs task alongside the consumers while the runtime runs (a timer
// loop of the worker's own); Run returns once it has returned too.
func (r *Runtime) Go(task func(ctx context.Context)) { r.tasks = append(r.tasks, task) }

// Signal publishes signals for sagas (saga.Step.Wait) and waits for the
// broker's confirms. It is for work outside a command (a timer, a
// request): keep a record of what was announced in the worker's own
// tables, and announce again what has no confirm; the saga ignores copies
// (same key).
func (r *Runtime) Signal(ctx context.Context, sigs ...SagaSignal) error {
	msgs := make([]saga.Message, len(sigs))
	for i, sig := range sigs {
		msgs[i] = saga.SignalMessage(sig.SagaID, sig.Signal, time.Now().UTC())
	}
	ok, err := r.bus.Publish(ctx, msgs)
	if err != nil {
		return fmt.Errorf("worker: publish %d signals (%d confirmed): %w", len(msgs), len(ok), err)
	}
	return nil
}

// Types lists the registered types, for binding the queue.
func (r *Runtime) Types() []string {
	var out []string
	for t := range r.handlers {
		out = append(out, t)
	}
	for t := range r.queries {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// Run consumes the command queue and every subscription until ctx is
// done, and returns once in-flight work has finished.
func (r *Runtime) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	if r.cfg.Queue != "" {
		g.Go(func() error {
			return r.bus.ConsumeBatchAsync(ctx, amqpbus.ConsumerConfig{Queue: r.cfg.Queue, Prefetch: r.cfg.Prefetch, Transient: pgtx.Transient},
				r.cfg.Batch, r.from(r.cfg.Queue))
		})
	}
	if r.cfg.RequestQueue != "" {
		g.Go(func() error {
			return r.bus.ConsumeBatchAsync(ctx, amqpbus.ConsumerConfig{Queue: r.cfg.RequestQueue, Prefetch: r.cfg.RequestPrefetch, Transient: pgtx.Transient},
				r.cfg.RequestPrefetch, r.from(r.cfg.RequestQueue))
		})
	}
	for _, sub := range r.subs {
		g.Go(func() error { return r.consumeEvents(ctx, sub) })
	}
	g.Go(func() error { r.pruneLoop(ctx); return nil })
	for _, task := range r.tasks {
		g.Go(func() error { task(ctx); return nil })
	}
	return g.Wait()
}

// pruneLoop deletes inbox entries older than InboxRetention, a minute
// after start and then every tenth of the retention (an hour at most).
func (r *Runtime) pruneLoop(ctx context.Context) {
	every := min(r.cfg.InboxRetention/10, time.Hour)
	wait := min(time.Minute, every)
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = every
		n, err := r.Prune(ctx, time.Now().Add(-r.cfg.InboxRetention))
		switch {
		case err != nil && ctx.Err() == nil:
			r.log.Warn().Err(err).Msg("inbox prune failed; next time")
		case n > 0:
			r.log.Info().Int64("deleted", n).Dur("retention", r.cfg.InboxRetention).Msg("inbox pruned")
		}
	}
}

// Prune deletes the inbox entries processed before cutoff, 5000 at a time
// (short transactions, no long lock), and returns how many it deleted.
func (r *Runtime) Prune(ctx context.Context, cutoff time.Time) (int64, error) {
	var total int64
	for {
		tag, err := r.pool.Exec(ctx, `DELETE FROM inbox WHERE message_id IN
			(SELECT message_id FROM inbox WHERE processed_at < $1 LIMIT 5000)`, cutoff)
		if err != nil {
			return total, fmt.Errorf("worker: prune inbox: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < 5000 {
			return total, nil
		}
	}
}

// from is deliverBatch for the deliveries of one queue.
func (r *Runtime) from(queue string) amqpbus.AsyncBatchHandler {
	return func(ctx context.Context, ds []*amqp.Delivery) (amqpbus.Settle, error) {
		return r.deliverBatch(ctx, queue, ds)
	}
}

func outcome(res Result, invalid error) string {
	if invalid != nil {
		return "invalid"
	}
	return string(res.Status)
}

func isInvalid(err error) bool {
	var inv *InvalidError
	return errors.As(err, &inv)
}

// dropReply decides whether the simulation loses this reply.
func (r *Runtime) dropReply(msgID string) bool {
	if r.cfg.Simulate.DropFirstReply {
		r.droppedMu.Lock()
		defer r.droppedMu.Unlock()
		if r.dropped == nil {
			r.dropped = map[string]bool{}
		}
		if !r.dropped[msgID] {
			r.dropped[msgID] = true
			r.log.Info().Str("message_id", msgID).Msg("simulation: dropping the first reply")
			return true
		}
		return false
	}
	return r.cfg.Simulate.DropReplyRate > 0 && rand.Float64() < r.cfg.Simulate.DropReplyRate
}

// execute runs an idempotent handler, retrying transient failures inline a
// few times; if they persist it replies "retry" and the saga re-sends later.
func (r *Runtime) execute(ctx context.Context, log zerolog.Logger, h *handler, cmd Command) (Result, error) {
	wait := r.cfg.RetryBackoff
	for attempt := 1; ; attempt++ {
		res, err := r.once(ctx, h, cmd)
		if err == nil || isInvalid(err) {
			return res, err
		}
		if attempt > r.cfg.Retries || ctx.Err() != nil {
			log.Warn().Err(err).Int("attempts", attempt).Msg("transient failure; replying retry")
			return r.unavailable(), nil
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
		wait *= 2
	}
}

// unavailable is the reply to a command that failed transiently: a stable
// code and a sentence, without the error (which the caller logs).
func (r *Runtime) unavailable() Result {
	return Result{Status: saga.ReplyRetry, Code: r.cfg.Service + "_unavailable",
		Message: "the " + r.cfg.Service + " service failed temporarily"}
}

var tracer = otel.Tracer("github.com/sagaflow/sagaflow/saga/worker")

// errSimulated is the transient failure injected by Simulation.FailureRate.
var errSimulated = errors.New("worker: simulated transient failure")

// simulate applies the simulated latency and transient failures before a
// handler runs.
func (r *Runtime) simulate(ctx context.Context) error {
	if d := r.cfg.Simulate.Latency; d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if r.cfg.Simulate.FailureRate > 0 && rand.Float64() < r.cfg.Simulate.FailureRate {
		return errSimulated
	}
	return nil
}

// once runs the handler for one command in a transaction that first claims
// the command's message id in the inbox. A command already processed
// returns its stored reply; one being processed concurrently waits for
// that transaction.
func (r *Runtime) once(ctx context.Context, h *handler, cmd Command) (Result, error) {
	if err := r.simulate(ctx); err != nil {
		return Result{}, err
	}
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("worker: begin: %w", err)
	}
	defer tx.Rollback(ctx)
	tag, err := tx.Exec(ctx, `INSERT INTO inbox (message_id, type) VALUES ($1, $2)
		ON CONFLICT (message_id) DO NOTHING`, cmd.ID, cmd.Type)
	if err != nil {
		return Result{}, fmt.Errorf("worker: inbox: %w", err)
	}
	if tag.RowsAffected() == 0 {
		var stored []byte
		if err := tx.QueryRow(ctx, `SELECT reply FROM inbox WHERE message_id = $1`, cmd.ID).Scan(&stored); err != nil {
			return Result{}, fmt.Errorf("worker: stored reply: %w", err)
		}
		var res Result
		if err := json.Unmarshal(stored, &res); err != nil {
			return Result{}, fmt.Errorf("worker: stored reply of %s: %w", cmd.ID, err)
		}
		return res, nil
	}
	verdicts, err := h.fn(ctx, tx, []Command{cmd})
	if err != nil {
		return Result{}, err
	}
	if len(verdicts) != 1 {
		return Result{}, fmt.Errorf("worker: handler of %s returned %d verdicts for 1 command", cmd.Type, len(verdicts))
	}
	if v := verdicts[0]; v.Invalid != nil {
		return Result{}, v.Invalid
	}
	res := verdicts[0].Result
	body, err := json.Marshal(res)
	if err != nil {
		return Result{}, fmt.Errorf("worker: marshal reply: %w", err)
	}
	if _, err := tx.Exec(ctx, `UPDATE inbox SET reply = $2 WHERE message_id = $1`, cmd.ID, body); err != nil {
		return Result{}, fmt.Errorf("worker: record reply: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return Result{}, fmt.Errorf("worker: commit: %w", err)
	}
	return res, nil
}

// replyMessage addresses the result to the delivery's reply_to with its
// correlation id.
func (r *Runtime) replyMessage(ctx context.Context, d *amqp.Delivery, env saga.Envelope, res Result) saga.Message {
	m := saga.Message{
		Kind: saga.MessageReply, Key: d.ReplyTo, MessageID: env.ID + ":reply",
		CorrelationID: d.CorrelationId, Type: env.Type + ".reply", Timestamp: time.Now().UTC(),
		Body: saga.Envelope{
			ID: env.ID + ":reply", CorrelationID: d.CorrelationId, SagaID: env.SagaID,
			Type: env.Type + ".reply", At: time.Now().UTC(), Status: res.Status, Code: res.Code,
			Message: res.Message, Payload: res.Payload, Attempt: env.Attempt,
		}.Encode(),
	}
	// The reply continues the trace: its parent is this worker's span.
	m.Headers = map[string]string{}
	otel.GetTextMapPropagator().Inject(ctx, propagation.MapCarrier(m.Headers))
	if strings.HasPrefix(d.ReplyTo, "amq.rabbitmq.reply-to") {
		// Direct reply-to: the caller waits on its channel; nothing to keep.
		m.Transient = true
	}
	return m
}
