package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	json "github.com/goccy/go-json"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/pgmigrate"
	"github.com/sagaflow/sagaflow/saga/pgstore"
	"github.com/sagaflow/sagaflow/saga/sagatest"
)

// The stages are tested one by one: each test builds a coordinator on a
// real store (a fresh database) and a real bus (a vhost of this package,
// exchanges of the test's own), with the simulated clock, and calls the
// step of the stage it tests (createBatch, startPass, applyBatch,
// timerPass, relaySend, deleteBatch, recoveryPass) instead of running the
// loops: nothing sleeps, and each step's effect is read back from the
// store and the broker.

var (
	vhost                 sagatest.SharedVhost
	errRefusedByTheTest   = errors.New("refused by the test")
	errStoreDownByTheTest = errors.New("store down (the test)")
)

func TestMain(m *testing.M) { sagatest.MainVhost(m, &vhost) }

// trip is the definition of the tests: two compensatable steps, then a
// retriable one.
func trip(t testing.TB) *saga.Definition {
	t.Helper()
	def := &saga.Definition{
		Name:   "trip",
		IDName: "trip_id",
		Steps: []saga.Step{
			{
				Name: "book_hotel", State: "booking_hotel", Command: "hotel.book", Kind: saga.Compensatable,
				Compensation:   &saga.Compensation{Name: "cancel_hotel", Command: "hotel.cancel", Event: "hotel.cancelled"},
				SucceededEvent: "hotel.booked",
			},
			{
				Name: "book_flight", State: "booking_flight", Command: "flight.book", Kind: saga.Compensatable,
				Compensation: &saga.Compensation{Name: "cancel_flight", Command: "flight.cancel"},
			},
			{Name: "confirm", State: "confirming", Command: "trip.confirm", Kind: saga.Retriable},
		},
		Retry: saga.Retry{Timeout: time.Minute, Backoff: time.Second, Jitter: -1, MaxAttempts: 2},
	}
	if err := def.Validate(); err != nil {
		t.Fatal(err)
	}
	return def
}

// parcel is the second definition of the tests: a shipment, then a wait
// of an hour for its delivery.
func parcel(t testing.TB) *saga.Definition {
	t.Helper()
	def := &saga.Definition{
		Name: "parcel",
		Steps: []saga.Step{
			{Name: "ship", State: "shipping", Command: "parcel.ship", Kind: saga.Retriable},
			{Name: "await_delivery", State: "awaiting_delivery", Wait: "parcel.delivered", Kind: saga.Retriable,
				Timeout: time.Hour, OverdueEvent: "parcel.overdue", OverdueReason: "not delivered"},
		},
		Retry: saga.Retry{Timeout: time.Minute, Jitter: -1},
	}
	if err := def.Validate(); err != nil {
		t.Fatal(err)
	}
	return def
}

// commandTypes are the command types of trip and parcel.
var commandTypes = []string{"hotel.book", "hotel.cancel", "flight.book", "flight.cancel", "trip.confirm", "parcel.ship"}

type harness struct {
	t     *testing.T
	ctx   context.Context
	c     *Coordinator
	def   *saga.Definition
	store *flakyStore
	pool  *pgxpool.Pool
	bus   *amqpbus.Bus
	pub   *gate
	clock *sagatest.Clock
	obs   *recorder
	queue string // every command and event the coordinator published
}

// newHarness returns a coordinator of trip on a fresh database and its
// own exchanges, with the simulated clock; its loops are not running.
func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	h := &harness{t: t, ctx: ctx, def: trip(t), obs: &recorder{}}

	h.pool = sagatest.Pool(t, sagatest.NewDatabase(t), "orchestrator")
	if _, err := pgmigrate.Up(ctx, h.pool, pgstore.Migrations); err != nil {
		t.Fatal(err)
	}
	h.store = &flakyStore{Store: pgstore.New(h.pool, pgstore.Config{})}

	commands, events := sagatest.Name("commands_"), sagatest.Name("events_")
	bus, err := amqpbus.Dial(ctx, amqpbus.Config{URL: vhost.URL(t), Name: t.Name(), CommandExchange: commands, EventExchange: events}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = bus.Close() })
	h.bus = bus
	h.queue = sagatest.Name("published_")
	top := amqpbus.Topology{
		Exchanges: []amqpbus.Exchange{{Name: commands, Kind: "direct", Args: amqp.Table{}}, {Name: events, Kind: "topic", Args: amqp.Table{}}},
		Queues:    []amqpbus.Queue{{Name: h.queue, Args: amqpbus.QueueOptions{Type: amqpbus.Classic}.Args()}},
		Bindings:  []amqpbus.Binding{{Source: events, Key: "#", Queue: h.queue}},
	}
	for _, typ := range commandTypes {
		top.Bindings = append(top.Bindings, amqpbus.Binding{Source: commands, Key: typ, Queue: h.queue})
	}
	if err := bus.Declare(ctx, top); err != nil {
		t.Fatal(err)
	}
	h.pub = &gate{Publisher: bus}

	h.clock = sagatest.NewClock(time.Now().UTC().Truncate(time.Millisecond))
	cfg.Clock, cfg.Observer = h.clock, h.obs
	h.c, err = New(cfg, h.store, h.pub, zerolog.Nop(), h.def, parcel(t))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// submission is a new trip to Submit.
