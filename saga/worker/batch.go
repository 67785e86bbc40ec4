package worker

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	json "github.com/goccy/go-json"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/internal/pgtx"
)

// job is one delivery of a batch on its way to a reply.
type job struct {
	d       *amqp.Delivery
	cmd     Command
	ctx     context.Context // carries the delivery's trace span
	span    trace.Span
	log     zerolog.Logger
	query   QueryFunc
	handler *handler
	res     Result
	invalid error
	dupOf   *job // an earlier copy of the same message id in the batch
}

// deliverBatch handles the commands waiting in the queue together: the
// idempotent ones in one transaction (group commit), queries one by one.
// Poison is dead-lettered at once. The replies are published in the
// returned Settle, off the consumer's loop: the commands are acked once
// their replies are confirmed, and a reply that fails is sent again on
// redelivery, from the inbox.
func (r *Runtime) deliverBatch(ctx context.Context, queue string, ds []*amqp.Delivery) (amqpbus.Settle, error) {
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
			if err := r.bus.DeadLetter(ctx, d, queue, err.Error()); err != nil {
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
				j.log.Warn().Err(err).Msg("query failed; replying retry")
				res = r.unavailable()
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
		if j.handler != nil {
			// A command's signals follow its reply (stored with it: a
			// redelivery sends them again).
			for _, sig := range j.res.Signals {
				replies = append(replies, saga.SignalMessage(j.cmd.SagaID, sig, time.Now().UTC()))
			}
		}
	}
	if len(replies) == 0 && len(invalid) == 0 {
		return nil, nil
	}
	// The replies leave now, in the batch's order (so that high priority
	// keeps its lead downstream); their confirms are awaited in Settle.
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	confirms := r.bus.Send(pctx, replies)
	return func(ctx context.Context) error {
		defer cancel()
		if ok, err := confirms(pctx); err != nil {
			return fmt.Errorf("worker: publish %d replies (%d confirmed): %w", len(replies), len(ok), err)
		}
		// Answered: now keep a copy of each invalid command for an operator.
		for _, j := range invalid {
			j.log.Warn().Err(j.invalid).Msg("invalid command answered failed; copy dead-lettered")
			if err := r.bus.DeadLetter(ctx, j.d, queue, j.invalid.Error()); err != nil {
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
	err := r.tryBatch(ctx, jobs)
	if err == nil {
		return
	}
	r.log.Debug().Err(err).Int("commands", len(jobs)).Msg("batch failed; running its commands one by one")
	for _, j := range jobs {
		// execute answers transient failures with a retry result itself;
		// the only error it returns is an invalid command.
		j.res, j.invalid = r.execute(j.ctx, j.log, j.handler, j.cmd)
	}
}

// tryBatch runs a batch of commands in one transaction, on one connection,
// in few round trips: BEGIN travels with the look-up of replies already
// stored; the new commands go to their handlers (a handler gets all of its
// commands at once); their replies are inserted into the inbox and the
// transaction commits in one more trip. A command seen before gets its
// stored reply; a duplicate within the batch gets the reply of its first
// copy.
//
// Nothing is claimed up front: a copy of a command running concurrently
// elsewhere makes the final inbox insert fail on its unique key (or a
// handler's insert on its own), the batch rolls back, and each command then
// runs alone, claiming its message id first.
func (r *Runtime) tryBatch(ctx context.Context, jobs []*job) (err error) {
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("worker: acquire: %w", err)
	}
	defer conn.Release()
	ids := make([]string, 0, len(jobs))
	first := map[string]*job{}
	for _, j := range jobs {
		if f := first[j.cmd.ID]; f != nil {
			j.dupOf = f
			continue
		}
		first[j.cmd.ID] = j
		ids = append(ids, j.cmd.ID)
	}
	committed := false
	defer func() {
		if !committed {
			// The connection goes back to the pool outside any transaction
			// (a broken one is closed by the pool).
			_, _ = conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
		}
	}()
	stored, err := beginWithReplies(ctx, conn, ids)
	if err != nil {
		return err
	}
	var fresh []*job
	for _, id := range ids {
		j := first[id]
		if res, ok := stored[id]; ok {
			j.res = res
			continue
		}
		if err := r.simulate(ctx); err != nil {
			return err
		}
		fresh = append(fresh, j)
	}
	if err := runHandlers(ctx, conn, fresh); err != nil {
		return err
	}
	var done, types []string
	var bodies [][]byte
	for _, j := range fresh {
		if j.invalid != nil {
			continue // an invalid command leaves no trace: a fixed redelivery may succeed
		}
		body, err := json.Marshal(j.res)
		if err != nil {
			return fmt.Errorf("worker: marshal reply: %w", err)
		}
		done, types, bodies = append(done, j.cmd.ID), append(types, j.cmd.Type), append(bodies, body)
	}
	b := &pgx.Batch{}
	if len(done) > 0 {
		b.Queue(`INSERT INTO inbox (message_id, type, reply)
			SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])`, done, types, bodies)
	}
	b.Queue("COMMIT")
	if err := pgtx.SendCommit(ctx, conn, b); err != nil {
		return fmt.Errorf("worker: record replies and commit: %w", err)
	}
	committed = true
	for _, j := range jobs {
		if j.dupOf != nil {
			j.res, j.invalid = j.dupOf.res, j.dupOf.invalid
		}
	}
	return nil
}

// beginWithReplies begins a transaction on conn and, in the same round
// trip, returns the replies already stored for the given message ids.
func beginWithReplies(ctx context.Context, conn *pgxpool.Conn, ids []string) (map[string]Result, error) {
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	b.Queue(`SELECT message_id, reply FROM inbox WHERE message_id = ANY($1) AND reply IS NOT NULL`, ids)
	br := conn.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return nil, fmt.Errorf("worker: begin: %w", err)
	}
	rows, err := br.Query()
	if err != nil {
		return nil, fmt.Errorf("worker: stored replies: %w", err)
	}
	return scanReplies(rows)
}

// runHandlers hands the new commands to their handlers. Commands of one
// saga keep their order: the n-th command of a saga in the batch runs in
// round n, after every earlier round. Within a round each handler gets all
// of its commands at once, handlers in the order their first command came.
func runHandlers(ctx context.Context, tx Tx, fresh []*job) error {
	next := map[string]int{}
	var rounds [][]*job
	for _, j := range fresh {
		key := j.cmd.SagaID
		if key == "" {
			key = j.cmd.ID
		}
		k := next[key]
		next[key] = k + 1
		if k == len(rounds) {
			rounds = append(rounds, nil)
		}
		rounds[k] = append(rounds[k], j)
	}
	for _, round := range rounds {
		var order []*handler
		groups := map[*handler][]*job{}
		for _, j := range round {
			if groups[j.handler] == nil {
				order = append(order, j.handler)
			}
			groups[j.handler] = append(groups[j.handler], j)
		}
		for _, h := range order {
			js := groups[h]
			cmds := make([]Command, len(js))
			for i, j := range js {
				cmds[i] = j.cmd
			}
			verdicts, err := h.fn(ctx, tx, cmds)
			if err != nil {
				return err
			}
			if len(verdicts) != len(cmds) {
				return fmt.Errorf("worker: handler of %s returned %d verdicts for %d commands", cmds[0].Type, len(verdicts), len(cmds))
			}
			for i, j := range js {
				j.res, j.invalid = verdicts[i].Result, verdicts[i].Invalid
			}
		}
	}
	return nil
}

// scanReplies reads (message_id, reply) rows into results by message id.
func scanReplies(rows pgx.Rows) (map[string]Result, error) {
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
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("worker: stored replies: %w", err)
	}
	return out, nil
}
