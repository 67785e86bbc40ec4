package saga

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	json "github.com/goccy/go-json"
	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow/saga/internal/collect"
)

// Config tunes a Coordinator. Zero fields take the documented defaults.
type Config struct {
	// CommandTTL sets each command's message TTL to its deadline, so that a
	// command nobody picked up in time is dead-lettered instead of executed
	// late (default true; set DisableCommandTTL to turn it off).
	DisableCommandTTL bool
	// BatchSize is the most inputs applied in one transaction (default 256).
	BatchSize int
	// Linger is how long the batch loop and the relay wait for more work
	// after the first item before they go (default 3ms): replies arrive one
	// at a time, and a batch of one costs as much as a batch of a hundred
	// (3ms rather than 1ms: 8% less CPU per saga on the 2-core machine, for
	// a few milliseconds of latency per step).
	Linger time.Duration
	// CreateLinger is Linger for new sagas (default 1ms): a client waits on
	// each, and under load they arrive in crowds anyway.
	CreateLinger time.Duration
	// Workers is how many batches are applied concurrently (default 1).
	// With one, batches commit in the order their inputs arrived, so inputs
	// delivered first (higher priority) take effect first; with more, a
	// large batch can commit after smaller ones gathered behind it.
	Workers int
	// QueueSize is how many inputs may wait for a batch (default 4096).
	QueueSize int
	// TimerInterval is how often the timer looks for due sagas
	// (default 200ms).
	TimerInterval time.Duration
	// TimerBatch is the most due sagas claimed per transaction (default 512).
	TimerBatch int
	// OldestShare is the share of each admission batch that goes to the
	// oldest pending sagas whatever their priority (default 0.2; negative:
	// none, strict priority). High priority keeps its head start, but a
	// steady stream of it cannot hold normal sagas back without bound.
	OldestShare float64
	// MaxActive bounds the sagas with a command in flight, across every
	// coordinator sharing the store (default 2000). New sagas wait as
	// pending, highest priority first, until there is room: a burst becomes
	// a backlog in the database instead of queues so long that commands
	// expire before a worker reaches them.
	MaxActive int
	// OutboxInterval is how often the outbox is scanned for messages whose
	// relay failed or crashed (default 1s).
	OutboxInterval time.Duration
	// OutboxBatch is the most messages claimed per scan (default 512).
	OutboxBatch int
	// RelayInFlight is how many published batches may wait for their
	// confirms at once (default 256). The relay publishes what commits at
	// once and never waits for a confirm before the next publish: the
	// broker confirms persistent messages when its queues sync to disk,
	// about every 200 ms under load.
	RelayInFlight int
	// PublishTimeout bounds one publish batch, confirms included
	// (default 10s).
	PublishTimeout time.Duration
	// Clock is the time source (default SystemClock).
	Clock Clock
	// Observer is told about every saga change after it commits (default
	// none).
	Observer Observer
}

func (c Config) withDefaults() Config {
	defInt := func(n *int, v int) {
		if *n <= 0 {
			*n = v
		}
	}
	defDur := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	defInt(&c.BatchSize, 256)
	defDur(&c.Linger, 3*time.Millisecond)
	defDur(&c.CreateLinger, time.Millisecond)
	defInt(&c.Workers, 1)
	defInt(&c.QueueSize, 4096)
	defDur(&c.TimerInterval, 200*time.Millisecond)
	defInt(&c.TimerBatch, 512)
	defInt(&c.MaxActive, 2000)
	if c.OldestShare == 0 {
		c.OldestShare = 0.2
	}
	defDur(&c.OutboxInterval, time.Second)
	defInt(&c.OutboxBatch, 512)
	defInt(&c.RelayInFlight, 256)
	defDur(&c.PublishTimeout, 10*time.Second)
	if c.Clock == nil {
		c.Clock = SystemClock{}
	}
	if c.Observer == nil {
		c.Observer = NopObserver{}
	}
	return c
}

