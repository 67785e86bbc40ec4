// Package pgstore is the PostgreSQL Store of the saga engine: sagas, their
// history and the transactional outbox. All of the engine's SQL lives here.
//
// Tables are unqualified: the pool's search_path names the schema (the
// orchestrator's section of schema.sql), so a deployment can keep the
// engine's tables wherever it likes.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"

	json "github.com/goccy/go-json"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/internal/pgtx"
)

// Config tunes a Store.
type Config struct {
	// OutboxLease is how long a staged message belongs to the relay of the
	// process that wrote it; after that the recovery scan of any process may
	// publish it (default 15s).
	OutboxLease time.Duration
	// OnQuarantine, when set, is told about every row the store sets aside
	// because it cannot be read or transitioned ("saga" or "outbox", its id,
	// why): log it and count it. The row stays for an operator
	// (ListQuarantined) and no loop claims it again.
	OnQuarantine func(kind string, id uuid.UUID, reason error)
}

// Transient reports whether err says PostgreSQL is away or busy (a lost
// connection, a restart, a deadlock) rather than that the work can never
// succeed; consumers retry the former later and count the latter
// (amqpbus.ConsumerConfig.Transient).
func Transient(err error) bool { return pgtx.Transient(err) }

// Store implements saga.Store on a pgx pool.
type Store struct {
	pool         *pgxpool.Pool
	lease        time.Duration
	onQuarantine func(kind string, id uuid.UUID, reason error)
}

var _ saga.Store = (*Store)(nil)

// New returns a Store on pool. The tables must exist (schema.sql).
func New(pool *pgxpool.Pool, cfg Config) *Store {
	if cfg.OutboxLease <= 0 {
		cfg.OutboxLease = 15 * time.Second
	}
	if cfg.OnQuarantine == nil {
		cfg.OnQuarantine = func(string, uuid.UUID, error) {}
	}
	return &Store{pool: pool, lease: cfg.OutboxLease, onQuarantine: cfg.OnQuarantine}
}

const columns = `id, definition, phase, state, step, attempt, waiting, deadline, stuck_in,
	reason, stuck_reason, priority, data, history, seq, trace_parent, created_at, updated_at, version`

