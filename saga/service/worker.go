package service

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	json "github.com/goccy/go-json"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow"
	"github.com/sagaflow/sagaflow/saga/pgmigrate"
	"github.com/sagaflow/sagaflow/saga/sagaprom"

	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/worker"
)

// WorkerConfig is the configuration of a command worker.
type WorkerConfig struct {
	Base
	// MetricsAddr serves /metrics, /healthz and /readyz (default per worker:
	// inventory :9101, payment :9102, shipping :9103, notification :9104,
	// audit :9105).
	MetricsAddr string `env:"METRICS_ADDR" help:"address of /metrics, /healthz and /readyz"`
	// Prefetch is how many unacked commands the broker hands over: commands
	// being handled plus those whose replies await their confirm (default
	// 1024). It must cover throughput × confirm latency, which reaches a
	// second or more on a busy broker.
	Prefetch int `env:"WORKER_PREFETCH" envDefault:"1024" help:"commands in hand, including those whose replies await confirms"`
	// Batch is the most commands applied in one transaction (default 32).
	Batch int `env:"WORKER_BATCH" envDefault:"32" help:"commands applied per transaction"`
	// EventPrefetch is how many events a subscriber takes at once, and its
	// largest batch per transaction (default 256).
	EventPrefetch int `env:"EVENT_PREFETCH" envDefault:"256" help:"events per batch, one transaction each (notification, audit)"`
	// InboxRetention is how long processed commands stay in the inbox
	// (default 168h).
	InboxRetention time.Duration `env:"INBOX_RETENTION" envDefault:"168h" help:"how long processed commands stay in the inbox (a re-sent copy finds its reply); older ones are deleted hourly"`
	// SimLatency is added before each command (default 0s).
	SimLatency time.Duration `env:"SIM_LATENCY" envDefault:"0s" help:"simulation: latency added before each command"`
	// SimFailureRate is the probability of a transient failure (default 0).
	SimFailureRate float64 `env:"SIM_FAILURE_RATE" envDefault:"0" help:"simulation: probability of a transient failure before the effect"`
	// SimDropReplyRate is the probability a reply is lost after the effect
	// committed (default 0).
	SimDropReplyRate float64 `env:"SIM_DROP_REPLY_RATE" envDefault:"0" help:"simulation: probability a reply is lost after the effect committed"`
	// SimDropFirstReply loses the first reply to each command (default false).
	SimDropFirstReply bool `env:"SIM_DROP_FIRST_REPLY" envDefault:"false" help:"simulation: lose the first reply to each command"`
}

// Validate reports every problem at once.
func (c *WorkerConfig) Validate() []error {
	errs := c.Base.Validate()
	if c.Prefetch < 1 {
		errs = append(errs, fmt.Errorf("WORKER_PREFETCH: want at least 1, got %d", c.Prefetch))
	}
	if c.EventPrefetch < 1 {
		errs = append(errs, fmt.Errorf("EVENT_PREFETCH: want at least 1, got %d", c.EventPrefetch))
	}
	if c.Batch < 1 {
		errs = append(errs, fmt.Errorf("WORKER_BATCH: want at least 1, got %d", c.Batch))
	}
	if c.InboxRetention < time.Hour {
		errs = append(errs, fmt.Errorf("INBOX_RETENTION: want at least 1h (longer than a saga retries a step), got %s", c.InboxRetention))
	}
	if c.SimLatency < 0 {
		errs = append(errs, fmt.Errorf("SIM_LATENCY: want a non-negative duration, got %s", c.SimLatency))
	}
	for name, v := range map[string]float64{"SIM_FAILURE_RATE": c.SimFailureRate, "SIM_DROP_REPLY_RATE": c.SimDropReplyRate} {
		if v < 0 || v > 1 {
			errs = append(errs, fmt.Errorf("%s: want a probability in [0,1], got %g", name, v))
		}
	}
	return errs
}

// WorkerSettings is a worker's configuration: WorkerConfig, or a struct
// of the worker's own that embeds it (its own variables then read from the
// environment and listed by -help too).
type WorkerSettings interface {
	Validator
	WorkerSettings() *WorkerConfig
}

// WorkerSettings returns c.
func (c *WorkerConfig) WorkerSettings() *WorkerConfig { return c }

// WorkerSpec describes a command worker binary.
type WorkerSpec struct {
	// Name is the service name, its PostgreSQL schema and its log name.
	Name string
	// Summary says what the worker does, for -help.
	Summary string
	// Queue is its command queue (empty: it answers requests only).
	Queue string
	// RequestQueue is its queue of requests relayed by an API (empty:
	// none).
	RequestQueue string
	// MetricsAddr is the default of METRICS_ADDR.
	MetricsAddr string
	// Topology is the system's broker topology, declared at start.
	Topology TopologyFunc
	// Migrations are the worker's own tables, applied after the runtime's
	// inbox (worker.Migrations) in the worker's schema.
	Migrations []pgmigrate.Set
	// IDName is the saga definition's IDName ("order_id"): log lines name
	// the saga id by it.
	IDName string
	// Register adds the worker's handlers to the runtime.
	Register func(rt *worker.Runtime, db *pgxpool.Pool)
	// DBConns is the default pool size (DB_MAX_CONNS overrides it).
	DBConns int32
	// Config is the worker's configuration, read from the environment
	// before Register runs (nil: a WorkerConfig).
	Config WorkerSettings
}