// Observer is told about sagas after their changes commit; metrics hang
// here. Calls come from several goroutines.
type Observer interface {
	// SagaCreated is called for every new saga.
	SagaCreated(def *Definition, in Instance)
	// SagaChanged is called for every decision that changed a saga.
	SagaChanged(def *Definition, d Decision)
	// Published is called after each publish attempt of the relay.
	Published(confirmed, failed int)
	// Batch is called after each transaction of the batch loop ("inputs"),
	// the timer ("timer") and the relay ("publish"), with its size and
	// duration.
	Batch(kind string, n int, d time.Duration)
}

// NopObserver observes nothing.
type NopObserver struct{}

// SagaCreated does nothing.
func (NopObserver) SagaCreated(*Definition, Instance) {}

// SagaChanged does nothing.
func (NopObserver) SagaChanged(*Definition, Decision) {}

// Published does nothing.
func (NopObserver) Published(int, int) {}

// Batch does nothing.
func (NopObserver) Batch(string, int, time.Duration) {}

// ErrUnknownDefinition is returned for a saga type nobody registered.
var ErrUnknownDefinition = errors.New("saga: unknown definition")

// Coordinator drives sagas: it creates them, applies replies and timeouts
// in batched transactions, and relays the outbox to the broker. It holds no
// saga state in memory; several coordinators can share one store.
type Coordinator struct {
	cfg   Config
	defs  map[string]*Definition
	names []string // of defs, for the store's claims
	store Store
	pub   Publisher
	log   zerolog.Logger

	inputs  chan *queued
	creates chan *creation
	relayq  chan []Message
	wake    chan struct{} // the starter: new pending sagas, or room freed

	// active estimates the sagas in flight between counts in the store:
	// the last count, plus the sagas this coordinator started, minus the
	// ones it saw leave (counting in the store on every pass would scan an
	// index that churns with every decision).
	activeMu      sync.Mutex
	activeCounted int
	activeDelta   int
	activeAt      time.Time
	// backlog is set while pending sagas wait for room: new sagas then
	// queue behind them instead of starting at once.
	backlog atomic.Bool

	deletes chan []uuid.UUID // published outbox rows, for the deleter
}

type creation struct {
	saga NewSaga
	done chan CreateResult
}

// queued is inputs that go to the batch loop together: the replies of one
// delivered batch stay in one transaction, in their order, so that
// concurrent batch loops cannot interleave them (and high-priority sagas,
// delivered first, keep their lead).
type queued struct {
	inputs []Input
	errs   []error    // per input, set before done is signalled
	done   chan error // the transaction's error, nil once committed
}

// NewCoordinator validates the definitions and returns a coordinator; call
// Run to start it.
func NewCoordinator(cfg Config, store Store, pub Publisher, log zerolog.Logger, defs ...*Definition) (*Coordinator, error) {
	cfg = cfg.withDefaults()
	c := &Coordinator{
		cfg: cfg, defs: map[string]*Definition{}, store: store, pub: pub, log: log,
		inputs:  make(chan *queued, cfg.QueueSize),
		creates: make(chan *creation, cfg.QueueSize),
		relayq:  make(chan []Message, 1024),
		wake:    make(chan struct{}, 1),
		deletes: make(chan []uuid.UUID, 1024),
	}
	for _, d := range defs {
		if err := d.Validate(); err != nil {
			return nil, err
		}
		c.defs[d.Name] = d
		c.names = append(c.names, d.Name)
	}
	return c, nil
}

// Definition returns a registered definition, or nil.
func (c *Coordinator) Definition(name string) *Definition { return c.defs[name] }

// Submission is a request to start a saga.
type Submission struct {
	Definition string
	ID         uuid.UUID
	Data       json.RawMessage
	Priority   Priority
	// Key is the client's idempotency key; empty for none.
	Key string
	// Fingerprint identifies the request behind Key.
	Fingerprint string
	// TraceParent is the W3C trace context to carry on every message.
	TraceParent string
}

