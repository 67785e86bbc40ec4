package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	json "github.com/goccy/go-json"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/coordinator"
	"github.com/sagaflow/sagaflow/saga/pgmigrate"
	"github.com/sagaflow/sagaflow/saga/pgstore"
	"github.com/sagaflow/sagaflow/saga/sagaprom"
)

// OrchestratorConfig is the configuration every orchestrator binary
// shares: Base, its HTTP address, the retry policy of its sagas and the
// coordinator's settings. A binary's configuration embeds it and adds its
// own (its API's); README.md lists every variable.
type OrchestratorConfig struct {
	Base
	// HTTPAddr is where the binary's HTTP handler listens (default :8080).
	HTTPAddr string `env:"HTTP_ADDR" envDefault:":8080" help:"address of the public REST API"`
	// AdminAddr is where the operators' routes listen: the admin API,
	// /metrics and the profiler (default 127.0.0.1:8081: this host only).
	AdminAddr string `env:"ADMIN_ADDR" envDefault:"127.0.0.1:8081" help:"address of the operators' listener: /admin/*, /metrics, /debug/pprof/ (and /healthz, /readyz); keep it off the public network"`

	// StepTimeout is how long a step's first attempt waits for its reply
	// (default 10s); later attempts wait longer, up to StepMaxTimeout.
	StepTimeout time.Duration `env:"STEP_TIMEOUT" envDefault:"10s" help:"wait for a step's first reply; doubles per attempt"`
	// StepMaxTimeout caps one attempt's wait (default 2m).
	StepMaxTimeout time.Duration `env:"STEP_MAX_TIMEOUT" envDefault:"2m" help:"cap on one attempt's wait"`
	// RetryBackoff is the first pause after a transient failure (default 200ms).
	RetryBackoff time.Duration `env:"RETRY_BACKOFF" envDefault:"200ms" help:"first pause after a transient failure"`
	// RetryMaxBackoff caps that pause (default 30s).
	RetryMaxBackoff time.Duration `env:"RETRY_MAX_BACKOFF" envDefault:"30s" help:"cap on that pause"`
	// StepAttempts is the budget of a step before the saga compensates (default 5).
	StepAttempts int `env:"STEP_ATTEMPTS" envDefault:"5" help:"attempts of a step before the saga compensates"`
	// CompensationAttempts is the budget of a compensation before the saga
	// is stuck (default 10).
	CompensationAttempts int `env:"COMPENSATION_ATTEMPTS" envDefault:"10" help:"attempts of a compensation before the saga is stuck"`
	// RetriableAttempts is the budget of a step after the pivot before the
	// saga is stuck (default 20).
	RetriableAttempts int `env:"RETRIABLE_ATTEMPTS" envDefault:"20" help:"attempts of a step after the pivot before the saga is stuck"`

	// BatchSize is the most replies applied in one transaction (default 256).
	BatchSize int `env:"BATCH_SIZE" envDefault:"256" help:"replies applied per transaction"`
	// BatchWorkers is how many batches commit concurrently (default 1:
	// batches commit in delivery order, so priority holds).
	BatchWorkers int `env:"BATCH_WORKERS" envDefault:"1" help:"transactions of replies committing at once"`
	// TimerInterval is how often due sagas are looked for (default 200ms).
	TimerInterval time.Duration `env:"TIMER_INTERVAL" envDefault:"200ms" help:"how often due sagas are looked for"`
	// ReplyPrefetch is how many unacked replies the broker hands over
	// (default 2048): replies are acked once their transitions commit, so
	// this bounds the replies being applied at once.
	ReplyPrefetch int `env:"REPLY_PREFETCH" envDefault:"2048" help:"replies being applied at once"`
	// OutboxLease is how long a staged message belongs to the relay of the
	// orchestrator that wrote it before any orchestrator's recovery scan
	// may publish it (default 15s).
	OutboxLease time.Duration `env:"OUTBOX_LEASE" envDefault:"15s" help:"time a relay owns its staged messages before any orchestrator's scan publishes them"`
	// MaxActiveSagas bounds the sagas in flight (a command outstanding)
	// across every orchestrator sharing the database; the others wait as
	// pending, high priority first (default 2000). Little's law sizes it:
	// in flight = throughput × time per saga. Too high, and commands queue
	// in front of the workers past STEP_TIMEOUT, time out and are sent
	// again; too low, and batches stay small. 2000 is five seconds of the
	// 2-core development machine's throughput (docs/benchmarks.md).
	MaxActiveSagas int `env:"MAX_ACTIVE_SAGAS" envDefault:"2000" help:"sagas in flight across orchestrators; the rest wait as pending"`
	// OldestShare is the share of each admission that goes to the oldest
	// pending sagas whatever their priority (default 0.2): high priority
	// goes first, but cannot hold normal sagas back without bound.
	OldestShare float64 `env:"ADMISSION_OLDEST_SHARE" envDefault:"0.2" help:"share of each admission for the oldest pending sagas, whatever their priority (0: strict priority)"`
}

