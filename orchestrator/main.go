// Command orchestrator is sagaflow's coordinator: the REST API and the
// order saga engine. It persists sagas in PostgreSQL, sends commands to the
// workers over RabbitMQ through its outbox, and applies their replies and
// its timers in batched transactions. Configuration: README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga/sagaprom"
	"github.com/sagaflow/sagaflow/saga/service"

	"github.com/sagaflow/sagaflow/orchestrator/api"
	"github.com/sagaflow/sagaflow/orchestrator/order"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/coordinator"
	"github.com/sagaflow/sagaflow/saga/pgstore"
)

func main() {
	cfg := Config{Base: service.Base{DBMaxConns: 16}}
	cmd := service.HandleFlags("orchestrator", "the REST API and the coordinator of the order saga", &cfg)
	if err := service.LoadConfig(&cfg); err != nil {
		fmt.Fprintf(os.Stderr, "orchestrator: %v\n", err)
		os.Exit(1)
	}
	if cmd != service.CommandServe {
		os.Exit(service.RunMigrate(context.Background(), os.Stdout, &cfg.Base, "orchestrator", cmd, pgstore.Migrations))
	}
	log := service.Logger("orchestrator", &cfg.Base)
	service.SetCheckLog(log)
	service.TuneGC(110)
	if err := run(&cfg, log); err != nil {
		log.Error().Err(err).Msg("stopped with an error")
		os.Exit(1)
	}
	log.Info().Msg("stopped")
}

func run(cfg *Config, log zerolog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	ln, err := service.Listen("HTTP_ADDR", cfg.HTTPAddr)
	if err != nil {
		return err
	}
	defer ln.Close()
	stopTracing, err := service.SetupTracing(ctx, "orchestrator")
	if err != nil {
		return err
	}
	defer func() { _ = stopTracing(context.Background()) }()
	if err := service.StartPprof(&cfg.Base, log); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	db, err := service.OpenDB(sctx, &cfg.Base, "orchestrator", log, pgstore.Migrations)
	if err != nil {
		return err
	}
	defer db.Close()
	bus, err := service.DialBus(sctx, &cfg.Base, "orchestrator", contract.Topology, log)
	if err != nil {
		return err
	}
	defer bus.Close()

	store := pgstore.New(db, pgstore.Config{OutboxLease: cfg.OutboxLease,
		OnQuarantine: func(kind string, id uuid.UUID, why error) {
			log.Error().Err(why).Str("kind", kind).Str("id", id.String()).Msg("quarantined: set aside for an operator (GET /admin/quarantine)")
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
	reg := service.NewRegistry()
	sagaprom.RegisterOrchestrator(reg, store)
	queues := sagaprom.NewQueueCollector(bus, amqpbus.DeadLetterQueue, amqpbus.ReplyQueue,
		contract.InventoryQueue, contract.PaymentQueue, contract.ShippingQueue,
		contract.InventoryRequests, contract.PaymentRequests, contract.ShippingRequests,
		contract.NotificationRequests, contract.AuditRequests,
		contract.EmailQueue, contract.SMSQueue, contract.AuditEventsQueue)
	reg.MustRegister(queues)
	coord, err := coordinator.New(coordinator.Config{
		BatchSize: cfg.BatchSize, Workers: cfg.BatchWorkers, TimerInterval: cfg.TimerInterval,
		MaxActive: cfg.MaxActiveSagas, OldestShare: cfg.OldestShareOrStrict(), Observer: sagaprom.SagaObserver{}, Clock: clock,
	}, store, bus, log, order.Definition(cfg.Retry()))
	if err != nil {
		return err
	}

	// Three lifetimes, stopped in order: the API, then the reply consumer
	// (whose in-flight replies need the coordinator), then the coordinator.
	coordCtx, stopCoord := context.WithCancel(context.WithoutCancel(ctx))
	defer stopCoord()
	coordDone := make(chan struct{})
	go func() { defer close(coordDone); _ = coord.Run(coordCtx) }()
	go clock.Run(coordCtx, time.Minute, func(err error) { log.Warn().Err(err).Msg("clock sync failed") })
	go queues.Run(coordCtx, 5*time.Second)

	consumerDone := make(chan error, 1)
	go func() {
		consumerDone <- bus.ServeReplies(ctx, coord, amqpbus.ConsumerConfig{
			Prefetch: cfg.ReplyPrefetch, Transient: pgstore.Transient,
		}, cfg.BatchSize)
	}()

	srv := &http.Server{
		Handler: api.New(api.Deps{
			Coordinator: coord, Store: store, Bus: bus, DB: db, Registry: reg, Log: log,
			AdminToken: cfg.AdminToken, RPCTimeout: cfg.RPCTimeout, MaxBodyBytes: cfg.MaxBodyBytes,
			LedgerTimeout: cfg.LedgerTimeout, ProductRate: cfg.ProductRate, ProductBurst: cfg.ProductBurst, ProductCacheTTL: cfg.ProductCacheTTL,
		}),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	log.Info().Str("http_addr", ln.Addr().String()).Bool("admin_api", cfg.AdminToken != "").
		Msg("orchestrator started")
	httpErr := service.Serve(ctx, srv, ln, cfg.ShutdownTimeout)
	stop()
	if httpErr != nil && !errors.Is(httpErr, http.ErrServerClosed) {
		log.Error().Err(httpErr).Msg("http server")
	}
	<-consumerDone
	stopCoord()
	<-coordDone
	return nil
}