// Submit creates a pending saga and returns once it is committed:
// accepting never waits on a worker. Concurrent submissions are committed
// together (group commit). The starter starts the saga when there is room
// (MaxActive). created is false when Key named an existing saga, which is
// returned.
func (c *Coordinator) Submit(ctx context.Context, s Submission) (in Instance, created bool, err error) {
	def := c.defs[s.Definition]
	if def == nil {
		return Instance{}, false, fmt.Errorf("%w: %q", ErrUnknownDefinition, s.Definition)
	}
	now := c.cfg.Clock.Now()
	in, ev := def.New(s.ID, s.Data, s.Priority, now)
	in.TraceParent = s.TraceParent
	msgs := c.messages(Decision{Instance: in, Events: []Event{ev}}, now)
	cr := &creation{
		saga: NewSaga{Instance: in, Key: s.Key, Fingerprint: s.Fingerprint, Messages: msgs},
		done: make(chan CreateResult, 1),
	}
	select {
	case c.creates <- cr:
	case <-ctx.Done():
		return Instance{}, false, ctx.Err()
	}
	var res CreateResult
	select {
	case res = <-cr.done:
	case <-ctx.Done():
		return Instance{}, false, ctx.Err()
	}
	if res.Err == nil && res.Created {
		c.cfg.Observer.SagaCreated(def, res.Instance)
	}
	return res.Instance, res.Created, res.Err
}

// createLoop commits the waiting submissions together, then wakes the
// starter and hands their events to the relay.
func (c *Coordinator) createLoop(ctx context.Context) {
	linger := time.NewTimer(c.cfg.CreateLinger)
	defer linger.Stop()
	var batch, next []*creation
	for {
		batch, next, _ = collect.Batch(ctx, c.creates, next, c.cfg.BatchSize, linger, c.cfg.CreateLinger, nil)
		if batch == nil {
			return
		}
		starts := c.startAtOnce(ctx, batch)
		sagas := make([]NewSaga, len(batch))
		for i, cr := range batch {
			sagas[i] = cr.saga
		}
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		began := time.Now()
		res, err := c.store.CreateBatch(actx, sagas)
		if err != nil && len(sagas) > 1 {
			// One bad saga must not fail the others committed with it: each
			// goes again alone, and only the culprit fails.
			c.log.Warn().Err(err).Int("sagas", len(sagas)).Msg("create batch failed; creating its sagas one by one")
			res, err = make([]CreateResult, len(sagas)), nil
			for i := range sagas {
				one, oneErr := c.store.CreateBatch(actx, sagas[i:i+1])
				if oneErr != nil {
					res[i] = CreateResult{Err: oneErr}
					continue
				}
				res[i] = one[0]
			}
		}
		cancel()
		c.cfg.Observer.Batch("create", len(batch), time.Since(began))
		var staged []Message
		pending := false
		for i, cr := range batch {
			if err != nil {
				cr.done <- CreateResult{Err: err}
				continue
			}
			if res[i].Err != nil && !res[i].Created && res[i].Instance.ID == uuid.Nil {
				cr.done <- res[i] // failed alone
				continue
			}
			staged = append(staged, res[i].Messages...)
			if res[i].Created {
				if starts[i] != nil {
					c.adjustActive(+1)
					c.cfg.Observer.SagaChanged(c.defs[starts[i].Instance.Definition], *starts[i])
				} else {
					pending = true
				}
			}
			cr.done <- res[i]
		}
		if err != nil {
			c.log.Error().Err(err).Int("sagas", len(batch)).Msg("create batch failed")
			continue
		}
		c.offerRelay(staged)
		if pending {
			c.backlog.Store(true)
			c.wakeStarter()
		}
	}
}