// Validate reports every problem at once.
func (c *OrchestratorConfig) Validate() []error {
	errs := c.Base.Validate()
	positive := map[string]time.Duration{
		"STEP_TIMEOUT": c.StepTimeout, "STEP_MAX_TIMEOUT": c.StepMaxTimeout,
		"RETRY_BACKOFF": c.RetryBackoff, "RETRY_MAX_BACKOFF": c.RetryMaxBackoff, "TIMER_INTERVAL": c.TimerInterval,
		"OUTBOX_LEASE": c.OutboxLease,
	}
	for name, d := range positive {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s: want a positive duration, got %s", name, d))
		}
	}
	counts := map[string]int{
		"STEP_ATTEMPTS": c.StepAttempts, "COMPENSATION_ATTEMPTS": c.CompensationAttempts,
		"RETRIABLE_ATTEMPTS": c.RetriableAttempts, "BATCH_SIZE": c.BatchSize,
		"BATCH_WORKERS": c.BatchWorkers, "REPLY_PREFETCH": c.ReplyPrefetch, "MAX_ACTIVE_SAGAS": c.MaxActiveSagas,
	}
	for name, n := range counts {
		if n < 1 {
			errs = append(errs, fmt.Errorf("%s: want at least 1, got %d", name, n))
		}
	}
	if c.OldestShare < 0 || c.OldestShare > 1 {
		errs = append(errs, fmt.Errorf("ADMISSION_OLDEST_SHARE: want a share in [0,1], got %g", c.OldestShare))
	}
	return errs
}

// Retry is the saga retry policy of the configuration, for the
// definitions' Retry.
func (c *OrchestratorConfig) Retry() saga.Retry {
	return saga.Retry{
		Timeout: c.StepTimeout, MaxTimeout: c.StepMaxTimeout, Backoff: c.RetryBackoff,
		MaxBackoff: c.RetryMaxBackoff, MaxAttempts: c.StepAttempts,
		CompensationAttempts: c.CompensationAttempts, RetriableAttempts: c.RetriableAttempts,
	}
}

// Settings returns c; through embedding, a binary's configuration has it
// too, which is how RunOrchestrator finds the shared part.
func (c *OrchestratorConfig) Settings() *OrchestratorConfig { return c }

// coordinatorConfig is the coordinator's part of the configuration.
func (c *OrchestratorConfig) coordinatorConfig() coordinator.Config {
	share := c.OldestShare
	if share == 0 {
		share = -1 // strict priority: coordinator.Config's zero is its default
	}
	return coordinator.Config{
		BatchSize: c.BatchSize, Workers: c.BatchWorkers, TimerInterval: c.TimerInterval,
		MaxActive: c.MaxActiveSagas, OldestShare: share,
	}
}

// OrchestratorConfigurer is a binary's configuration: it validates itself
// and embeds OrchestratorConfig.
type OrchestratorConfigurer interface {
	Validator
	Settings() *OrchestratorConfig
}

// OrchestratorSpec describes an orchestrator binary: a coordinator of saga
// definitions, its reply intake and an HTTP handler built on them.
type OrchestratorSpec struct {
	// Name is the service name and its log name.
	Name string
	// Summary says what the binary does, for -help.
	Summary string
	// Schema is the PostgreSQL schema of its tables (default Name).
	Schema string
	// Config is the binary's configuration, a pointer to a struct that
	// embeds OrchestratorConfig, with its per-binary defaults set (nil:
	// OrchestratorConfig alone).
	Config OrchestratorConfigurer
	// Definitions returns the sagas to drive, once the configuration is
	// read (their retry policy usually comes from it: Config.Retry).
	Definitions func() []*saga.Definition
	// Topology is the system's broker topology, declared at start.
	Topology TopologyFunc
	// Migrations are the binary's own tables, applied after the saga
	// store's (pgstore.Migrations).
	Migrations []pgmigrate.Set
	// WatchQueues are queues whose depth and consumers the metrics report
	// (saga.dead and the reply queue always are).
	WatchQueues []string
	// Handler builds the public HTTP handler (the binary's API) on the
	// running parts, served on HTTP_ADDR; Orchestrator.Health serves
	// /healthz and /readyz for a handler that has no better.
	Handler func(o *Orchestrator) (http.Handler, error)
	// Admin builds the operators' handler, served on ADMIN_ADDR beside
	// /metrics, /debug/pprof/, /healthz and /readyz (nil: those only).
	Admin func(o *Orchestrator) (http.Handler, error)
}

