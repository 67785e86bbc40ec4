// Package pgstore is the PostgreSQL Store of the saga engine: sagas, their
// history and the transactional outbox. All of the engine's SQL lives here.
//
// Tables are unqualified: the pool's search_path names the schema (the
// orchestrator's section of schema.sql), so a deployment can keep the
// engine's tables wherever it likes.
package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/saga"
)

// Config tunes a Store.
type Config struct {
	// OutboxLease is how long a staged message belongs to the relay of the
	// process that wrote it; after that the outbox scan of any process may
	// publish it (default 15s).
	OutboxLease time.Duration
}

// Store implements saga.Store on a pgx pool.
type Store struct {
	pool  *pgxpool.Pool
	lease time.Duration
}

var _ saga.Store = (*Store)(nil)

// New returns a Store on pool. The tables must exist (schema.sql).
func New(pool *pgxpool.Pool, cfg Config) *Store {
	if cfg.OutboxLease <= 0 {
		cfg.OutboxLease = 15 * time.Second
	}
	return &Store{pool: pool, lease: cfg.OutboxLease}
}

const columns = `id, definition, phase, state, step, attempt, waiting, deadline, stuck_in,
	reason, stuck_reason, priority, data, history, seq, trace_parent, created_at, updated_at`

func scan(row pgx.Row) (saga.Instance, error) {
	var (
		in       saga.Instance
		phase    string
		stuckIn  string
		deadline *time.Time
		prio     int16
		history  []byte
	)
	err := row.Scan(&in.ID, &in.Definition, &phase, &in.State, &in.Step, &in.Attempt, &in.Waiting,
		&deadline, &stuckIn, &in.Reason, &in.StuckReason, &prio, &in.Data, &history, &in.Seq,
		&in.TraceParent, &in.CreatedAt, &in.UpdatedAt)
	if err != nil {
		return saga.Instance{}, err
	}
	in.Phase, in.StuckIn, in.Priority = saga.Phase(phase), saga.Phase(stuckIn), saga.Priority(prio)
	if deadline != nil {
		in.Deadline = deadline.UTC()
	}
	in.CreatedAt, in.UpdatedAt = in.CreatedAt.UTC(), in.UpdatedAt.UTC()
	if err := json.Unmarshal(history, &in.History); err != nil {
		return saga.Instance{}, fmt.Errorf("pgstore: saga %s: history: %w", in.ID, err)
	}
	for i := range in.History {
		r := &in.History[i]
		r.StartedAt = r.StartedAt.UTC()
		if r.FinishedAt != nil {
			t := r.FinishedAt.UTC()
			r.FinishedAt = &t
		}
	}
	return in, nil
}

func deadlineOf(in *saga.Instance) *time.Time {
	if in.Deadline.IsZero() {
		return nil
	}
	return &in.Deadline
}

// Create inserts a saga and stages its messages in one transaction.
func (s *Store) Create(ctx context.Context, ns saga.NewSaga) (saga.Instance, bool, []saga.Message, error) {
	in := ns.Instance
	history, err := json.Marshal(in.History)
	if err != nil {
		return saga.Instance{}, false, nil, fmt.Errorf("pgstore: history: %w", err)
	}
	var key *string
	if ns.Key != "" {
		key = &ns.Key
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return saga.Instance{}, false, nil, fmt.Errorf("pgstore: create saga: %w", err)
	}
	defer tx.Rollback(ctx)
	tag, err := tx.Exec(ctx, `
		INSERT INTO sagas (id, definition, phase, state, step, attempt, waiting, deadline, stuck_in,
			reason, stuck_reason, priority, data, history, seq, trace_parent, idempotency_key,
			fingerprint, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
		ON CONFLICT (idempotency_key) DO NOTHING`,
		in.ID, in.Definition, string(in.Phase), in.State, in.Step, in.Attempt, in.Waiting,
		deadlineOf(&in), string(in.StuckIn), in.Reason, in.StuckReason, int16(in.Priority), in.Data,
		history, in.Seq, in.TraceParent, key, ns.Fingerprint, in.CreatedAt, in.UpdatedAt)
	if err != nil {
		return saga.Instance{}, false, nil, fmt.Errorf("pgstore: create saga %s: %w", in.ID, err)
	}
	if tag.RowsAffected() == 0 {
		tx.Rollback(ctx)
		return s.byKey(ctx, ns.Key, ns.Fingerprint)
	}
	staged, err := s.stage(ctx, tx, ns.Messages)
	if err != nil {
		return saga.Instance{}, false, nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return saga.Instance{}, false, nil, fmt.Errorf("pgstore: create saga %s: commit: %w", in.ID, err)
	}
	return in, true, staged, nil
}