// startAtOnce starts new sagas in the transaction that creates them while
// there is room and no backlog, high priority first: one write per saga
// instead of two. The others stay pending for the starter. It returns the
// start decisions, index-aligned (nil: left pending).
func (c *Coordinator) startAtOnce(ctx context.Context, batch []*creation) []*Decision {
	starts := make([]*Decision, len(batch))
	if c.backlog.Load() {
		return starts
	}
	active, err := c.activeSagas(ctx)
	if err != nil {
		return starts
	}
	room := c.cfg.MaxActive - active
	order := make([]int, len(batch))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		return int(batch[b].saga.Instance.Priority) - int(batch[a].saga.Instance.Priority)
	})
	now := c.cfg.Clock.Now()
	for _, i := range order {
		if room <= 0 {
			break
		}
		cr := batch[i]
		in := cr.saga.Instance
		d, err := c.defs[in.Definition].Decide(in, Input{Kind: InputStart, SagaID: in.ID}, now)
		if err != nil || !d.Changed {
			continue
		}
		cr.saga.Instance = d.Instance
		cr.saga.Messages = append(cr.saga.Messages, c.messages(d, now)...)
		starts[i] = &d
		room--
	}
	return starts
}

func (c *Coordinator) wakeStarter() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// activeSagas estimates the sagas in flight; it counts them in the store
// at most every second (other coordinators start and finish sagas too).
func (c *Coordinator) activeSagas(ctx context.Context) (int, error) {
	c.activeMu.Lock()
	fresh := time.Since(c.activeAt) < time.Second
	n := c.activeCounted + c.activeDelta
	c.activeMu.Unlock()
	if fresh {
		return n, nil
	}
	counted, err := c.store.CountActive(ctx)
	if err != nil {
		return 0, err
	}
	c.activeMu.Lock()
	defer c.activeMu.Unlock()
	c.activeCounted, c.activeDelta, c.activeAt = counted, 0, time.Now()
	return counted, nil
}

func (c *Coordinator) adjustActive(d int) {
	c.activeMu.Lock()
	c.activeDelta += d
	c.activeMu.Unlock()
}

// startLoop starts pending sagas while fewer than MaxActive are in flight,
// highest priority first. It is also how sagas accepted before a crash get
// started: they are pending in the store.
func (c *Coordinator) startLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
		case <-time.After(c.cfg.TimerInterval):
		}
		for ctx.Err() == nil {
			active, err := c.activeSagas(ctx)
			if err != nil {
				if ctx.Err() == nil {
					c.log.Error().Err(err).Msg("starter: count active sagas failed")
				}
				break
			}
			room := min(c.cfg.MaxActive-active, c.cfg.BatchSize)
			if room <= 0 {
				break
			}
			began := time.Now()
			oldest := 0
			if c.cfg.OldestShare > 0 {
				oldest = max(1, int(float64(room)*c.cfg.OldestShare))
			}
			outs, msgs, err := c.store.ApplyPending(ctx, Claim{Limit: room, Definitions: c.names, Oldest: oldest}, c.transition)
			if err != nil {
				if ctx.Err() == nil {
					c.log.Error().Err(err).Msg("starter: start pending sagas failed")
				}
				break
			}
			if len(outs) > 0 {
				c.cfg.Observer.Batch("start", len(outs), time.Since(began))
			}
			c.observe(outs)
			c.sendRelay(ctx, msgs)
			if len(outs) < room {
				c.backlog.Store(false) // every pending saga is started
				break
			}
		}
	}
}

// ReplyWait waits until queued replies are committed. It returns, by
// index, the replies to dead-letter and why: for a saga the store does not
// have (another deployment sharing the broker, a hand-made message), or
// one it quarantined. Any other failure of an input is the error (the
// consumer retries it a bounded number of times).
type ReplyWait func(ctx context.Context) (dead map[int]error, err error)