// Orchestrator is what an orchestrator's HTTP handler is built on.
type Orchestrator struct {
	Coordinator *coordinator.Coordinator
	Store       *pgstore.Store
	Bus         *amqpbus.Bus
	DB          *pgxpool.Pool
	Registry    *prometheus.Registry
	Log         zerolog.Logger
}

// Health serves /healthz and /readyz (see HealthMux), without /metrics:
// that is the admin listener's.
func (o *Orchestrator) Health() *http.ServeMux { return HealthMux(nil, o.DB, o.Bus) }

// RunOrchestrator runs an orchestrator until SIGINT or SIGTERM, or carries
// out its migrate command, and returns the process exit code: 0 after a
// graceful stop, 1 on a start or run error (RunMigrate tells the codes of
// migrate). It stops in order: the HTTP server (requests in flight
// finish), then the reply intake (replies in hand commit and are acked),
// then the coordinator.
func RunOrchestrator(spec OrchestratorSpec) int {
	if spec.Config == nil {
		spec.Config = &OrchestratorConfig{}
	}
	if spec.Schema == "" {
		spec.Schema = spec.Name
	}
	cfg := spec.Config.Settings()
	if cfg.DBMaxConns == 0 {
		cfg.DBMaxConns = 16
	}
	b := binary{name: spec.Name, summary: spec.Summary, schema: spec.Schema, cfg: spec.Config, base: &cfg.Base,
		sets: append([]pgmigrate.Set{pgstore.Migrations}, spec.Migrations...), memLimitMiB: 110}
	b.checkDeploy = func(ctx context.Context, w io.Writer) int {
		var defs []*saga.Definition
		if spec.Definitions != nil {
			defs = spec.Definitions()
		}
		return RunCheckDeploy(ctx, w, &cfg.Base, spec.Schema, defs)
	}
	return b.main(func(log zerolog.Logger) error { return runOrchestrator(b, spec, cfg, log) })
}

