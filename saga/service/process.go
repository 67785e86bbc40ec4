package service

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/pgmigrate"
)

// binary is what RunOrchestrator and RunWorker share: a main that reads
// its flags and environment, then carries out the migrate command or
// serves, and returns the exit code.
type binary struct {
	name, summary string
	schema        string // the database schema of its tables
	cfg           Validator
	base          *Base // cfg's
	sets          []pgmigrate.Set
	memLimitMiB   int64 // TuneGC's soft memory limit
	// checkDeploy carries out check-deploy (orchestrators only).
	checkDeploy func(ctx context.Context, w io.Writer) int
}

// main returns the process exit code: 1 for a bad setting, RunMigrate's
// for the migrate command, else 0 after serve's graceful stop and 1 if it
// failed (HandleFlags exits by itself on -help, -version and bad
// arguments).
func (b binary) main(serve func(log zerolog.Logger) error) int {
	cmd := HandleFlags(b.name, b.summary, b.cfg)
	if err := LoadConfig(b.cfg); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", b.name, err)
		return 1
	}
	switch {
	case cmd == CommandCheckDeploy && b.checkDeploy == nil:
		fmt.Fprintf(os.Stderr, "%s: check-deploy is an orchestrator's command\n", b.name)
		return 2
	case cmd == CommandCheckDeploy:
		return b.checkDeploy(context.Background(), os.Stdout)
	case cmd != CommandServe:
		return RunMigrate(context.Background(), os.Stdout, b.base, b.schema, cmd, b.sets...)
	}
	log := Logger(b.name, b.base)
	SetCheckLog(log)
	TuneGC(b.memLimitMiB)
	if err := serve(log); err != nil {
		log.Error().Err(err).Msg("stopped with an error")
		return 1
	}
	log.Info().Msg("stopped")
	return 0
}

// process is what a serving binary holds before its own work starts.
type process struct {
	// ctx ends on SIGINT or SIGTERM; stop ends it too.
	ctx  context.Context
	stop context.CancelFunc
	// start is ctx bounded by START_TIMEOUT, for what a binary connects to
	// before it serves.
	start context.Context
	ln    net.Listener
	// adminLn is an orchestrator's admin listener (ADMIN_ADDR).
	adminLn net.Listener
	db      *pgxpool.Pool
	bus     *amqpbus.Bus
	// closers run last first by close.
	closers []func()
}

// open starts, in order: the signal context, the listener (addrVar's
// address), tracing, the profiler, the database (migrated) and the bus,
// waiting up to START_TIMEOUT for a server that is not up yet. It closes
// what it opened when a later step fails; on success the caller calls
// close.
func (b binary) open(addrVar, addr string, topology TopologyFunc, log zerolog.Logger) (_ *process, err error) {
	p := &process{}
	defer func() {
		if err != nil {
			p.close()
		}
	}()
	p.ctx, p.stop = signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	p.closers = append(p.closers, p.stop)
	if p.ln, err = Listen(addrVar, addr); err != nil {
		return nil, err
	}
	p.closers = append(p.closers, func() { _ = p.ln.Close() })
	stopTracing, err := SetupTracing(p.ctx, b.name)
	if err != nil {
		return nil, err
	}
	p.closers = append(p.closers, func() { _ = stopTracing(context.Background()) })
	if err := StartPprof(b.base, log); err != nil {
		return nil, err
	}
	start, cancel := context.WithTimeout(p.ctx, b.base.StartTimeout)
	p.start = start
	p.closers = append(p.closers, cancel)
	if p.db, err = waitFor(start, log, "PostgreSQL", func() (*pgxpool.Pool, error) {
		return OpenDB(start, b.base, b.schema, log, b.sets...)
	}); err != nil {
		return nil, err
	}
	p.closers = append(p.closers, p.db.Close)
	if p.bus, err = waitFor(start, log, "RabbitMQ", func() (*amqpbus.Bus, error) {
		return DialBus(start, b.base, b.name, topology, log)
	}); err != nil {
		return nil, err
	}
	p.closers = append(p.closers, func() { _ = p.bus.Close() })
	return p, nil
}

// close releases what open opened, last first.
func (p *process) close() {
	for i := len(p.closers) - 1; i >= 0; i-- {
		p.closers[i]()
	}
}