// HandleReplies decodes replies and queues them, in order, for the batch
// loop. It returns, index-aligned, why each poison reply cannot be applied
// (nil for the others), and a wait for the commit of the others. Ack the
// deliveries after wait.
func (c *Coordinator) HandleReplies(ctx context.Context, bodies [][]byte) (poison []error, wait ReplyWait) {
	poison = make([]error, len(bodies))
	q := &queued{done: make(chan error, 1)}
	var index []int
	for i, body := range bodies {
		inp, err := decodeReply(body)
		if err != nil {
			poison[i] = err
			continue
		}
		q.inputs, index = append(q.inputs, inp), append(index, i)
	}
	if len(q.inputs) == 0 {
		return poison, func(context.Context) (map[int]error, error) { return nil, nil }
	}
	select {
	case c.inputs <- q:
	case <-ctx.Done():
		return poison, func(context.Context) (map[int]error, error) { return nil, ctx.Err() }
	}
	return poison, func(ctx context.Context) (map[int]error, error) {
		select {
		case err := <-q.done:
			if err != nil {
				return nil, err
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		dead := map[int]error{}
		for k, err := range q.errs {
			switch {
			case errors.Is(err, ErrNotFound):
				dead[index[k]] = errors.New("reply for a saga this orchestrator's store does not have")
			case errors.Is(err, ErrQuarantined):
				dead[index[k]] = fmt.Errorf("reply for a quarantined saga: %w", err)
			case err != nil:
				return nil, err
			}
		}
		return dead, nil
	}
}

func decodeReply(body []byte) (Input, error) {
	env, err := Decode(body)
	if err != nil {
		return Input{}, err
	}
	id, err := uuid.Parse(env.SagaID)
	if err != nil {
		return Input{}, fmt.Errorf("%w: saga_id %q: %w", ErrMalformed, env.SagaID, err)
	}
	switch env.Status {
	case ReplyOK, ReplyFailed, ReplyRetry:
	default:
		return Input{}, fmt.Errorf("%w: reply status %q", ErrMalformed, env.Status)
	}
	return Input{Kind: InputReply, SagaID: id, Reply: &Reply{
		CorrelationID: env.CorrelationID, Status: env.Status, Code: env.Code,
		Message: env.Message, Payload: env.Payload, Attempt: env.Attempt,
	}}, nil
}

// Replay re-drives a saga that is not terminal from where it stands, with a
// fresh attempt budget. It returns ErrConflict for a terminal saga.
func (c *Coordinator) Replay(ctx context.Context, id uuid.UUID) (Instance, error) {
	return c.applyNow(ctx, Input{Kind: InputReplay, SagaID: id})
}

// Cancel forces compensation of a saga that has not passed its pivot. It
// returns ErrConflict when the saga is terminal, compensating, or past its
// pivot.
func (c *Coordinator) Cancel(ctx context.Context, id uuid.UUID, reason string) (Instance, error) {
	return c.applyNow(ctx, Input{Kind: InputCancel, SagaID: id, Reason: reason})
}

// applyNow applies one input in its own transaction, for operator actions
// that need the outcome.
func (c *Coordinator) applyNow(ctx context.Context, inp Input) (Instance, error) {
	outs, msgs, err := c.store.Apply(ctx, []Input{inp}, c.transition)
	if err != nil {
		return Instance{}, err
	}
	c.observe(outs)
	c.offerRelay(msgs)
	return outs[0].Instance, outs[0].Err
}

// transition is the TransitionFunc: decide, then turn the decision into
// outbox messages.
func (c *Coordinator) transition(in Instance, inp Input) (Decision, []Message, error) {
	def := c.defs[in.Definition]
	if def == nil {
		return Decision{}, nil, fmt.Errorf("%w: %q", ErrUnknownDefinition, in.Definition)
	}
	now := c.cfg.Clock.Now()
	d, err := def.Decide(in, inp, now)
	if err != nil || !d.Changed {
		return d, nil, err
	}
	return d, c.messages(d, now), nil
}

// messages renders a decision's commands and events as broker messages.
func (c *Coordinator) messages(d Decision, now time.Time) []Message {
	msgs := make([]Message, 0, len(d.Commands)+len(d.Events))
	var headers map[string]string
	if tp := d.Instance.TraceParent; tp != "" {
		headers = map[string]string{"traceparent": tp}
	}
	for _, cmd := range d.Commands {
		m := Message{
			Kind: MessageCommand, Type: cmd.Type, MessageID: cmd.MessageID, CorrelationID: cmd.MessageID,
			Priority: cmd.Priority, Timestamp: now, Headers: headers,
			Body: Envelope{
				ID: cmd.MessageID, CorrelationID: cmd.MessageID, SagaID: cmd.SagaID.String(),
				Type: cmd.Type, At: now, Attempt: cmd.Attempt, Payload: cmd.Payload,
			}.Encode(),
		}
		if !c.cfg.DisableCommandTTL {
			m.TTL = cmd.Deadline.Sub(now)
		}
		msgs = append(msgs, m)
	}
	for _, ev := range d.Events {
		id := ev.ID.String()
		msgs = append(msgs, Message{
			Kind: MessageEvent, Type: ev.Type, MessageID: id,
			CorrelationID: ev.SagaID.String(), Priority: d.Instance.Priority,
			Timestamp: ev.At, Headers: headers,
			Body: Envelope{
				ID: id, CorrelationID: ev.SagaID.String(), SagaID: ev.SagaID.String(),
				Type: ev.Type, At: ev.At, Payload: ev.Payload,
			}.Encode(),
		})
	}
	return msgs
}

// observe reports committed decisions to the observer, and logs what an
// operator should know: a saga compensating, stuck, or back from stuck.
func (c *Coordinator) observe(outs []Outcome) {
	for _, o := range outs {
		if o.Err != nil || !o.Changed {
			continue
		}
		def := c.defs[o.Instance.Definition]
		c.cfg.Observer.SagaChanged(def, o.Decision)
		for _, tr := range o.Transitions {
			switch tr {
			case TransitionStart, TransitionResume, TransitionResumeCompensation:
				c.adjustActive(+1)
			}
		}
		if o.Instance.Phase.Terminal() || o.Instance.Phase == Stuck {
			if len(o.Transitions) > 0 && o.Transitions[0] != TransitionAbort {
				c.adjustActive(-1)
			}
			c.wakeStarter() // room for a pending saga
		}
		for _, tr := range o.Transitions {
			var ev *zerolog.Event
			switch tr {
			case TransitionCompensate:
				ev = c.log.Info().Str("reason", o.Instance.Reason)
			case TransitionStick:
				ev = c.log.Warn().Str("reason", o.Instance.StuckReason)
			case TransitionResume, TransitionResumeCompensation:
				ev = c.log.Info()
			case TransitionRetry, TransitionRetryCompensation:
				ev = c.log.Debug().Int("attempt", o.Instance.Attempt)
			default:
				continue
			}
			c.sagaFields(ev, def, &o.Instance).Str("transition", string(tr)).Str("state", o.Instance.State).Msg("saga " + string(tr))
		}
	}
}

// sagaFields adds the saga's identity to a log line: saga_id, the domain's
// alias of it (order_id), and the current step.
func (c *Coordinator) sagaFields(ev *zerolog.Event, def *Definition, in *Instance) *zerolog.Event {
	id := in.ID.String()
	ev = ev.Str("saga_id", id).Str("correlation_id", id)
	if def == nil {
		return ev
	}
	if def.IDName != "" {
		ev = ev.Str(def.IDName, id)
	}
	if in.Step >= 0 && in.Step < len(def.Steps) {
		ev = ev.Str("step", def.Steps[in.Step].Name)
	}
	return ev
}

// offerRelay hands staged messages to the relay without blocking; if the
// relay is saturated the outbox scan publishes them after their lease.
func (c *Coordinator) offerRelay(msgs []Message) {
	if len(msgs) == 0 {
		return
	}
	select {
	case c.relayq <- msgs:
	default:
	}
}

// Run drives sagas until ctx is done: the batch workers, the timer, the
// relay and the outbox scan. It returns after they all stopped.
func (c *Coordinator) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	spawn := func(f func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); f(ctx) }()
	}
	for range c.cfg.Workers {
		spawn(c.batchLoop)
	}
	spawn(c.relayLoop)
	spawn(c.timerLoop)
	spawn(c.outboxLoop)
	// Two create loops: one commits while the other gathers the next batch.
	spawn(c.createLoop)
	spawn(c.createLoop)
	spawn(c.startLoop)
	spawn(c.deleteLoop)
	wg.Wait()
	return nil
}