func submission(prio saga.Priority) Submission {
	return Submission{Definition: "trip", ID: uuid.Must(uuid.NewV7()), Data: json.RawMessage(`{"traveller":"ada"}`), Priority: prio}
}

// creation is what Submit hands the intake stage.
func (h *harness) creation(s Submission) *creation {
	h.t.Helper()
	def := h.def
	if s.Definition != "" {
		def = h.c.Definition(s.Definition)
	}
	in, ev := def.New(s.ID, s.Data, s.Priority, h.clock.Now())
	return &creation{
		saga: saga.NewSaga{Instance: in, Key: s.Key, Fingerprint: s.Fingerprint,
			Messages: h.c.messages(saga.Decision{Instance: in, Events: []saga.Event{ev}}, h.clock.Now())},
		done: make(chan saga.CreateResult, 1),
	}
}

// create commits sagas through the intake step and returns them.
func (h *harness) create(subs ...Submission) []saga.Instance {
	h.t.Helper()
	batch := make([]*creation, len(subs))
	for i, s := range subs {
		batch[i] = h.creation(s)
	}
	h.c.createBatch(h.ctx, batch)
	out := make([]saga.Instance, len(batch))
	for i, cr := range batch {
		res := <-cr.done
		if res.Err != nil {
			h.t.Fatalf("create %d: %v", i, res.Err)
		}
		out[i] = res.Instance
	}
	return out
}

// get reads a saga from the store.
func (h *harness) get(id uuid.UUID) saga.Instance {
	h.t.Helper()
	in, err := h.store.Get(h.ctx, id)
	if err != nil {
		h.t.Fatal(err)
	}
	return in
}

// staged takes every batch of messages handed to the relay so far.
func (h *harness) staged() []saga.Message {
	var out []saga.Message
	for {
		select {
		case msgs := <-h.c.relayq:
			out = append(out, msgs...)
		default:
			return out
		}
	}
}

// published takes every message that reached the test's queue, as
// "<routing key> <saga id>".
func (h *harness) published() []string {
	h.t.Helper()
	ch, err := h.bus.Channel(h.ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	defer ch.Close()
	var out []string
	for {
		d, ok, err := ch.Get(h.queue, true)
		if err != nil {
			h.t.Fatal(err)
		}
		if !ok {
			return out
		}
		env, err := saga.Decode(d.Body)
		if err != nil {
			h.t.Fatalf("published message does not decode: %v", err)
		}
		out = append(out, d.RoutingKey+" "+env.SagaID)
	}
}

// outboxRows counts the rows of the outbox.
func (h *harness) outboxRows() int {
	h.t.Helper()
	var n int
	if err := h.pool.QueryRow(h.ctx, `SELECT count(*) FROM outbox`).Scan(&n); err != nil {
		h.t.Fatal(err)
	}
	return n
}

// reply is a worker's reply to the command a saga waits for.
func (h *harness) reply(in saga.Instance, status saga.ReplyStatus, code string) []byte {
	h.t.Helper()
	def := h.c.Definition(in.Definition)
	step := def.Steps[in.Step].Name
	if in.Phase == saga.Compensating {
		step = def.Steps[in.Step].Compensation.Name
	}
	id := in.ID.String() + ":" + step
	return saga.Envelope{
		ID: uuid.NewString(), CorrelationID: id, SagaID: in.ID.String(), Type: "reply",
		At: h.clock.Now(), Attempt: in.Attempt, Status: status, Code: code,
	}.Encode()
}

// applyReplies runs replies through HandleReplies and the applier step,
// as the reply consumer and the batch loop do, and returns the wait's
// answer.
func (h *harness) applyReplies(bodies ...[]byte) (poison []error, dead map[int]error, err error) {
	h.t.Helper()
	return h.applyInputs(h.c.HandleReplies, bodies)
}

// applySignals is applyReplies for signals (HandleSignals).
func (h *harness) applySignals(bodies ...[]byte) (poison []error, dead map[int]error, err error) {
	h.t.Helper()
	return h.applyInputs(h.c.HandleSignals, bodies)
}

func (h *harness) applyInputs(handle func(context.Context, [][]byte) ([]error, saga.ReplyWait), bodies [][]byte) (poison []error, dead map[int]error, err error) {
	h.t.Helper()
	poison, wait := handle(h.ctx, bodies)
	var batch []*queued
	for {
		select {
		case q := <-h.c.inputs:
			batch = append(batch, q)
			continue
		default:
		}
		break
	}
	if len(batch) > 0 {
		h.c.applyBatch(h.ctx, batch)
	}
	dead, err = wait(h.ctx)
	return poison, dead, err
}

// gate is the real bus, with messages the test refuses (their confirms
// fail, as when the broker is away).
type gate struct {
	saga.Publisher
	mu     sync.Mutex
	refuse func(saga.Message) bool
}

func (g *gate) setRefuse(f func(saga.Message) bool) {
	g.mu.Lock()
	g.refuse = f
	g.mu.Unlock()
}

func (g *gate) Send(ctx context.Context, msgs []saga.Message) saga.Confirms {
	g.mu.Lock()
	refuse := g.refuse
	g.mu.Unlock()
	var pass []saga.Message
	refused := 0
	for _, m := range msgs {
		if refuse != nil && refuse(m) {
			refused++
			continue
		}
		pass = append(pass, m)
	}
	confirms := g.Publisher.Send(ctx, pass)
	return func(ctx context.Context) ([]saga.Message, error) {
		ok, err := confirms(ctx)
		if err == nil && refused > 0 {
			err = errRefusedByTheTest
		}
		return ok, err
	}
}

// flakyStore is the real store, with operations the test makes fail (as
// when PostgreSQL is away).
type flakyStore struct {
	saga.Store
	mu   sync.Mutex
	down bool
	// poison fails every CreateBatch that holds this saga, as a row the
	// database refuses fails its whole transaction.
	poison uuid.UUID
}

func (s *flakyStore) setDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

func (s *flakyStore) isDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.down
}

