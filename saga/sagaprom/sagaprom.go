// Package sagaprom is sagaflow's Prometheus metrics, in one place so that
// names and labels stay the same across binaries: the coordinator's
// (CoordinatorObserver, a coordinator.Observer; RegisterCoordinator), the
// worker runtime's (WorkerObserver, a worker.Observer; RegisterWorker),
// dead letters (CountDeadLetter, an amqpbus.Config.OnDeadLetter hook),
// queue depths read in the background (QueueCollector) and the build
// (BuildInfo). saga/service wires them into every binary;
// docs/operations.md lists them.
//
// The metrics are package-level collectors: register them once per
// registry, and one process reports one coordinator or one worker.
package sagaprom

import (
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BuildInfo is sagaflow_build_info: always 1, labelled with the version of
// the binary and the Go release that built it.
func BuildInfo(version string) prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sagaflow_build_info",
		Help: "Always 1; the labels say which sagaflow version and Go release this process runs.",
	}, []string{"version", "goversion"})
	g.WithLabelValues(version, runtime.Version()).Set(1)
	return g
}

// Worker metrics.
var (
	WorkerCommands = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sagaflow_worker_commands_total",
		Help: "Commands handled by a worker, by type and outcome (ok, failed, retry, invalid, poison).",
	}, []string{"type", "outcome"})
	WorkerCommandDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sagaflow_worker_command_duration_seconds",
		Help:    "Time to handle a command, reply excluded.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	}, []string{"type"})
)

// DeadLetters counts messages a process dead-lettered itself (poison,
// invalid); messages the broker dead-letters (expired) show in saga.dead.
var DeadLetters = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "sagaflow_dead_letters_total",
	Help: "Messages this process sent to saga.dead, by the queue they came from.",
}, []string{"queue"})

// CountDeadLetter is an amqpbus.Config.OnDeadLetter hook.
func CountDeadLetter(queue, _ string) { DeadLetters.WithLabelValues(queue).Inc() }

// AMQPReconnects counts the times this process dialed RabbitMQ again
// after losing its connection.
var AMQPReconnects = prometheus.NewCounter(prometheus.CounterOpts{
	Name: "sagaflow_amqp_reconnects_total",
	Help: "Times this process reconnected to RabbitMQ after losing its connection.",
})

// CountReconnect is an amqpbus.Config.OnReconnect hook.
func CountReconnect() { AMQPReconnects.Inc() }

// HTTP API metrics, by route (the router's pattern, "/orders/:id"; the
// unmatched share one label), method and status code.
var (
	HTTPRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sagaflow_http_requests_total",
		Help: "HTTP requests answered, by route pattern, method and status code.",
	}, []string{"route", "method", "code"})
	HTTPDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sagaflow_http_request_duration_seconds",
		Help:    "Time to answer an HTTP request, by route pattern and method.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	}, []string{"route", "method"})
)

// WorkerObserver feeds the worker metrics; it implements worker.Observer.
type WorkerObserver struct{}

// Handled records one handled command.
func (WorkerObserver) Handled(typ, outcome string, d time.Duration) {
	WorkerCommands.WithLabelValues(typ, outcome).Inc()
	WorkerCommandDuration.WithLabelValues(typ).Observe(d.Seconds())
}

// RegisterWorker registers the worker metrics with r.
func RegisterWorker(r prometheus.Registerer) {
	r.MustRegister(WorkerCommands, WorkerCommandDuration, DeadLetters, AMQPReconnects)
}