// RunWorker runs a command worker until SIGINT or SIGTERM, or carries out
// its migrate command, and returns the process exit code: 0 after a
// graceful stop, 1 on a start or run error (RunMigrate tells the codes of
// migrate).
func RunWorker(spec WorkerSpec) int {
	if spec.Config == nil {
		spec.Config = &WorkerConfig{}
	}
	cfg := spec.Config.WorkerSettings()
	if cfg.MetricsAddr == "" {
		cfg.MetricsAddr = spec.MetricsAddr
	}
	if cfg.DBMaxConns == 0 {
		cfg.DBMaxConns = spec.DBConns
	}
	b := binary{name: spec.Name, summary: spec.Summary, schema: spec.Name, cfg: spec.Config, base: &cfg.Base,
		sets: append([]pgmigrate.Set{worker.Migrations}, spec.Migrations...), memLimitMiB: 40}
	return b.main(func(log zerolog.Logger) error { return runWorker(b, spec, cfg, log) })
}

func runWorker(b binary, spec WorkerSpec, cfg *WorkerConfig, log zerolog.Logger) error {
	p, err := b.open("METRICS_ADDR", cfg.MetricsAddr, spec.Topology, log)
	if err != nil {
		return err
	}
	defer p.close()
	ctx, stop, ln, db, bus := p.ctx, p.stop, p.ln, p.db, p.bus

	reg := NewRegistry()
	sagaprom.RegisterWorker(reg)

	rt := worker.New(worker.Config{
		Service: spec.Name, Queue: spec.Queue, RequestQueue: spec.RequestQueue, Prefetch: cfg.Prefetch, Batch: cfg.Batch, IDName: spec.IDName,
		EventPrefetch: cfg.EventPrefetch, InboxRetention: cfg.InboxRetention,
		Simulate: worker.Simulation{
			Latency: cfg.SimLatency, FailureRate: cfg.SimFailureRate, DropReplyRate: cfg.SimDropReplyRate,
			DropFirstReply: cfg.SimDropFirstReply,
		},
	}, db, bus, log)
	rt.SetObserver(sagaprom.WorkerObserver{})
	spec.Register(rt, db)

	srv := &http.Server{Handler: HealthMux(reg, db, bus), ReadHeaderTimeout: 5 * time.Second}
	httpDone := make(chan error, 1)
	go func() { httpDone <- Serve(ctx, srv, ln, 5*time.Second) }()

	log.Info().Str("queue", spec.Queue).Str("request_queue", spec.RequestQueue).Str("metrics_addr", ln.Addr().String()).
		Int("prefetch", cfg.Prefetch).Int("batch", cfg.Batch).Msg("worker started")
	// Run returns once ctx is done and in-flight commands finished.
	runErr := rt.Run(ctx)
	stop()
	if err := <-httpDone; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn().Err(err).Msg("metrics server")
	}
	return runErr
}

// HealthMux serves /metrics from reg, /healthz (the process is alive, with
// the state of its dependencies) and /readyz (503 unless PostgreSQL and
// RabbitMQ are both reachable).
func HealthMux(reg *prometheus.Registry, db *pgxpool.Pool, bus *amqpbus.Bus) *http.ServeMux {
	mux := http.NewServeMux()
	if reg != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	}
	check := func(w http.ResponseWriter, r *http.Request, strict bool) {
		st := Check(r.Context(), db, bus)
		code := http.StatusOK
		if strict && !st.OK() {
			code = http.StatusServiceUnavailable
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(st)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { check(w, r, false) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) { check(w, r, true) })
	return mux
}

// Status is the state of a process's dependencies.
type Status struct {
	Status   string `json:"status"`
	Version  string `json:"version"`
	Postgres string `json:"postgres"`
	RabbitMQ string `json:"rabbitmq"`
}

// NewRegistry returns a Prometheus registry with Go's runtime and process
// collectors and sagaflow_build_info.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		sagaprom.BuildInfo(sagaflow.Version()))
	return reg
}

// OK reports whether both dependencies are reachable.
func (s Status) OK() bool { return s.Status == "ok" }

// Check pings PostgreSQL (bounded at 2s) and asks the bus for its state.
func Check(ctx context.Context, db *pgxpool.Pool, bus *amqpbus.Bus) Status {
	st := Status{Status: "ok", Version: sagaflow.Version(), Postgres: "ok", RabbitMQ: "ok"}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := db.Ping(pctx); err != nil {
		st.Status, st.Postgres = "unavailable", "unavailable"
		checkLog.Warn().Err(err).Msg("health check: PostgreSQL is unavailable")
	}
	if err := bus.Err(); err != nil {
		st.Status, st.RabbitMQ = "unavailable", "unavailable"
		checkLog.Warn().Err(err).Msg("health check: RabbitMQ is unavailable")
	}
	return st
}

// checkLog is where Check reports why a dependency is unavailable: the
// driver's text (users, hosts, databases) goes to the log, not into the
// health answers anyone may read. SetCheckLog sets it.
var checkLog = zerolog.Nop()

// SetCheckLog sets the logger of Check.
func SetCheckLog(l zerolog.Logger) { checkLog = l }