// batchLoop applies queued inputs, as many as are waiting (up to
// BatchSize), in one transaction: one commit for many sagas.
func (c *Coordinator) batchLoop(ctx context.Context) {
	inputs := make([]Input, 0, c.cfg.BatchSize)
	linger := time.NewTimer(c.cfg.Linger)
	defer linger.Stop()
	var batch, next []*queued
	for {
		batch, next, _ = collect.Batch(ctx, c.inputs, next, c.cfg.BatchSize, linger, c.cfg.Linger, func(q *queued) int { return len(q.inputs) })
		if batch == nil {
			return
		}
		inputs = inputs[:0]
		for _, q := range batch {
			inputs = append(inputs, q.inputs...)
		}
		// Finish a batch already taken even while stopping: its callers
		// are waiting to ack their deliveries.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		began := time.Now()
		outs, msgs, err := c.store.Apply(actx, inputs, c.transition)
		cancel()
		c.cfg.Observer.Batch("inputs", len(inputs), time.Since(began))
		if err != nil {
			c.log.Error().Err(err).Int("inputs", len(inputs)).Msg("apply batch failed")
		}
		// Committed: the callers may ack their deliveries now, before the
		// relay has room for the messages (the outbox has them).
		i := 0
		for _, q := range batch {
			if err == nil {
				q.errs = make([]error, len(q.inputs))
				for k, inp := range q.inputs {
					o := outs[i+k]
					if o.Err != nil && !errors.Is(o.Err, ErrNotFound) && !errors.Is(o.Err, ErrQuarantined) {
						c.sagaFields(c.log.Error().Err(o.Err), c.defs[o.Instance.Definition], &o.Instance).
							Str("input", inp.Kind.String()).Msg("input not applied")
					}
					q.errs[k] = o.Err
				}
			}
			i += len(q.inputs)
			q.done <- err
		}
		if err == nil {
			c.observe(outs)
			c.sendRelay(ctx, msgs)
		}
	}
}