func scan(row pgx.Row) (saga.Instance, error) {
	var (
		in       saga.Instance
		phase    string
		stuckIn  string
		deadline *time.Time
		prio     int16
		history  []byte
		data     []byte // a json.RawMessage would go through encoding/json's validation
	)
	err := row.Scan(&in.ID, &in.Definition, &phase, &in.State, &in.Step, &in.Attempt, &in.Waiting,
		&deadline, &stuckIn, &in.Reason, &in.StuckReason, &prio, &data, &history, &in.Seq,
		&in.TraceParent, &in.CreatedAt, &in.UpdatedAt, &in.Version)
	if err != nil {
		return saga.Instance{}, err
	}
	in.Data = data
	in.Phase, in.StuckIn, in.Priority = saga.Phase(phase), saga.Phase(stuckIn), saga.Priority(prio)
	if deadline != nil {
		in.Deadline = deadline.UTC()
	}
	in.CreatedAt, in.UpdatedAt = in.CreatedAt.UTC(), in.UpdatedAt.UTC()
	if err := json.Unmarshal(history, &in.History); err != nil {
		return in, &CorruptError{ID: in.ID, Err: fmt.Errorf("history does not parse: %w", err)}
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

// CorruptError is a saga row the store cannot read back (its history does
// not parse). Such a saga is quarantined where a loop meets it: marked
// stuck with the reason, so that no loop claims it again and operators see
// it, and reported to Config.OnQuarantine.
type CorruptError struct {
	ID  uuid.UUID
	Err error
}

func (e *CorruptError) Error() string { return fmt.Sprintf("pgstore: saga %s: %v", e.ID, e.Err) }
func (e *CorruptError) Unwrap() error { return e.Err }

func deadlineOf(in *saga.Instance) *time.Time {
	if in.Deadline.IsZero() {
		return nil
	}
	return &in.Deadline
}

// Create inserts one saga and stages its messages: CreateBatch of one.
func (s *Store) Create(ctx context.Context, ns saga.NewSaga) (saga.Instance, bool, []saga.Message, error) {
	res, err := s.CreateBatch(ctx, []saga.NewSaga{ns})
	if err != nil {
		return saga.Instance{}, false, nil, err
	}
	r := res[0]
	return r.Instance, r.Created, r.Messages, r.Err
}

// CreateBatch inserts sagas with one INSERT over unnested arrays, finds the
// existing sagas of keys that conflicted, stages the new sagas' messages,
// and commits: one transaction for many accepted orders.
func (s *Store) CreateBatch(ctx context.Context, batch []saga.NewSaga) ([]saga.CreateResult, error) {
	n := len(batch)
	var (
		ids                                        = make([]pgtype.UUID, n)
		def, phase, state, stuckIn, reason, stuckR = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		trace, fp                                  = make([]string, n), make([]string, n)
		step, attempt, seq, version                = make([]int32, n), make([]int32, n), make([]int32, n), make([]int32, n)
		prio                                       = make([]int16, n)
		waiting                                    = make([]bool, n)
		deadline                                   = make([]pgtype.Timestamptz, n)
		data, history                              = make([][]byte, n), make([][]byte, n)
		keys                                       = make([]pgtype.Text, n)
		created, updated                           = make([]time.Time, n), make([]time.Time, n)
		hasKeys                                    bool
	)
	for i, ns := range batch {
		in := &ns.Instance
		h, err := json.Marshal(in.History)
		if err != nil {
			return nil, fmt.Errorf("pgstore: history: %w", err)
		}
		ids[i] = pgtype.UUID{Bytes: in.ID, Valid: true}
		def[i], phase[i], state[i], stuckIn[i] = in.Definition, string(in.Phase), in.State, string(in.StuckIn)
		reason[i], stuckR[i], trace[i], fp[i] = in.Reason, in.StuckReason, in.TraceParent, ns.Fingerprint
		step[i], attempt[i], seq[i], prio[i] = int32(in.Step), int32(in.Attempt), int32(in.Seq), int16(in.Priority)
		version[i] = int32(saga.VersionOf(in))
		waiting[i], deadline[i] = in.Waiting, pgtype.Timestamptz{Time: in.Deadline, Valid: !in.Deadline.IsZero()}
		data[i], history[i] = in.Data, h
		keys[i] = pgtype.Text{String: ns.Key, Valid: ns.Key != ""}
		hasKeys = hasKeys || ns.Key != ""
		created[i], updated[i] = in.CreatedAt, in.UpdatedAt
	}
	t, err := s.begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("pgstore: create %d sagas: %w", n, err)
	}
	defer t.close(ctx)
	const insert = `
		INSERT INTO sagas (id, definition, phase, state, step, attempt, waiting, deadline, stuck_in,
			reason, stuck_reason, priority, data, history, seq, trace_parent, idempotency_key,
			fingerprint, created_at, updated_at, version)
		SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[], $6::int[],
			$7::bool[], $8::timestamptz[], $9::text[], $10::text[], $11::text[], $12::smallint[],
			$13::json[], $14::json[], $15::int[], $16::text[], $17::text[], $18::text[],
			$19::timestamptz[], $20::timestamptz[], $21::int[])
		ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
		RETURNING id`
	args := []any{ids, def, phase, state, step, attempt, waiting, deadline, stuckIn, reason, stuckR, prio,
		data, history, seq, trace, keys, fp, created, updated, version}
	out := make([]saga.CreateResult, n)
	var msgs []saga.Message
	b := &pgx.Batch{}
	if !hasKeys {
		// Fresh ids and no keys: nothing can conflict, so the sagas travel
		// with their messages and the commit, in one round trip.
		b.Queue(insert, args...)
		for i, ns := range batch {
			out[i] = saga.CreateResult{Instance: ns.Instance, Created: true}
			msgs = append(msgs, ns.Messages...)
		}
	} else if msgs, err = s.insertKeyed(ctx, t, batch, out, insert, args); err != nil {
		return nil, err
	}
	staged, err := s.stage(b, msgs)
	if err != nil {
		return nil, err
	}
	if err := t.commit(ctx, b); err != nil {
		return nil, fmt.Errorf("pgstore: create %d sagas: %w", n, err)
	}
	// Hand each new saga its staged messages (stage keeps their order).
	k := 0
	for i, ns := range batch {
		if out[i].Created {
			out[i].Messages = staged[k : k+len(ns.Messages)]
			k += len(ns.Messages)
		}
	}
	return out, nil
}

// insertKeyed inserts a batch with idempotency keys, fills out with the
// created sagas and, for keys that conflicted, the existing saga (or
// ErrKeyReused), and returns the messages of the created ones.
func (s *Store) insertKeyed(ctx context.Context, t *txn, batch []saga.NewSaga, out []saga.CreateResult, insert string, args []any) ([]saga.Message, error) {
	inserted := map[uuid.UUID]bool{}
	err := t.query(ctx, func(rows pgx.Rows) error {
		var id uuid.UUID
		if err := rows.Scan(&id); err != nil {
			return err
		}
		inserted[id] = true
		return nil
	}, insert, args...)
	if err != nil {
		return nil, fmt.Errorf("pgstore: create %d sagas: %w", len(batch), err)
	}
	var msgs []saga.Message
	var conflicted []string
	for i, ns := range batch {
		if inserted[ns.Instance.ID] {
			out[i] = saga.CreateResult{Instance: ns.Instance, Created: true}
			msgs = append(msgs, ns.Messages...)
		} else {
			conflicted = append(conflicted, ns.Key)
		}
	}
	if len(conflicted) == 0 {
		return msgs, nil
	}
	existing, err := s.byKeys(ctx, t.conn, conflicted)
	if err != nil {
		return nil, err
	}
	for i, ns := range batch {
		if out[i].Created {
			continue
		}
		e, ok := existing[ns.Key]
		switch {
		case !ok:
			return nil, fmt.Errorf("pgstore: saga %s conflicted without an idempotency key", ns.Instance.ID)
		case e.fingerprint != ns.Fingerprint:
			out[i] = saga.CreateResult{Instance: e.in, Err: saga.ErrKeyReused}
		default:
			out[i] = saga.CreateResult{Instance: e.in}
		}
	}
	return msgs, nil
}

// txn is a transaction on a connection of its own whose statements travel
// in pipelines: BEGIN with the first, COMMIT with the last, so that a
// decision costs two round trips (lock and load; save, stage and commit)
// however many statements it takes.
type txn struct {
	conn  *pgxpool.Conn
	begun bool // BEGIN sent
	open  bool // neither committed nor rolled back
}

func (s *Store) begin(ctx context.Context) (*txn, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	return &txn{conn: conn}, nil
}

// queue adds BEGIN in front of the first statements sent.
func (t *txn) queue(b *pgx.Batch) *pgx.Batch {
	if t.begun {
		return b
	}
	t.begun, t.open = true, true
	first := &pgx.Batch{}
	first.Queue("BEGIN")
	first.QueuedQueries = append(first.QueuedQueries, b.QueuedQueries...)
	return first
}

// query runs sql in the transaction and calls each for every row.
func (t *txn) query(ctx context.Context, each func(pgx.Rows) error, sql string, args ...any) error {
	b := &pgx.Batch{}
	b.Queue(sql, args...)
	sent := t.queue(b)
	br := t.conn.SendBatch(ctx, sent)
	defer br.Close()
	for range len(sent.QueuedQueries) - 1 {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	rows, err := br.Query()
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := each(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// commit sends b's statements and COMMIT.
func (t *txn) commit(ctx context.Context, b *pgx.Batch) error {
	b.Queue("COMMIT")
	err := pgtx.SendCommit(ctx, t.conn, t.queue(b))
	if err == nil || errors.Is(err, pgtx.ErrRolledBack) {
		t.open = false
	}
	return err
}

// close rolls back a transaction left open and releases its connection.
func (t *txn) close(ctx context.Context) {
	if t.open {
		_, _ = t.conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
	}
	t.conn.Release()
}

type keyed struct {
	in          saga.Instance
	fingerprint string
}

func (s *Store) byKeys(ctx context.Context, conn *pgxpool.Conn, keys []string) (map[string]keyed, error) {
	rows, err := conn.Query(ctx, `SELECT `+columns+`, idempotency_key, fingerprint FROM sagas WHERE idempotency_key = ANY($1)`, keys)
	if err != nil {
		return nil, fmt.Errorf("pgstore: sagas by idempotency key: %w", err)
	}
	defer rows.Close()
	out := map[string]keyed{}
	for rows.Next() {
		var key, fp string
		in, err := scan(rowFunc(func(dest ...any) error { return rows.Scan(append(dest, &key, &fp)...) }))
		if err != nil {
			return nil, fmt.Errorf("pgstore: sagas by idempotency key: %w", err)
		}
		out[key] = keyed{in: in, fingerprint: fp}
	}
	return out, rows.Err()
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
	t, err := s.begin(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("pgstore: apply: %w", err)
	}
	defer t.close(ctx)
	loaded, _, bad, err := s.lock(ctx, t, `SELECT `+columns+` FROM sagas WHERE id = ANY($1) ORDER BY id FOR UPDATE`, pgUUIDs(ids))
	if err != nil {
		return nil, nil, err
	}
	return s.decide(ctx, t, loaded, bad, inputs, fn, false)
}

// ApplyDue claims due sagas of the claim's definitions, skipping those
// other transactions hold (so several orchestrators share the timer work),
// and times them out. A saga that cannot be read or transitioned is
// quarantined.
func (s *Store) ApplyDue(ctx context.Context, c saga.Claim, fn saga.TransitionFunc) ([]saga.Outcome, []saga.Message, error) {
	t, err := s.begin(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("pgstore: apply due: %w", err)
	}
	defer t.close(ctx)
	loaded, order, bad, err := s.lock(ctx, t, `SELECT `+columns+` FROM sagas WHERE deadline <= $1 AND definition = ANY($3)
		AND version <= ($4::int[])[array_position($3, definition)]
		ORDER BY deadline LIMIT $2 FOR UPDATE SKIP LOCKED`, c.Now, c.Limit, c.Definitions, newest(c))
	if err != nil {
		return nil, nil, err
	}
	if len(order) == 0 && len(bad) == 0 {
		return nil, nil, nil
	}
	inputs := make([]saga.Input, 0, len(order))
	for _, id := range order {
		inputs = append(inputs, saga.Input{Kind: saga.InputTimeout, SagaID: id})
	}
	slices.SortFunc(inputs, func(a, b saga.Input) int { return compareUUID(a.SagaID, b.SagaID) })
	return s.decide(ctx, t, loaded, bad, inputs, fn, true)
}

// ApplyPending claims pending sagas of the claim's definitions, skipping
// those other transactions hold, and starts them: the c.Oldest oldest
// whatever their priority (so that no priority waits without bound), then
// the highest priority and oldest first.
func (s *Store) ApplyPending(ctx context.Context, c saga.Claim, fn saga.TransitionFunc) ([]saga.Outcome, []saga.Message, error) {
	t, err := s.begin(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("pgstore: apply pending: %w", err)
	}
	defer t.close(ctx)
	oldest := min(c.Oldest, c.Limit)
	loaded, order, bad, err := s.lock(ctx, t, `SELECT `+columns+` FROM sagas WHERE phase = 'pending' AND definition = ANY($2)
		AND version <= ($3::int[])[array_position($2, definition)]
		ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED`, oldest, c.Definitions, newest(c))
	if err != nil {
		return nil, nil, err
	}
	more, moreOrder, moreBad, err := s.lock(ctx, t, `SELECT `+columns+` FROM sagas WHERE phase = 'pending' AND definition = ANY($2)
		AND version <= ($4::int[])[array_position($2, definition)]
		AND NOT id = ANY($3) ORDER BY priority DESC, id LIMIT $1 FOR UPDATE SKIP LOCKED`,
		c.Limit-len(order)-len(bad), c.Definitions, pgUUIDs(append(slices.Clone(order), keys(bad)...)), newest(c))
	if err != nil {
		return nil, nil, err
	}
	maps.Copy(loaded, more)
	maps.Copy(bad, moreBad)
	// High priority first within the batch: their commands leave first.
	order = append(order, moreOrder...)
	slices.SortStableFunc(order, func(a, b uuid.UUID) int { return int(loaded[b].Priority) - int(loaded[a].Priority) })
	if len(order) == 0 && len(bad) == 0 {
		return nil, nil, nil
	}
	inputs := make([]saga.Input, len(order))
	for i, id := range order {
		inputs[i] = saga.Input{Kind: saga.InputStart, SagaID: id}
	}
	return s.decide(ctx, t, loaded, bad, inputs, fn, true)
}

// newest is the claim's newest version per definition: c.Versions, or no
// bound.
func newest(c saga.Claim) []int32 {
	out := make([]int32, len(c.Definitions))
	for i := range out {
		out[i] = math.MaxInt32
		if i < len(c.Versions) {
			out[i] = int32(c.Versions[i])
		}
	}
	return out
}

func keys(m map[uuid.UUID]error) []uuid.UUID {
	out := make([]uuid.UUID, 0, len(m))
	for id := range m {
		out = append(out, id)
	}
	return out
}

// CountActive counts the sagas with a command in flight: those with a
// deadline (pending, stuck and terminal sagas have none) but not in one
// of the waiting states.
func (s *Store) CountActive(ctx context.Context, waiting []saga.StateRef) (int, error) {
	defs, states := make([]string, len(waiting)), make([]string, len(waiting))
	for i, w := range waiting {
		defs[i], states[i] = w.Definition, w.State
	}
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM sagas WHERE deadline IS NOT NULL
		AND (definition, state) NOT IN (SELECT d, s FROM unnest($1::text[], $2::text[]) AS w(d, s))`,
		defs, states).Scan(&n); err != nil {
		return 0, fmt.Errorf("pgstore: count active sagas: %w", err)
	}
	return n, nil
}

// lock runs, in t, a query that locks sagas, and returns them by id and in
// the query's order; the ones whose rows cannot be read come back in bad,
// with why.
func (s *Store) lock(ctx context.Context, t *txn, sql string, args ...any) (map[uuid.UUID]saga.Instance, []uuid.UUID, map[uuid.UUID]error, error) {
	out := map[uuid.UUID]saga.Instance{}
	bad := map[uuid.UUID]error{}
	var order []uuid.UUID
	err := t.query(ctx, func(rows pgx.Rows) error {
		in, err := scan(rows)
		var corrupt *CorruptError
		if errors.As(err, &corrupt) {
			bad[corrupt.ID] = corrupt.Err
			return nil
		}
		if err != nil {
			return err
		}
		out[in.ID] = in
		order = append(order, in.ID)
		return nil
	}, sql, args...)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("pgstore: lock sagas: %w", err)
	}
	return out, order, bad, nil
}

// decide applies inputs to locked sagas, saves the changed ones in one
// UPDATE, stages their messages, and commits.
//
// Sagas in bad could not be read: they are quarantined in this transaction
// and their inputs answered ErrQuarantined. With quarantineFailed (the
// timer and the starter, which would meet the saga again on every pass),
// so is a saga whose transition fails.
func (s *Store) decide(ctx context.Context, t *txn, sagas map[uuid.UUID]saga.Instance, bad map[uuid.UUID]error,
	inputs []saga.Input, fn saga.TransitionFunc, quarantineFailed bool) ([]saga.Outcome, []saga.Message, error) {
	outs := make([]saga.Outcome, len(inputs))
	var (
		changed []uuid.UUID
		seen    = map[uuid.UUID]bool{}
		msgs    []saga.Message
	)
	// Decide the highest priority sagas first (stable: a saga's inputs keep
	// their order), so that their messages leave first.
	order := make([]int, len(inputs))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		return int(sagas[inputs[b].SagaID].Priority) - int(sagas[inputs[a].SagaID].Priority)
	})
	for _, i := range order {
		inp := inputs[i]
		in, ok := sagas[inp.SagaID]
		if why, corrupt := bad[inp.SagaID]; corrupt {
			outs[i] = saga.Outcome{Decision: saga.Decision{Instance: saga.Instance{ID: inp.SagaID}}, Err: fmt.Errorf("%w: %v", saga.ErrQuarantined, why)}
			continue
		}
		if !ok {
			outs[i].Err = saga.ErrNotFound
			continue
		}
		d, m, err := fn(in, inp)
		if err != nil {
			outs[i] = saga.Outcome{Decision: saga.Decision{Instance: in}, Err: err}
			if quarantineFailed {
				bad[inp.SagaID] = fmt.Errorf("%s does not apply: %w", inp.Kind, err)
				outs[i].Err = fmt.Errorf("%w: %w", saga.ErrQuarantined, err)
			}
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
	b := &pgx.Batch{}
	if len(changed) > 0 {
		if err := s.save(b, sagas, changed); err != nil {
			return nil, nil, err
		}
	}
	staged, err := s.stage(b, msgs)
	if err != nil {
		return nil, nil, err
	}
	for id, why := range bad {
		queueQuarantine(b, id, why)
	}
	if err := t.commit(ctx, b); err != nil {
		return nil, nil, fmt.Errorf("pgstore: commit %d sagas: %w", len(changed), err)
	}
	for id, why := range bad {
		s.onQuarantine("saga", id, why)
	}
	return outs, staged, nil
}

// QuarantinePrefix starts the stuck reason of a quarantined saga.
const QuarantinePrefix = saga.QuarantinePrefix

// queueQuarantine sets a saga aside: stuck, with the reason, and no
// deadline, so that no loop claims it again; an operator lists it with the
// stuck sagas.
func queueQuarantine(b *pgx.Batch, id uuid.UUID, why error) {
	b.Queue(`UPDATE sagas SET stuck_in = CASE WHEN phase = 'stuck' THEN stuck_in ELSE phase END,
		phase = 'stuck', state = 'stuck', stuck_reason = $2, deadline = NULL, waiting = false, updated_at = now()
		WHERE id = $1`, pgtype.UUID{Bytes: id, Valid: true}, QuarantinePrefix+why.Error())
}

// save queues the UPDATE of the changed sagas, over unnested arrays.
func (s *Store) save(b *pgx.Batch, sagas map[uuid.UUID]saga.Instance, ids []uuid.UUID) error {
	n := len(ids)
	var (
		phase, state, stuckIn, reason, stuckReason = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		step, attempt, seq, version                = make([]int32, n), make([]int32, n), make([]int32, n), make([]int32, n)
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
		step[i], attempt[i], seq[i], version[i] = int32(in.Step), int32(in.Attempt), int32(in.Seq), int32(saga.VersionOf(&in))
		waiting[i], deadline[i] = in.Waiting, deadlineOf(&in)
		data[i], history[i], updated[i] = in.Data, h, in.UpdatedAt
	}
	b.Queue(`
		UPDATE sagas AS s SET phase = u.phase, state = u.state, step = u.step, attempt = u.attempt,
			waiting = u.waiting, deadline = u.deadline, stuck_in = u.stuck_in, reason = u.reason,
			stuck_reason = u.stuck_reason, data = u.data, history = u.history, seq = u.seq,
			updated_at = u.updated_at, version = u.version
		FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::int[], $6::bool[],
			$7::timestamptz[], $8::text[], $9::text[], $10::text[], $11::json[], $12::json[],
			$13::int[], $14::timestamptz[], $15::int[])
			AS u(id, phase, state, step, attempt, waiting, deadline, stuck_in, reason, stuck_reason,
				data, history, seq, updated_at, version)
		WHERE s.id = u.id`,
		pgUUIDs(ids), phase, state, step, attempt, waiting, deadline, stuckIn, reason, stuckReason,
		data, history, seq, updated, version)
	return nil
}

// stage queues the messages of a transaction as one outbox row, leased to
// this process's relay, and returns them with that row's id: one insert
// and, once published, one delete, however many messages a batch causes.
func (s *Store) stage(b *pgx.Batch, msgs []saga.Message) ([]saga.Message, error) {
	if len(msgs) == 0 {
		return nil, nil
	}
	id, err := uuid.NewV7()
	if err != nil {
		return nil, fmt.Errorf("pgstore: outbox id: %w", err)
	}
	out := make([]saga.Message, len(msgs))
	for i, m := range msgs {
		m.OutboxID = id
		out[i] = m
	}
	b.Queue(`INSERT INTO outbox (id, messages, payload, created_at, leased_until)
		VALUES ($1, $2, $3, now(), now() + $4 * interval '1 millisecond')`,
		pgtype.UUID{Bytes: id, Valid: true}, len(msgs), encodeMessages(msgs), s.lease.Milliseconds())
	return out, nil
}

// ClaimOutbox leases outbox rows whose lease expired (left by a crashed
// process, or by a publish that failed) and returns their messages; limit
// bounds the rows, not the messages.
func (s *Store) ClaimOutbox(ctx context.Context, limit int) ([]saga.Message, error) {
	rows, err := s.pool.Query(ctx, `
		UPDATE outbox SET leased_until = now() + $2 * interval '1 millisecond'
		WHERE id IN (SELECT id FROM outbox WHERE leased_until < now()
			ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
		RETURNING id, payload, created_at`, limit, s.lease.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("pgstore: claim outbox: %w", err)
	}
	defer rows.Close()
	var out []saga.Message
	bad := map[uuid.UUID]error{}
	for rows.Next() {
		var (
			id      uuid.UUID
			payload []byte
			staged  time.Time
		)
		if err := rows.Scan(&id, &payload, &staged); err != nil {
			return nil, fmt.Errorf("pgstore: claim outbox: %w", err)
		}
		batch, err := decodeMessages(payload)
		if err != nil {
			bad[id] = err
			continue
		}
		for _, m := range batch {
			m.OutboxID = id
			if m.Timestamp.IsZero() {
				m.Timestamp = staged.UTC()
			}
			out = append(out, m)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pgstore: claim outbox: %w", err)
	}
	rows.Close()
	// A row that does not decode is set aside (its lease never ends) with
	// the reason; the others are published.
	for id, why := range bad {
		if _, err := s.pool.Exec(ctx, `UPDATE outbox SET leased_until = 'infinity', quarantine_reason = $2 WHERE id = $1`,
			pgtype.UUID{Bytes: id, Valid: true}, why.Error()); err != nil {
			return nil, fmt.Errorf("pgstore: quarantine outbox row %s: %w", id, err)
		}
		s.onQuarantine("outbox", id, why)
	}
	slices.SortStableFunc(out, func(a, b saga.Message) int { return compareUUID(a.OutboxID, b.OutboxID) })
	return out, nil
}

// Quarantined is a row set aside because it cannot be read or
// transitioned.
type Quarantined struct {
	Kind   string    `json:"kind"` // saga, outbox
	ID     uuid.UUID `json:"id"`
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}

// ListQuarantined lists the quarantined sagas and outbox rows, newest
// first, at most limit of each.
func (s *Store) ListQuarantined(ctx context.Context, limit int) ([]Quarantined, error) {
	rows, err := s.pool.Query(ctx, `
		(SELECT 'saga', id, stuck_reason, updated_at FROM sagas WHERE phase = 'stuck' AND starts_with(stuck_reason, $2)
			ORDER BY id DESC LIMIT $1)
		UNION ALL
		(SELECT 'outbox', id, quarantine_reason, created_at FROM outbox WHERE quarantine_reason IS NOT NULL
			ORDER BY id DESC LIMIT $1)`, limit, QuarantinePrefix)
	if err != nil {
		return nil, fmt.Errorf("pgstore: list quarantined: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Quarantined, error) {
		var q Quarantined
		err := r.Scan(&q.Kind, &q.ID, &q.Reason, &q.Since)
		q.Since = q.Since.UTC()
		return q, err
	})
}

// OutboxRow is an outbox row decoded for a human (sagactl outbox inspect).
type OutboxRow struct {
	ID          uuid.UUID `json:"id"`
	CreatedAt   time.Time `json:"created_at"`
	LeasedUntil time.Time `json:"leased_until"`
	// Quarantine is why the row was set aside; empty for a row waiting to
	// be published.
	Quarantine string `json:"quarantine,omitempty"`
	// Messages are the row's messages, decoded; nil when the payload does
	// not decode (Error says why).
	Messages []OutboxMessage `json:"messages"`
	Error    string          `json:"error,omitempty"`
}

// OutboxMessage is one decoded message of an outbox row.
type OutboxMessage struct {
	Kind          string `json:"kind"`
	Type          string `json:"type"`
	MessageID     string `json:"message_id"`
	CorrelationID string `json:"correlation_id,omitempty"`
	SagaID        string `json:"saga_id,omitempty"`
	Bytes         int    `json:"bytes"`
}

// ListOutbox reads up to limit outbox rows, oldest first, and decodes
// their compressed payloads; it changes nothing.
func (s *Store) ListOutbox(ctx context.Context, limit int) ([]OutboxRow, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, created_at, leased_until, coalesce(quarantine_reason, ''), payload
		FROM outbox ORDER BY id LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("pgstore: list outbox: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (OutboxRow, error) {
		var o OutboxRow
		var payload []byte
		if err := r.Scan(&o.ID, &o.CreatedAt, &o.LeasedUntil, &o.Quarantine, &payload); err != nil {
			return o, err
		}
		o.CreatedAt, o.LeasedUntil = o.CreatedAt.UTC(), o.LeasedUntil.UTC()
		msgs, err := decodeMessages(payload)
		if err != nil {
			o.Error = err.Error()
			return o, nil
		}
		o.Messages = []OutboxMessage{}
		for _, m := range msgs {
			om := OutboxMessage{Kind: m.Kind.String(), Type: m.Type, MessageID: m.MessageID,
				CorrelationID: m.CorrelationID, Bytes: len(m.Body)}
			if env, err := saga.Decode(m.Body); err == nil {
				om.SagaID = env.SagaID
			}
			o.Messages = append(o.Messages, om)
		}
		return o, nil
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: list outbox: %w", err)
	}
	return out, nil
}

// DeleteOutbox removes outbox rows whose messages were all published. It
// commits without waiting for the WAL flush: a delete lost in a crash only
// means messages published again, which consumers deduplicate; nothing of
// a saga's state rides on it.
func (s *Store) DeleteOutbox(ctx context.Context, ids []uuid.UUID) error {
	if len(ids) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(`SET LOCAL synchronous_commit TO off`)
	b.Queue(`DELETE FROM outbox WHERE id = ANY($1)`, pgUUIDs(ids))
	b.Queue(`COMMIT`)
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
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
	// Definition is a saga type ("order"); empty for all.
	Definition string
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
	// A statement per filter rather than one with optional predicates, so
	// that each gets a plan that uses its index: by state (sagas_state),
	// else newest first by id (the primary key); the definition is checked
	// on the rows these reach (no index of its own: one more index to
	// update on every decision would cost every saga).
	switch {
	case f.State == "" && f.Definition == "":
		rows, err = s.pool.Query(ctx, `SELECT `+columns+` FROM sagas WHERE id < $1
			ORDER BY id DESC LIMIT $2`, before, f.Limit)
	case f.State == "":
		rows, err = s.pool.Query(ctx, `SELECT `+columns+` FROM sagas WHERE definition = $1 AND id < $2
			ORDER BY id DESC LIMIT $3`, f.Definition, before, f.Limit)
	case f.Definition == "":
		rows, err = s.pool.Query(ctx, `SELECT `+columns+` FROM sagas WHERE state = $1 AND id < $2
			ORDER BY id DESC LIMIT $3`, f.State, before, f.Limit)
	default:
		rows, err = s.pool.Query(ctx, `SELECT `+columns+` FROM sagas WHERE state = $1 AND definition = $2 AND id < $3
			ORDER BY id DESC LIMIT $4`, f.State, f.Definition, before, f.Limit)
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
	err = s.pool.QueryRow(ctx, `SELECT coalesce(sum(messages), 0), extract(epoch FROM now() - min(created_at))::float8
		FROM outbox WHERE quarantine_reason IS NULL`).
		Scan(&count, &age)
	if err != nil {
		return 0, 0, fmt.Errorf("pgstore: outbox stats: %w", err)
	}
	if age != nil {
		oldest = time.Duration(*age * float64(time.Second))
	}
	return count, oldest, nil
}

// Positions groups the live sagas of the definitions in served whose
// version is not one served lists for their definition, by version,
// phase, state and the step or compensation in progress (the last of
// their history's), with the steps they went through. It reads every
// live saga's row once (no index serves it: one would cost every
// decision a write), which a deploy check can afford and the hot path
// could not.
func (s *Store) Positions(ctx context.Context, served map[string][]int) ([]saga.Position, error) {
	var names, defs []string
	var versions []int32
	for name, vs := range served {
		names = append(names, name)
		for _, v := range vs {
			defs, versions = append(defs, name), append(versions, int32(v))
		}
	}
	rows, err := s.pool.Query(ctx, `
		WITH live AS (
			SELECT id, definition, version, phase, stuck_in, state, created_at,
				CASE WHEN json_typeof(history) = 'array' THEN history ELSE '[]' END AS history
			FROM sagas s
			WHERE phase IN ('pending', 'running', 'compensating', 'stuck') AND definition = ANY($1)
				AND NOT EXISTS (SELECT 1 FROM unnest($2::text[], $3::int[]) AS v(d, n)
					WHERE v.d = s.definition AND v.n = s.version)
		), placed AS (
			SELECT l.*, coalesce((SELECT r->>'name' FROM json_array_elements(l.history) WITH ORDINALITY AS h(r, i)
				WHERE r->>'kind' IN ('action', 'compensation') ORDER BY i DESC LIMIT 1), '') AS at
			FROM live l
		)
		SELECT p.definition, p.version, p.phase, p.stuck_in, p.state, p.at, count(DISTINCT p.id), min(p.created_at),
			coalesce(array_agg(DISTINCT e.r->>'name') FILTER (WHERE e.r->>'kind' = 'action'), '{}')
		FROM placed p LEFT JOIN LATERAL json_array_elements(p.history) AS e(r) ON true
		GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6`, names, defs, versions)
	if err != nil {
		return nil, fmt.Errorf("pgstore: positions: %w", err)
	}
	defer rows.Close()
	var out []saga.Position
	for rows.Next() {
		var p saga.Position
		var phase, stuckIn string
		if err := rows.Scan(&p.Definition, &p.Version, &phase, &stuckIn, &p.State, &p.At, &p.Count, &p.Oldest, &p.Passed); err != nil {
			return nil, fmt.Errorf("pgstore: positions: %w", err)
		}
		p.Phase, p.StuckIn, p.Oldest = saga.Phase(phase), saga.Phase(stuckIn), p.Oldest.UTC()
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pgstore: positions: %w", err)
	}
	return out, nil
}

// InState returns up to limit ids of definition's sagas in state, oldest
// first, after the id after (the sagas_state index, in id order).
func (s *Store) InState(ctx context.Context, definition, state string, after uuid.UUID, limit int) ([]uuid.UUID, error) {
	rows, err := s.pool.Query(ctx, `SELECT id FROM sagas WHERE state = $1 AND id > $2 AND definition = $3
		ORDER BY state, id LIMIT $4`, state, pgtype.UUID{Bytes: after, Valid: true}, definition, limit)
	if err != nil {
		return nil, fmt.Errorf("pgstore: sagas in %s: %w", state, err)
	}
	ids, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (uuid.UUID, error) {
		var id pgtype.UUID
		err := r.Scan(&id)
		return uuid.UUID(id.Bytes), err
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: sagas in %s: %w", state, err)
	}
	return ids, nil
}

// CountLive counts the sagas that have not ended, by definition and
// state: those with a deadline (running, compensating), pending and
// stuck, each found through its index (sagas_due, sagas_pending,
// sagas_state), never by reading the ended ones.
func (s *Store) CountLive(ctx context.Context) (map[saga.StateRef]int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT definition, state, count(*) FROM sagas
		WHERE deadline IS NOT NULL OR phase = 'pending' OR state = 'stuck' GROUP BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("pgstore: count live sagas: %w", err)
	}
	defer rows.Close()
	out := map[saga.StateRef]int64{}
	for rows.Next() {
		var ref saga.StateRef
		var n int64
		if err := rows.Scan(&ref.Definition, &ref.State, &n); err != nil {
			return nil, fmt.Errorf("pgstore: count live sagas: %w", err)
		}
		out[ref] = n
	}
	return out, rows.Err()
}

// Minute is one minute of activity: sagas started and finished, and the
// 99th percentile of the steps that finished in it.
type Minute struct {
	At             time.Time
	Started        int
	Finished       int
	StepP99Seconds float64
}

// Activity returns the activity of each minute since since, oldest first,
// read from the sagas created since then (ids are UUIDv7: a range of the
// primary key, never the older rows): sagas started, those of them that
// finished, and the p99 of their steps' durations. A saga that started
// before since and finished after it is not counted: a console's chart,
// not an account.
func (s *Store) Activity(ctx context.Context, since time.Time) ([]Minute, error) {
	var lower uuid.UUID // the smallest UUIDv7 of since's millisecond
	ms := since.UnixMilli()
	for i := 0; i < 6; i++ {
		lower[i] = byte(ms >> (40 - 8*i))
	}
	rows, err := s.pool.Query(ctx, `
		WITH recent AS (SELECT created_at, updated_at, phase, history FROM sagas WHERE id >= $1),
		started AS (SELECT date_trunc('minute', created_at) AS m, count(*) AS n FROM recent GROUP BY 1),
		finished AS (SELECT date_trunc('minute', updated_at) AS m, count(*) AS n FROM recent
			WHERE phase IN ('completed', 'rejected', 'cancelled') GROUP BY 1),
		steps AS (SELECT date_trunc('minute', (r->>'finished_at')::timestamptz) AS m,
				percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM
					(r->>'finished_at')::timestamptz - (r->>'started_at')::timestamptz))::float8 AS p99
			FROM recent, json_array_elements(CASE WHEN json_typeof(history) = 'array' THEN history ELSE '[]' END) AS r
			WHERE r->>'kind' IN ('action', 'compensation') AND r->>'finished_at' IS NOT NULL GROUP BY 1)
		SELECT m, coalesce(started.n, 0), coalesce(finished.n, 0), coalesce(steps.p99, 0)
		FROM started FULL JOIN finished USING (m) FULL JOIN steps USING (m)
		WHERE m >= date_trunc('minute', $2::timestamptz) ORDER BY m`, pgtype.UUID{Bytes: lower, Valid: true}, since)
	if err != nil {
		return nil, fmt.Errorf("pgstore: activity: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Minute, error) {
		var m Minute
		err := r.Scan(&m.At, &m.Started, &m.Finished, &m.StepP99Seconds)
		m.At = m.At.UTC()
		return m, err
	})
}

// CountState counts sagas in one state label.
func (s *Store) CountState(ctx context.Context, state string) (int64, error) {
	var n int64
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM sagas WHERE state = $1`, state).Scan(&n); err != nil {
		return 0, fmt.Errorf("pgstore: count %s sagas: %w", state, err)
	}
	return n, nil
}

// pgUUIDs converts ids for pgx, which encodes pgtype.UUID natively but
// google/uuid.UUID through its string form (twenty times slower).
func pgUUIDs(ids []uuid.UUID) []pgtype.UUID {
	out := make([]pgtype.UUID, len(ids))
	for i, id := range ids {
		out[i] = pgtype.UUID{Bytes: id, Valid: true}
	}
	return out
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