func (s *Store) byKey(ctx context.Context, key, fingerprint string) (saga.Instance, bool, []saga.Message, error) {
	var fp string
	in, err := scan(rowFunc(func(dest ...any) error {
		return s.pool.QueryRow(ctx, `SELECT `+columns+`, fingerprint FROM sagas WHERE idempotency_key = $1`, key).
			Scan(append(dest, &fp)...)
	}))
	if err != nil {
		return saga.Instance{}, false, nil, fmt.Errorf("pgstore: saga by idempotency key: %w", err)
	}
	if fp != fingerprint {
		return in, false, nil, saga.ErrKeyReused
	}
	return in, false, nil, nil
}

type rowFunc func(dest ...any) error

func (f rowFunc) Scan(dest ...any) error { return f(dest...) }

// Apply locks the named sagas in id order (so concurrent batches cannot
// deadlock), applies the inputs, and saves the result with its messages.
func (s *Store) Apply(ctx context.Context, inputs []saga.Input, fn saga.TransitionFunc) ([]saga.Outcome, []saga.Message, error) {
	ids := make([]uuid.UUID, 0, len(inputs))
	for _, inp := range inputs {
		ids = append(ids, inp.SagaID)
	}
	slices.SortFunc(ids, func(a, b uuid.UUID) int { return compareUUID(a, b) })
	ids = slices.Compact(ids)
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("pgstore: apply: %w", err)
	}
	defer tx.Rollback(ctx)
	loaded, err := s.load(ctx, tx, `SELECT `+columns+` FROM sagas WHERE id = ANY($1) ORDER BY id FOR UPDATE`, ids)
	if err != nil {
		return nil, nil, err
	}
	return s.decide(ctx, tx, loaded, inputs, fn)
}

// ApplyDue claims due sagas, skipping those other transactions hold (so
// several orchestrators share the timer work), and times them out.
func (s *Store) ApplyDue(ctx context.Context, now time.Time, limit int, fn saga.TransitionFunc) ([]saga.Outcome, []saga.Message, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("pgstore: apply due: %w", err)
	}
	defer tx.Rollback(ctx)
	loaded, err := s.load(ctx, tx, `SELECT `+columns+` FROM sagas WHERE deadline <= $1
		ORDER BY deadline LIMIT $2 FOR UPDATE SKIP LOCKED`, now, limit)
	if err != nil {
		return nil, nil, err
	}
	if len(loaded) == 0 {
		return nil, nil, nil
	}
	inputs := make([]saga.Input, 0, len(loaded))
	for id := range loaded {
		inputs = append(inputs, saga.Input{Kind: saga.InputTimeout, SagaID: id})
	}
	slices.SortFunc(inputs, func(a, b saga.Input) int { return compareUUID(a.SagaID, b.SagaID) })
	return s.decide(ctx, tx, loaded, inputs, fn)
}

func (s *Store) load(ctx context.Context, tx pgx.Tx, sql string, args ...any) (map[uuid.UUID]saga.Instance, error) {
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("pgstore: lock sagas: %w", err)
	}
	defer rows.Close()
	out := map[uuid.UUID]saga.Instance{}
	for rows.Next() {
		in, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("pgstore: lock sagas: %w", err)
		}
		out[in.ID] = in
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pgstore: lock sagas: %w", err)
	}
	return out, nil
}

// decide applies inputs to locked sagas, saves the changed ones in one
// UPDATE, stages their messages, and commits.
func (s *Store) decide(ctx context.Context, tx pgx.Tx, sagas map[uuid.UUID]saga.Instance, inputs []saga.Input, fn saga.TransitionFunc) ([]saga.Outcome, []saga.Message, error) {
	outs := make([]saga.Outcome, len(inputs))
	var (
		changed []uuid.UUID
		seen    = map[uuid.UUID]bool{}
		msgs    []saga.Message
	)
	for i, inp := range inputs {
		in, ok := sagas[inp.SagaID]
		if !ok {
			outs[i].Err = saga.ErrNotFound
			continue
		}
		d, m, err := fn(in, inp)
		if err != nil {
			outs[i] = saga.Outcome{Decision: saga.Decision{Instance: in}, Err: err}
			continue
		}
		outs[i] = saga.Outcome{Decision: d}
		if !d.Changed {
			continue
		}
		sagas[inp.SagaID] = d.Instance
		if !seen[inp.SagaID] {
			seen[inp.SagaID] = true
			changed = append(changed, inp.SagaID)
		}
		msgs = append(msgs, m...)
	}
	if len(changed) == 0 {
		return outs, nil, tx.Commit(ctx)
	}
	if err := s.save(ctx, tx, sagas, changed); err != nil {
		return nil, nil, err
	}
	staged, err := s.stage(ctx, tx, msgs)
	if err != nil {
		return nil, nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, nil, fmt.Errorf("pgstore: commit %d sagas: %w", len(changed), err)
	}
	return outs, staged, nil
}

