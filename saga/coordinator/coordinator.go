package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow/saga"
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
	// SLAInterval is how often the sagas in states with an SLA
	// (saga.Step.SLA) are looked at (default 10s); each look reads at most
	// SLABatch of each such state, going round.
	SLAInterval time.Duration
	SLABatch    int
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
	// OutboxBatch is the most outbox rows claimed per recovery scan, and
	// the most messages the relay publishes at once (default 512).
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
	Clock saga.Clock
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
	defDur(&c.SLAInterval, 10*time.Second)
	defInt(&c.SLABatch, 1000)
	defInt(&c.MaxActive, 2000)
	if c.OldestShare == 0 {
		c.OldestShare = 0.2
	}
	defDur(&c.OutboxInterval, time.Second)
	defInt(&c.OutboxBatch, 512)
	defInt(&c.RelayInFlight, 256)
	defDur(&c.PublishTimeout, 10*time.Second)
	if c.Clock == nil {
		c.Clock = saga.SystemClock{}
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
	SagaCreated(def *saga.Definition, in saga.Instance)
	// SagaChanged is called for every decision that changed a saga.
	SagaChanged(def *saga.Definition, d saga.Decision)
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
func (NopObserver) SagaCreated(*saga.Definition, saga.Instance) {}

// SagaChanged does nothing.
func (NopObserver) SagaChanged(*saga.Definition, saga.Decision) {}

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
	defs  map[string]*saga.Definition
	names []string // of defs, for the store's claims
	// versions are the newest version of each of names, for the claims:
	// sagas of later versions belong to a newer deployment.
	versions []int
	// waiting are the states of the definitions' waiting steps: sagas in
	// them are not in flight.
	waiting []saga.StateRef
	store   saga.Store
	pub     saga.Publisher
	log     zerolog.Logger

	inputs  chan *queued
	creates chan *creation
	relayq  chan []saga.Message
	wake    chan struct{} // admission: new pending sagas, or room freed

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

// New validates the definitions and returns a coordinator; call
// Run to start it.
func New(cfg Config, store saga.Store, pub saga.Publisher, log zerolog.Logger, defs ...*saga.Definition) (*Coordinator, error) {
	cfg = cfg.withDefaults()
	c := &Coordinator{
		cfg: cfg, defs: map[string]*saga.Definition{}, store: store, pub: pub, log: log,
		inputs:  make(chan *queued, cfg.QueueSize),
		creates: make(chan *creation, cfg.QueueSize),
		relayq:  make(chan []saga.Message, 1024),
		wake:    make(chan struct{}, 1),
		deletes: make(chan []uuid.UUID, 1024),
	}
	for _, d := range defs {
		if err := d.Validate(); err != nil {
			return nil, err
		}
		if c.defs[d.Name] != nil {
			return nil, fmt.Errorf("%w: %s registered twice (an earlier version goes in the newest one's Upgrades)", saga.ErrInvalidDefinition, d.Name)
		}
		c.defs[d.Name] = d
		c.names = append(c.names, d.Name)
		c.versions = append(c.versions, d.Version)
		c.waiting = append(c.waiting, d.WaitingStates()...)
	}
	return c, nil
}

// Definition returns a registered definition, or nil.
func (c *Coordinator) Definition(name string) *saga.Definition { return c.defs[name] }

// Definitions returns the registered definitions, in the order given to
// New.
func (c *Coordinator) Definitions() []*saga.Definition {
	out := make([]*saga.Definition, len(c.names))
	for i, n := range c.names {
		out[i] = c.defs[n]
	}
	return out
}

// CheckDeploy lists the live sagas in the store that the coordinator's
// definitions cannot drive (saga.CheckDeploy): of a version neither served
// nor upgraded, or at a place an upgrade does not account for. An
// orchestrator refuses to start while there are any: driving the others
// would leave these stranded, unseen.
func (c *Coordinator) CheckDeploy(ctx context.Context) ([]saga.Stranded, error) {
	defs := c.Definitions()
	ps, err := c.store.Positions(ctx, saga.ServedVersions(defs))
	if err != nil {
		return nil, err
	}
	return saga.CheckDeploy(defs, ps), nil
}

// Run drives sagas until ctx is done: the batch workers, the timer, the
// relay and the recovery scan. It returns after they all stopped.
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
	spawn(c.recoveryLoop)
	// Two create loops: one commits while the other gathers the next batch.
	spawn(c.createLoop)
	spawn(c.createLoop)
	spawn(c.startLoop)
	spawn(c.deleteLoop)
	spawn(c.slaLoop)
	wg.Wait()
	return nil
}

// since is the time elapsed on the coordinator's clock.
func (c *Coordinator) since(t time.Time) time.Duration { return c.cfg.Clock.Now().Sub(t) }
