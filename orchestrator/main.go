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

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagaflow/sagaflow/internal/metrics"
	"github.com/sagaflow/sagaflow/internal/service"
	"github.com/sagaflow/sagaflow/internal/telemetry"
	"github.com/sagaflow/sagaflow/orchestrator/api"
	"github.com/sagaflow/sagaflow/orchestrator/order"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/pgstore"
)

var tracer = otel.Tracer("github.com/sagaflow/sagaflow/orchestrator")

func main() {
	var cfg Config
	if err := service.LoadConfig(&cfg); err != nil {
		fmt.Fprintf(os.Stderr, "orchestrator: %v\n", err)
		os.Exit(1)
	}
	log := service.Logger("orchestrator", &cfg.Base)
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
	stopTracing, err := telemetry.Setup(ctx, "orchestrator")
	if err != nil {
		return err
	}
	defer func() { _ = stopTracing(context.Background()) }()
	if err := service.StartPprof(&cfg.Base, log); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	db, err := service.OpenDB(sctx, &cfg.Base, "orchestrator", 16)
	if err != nil {
		return err
	}
	defer db.Close()
	bus, err := service.DialBus(sctx, &cfg.Base, "orchestrator", log)
	if err != nil {
		return err
	}
	defer bus.Close()

	store := pgstore.New(db, pgstore.Config{OutboxLease: cfg.OutboxLease})
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics.RegisterOrchestrator(reg, store)
	coord, err := saga.NewCoordinator(saga.Config{
		BatchSize: cfg.BatchSize, Workers: cfg.BatchWorkers, TimerInterval: cfg.TimerInterval,
		StartGrace: cfg.StartGrace, Observer: metrics.SagaObserver{},
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

	consumerDone := make(chan error, 1)
	go func() {
		consumerDone <- bus.Consume(ctx, amqpbus.ConsumerConfig{
			Queue: amqpbus.ReplyQueue, Prefetch: cfg.ReplyPrefetch,
		}, func(hctx context.Context, d *amqp.Delivery) error {
			hctx = otel.GetTextMapPropagator().Extract(hctx, amqpbus.HeaderCarrier(d.Headers))
			hctx, span := tracer.Start(hctx, d.Type+" apply", trace.WithSpanKind(trace.SpanKindConsumer),
				trace.WithAttributes(attribute.String("messaging.message.id", d.MessageId)))
			defer span.End()
			return coord.HandleReply(hctx, d.Body)
		})
	}()

	srv := &http.Server{
		Handler: api.New(api.Deps{
			Coordinator: coord, Store: store, Bus: bus, DB: db, Registry: reg, Log: log,
			AdminToken: cfg.AdminToken, RPCTimeout: cfg.RPCTimeout, MaxBodyBytes: cfg.MaxBodyBytes,
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