// save writes the changed sagas with one UPDATE over unnested arrays.
func (s *Store) save(ctx context.Context, tx pgx.Tx, sagas map[uuid.UUID]saga.Instance, ids []uuid.UUID) error {
	n := len(ids)
	var (
		phase, state, stuckIn, reason, stuckReason = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		step, attempt, seq                         = make([]int32, n), make([]int32, n), make([]int32, n)
		waiting                                    = make([]bool, n)
		deadline                                   = make([]*time.Time, n)
		data, history                              = make([][]byte, n), make([][]byte, n)
		updated                                    = make([]time.Time, n)
	)
	for i, id := range ids {
		in := sagas[id]
		h, err := json.Marshal(in.History)
		if err != nil {
			return fmt.Errorf("pgstore: saga %s: history: %w", id, err)
		}
		phase[i], state[i], stuckIn[i] = string(in.Phase), in.State, string(in.StuckIn)
		reason[i], stuckReason[i] = in.Reason, in.StuckReason
		step[i], attempt[i], seq[i] = int32(in.Step), int32(in.Attempt), int32(in.Seq)
		waiting[i], deadline[i] = in.Waiting, deadlineOf(&in)
		data[i], history[i], updated[i] = in.Data, h, in.UpdatedAt
	}
	_, err := tx.Exec(ctx, `
		UPDATE sagas AS s SET phase = u.phase, state = u.state, step = u.step, attempt = u.attempt,
			waiting = u.waiting, deadline = u.deadline, stuck_in = u.stuck_in, reason = u.reason,
			stuck_reason = u.stuck_reason, data = u.data, history = u.history, seq = u.seq,
			updated_at = u.updated_at
		FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::int[], $6::bool[],
			$7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::jsonb[], $12::jsonb[],
			$13::int[], $14::timestamptz[])
			AS u(id, phase, state, step, attempt, waiting, deadline, stuck_in, reason, stuck_reason,
				data, history, seq, updated_at)
		WHERE s.id = u.id`,
		ids, phase, state, step, attempt, waiting, deadline, stuckIn, reason, stuckReason,
		data, history, seq, updated)
	if err != nil {
		return fmt.Errorf("pgstore: save %d sagas: %w", n, err)
	}
	return nil
}

// stage inserts messages into the outbox, leased to this process's relay,
// and returns them with their outbox ids.
func (s *Store) stage(ctx context.Context, tx pgx.Tx, msgs []saga.Message) ([]saga.Message, error) {
	if len(msgs) == 0 {
		return nil, nil
	}
	n := len(msgs)
	var (
		ids                                    = make([]uuid.UUID, n)
		exchange, key, msgID, corr, reply, typ = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		prio                                   = make([]int16, n)
		expiration                             = make([]int64, n)
		headers                                = make([][]byte, n)
		body                                   = make([][]byte, n)
	)
	out := make([]saga.Message, n)
	for i, m := range msgs {
		id, err := uuid.NewV7()
		if err != nil {
			return nil, fmt.Errorf("pgstore: outbox id: %w", err)
		}
		m.OutboxID = id
		out[i] = m
		ids[i], exchange[i], key[i], msgID[i], corr[i], reply[i], typ[i] =
			id, m.Exchange, m.RoutingKey, m.MessageID, m.CorrelationID, m.ReplyTo, m.Type
		prio[i], expiration[i], body[i] = int16(m.Priority), m.Expiration.Milliseconds(), m.Body
		if len(m.Headers) > 0 {
			if headers[i], err = json.Marshal(m.Headers); err != nil {
				return nil, fmt.Errorf("pgstore: outbox headers: %w", err)
			}
		}
	}
	_, err := tx.Exec(ctx, `
		INSERT INTO outbox (id, exchange, routing_key, message_id, correlation_id, reply_to, type,
			priority, expiration_ms, headers, body, created_at, leased_until)
		SELECT u.id, u.exchange, u.routing_key, u.message_id, u.correlation_id, u.reply_to, u.type,
			u.priority, u.expiration_ms, u.headers, u.body, now(), now() + $12 * interval '1 millisecond'
		FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
			$8::smallint[], $9::bigint[], $10::jsonb[], $11::bytea[])
			AS u(id, exchange, routing_key, message_id, correlation_id, reply_to, type, priority,
				expiration_ms, headers, body)`,
		ids, exchange, key, msgID, corr, reply, typ, prio, expiration, headers, body, s.lease.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("pgstore: stage %d messages: %w", n, err)
	}
	return out, nil
}

