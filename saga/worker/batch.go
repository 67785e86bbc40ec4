package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
)

// job is one delivery of a batch on its way to a reply.
type job struct {
	d       *amqp.Delivery
	cmd     Command
	ctx     context.Context // carries the delivery's trace span
	span    trace.Span
	log     zerolog.Logger
	query   QueryFunc
	handler HandlerFunc
	res     Result
	invalid error
}

// deliverBatch handles the commands waiting in the queue together: the
// idempotent ones in one transaction (group commit), queries one by one.
// Poison is dead-lettered at once. The replies are published in the
// returned Settle, off the consumer's loop: the commands are acked once
// their replies are confirmed, and a reply that fails is sent again on
// redelivery, from the inbox.
func (r *Runtime) deliverBatch(ctx context.Context, ds []*amqp.Delivery) (amqpbus.Settle, error) {
	start := time.Now()
	jobs := make([]*job, 0, len(ds))
	var commands []*job
	// Highest priority first: the broker delivers by priority what waits in
	// the queue, and a batch keeps that order through to its replies.
	ds = slices.Clone(ds)
	slices.SortStableFunc(ds, func(a, b *amqp.Delivery) int { return int(b.Priority) - int(a.Priority) })
	for _, d := range ds {
		env, err := saga.Decode(d.Body)
		if err == nil && r.queries[env.Type] == nil && r.handlers[env.Type] == nil {
			err = fmt.Errorf("%w: %q", saga.ErrUnknownCommand, env.Type)
		}
		if err != nil {
			r.observer.Handled(d.RoutingKey, "poison", 0)
			r.log.Warn().Err(err).Str("message_id", d.MessageId).Str("routing_key", d.RoutingKey).Msg("dead-lettering poison message")
			if err := r.bus.DeadLetter(ctx, d, r.cfg.Queue, err.Error()); err != nil {
				return nil, err // requeue the batch: nothing is lost
			}
			continue
		}
		j := r.newJob(ctx, d, env)
		jobs = append(jobs, j)
		if j.handler != nil {
			commands = append(commands, j)
		}
	}
	for _, j := range jobs {
		if j.query != nil {
			res, err := j.query(j.ctx, j.cmd)
			switch {
			case isInvalid(err):
				j.invalid = err
			case err != nil:
				res = Result{Status: saga.ReplyRetry, Code: "transient", Message: err.Error()}
			}
			j.res = res
		}
	}
	r.executeBatch(ctx, commands)

	var replies []saga.Message
	var invalid []*job
	each := time.Since(start) / time.Duration(max(len(jobs), 1))
	for _, j := range jobs {
		if j.invalid != nil {
			j.res = Result{Status: saga.ReplyFailed, Code: CodeInvalidCommand, Message: j.invalid.Error()}
			invalid = append(invalid, j)
		}
		r.observer.Handled(j.cmd.Type, outcome(j.res, j.invalid), each)
		j.span.SetAttributes(attribute.String("saga.reply.status", string(j.res.Status)), attribute.String("saga.reply.code", j.res.Code))
		j.span.End()
		// Simulated losses hit saga commands only: a query's caller just waits.
		if j.d.ReplyTo != "" && (j.query != nil || !r.dropReply(j.cmd.ID)) {
			replies = append(replies, r.replyMessage(j.ctx, j.d, j.cmd.Envelope, j.res))
		}
	}
	if len(replies) == 0 && len(invalid) == 0 {
		return nil, nil
	}
	return func(ctx context.Context) error {
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if _, err := r.bus.Publish(pctx, replies); err != nil {
			return fmt.Errorf("worker: publish %d replies: %w", len(replies), err)
		}
		// Answered: now keep a copy of each invalid command for an operator.
		for _, j := range invalid {
			j.log.Warn().Err(j.invalid).Msg("invalid command answered failed; copy dead-lettered")
			if err := r.bus.DeadLetter(ctx, j.d, r.cfg.Queue, j.invalid.Error()); err != nil {
				return err
			}
		}
		return nil
	}, nil
}

func (r *Runtime) newJob(ctx context.Context, d *amqp.Delivery, env saga.Envelope) *job {
	lc := r.log.With().Str("type", env.Type).Str("message_id", env.ID).Str("saga_id", env.SagaID).
		Str("correlation_id", d.CorrelationId)
	if i := strings.LastIndexByte(env.ID, ':'); i >= 0 {
		lc = lc.Str("step", env.ID[i+1:])
	}
	if r.cfg.IDName != "" && env.SagaID != "" {
		lc = lc.Str(r.cfg.IDName, env.SagaID)
	}
	ctx = otel.GetTextMapPropagator().Extract(ctx, amqpbus.HeaderCarrier(d.Headers))
	ctx, span := tracer.Start(ctx, env.Type+" process", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("messaging.system", "rabbitmq"),
			attribute.String("messaging.message.id", env.ID), attribute.String("saga.id", env.SagaID)))
	return &job{
		d: d, cmd: Command{Envelope: env, Redelivered: d.Redelivered}, ctx: ctx, span: span, log: lc.Logger(),
		query: r.queries[env.Type], handler: r.handlers[env.Type],
	}
}