func (s *flakyStore) Apply(ctx context.Context, inputs []saga.Input, fn saga.TransitionFunc) ([]saga.Outcome, []saga.Message, error) {
	if s.isDown() {
		return nil, nil, errStoreDownByTheTest
	}
	return s.Store.Apply(ctx, inputs, fn)
}

func (s *flakyStore) CreateBatch(ctx context.Context, batch []saga.NewSaga) ([]saga.CreateResult, error) {
	if s.isDown() {
		return nil, errStoreDownByTheTest
	}
	s.mu.Lock()
	poison := s.poison
	s.mu.Unlock()
	for _, ns := range batch {
		if ns.Instance.ID == poison {
			return nil, fmt.Errorf("saga %s refused by the test", poison)
		}
	}
	return s.Store.CreateBatch(ctx, batch)
}

func (s *flakyStore) CountActive(ctx context.Context, waiting []saga.StateRef) (int, error) {
	if s.isDown() {
		return 0, errStoreDownByTheTest
	}
	return s.Store.CountActive(ctx, waiting)
}

func (s *flakyStore) ClaimOutbox(ctx context.Context, limit int) ([]saga.Message, error) {
	if s.isDown() {
		return nil, errStoreDownByTheTest
	}
	return s.Store.ClaimOutbox(ctx, limit)
}

func (s *flakyStore) DeleteOutbox(ctx context.Context, ids []uuid.UUID) error {
	if s.isDown() {
		return errStoreDownByTheTest
	}
	return s.Store.DeleteOutbox(ctx, ids)
}

func (s *flakyStore) ApplyDue(ctx context.Context, c saga.Claim, fn saga.TransitionFunc) ([]saga.Outcome, []saga.Message, error) {
	if s.isDown() {
		return nil, nil, errStoreDownByTheTest
	}
	return s.Store.ApplyDue(ctx, c, fn)
}

func (s *flakyStore) ApplyPending(ctx context.Context, c saga.Claim, fn saga.TransitionFunc) ([]saga.Outcome, []saga.Message, error) {
	if s.isDown() {
		return nil, nil, errStoreDownByTheTest
	}
	return s.Store.ApplyPending(ctx, c, fn)
}

// recorder is an Observer that keeps what it was told.
type recorder struct {
	mu          sync.Mutex
	created     int
	transitions []saga.Transition
	confirmed   int
	failed      int
	batches     map[string]int
}

func (r *recorder) SagaCreated(*saga.Definition, saga.Instance) {
	r.mu.Lock()
	r.created++
	r.mu.Unlock()
}

func (r *recorder) SagaChanged(_ *saga.Definition, d saga.Decision) {
	r.mu.Lock()
	r.transitions = append(r.transitions, d.Transitions...)
	r.mu.Unlock()
}

func (r *recorder) Published(confirmed, failed int) {
	r.mu.Lock()
	r.confirmed += confirmed
	r.failed += failed
	r.mu.Unlock()
}

func (r *recorder) Batch(kind string, n int, _ time.Duration) {
	r.mu.Lock()
	if r.batches == nil {
		r.batches = map[string]int{}
	}
	r.batches[kind] += n
	r.mu.Unlock()
}

func (r *recorder) count(tr saga.Transition) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, t := range r.transitions {
		if t == tr {
			n++
		}
	}
	return n
}

func (r *recorder) batch(kind string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.batches[kind]
}

// types lists the routing types of messages.
func types(msgs []saga.Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.Type
	}
	return out
}

// Priorities of the tests' sagas.
const (
	normal saga.Priority = 0
	high   saga.Priority = 2
)

// runLoops runs loops of the coordinator until the test ends.
func runLoops(t *testing.T, h *harness, loops ...func(context.Context)) {
	t.Helper()
	ctx, cancel := context.WithCancel(h.ctx)
	var wg sync.WaitGroup
	for _, loop := range loops {
		wg.Add(1)
		go func() { defer wg.Done(); loop(ctx) }()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// waitFor polls cond until it holds: the loops under test do their I/O
// (the database, the broker) in their own time. The clock does not move.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