// sendRelay hands messages to the relay, waiting for room: a slow broker
// slows the batch loop down instead of growing memory.
func (c *Coordinator) sendRelay(ctx context.Context, msgs []Message) {
	if len(msgs) == 0 {
		return
	}
	select {
	case c.relayq <- msgs:
	case <-ctx.Done():
	}
}

// relayLoop publishes staged messages right after their commit, as many
// as are waiting in one batch, and hands each batch to a goroutine that
// waits for its confirms and deletes it from the outbox. Failures are left
// to the outbox scan.
func (c *Coordinator) relayLoop(ctx context.Context) {
	var inflight sync.WaitGroup
	defer inflight.Wait()
	sem := make(chan struct{}, c.cfg.RelayInFlight)
	linger := time.NewTimer(c.cfg.Linger)
	defer linger.Stop()
	var parts, next [][]Message
	for {
		parts, next, _ = collect.Batch(ctx, c.relayq, next, c.cfg.OutboxBatch, linger, c.cfg.Linger, func(m []Message) int { return len(m) })
		if parts == nil {
			return
		}
		msgs := slices.Concat(parts...)
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		// Sent here, in commit order (so that a high-priority saga's messages
		// keep their lead), without waiting long for a broker that is away
		// (the outbox scan publishes what this could not); confirmed in the
		// background.
		began := time.Now()
		sctx, scancel := context.WithTimeout(ctx, time.Second)
		confirms := c.pub.Send(sctx, msgs)
		scancel()
		pctx, cancel := context.WithTimeout(ctx, c.cfg.PublishTimeout)
		inflight.Add(1)
		go func() {
			defer inflight.Done()
			defer func() { <-sem }()
			defer cancel()
			c.confirmed(ctx, pctx, msgs, confirms, began)
		}()
	}
}

// publish sends messages and waits for their confirms (the outbox scan).
func (c *Coordinator) publish(ctx context.Context, msgs []Message) {
	pctx, cancel := context.WithTimeout(ctx, c.cfg.PublishTimeout)
	defer cancel()
	c.confirmed(ctx, pctx, msgs, c.pub.Send(pctx, msgs), time.Now())
}