// executeBatch runs idempotent commands in one transaction. Any error (a
// transient failure, a deadlock, a bug) rolls the batch back and each
// command runs again alone, with its own inline retries.
func (r *Runtime) executeBatch(ctx context.Context, jobs []*job) {
	if len(jobs) == 0 {
		return
	}
	if len(jobs) > 1 {
		err := r.tryBatch(ctx, jobs)
		if err == nil {
			return
		}
		r.log.Debug().Err(err).Int("commands", len(jobs)).Msg("batch failed; running its commands one by one")
	}
	for _, j := range jobs {
		// execute answers transient failures with a retry result itself;
		// the only error it returns is an invalid command.
		j.res, j.invalid = r.execute(j.ctx, j.log, j.handler, j.cmd)
	}
}

// tryBatch claims every message id in the inbox (a duplicate being
// processed by another process makes the claim wait for it), runs the
// handlers of the new ones in delivery order, stores their replies with one
// UPDATE, and commits. A command seen before gets its stored reply; a
// duplicate within the batch gets the reply of its first copy.
func (r *Runtime) tryBatch(ctx context.Context, jobs []*job) error {
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("worker: begin: %w", err)
	}
	defer tx.Rollback(ctx)
	ids := make([]string, len(jobs))
	types := make([]string, len(jobs))
	for i, j := range jobs {
		ids[i], types[i] = j.cmd.ID, j.cmd.Type
	}
	rows, err := tx.Query(ctx, `INSERT INTO inbox (message_id, type)
		SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT (message_id) DO NOTHING
		RETURNING message_id`, ids, types)
	if err != nil {
		return fmt.Errorf("worker: inbox: %w", err)
	}
	fresh := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return err
		}
		fresh[id] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("worker: inbox: %w", err)
	}
	var seen []string
	for _, id := range ids {
		if !fresh[id] {
			seen = append(seen, id)
		}
	}
	stored := map[string]Result{}
	if len(seen) > 0 {
		if stored, err = storedReplies(ctx, tx, seen); err != nil {
			return err
		}
	}
	first := map[string]*job{}
	var done, invalid []string
	var bodies [][]byte
	for _, j := range jobs {
		id := j.cmd.ID
		if f := first[id]; f != nil {
			j.res = f.res // a duplicate within the batch
			continue
		}
		first[id] = j
		if !fresh[id] {
			res, ok := stored[id]
			if !ok {
				return fmt.Errorf("worker: %s is in the inbox without a reply", id)
			}
			j.res = res
			continue
		}
		if err := r.simulate(ctx); err != nil {
			return err
		}
		res, err := j.handler(j.ctx, tx, j.cmd)
		if isInvalid(err) {
			j.invalid = err
			invalid = append(invalid, id)
			continue
		}
		if err != nil {
			return err
		}
		body, err := json.Marshal(res)
		if err != nil {
			return fmt.Errorf("worker: marshal reply: %w", err)
		}
		j.res = res
		done, bodies = append(done, id), append(bodies, body)
	}
	if len(done) > 0 {
		if _, err := tx.Exec(ctx, `UPDATE inbox SET reply = u.reply
			FROM unnest($1::text[], $2::bytea[]) AS u(message_id, reply) WHERE inbox.message_id = u.message_id`,
			done, bodies); err != nil {
			return fmt.Errorf("worker: record replies: %w", err)
		}
	}
	if len(invalid) > 0 {
		// An invalid command leaves no trace: a fixed redelivery may succeed.
		if _, err := tx.Exec(ctx, `DELETE FROM inbox WHERE message_id = ANY($1)`, invalid); err != nil {
			return fmt.Errorf("worker: forget invalid commands: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("worker: commit: %w", err)
	}
	return nil
}

// storedReplies returns the replies recorded for the given message ids.
func storedReplies(ctx context.Context, tx pgx.Tx, ids []string) (map[string]Result, error) {
	rows, err := tx.Query(ctx, `SELECT message_id, reply FROM inbox WHERE message_id = ANY($1) AND reply IS NOT NULL`, ids)
	if err != nil {
		return nil, fmt.Errorf("worker: stored replies: %w", err)
	}
	defer rows.Close()
	out := map[string]Result{}
	for rows.Next() {
		var id string
		var body []byte
		var res Result
		if err := rows.Scan(&id, &body); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(body, &res); err != nil {
			return nil, fmt.Errorf("worker: stored reply of %s: %w", id, err)
		}
		out[id] = res
	}
	return out, rows.Err()
}
