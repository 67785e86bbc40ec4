// Package service is the wiring a sagaflow binary needs around the engine:
// configuration from the environment (Base, LoadConfig, HandleFlags with
// its migrate command), logging, the PostgreSQL pool with its schema
// migrated (OpenDB), the RabbitMQ bus with the system's topology declared
// (DialBus), the health and metrics server, tracing, and an ordered,
// signal-aware shutdown. RunWorker is a whole worker binary in one call.
//
// The order system's binaries are built on it, and so is the trip example
// (examples/trip); docs/writing-a-saga.md walks through one.
package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/pgmigrate"
	"github.com/sagaflow/sagaflow/saga/sagaprom"
)

// Base is the configuration every service shares. The defaults of
// DATABASE_URL and AMQP_URL come from the repository's .env (see
// sagaflow.Default); the others are in the tags.
type Base struct {
	// DatabaseURL is the PostgreSQL URL (default: DATABASE_URL of .env,
	// postgres://sagaflow:sagaflow@127.0.0.1:5432/sagaflow?sslmode=disable).
	DatabaseURL string `env:"DATABASE_URL" help:"PostgreSQL URL; each service keeps its tables in its own schema"`
	// AMQPURL is the RabbitMQ URL (default: AMQP_URL of .env,
	// amqp://guest:guest@127.0.0.1:5672/).
	AMQPURL string `env:"AMQP_URL" help:"RabbitMQ URL"`
	// LogLevel is debug, info, warn or error (default info).
	LogLevel string `env:"LOG_LEVEL" envDefault:"info" help:"debug, info, warn or error"`
	// LogFormat is json or console (default json).
	LogFormat string `env:"LOG_FORMAT" envDefault:"json" help:"json, or console for humans"`
	// QueueType is classic or quorum for every queue (default classic).
	QueueType string `env:"AMQP_QUEUE_TYPE" envDefault:"classic" help:"classic, or quorum for clusters (no priorities then)"`
	// DBMaxConns is the pool size (default per binary: orchestrator 16,
	// inventory, payment and shipping 10, notification and audit 4; a whole
	// deployment fits PostgreSQL's default max_connections of 100). Each
	// binary sets its default in the field before the environment is read.
	DBMaxConns int32 `env:"DB_MAX_CONNS" help:"PostgreSQL connections in the pool"`
	// StartTimeout bounds connecting to PostgreSQL and RabbitMQ at start,
	// and how long a process waits for one that is not up yet (default
	// 15s).
	StartTimeout time.Duration `env:"START_TIMEOUT" envDefault:"15s" help:"how long a process waits at start for PostgreSQL and RabbitMQ to be up (and migrated)"`
	// ShutdownTimeout bounds the graceful stop (default 20s).
	ShutdownTimeout time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"20s" help:"bound on the graceful stop"`
	// DeadLetterMax bounds saga.dead: past it the oldest dead letters are
	// dropped (default 100000). Applied when the queue is created.
	DeadLetterMax int64 `env:"DEAD_LETTER_MAX" envDefault:"100000" help:"most messages kept in saga.dead (the oldest are dropped); applied when the queue is created"`
	// AutoMigrate applies pending migrations at start (default true); set
	// false to apply them only with the migrate command.
	AutoMigrate bool `env:"AUTO_MIGRATE" envDefault:"true" help:"apply pending database migrations at start; false: only with the migrate command, and refuse to start while any is pending"`
	// PprofAddr serves Go's profiler (net/http/pprof) when set (default
	// off); keep it on a private address.
	PprofAddr string `env:"PPROF_ADDR" help:"serve Go's profiler (/debug/pprof/) on this address; unset: off"`
}

// Validate reports every problem of the shared settings.
func (b *Base) Validate() []error {
	var errs []error
	if u, err := url.Parse(b.DatabaseURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		errs = append(errs, fmt.Errorf("DATABASE_URL: want postgres://..., got %q", redact(b.DatabaseURL)))
	}
	if u, err := url.Parse(b.AMQPURL); err != nil || (u.Scheme != "amqp" && u.Scheme != "amqps") {
		errs = append(errs, fmt.Errorf("AMQP_URL: want amqp://..., got %q", redact(b.AMQPURL)))
	}
	if _, err := zerolog.ParseLevel(b.LogLevel); err != nil || b.LogLevel == "" {
		errs = append(errs, fmt.Errorf("LOG_LEVEL: want debug, info, warn or error, got %q", b.LogLevel))
	}
	if b.LogFormat != "json" && b.LogFormat != "console" {
		errs = append(errs, fmt.Errorf("LOG_FORMAT: want json or console, got %q", b.LogFormat))
	}
	if b.QueueType != string(amqpbus.Classic) && b.QueueType != string(amqpbus.Quorum) {
		errs = append(errs, fmt.Errorf("AMQP_QUEUE_TYPE: want classic or quorum, got %q", b.QueueType))
	}
	if b.DeadLetterMax < 1 {
		errs = append(errs, fmt.Errorf("DEAD_LETTER_MAX: want at least 1, got %d", b.DeadLetterMax))
	}
	if b.DBMaxConns < 1 {
		errs = append(errs, fmt.Errorf("DB_MAX_CONNS: want at least 1, got %d", b.DBMaxConns))
	}
	return errs
}

// TuneGC sets the garbage collector for a busy service, unless the
// standard GOGC and GOMEMLIMIT variables say otherwise: the heap may grow
// to five times what is live (GOGC=400) before a collection, instead of
// twice, which spends a quarter of the CPU on collections that Go's default
// does; a soft limit of limitMiB makes collections more frequent again
// when the heap nears it, so memory stays bounded.
func TuneGC(limitMiB int64) {
	if _, ok := os.LookupEnv("GOGC"); !ok {
		debug.SetGCPercent(400)
	}
	if _, ok := os.LookupEnv("GOMEMLIMIT"); !ok {
		debug.SetMemoryLimit(limitMiB << 20)
	}
}

// Validator is a configuration that can check itself.
type Validator interface{ Validate() []error }

// LoadConfig parses the environment into cfg (a pointer to a struct whose
// fields carry env tags; a field already set keeps its value when the
// environment does not name it) and validates it, reporting every problem
// at once. DATABASE_URL and AMQP_URL default to the values of .env.
func LoadConfig(cfg Validator) error {
	if err := env.ParseWithOptions(cfg, env.Options{Environment: environment()}); err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	if errs := cfg.Validate(); len(errs) > 0 {
		return fmt.Errorf("configuration: %w", errors.Join(errs...))
	}
	return nil
}

// Logger returns a zerolog logger for a service.
func Logger(service string, b *Base) zerolog.Logger {
	level, _ := zerolog.ParseLevel(b.LogLevel)
	zerolog.TimeFieldFormat = time.RFC3339Nano
	var log zerolog.Logger
	if b.LogFormat == "console" {
		log = zerolog.New(zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: "15:04:05.000"})
	} else {
		log = zerolog.New(os.Stderr)
	}
	return log.Level(level).With().Timestamp().Str("service", service).Logger()
}

// OpenDB connects to PostgreSQL with search_path set to schema and checks
// the connection. With AUTO_MIGRATE (the default) it applies the pending
// migrations of sets, in order, in that schema (created if missing);
// without, it refuses to start while any is pending. The pool holds
// DB_MAX_CONNS connections.
func OpenDB(ctx context.Context, b *Base, schema string, log zerolog.Logger, sets ...pgmigrate.Set) (*pgxpool.Pool, error) {
	pool, err := openPool(ctx, b, schema)
	if err != nil {
		return nil, err
	}
	if !b.AutoMigrate {
		st, err := pgmigrate.Check(ctx, pool, sets...)
		if err == nil && pgmigrate.Pending(st) {
			err = fmt.Errorf("migrations are pending and AUTO_MIGRATE is false: run this binary with the argument \"migrate\" first (\"migrate status\" lists them)")
		}
		if err != nil {
			pool.Close()
			return nil, fmt.Errorf("postgres %s: %w", redact(b.DatabaseURL), err)
		}
		return pool, nil
	}
	applied, err := pgmigrate.Up(ctx, pool, sets...)
	for _, a := range applied {
		log.Info().Str("set", a.Set).Int64("version", a.Version).Str("file", a.File).Dur("took", a.Duration).Msg("migration applied")
	}
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres %s: %w", redact(b.DatabaseURL), err)
	}
	return pool, nil
}

func openPool(ctx context.Context, b *Base, schema string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(b.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	cfg.MaxConns = b.DBMaxConns
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	cfg.ConnConfig.RuntimeParams["application_name"] = "sagaflow-" + schema
	// Every query of these services is an index lookup. A prepared
	// statement is planned once per connection; on a table that was never
	// analyzed (a new deployment, a server without autovacuum) the planner
	// sees a near-empty table, picks a sequential scan, and keeps it as the
	// statement's generic plan long after the table has grown: thousands
	// of rows read to lock the three rows a batch names. Ruling sequential
	// scans out makes each statement use its index from the first run.
	cfg.ConnConfig.RuntimeParams["enable_seqscan"] = "off"
	// Short statements only: compiling one with LLVM costs far more than
	// running it (and a plan that must scan anyway now looks expensive
	// enough to be compiled on every run).
	cfg.ConnConfig.RuntimeParams["jit"] = "off"
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres %s: %w", redact(b.DatabaseURL), err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres %s: %w", redact(b.DatabaseURL), err)
	}
	return pool, nil
}

// RunMigrate carries out a migrate command (CommandMigrate or CommandMigrateStatus) on
// schema, printing to w, and returns the exit code: 0 done (or current),
// 1 on an error, 3 when "migrate status" finds migrations pending.
func RunMigrate(ctx context.Context, w io.Writer, b *Base, schema string, cmd Command, sets ...pgmigrate.Set) int {
	ctx, cancel := context.WithTimeout(ctx, b.StartTimeout+time.Minute)
	defer cancel()
	pool, err := openPool(ctx, b, schema)
	if err != nil {
		fmt.Fprintf(w, "migrate: %v\n", err)
		return 1
	}
	defer pool.Close()
	if cmd == CommandMigrate {
		applied, err := pgmigrate.Up(ctx, pool, sets...)
		for _, a := range applied {
			fmt.Fprintf(w, "applied %s %s (%s)\n", a.Set, a.File, a.Duration.Round(time.Millisecond))
		}
		if err != nil {
			fmt.Fprintf(w, "migrate: %v\n", err)
			return 1
		}
		if len(applied) == 0 {
			fmt.Fprintf(w, "schema %s is current\n", schema)
		}
		return 0
	}
	st, err := pgmigrate.Check(ctx, pool, sets...)
	if err != nil {
		fmt.Fprintf(w, "migrate: %v\n", err)
		return 1
	}
	for _, s := range st {
		fmt.Fprintf(w, "%s: version %d of %d", s.Set, s.Current, s.Latest)
		if len(s.Pending) > 0 {
			fmt.Fprintf(w, ", pending: %s", strings.Join(s.Pending, ", "))
		}
		fmt.Fprintln(w)
	}
	if pgmigrate.Pending(st) {
		return 3
	}
	return 0
}

// TopologyFunc returns a system's broker topology for the configured queue
// type and dead-letter bound (AMQP_QUEUE_TYPE, DEAD_LETTER_MAX).
type TopologyFunc func(qt amqpbus.QueueType, deadLetterMax int64) amqpbus.Topology

// DialBus connects to RabbitMQ and declares the system's topology (every
// process declares all of it, so nobody has to start first).
func DialBus(ctx context.Context, b *Base, name string, topology TopologyFunc, log zerolog.Logger) (*amqpbus.Bus, error) {
	bus, err := amqpbus.Dial(ctx, amqpbus.Config{URL: b.AMQPURL, Name: name,
		OnDeadLetter: sagaprom.CountDeadLetter, OnReconnect: sagaprom.CountReconnect}, log)
	if err != nil {
		return nil, err
	}
	if err := bus.Declare(ctx, topology(amqpbus.QueueType(b.QueueType), b.DeadLetterMax)); err != nil {
		bus.Close()
		return nil, err
	}
	return bus, nil
}

// Listen binds addr now, so that a port in use is an error at start.
func Listen(name, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s %q: %w", name, addr, err)
	}
	return ln, nil
}

// StartPprof serves net/http/pprof on b.PprofAddr, if set, until the
// process exits.
func StartPprof(b *Base, log zerolog.Logger) error {
	if b.PprofAddr == "" {
		return nil
	}
	ln, err := Listen("PPROF_ADDR", b.PprofAddr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	HandlePprof(mux)
	go func() { _ = http.Serve(ln, mux) }()
	log.Info().Str("pprof_addr", ln.Addr().String()).Msg("profiler listening")
	return nil
}

// HandlePprof mounts Go's profiler on mux under /debug/pprof/.
func HandlePprof(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}

// Serve runs srv on ln until ctx is done, then shuts it down gracefully.
func Serve(ctx context.Context, srv *http.Server, ln net.Listener, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	return srv.Shutdown(sctx)
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return strings.Repeat("*", 3)
	}
	return u.Redacted()
}