// confirmed waits (within wait) for the confirms of published messages and
// hands the outbox rows whose messages were all confirmed to the deleter.
func (c *Coordinator) confirmed(ctx, wait context.Context, msgs []Message, confirms Confirms, began time.Time) {
	ok, err := confirms(wait)
	c.cfg.Observer.Batch("publish", len(msgs), time.Since(began))
	c.cfg.Observer.Published(len(ok), len(msgs)-len(ok))
	if err != nil && ctx.Err() == nil {
		c.log.Warn().Err(err).Int("confirmed", len(ok)).Int("failed", len(msgs)-len(ok)).
			Msg("publish failed; the outbox scan retries")
	}
	if len(ok) == 0 {
		return
	}
	// A row goes once every message it holds is confirmed; a row with a
	// failure stays for the outbox scan (its confirmed messages are
	// published again, and consumers deduplicate them).
	left := map[uuid.UUID]int{} // messages of each row not yet confirmed
	for _, m := range msgs {
		left[m.OutboxID]++
	}
	for _, m := range ok {
		left[m.OutboxID]--
	}
	ids := make([]uuid.UUID, 0, len(left))
	for id, n := range left {
		if id != uuid.Nil && n == 0 {
			ids = append(ids, id)
		}
	}
	select {
	case c.deletes <- ids:
	default:
		// The deleter is behind: the rows' leases expire and the outbox scan
		// publishes them again; consumers deduplicate.
	}
}

// deleteLoop deletes published outbox rows in batches, every Linger at
// most: a lost delete only means a message published twice.
func (c *Coordinator) deleteLoop(ctx context.Context) {
	linger := time.NewTimer(c.cfg.Linger)
	defer linger.Stop()
	var parts, next [][]uuid.UUID
	for {
		parts, next, _ = collect.Batch(ctx, c.deletes, next, 4*c.cfg.OutboxBatch, linger, 10*c.cfg.Linger, func(ids []uuid.UUID) int { return len(ids) })
		if parts == nil {
			return
		}
		ids := slices.Concat(parts...)
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		if err := c.store.DeleteOutbox(dctx, ids); err != nil {
			// Published but still in the outbox: published again after
			// their lease, and consumers deduplicate by message id.
			c.log.Warn().Err(err).Int("rows", len(ids)).Msg("delete published outbox rows failed")
		}
		cancel()
	}
}

// timerLoop applies timeouts to due sagas: deadlines of commands, backoffs
// of retries, and pending sagas nobody started.
func (c *Coordinator) timerLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.cfg.Clock.After(c.cfg.TimerInterval):
		}
		for ctx.Err() == nil {
			began := time.Now()
			outs, msgs, err := c.store.ApplyDue(ctx, Claim{Now: c.cfg.Clock.Now(), Limit: c.cfg.TimerBatch, Definitions: c.names}, c.transition)
			if len(outs) > 0 {
				c.cfg.Observer.Batch("timer", len(outs), time.Since(began))
			}
			if err != nil {
				if ctx.Err() == nil {
					c.log.Error().Err(err).Msg("timer: apply due sagas failed")
				}
				break
			}
			c.observe(outs)
			c.sendRelay(ctx, msgs)
			if len(outs) < c.cfg.TimerBatch {
				break
			}
		}
	}
}

// outboxLoop publishes what the relay left behind: messages of a crashed
// process, or of publishes that failed while the broker was away.
func (c *Coordinator) outboxLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(c.cfg.OutboxInterval):
		}
		for ctx.Err() == nil {
			msgs, err := c.store.ClaimOutbox(ctx, c.cfg.OutboxBatch)
			if err != nil {
				if ctx.Err() == nil {
					c.log.Error().Err(err).Msg("outbox scan failed")
				}
				break
			}
			if len(msgs) == 0 {
				break
			}
			c.log.Debug().Int("messages", len(msgs)).Msg("outbox scan: republishing")
			c.publish(ctx, msgs)
			if len(msgs) < c.cfg.OutboxBatch {
				break
			}
		}
	}
}