// ClaimOutbox leases messages whose lease expired: left by a crashed
// process, or by a publish that failed.
func (s *Store) ClaimOutbox(ctx context.Context, limit int) ([]saga.Message, error) {
	rows, err := s.pool.Query(ctx, `
		UPDATE outbox SET leased_until = now() + $2 * interval '1 millisecond'
		WHERE id IN (SELECT id FROM outbox WHERE leased_until < now()
			ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
		RETURNING id, exchange, routing_key, message_id, correlation_id, reply_to, type, priority,
			expiration_ms, headers, body, created_at`, limit, s.lease.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("pgstore: claim outbox: %w", err)
	}
	defer rows.Close()
	var out []saga.Message
	for rows.Next() {
		var (
			m       saga.Message
			prio    int16
			expMS   int64
			headers []byte
		)
		if err := rows.Scan(&m.OutboxID, &m.Exchange, &m.RoutingKey, &m.MessageID, &m.CorrelationID,
			&m.ReplyTo, &m.Type, &prio, &expMS, &headers, &m.Body, &m.Timestamp); err != nil {
			return nil, fmt.Errorf("pgstore: claim outbox: %w", err)
		}
		m.Priority, m.Expiration = saga.Priority(prio), time.Duration(expMS)*time.Millisecond
		m.Timestamp = m.Timestamp.UTC()
		if len(headers) > 0 {
			if err := json.Unmarshal(headers, &m.Headers); err != nil {
				return nil, fmt.Errorf("pgstore: outbox %s headers: %w", m.OutboxID, err)
			}
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pgstore: claim outbox: %w", err)
	}
	slices.SortFunc(out, func(a, b saga.Message) int { return compareUUID(a.OutboxID, b.OutboxID) })
	return out, nil
}

// DeleteOutbox removes published messages.
func (s *Store) DeleteOutbox(ctx context.Context, ids []uuid.UUID) error {
	if len(ids) == 0 {
		return nil
	}
	if _, err := s.pool.Exec(ctx, `DELETE FROM outbox WHERE id = ANY($1)`, ids); err != nil {
		return fmt.Errorf("pgstore: delete %d outbox rows: %w", len(ids), err)
	}
	return nil
}

// Get loads one saga.
func (s *Store) Get(ctx context.Context, id uuid.UUID) (saga.Instance, error) {
	in, err := scan(s.pool.QueryRow(ctx, `SELECT `+columns+` FROM sagas WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return saga.Instance{}, saga.ErrNotFound
	}
	if err != nil {
		return saga.Instance{}, fmt.Errorf("pgstore: get saga %s: %w", id, err)
	}
	return in, nil
}

// ListFilter selects sagas for List.
type ListFilter struct {
	// State is a state label ("stuck", "charging_payment"); empty for all.
	State string
	// Before is a cursor: only sagas older than this id (ids are UUIDv7).
	Before uuid.UUID
	// Limit is the page size.
	Limit int
}

// List returns sagas newest first.
func (s *Store) List(ctx context.Context, f ListFilter) ([]saga.Instance, error) {
	before := f.Before
	if before == uuid.Nil {
		before = uuid.Max
	}
	var (
		rows pgx.Rows
		err  error
	)
	// Two statements rather than one with an optional predicate, so that
	// each gets a plan that uses its index.
	if f.State == "" {
		rows, err = s.pool.Query(ctx, `SELECT `+columns+` FROM sagas WHERE id < $1
			ORDER BY id DESC LIMIT $2`, before, f.Limit)
	} else {
		rows, err = s.pool.Query(ctx, `SELECT `+columns+` FROM sagas WHERE state = $1 AND id < $2
			ORDER BY id DESC LIMIT $3`, f.State, before, f.Limit)
	}
	if err != nil {
		return nil, fmt.Errorf("pgstore: list sagas: %w", err)
	}
	defer rows.Close()
	var out []saga.Instance
	for rows.Next() {
		in, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("pgstore: list sagas: %w", err)
		}
		out = append(out, in)
	}
	return out, rows.Err()
}

// OutboxStats reports how many messages wait in the outbox and the age of
// the oldest.
func (s *Store) OutboxStats(ctx context.Context) (count int64, oldest time.Duration, err error) {
	var age *float64
	err = s.pool.QueryRow(ctx, `SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 FROM outbox`).
		Scan(&count, &age)
	if err != nil {
		return 0, 0, fmt.Errorf("pgstore: outbox stats: %w", err)
	}
	if age != nil {
		oldest = time.Duration(*age * float64(time.Second))
	}
	return count, oldest, nil
}

// CountState counts sagas in one state label.
func (s *Store) CountState(ctx context.Context, state string) (int64, error) {
	var n int64
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM sagas WHERE state = $1`, state).Scan(&n); err != nil {
		return 0, fmt.Errorf("pgstore: count %s sagas: %w", state, err)
	}
	return n, nil
}

func compareUUID(a, b uuid.UUID) int {
	for i := range a {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return -1
			}
			return 1
		}
	}
	return 0
}