func runOrchestrator(b binary, spec OrchestratorSpec, cfg *OrchestratorConfig, log zerolog.Logger) error {
	p, err := b.open("HTTP_ADDR", cfg.HTTPAddr, spec.Topology, log)
	if err != nil {
		return err
	}
	defer p.close()
	if p.adminLn, err = Listen("ADMIN_ADDR", cfg.AdminAddr); err != nil {
		return err
	}
	defer p.adminLn.Close()
	ctx, stop, sctx, ln, db, bus := p.ctx, p.stop, p.start, p.ln, p.db, p.bus

	store := pgstore.New(db, pgstore.Config{OutboxLease: cfg.OutboxLease,
		OnQuarantine: func(kind string, id uuid.UUID, why error) {
			log.Error().Err(why).Str("kind", kind).Str("id", id.String()).Msg("quarantined: set aside for an operator")
			sagaprom.Quarantined.WithLabelValues(kind).Inc()
		}})
	// Deadlines follow the database's clock, whatever this host's says.
	clock := pgstore.NewClock(db)
	if err := clock.Sync(sctx); err != nil {
		return err
	}
	if off := clock.Offset(); off > time.Second || off < -time.Second {
		log.Warn().Dur("offset", off).Msg("this host's clock differs from the database's; deadlines follow the database")
	}
	reg := NewRegistry()
	sagaprom.RegisterCoordinator(reg, store)
	queues := sagaprom.NewQueueCollector(bus, append([]string{amqpbus.DeadLetterQueue, amqpbus.ReplyQueue}, spec.WatchQueues...)...)
	reg.MustRegister(queues)
	ccfg := cfg.coordinatorConfig()
	ccfg.Observer, ccfg.Clock = sagaprom.CoordinatorObserver{}, clock
	var defs []*saga.Definition
	if spec.Definitions != nil {
		defs = spec.Definitions()
	}
	if len(defs) == 0 {
		return errors.New("no saga definition to drive")
	}
	coord, err := coordinator.New(ccfg, store, bus, log, defs...)
	if err != nil {
		return err
	}
	// Refuse to drive some sagas while others would be stranded unseen.
	stranded, err := coord.CheckDeploy(sctx)
	if err != nil {
		return err
	}
	if len(stranded) > 0 {
		for _, s := range stranded {
			log.Error().Str("definition", s.Definition).Int("version", s.Version).Str("phase", string(s.Phase)).
				Str("state", s.State).Str("at", s.At).Int("sagas", s.Count).Time("oldest", s.Oldest).
				Msg("stranded: " + describeStranded(s))
		}
		return fmt.Errorf("refusing to start: %s (listed above; \"%s check-deploy\" prints them): deploy a version that keeps or upgrades them",
			strings.TrimSuffix(strandedSummary(stranded), ":"), spec.Name)
	}
	// Signals, when a definition waits for any: events bound by their
	// names to the signal queue, handed to the coordinator.
	var signals []string
	for _, d := range defs {
		signals = append(signals, d.Signals()...)
	}
	if len(signals) > 0 {
		if err := bus.Declare(sctx, amqpbus.SignalTopology(signals, amqpbus.QueueOptions{Type: amqpbus.QueueType(cfg.QueueType)})); err != nil {
			return err
		}
	}
	o := &Orchestrator{Coordinator: coord, Store: store, Bus: bus, DB: db, Registry: reg, Log: log}
	handler, err := spec.Handler(o)
	if err != nil {
		return err
	}
	adminMux := HealthMux(reg, db, bus)
	adminMux.Handle("/metrics", methodNotAllowed("GET"))
	HandlePprof(adminMux)
	if spec.Admin != nil {
		admin, err := spec.Admin(o)
		if err != nil {
			return err
		}
		adminMux.Handle("/", admin)
	}

	// Three lifetimes, stopped in order: the HTTP server, then the reply
	// intake (whose replies in hand need the coordinator), then the
	// coordinator.
	coordCtx, stopCoord := context.WithCancel(context.WithoutCancel(ctx))
	defer stopCoord()
	coordDone := make(chan struct{})
	go func() { defer close(coordDone); _ = coord.Run(coordCtx) }()
	go clock.Run(coordCtx, time.Minute, func(err error) { log.Warn().Err(err).Msg("clock sync failed") })
	go queues.Run(coordCtx, 5*time.Second)

	intakeDone := make(chan error, 2)
	go func() {
		intakeDone <- bus.ServeReplies(ctx, coord, amqpbus.ConsumerConfig{
			Prefetch: cfg.ReplyPrefetch, Transient: pgstore.Transient,
		}, cfg.BatchSize)
	}()
	intakes := 1
	if len(signals) > 0 {
		intakes++
		go func() {
			intakeDone <- bus.ServeSignals(ctx, coord, amqpbus.ConsumerConfig{Transient: pgstore.Transient}, cfg.BatchSize)
		}()
	}

	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	adminSrv := &http.Server{Handler: adminMux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute}
	adminDone := make(chan error, 1)
	go func() { adminDone <- Serve(ctx, adminSrv, p.adminLn, cfg.ShutdownTimeout) }()
	names := make([]string, len(defs))
	for i, d := range defs {
		names[i] = d.Name
	}
	log.Info().Str("http_addr", ln.Addr().String()).Str("admin_addr", p.adminLn.Addr().String()).
		Strs("definitions", names).Msg("orchestrator started")
	httpErr := Serve(ctx, srv, ln, cfg.ShutdownTimeout)
	stop()
	if err := <-adminDone; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error().Err(err).Msg("admin http server")
	}
	if httpErr != nil && !errors.Is(httpErr, http.ErrServerClosed) {
		log.Error().Err(httpErr).Msg("http server")
	}
	for range intakes {
		<-intakeDone
	}
	stopCoord()
	<-coordDone
	return nil
}

// methodNotAllowed answers 405 with the methods allowed and an error in
// the API's JSON shape: for the other methods of a path the mux serves.
func methodNotAllowed(allow string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.WriteHeader(http.StatusMethodNotAllowed)
		_ = json.NewEncoder(w).Encode(map[string]map[string]string{"error": {
			"code": "method_not_allowed", "message": r.Method + " is not allowed on " + r.URL.Path}})
	})
}
