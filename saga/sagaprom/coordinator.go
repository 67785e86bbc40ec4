package sagaprom

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sagaflow/sagaflow/saga"
)

// Coordinator metrics (docs/operations.md lists them).
var (
	SagasStarted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sagaflow_sagas_started_total",
		Help: "Sagas accepted.",
	})
	SagasFinished = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sagaflow_sagas_finished_total",
		Help: "Sagas that reached a terminal state, by outcome (completed, rejected, cancelled).",
	}, []string{"outcome"})
	StepDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sagaflow_step_duration_seconds",
		Help:    "Time from a step's (or compensation's) first send to its end, retries included.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 18),
	}, []string{"step"})
	StepRetries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sagaflow_step_retries_total",
		Help: "Commands re-sent after a timeout or a transient failure, by step.",
	}, []string{"step"})
	Compensations = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sagaflow_compensations_total",
		Help: "Sagas that started compensating.",
	})
	SagasStuck = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "sagaflow_sagas_stuck_total",
		Help: "Times a saga got stuck and needed an operator.",
	})
	BatchSize = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sagaflow_batch_size",
		Help:    "Items per batch, by kind: create (sagas accepted per transaction), start (sagas admitted), inputs (replies and starts per transaction), timer (due sagas), publish (messages per publish).",
		Buckets: prometheus.ExponentialBuckets(1, 2, 11),
	}, []string{"kind"})
	BatchDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sagaflow_batch_duration_seconds",
		Help:    "Time per batch: a transaction, a timer pass, or a publish with its confirms.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	}, []string{"kind"})
	Quarantined = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sagaflow_quarantined_total",
		Help: "Rows set aside because they cannot be read or transitioned, by kind (saga, outbox); pgstore.Store.ListQuarantined lists them.",
	}, []string{"kind"})
	SLAMissed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sagaflow_sla_missed_total",
		Help: "Sagas that stayed in a state longer than its SLA (saga.Step.SLA), by definition and state.",
	}, []string{"definition", "state"})
	MessagesPublished = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sagaflow_messages_published_total",
		Help: "Outbox messages published, by result (confirmed, failed).",
	}, []string{"result"})
)

// CoordinatorObserver feeds the coordinator metrics; it implements
// coordinator.Observer.
type CoordinatorObserver struct{}

// SagaCreated counts a new saga.
func (CoordinatorObserver) SagaCreated(*saga.Definition, saga.Instance) { SagasStarted.Inc() }

// SagaChanged counts outcomes, step durations, retries and compensations.
func (CoordinatorObserver) SagaChanged(def *saga.Definition, d saga.Decision) {
	in := &d.Instance
	if in.Phase.Terminal() {
		SagasFinished.WithLabelValues(string(in.Phase)).Inc()
	}
	for i := range in.History {
		r := &in.History[i]
		if r.Kind != saga.KindSignal && r.FinishedAt != nil && r.FinishedAt.Equal(in.UpdatedAt) {
			StepDuration.WithLabelValues(r.Name).Observe(r.FinishedAt.Sub(r.StartedAt).Seconds())
		}
	}
	for _, ev := range d.Events {
		if def != nil && ev.Type == def.Name+".sla_missed" {
			SLAMissed.WithLabelValues(def.Name, in.State).Inc()
		}
	}
	for _, t := range d.Transitions {
		switch t {
		case saga.TransitionRetry, saga.TransitionRetryCompensation:
			if n := len(d.Commands); n > 0 {
				StepRetries.WithLabelValues(d.Commands[n-1].Step).Inc()
			}
		case saga.TransitionCompensate:
			Compensations.Inc()
		case saga.TransitionStick:
			SagasStuck.Inc()
		}
	}
}

// Batch records a batch's size and duration.
func (CoordinatorObserver) Batch(kind string, n int, d time.Duration) {
	BatchSize.WithLabelValues(kind).Observe(float64(n))
	BatchDuration.WithLabelValues(kind).Observe(d.Seconds())
}

// Published counts relayed messages.
func (CoordinatorObserver) Published(confirmed, failed int) {
	MessagesPublished.WithLabelValues("confirmed").Add(float64(confirmed))
	if failed > 0 {
		MessagesPublished.WithLabelValues("failed").Add(float64(failed))
	}
}

// StoreStats reads the gauges that live in the database.
type StoreStats interface {
	OutboxStats(ctx context.Context) (count int64, oldest time.Duration, err error)
	CountState(ctx context.Context, state string) (int64, error)
	// CountLive counts the sagas that are not terminal by definition and
	// state.
	CountLive(ctx context.Context) (map[saga.StateRef]int64, error)
}

// StoreCollector reads the outbox backlog and the stuck sagas at scrape
// time, so every orchestrator reports the shared truth.
type StoreCollector struct {
	Stats StoreStats
}

var (
	outboxBacklogDesc = prometheus.NewDesc("sagaflow_outbox_backlog", "Messages staged in the outbox, not yet confirmed by the broker.", nil, nil)
	outboxAgeDesc     = prometheus.NewDesc("sagaflow_outbox_oldest_seconds", "Age of the oldest message in the outbox.", nil, nil)
	stuckDesc         = prometheus.NewDesc("sagaflow_stuck_sagas", "Sagas waiting for an operator (state stuck).", nil, nil)
	pendingDesc       = prometheus.NewDesc("sagaflow_sagas_pending", "Sagas accepted and waiting for admission (state pending).", nil, nil)
	inFlightDesc      = prometheus.NewDesc("sagaflow_sagas_in_flight", "Sagas that have not ended, by definition and state (pending and stuck included).", []string{"definition", "state"}, nil)
)

// Describe implements prometheus.Collector.
func (c StoreCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- outboxBacklogDesc
	ch <- outboxAgeDesc
	ch <- stuckDesc
	ch <- pendingDesc
	ch <- inFlightDesc
}

// Collect implements prometheus.Collector; a database that does not answer
// within a second leaves the gauges out of this scrape.
func (c StoreCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if n, age, err := c.Stats.OutboxStats(ctx); err == nil {
		ch <- prometheus.MustNewConstMetric(outboxBacklogDesc, prometheus.GaugeValue, float64(n))
		ch <- prometheus.MustNewConstMetric(outboxAgeDesc, prometheus.GaugeValue, age.Seconds())
	}
	live, err := c.Stats.CountLive(ctx)
	if err != nil {
		return
	}
	var stuck, pending int64
	for ref, n := range live {
		ch <- prometheus.MustNewConstMetric(inFlightDesc, prometheus.GaugeValue, float64(n), ref.Definition, ref.State)
		switch ref.State {
		case string(saga.Stuck):
			stuck += n
		case string(saga.Pending):
			pending += n
		}
	}
	ch <- prometheus.MustNewConstMetric(stuckDesc, prometheus.GaugeValue, float64(stuck))
	ch <- prometheus.MustNewConstMetric(pendingDesc, prometheus.GaugeValue, float64(pending))
}

// RegisterCoordinator registers the coordinator metrics with r, and the
// gauges read from the store (outbox backlog, stuck sagas).
func RegisterCoordinator(r prometheus.Registerer, stats StoreStats) {
	r.MustRegister(SagasStarted, SagasFinished, StepDuration, StepRetries, Compensations, SagasStuck,
		MessagesPublished, Quarantined, DeadLetters, AMQPReconnects, HTTPRequests, HTTPDuration, SLAMissed,
		BatchSize, BatchDuration, StoreCollector{Stats: stats})
}

// QueueInspector reads a queue's depth and consumers from the broker.
type QueueInspector interface {
	Inspect(ctx context.Context, queue string) (messages, consumers int, err error)
}

// QueueCollector reports the depth and consumer count of the queues an
// operator watches (saga.dead growing, a command queue with no consumer),
// as read by its Run loop every few seconds: a scrape never waits on the
// broker, which may be slow to answer when it is busiest.
type QueueCollector struct {
	broker QueueInspector
	queues []string

	mu    sync.Mutex
	state map[string][2]int
}

// NewQueueCollector returns a collector of queues; Run keeps it current.
func NewQueueCollector(broker QueueInspector, queues ...string) *QueueCollector {
	return &QueueCollector{broker: broker, queues: queues, state: map[string][2]int{}}
}

// Run reads the queues every interval until ctx is done; a queue that
// cannot be read drops out of the metrics until it can.
func (c *QueueCollector) Run(ctx context.Context, every time.Duration) {
	for {
		for _, q := range c.queues {
			qctx, cancel := context.WithTimeout(ctx, every)
			n, consumers, err := c.broker.Inspect(qctx, q)
			cancel()
			c.mu.Lock()
			if err != nil {
				delete(c.state, q)
			} else {
				c.state[q] = [2]int{n, consumers}
			}
			c.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

var (
	queueMessagesDesc  = prometheus.NewDesc("sagaflow_queue_messages", "Messages ready in a queue (saga.dead: dead letters kept), read every few seconds.", []string{"queue"}, nil)
	queueConsumersDesc = prometheus.NewDesc("sagaflow_queue_consumers", "Consumers of a queue, read every few seconds.", []string{"queue"}, nil)
)

// Describe implements prometheus.Collector.
func (c *QueueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- queueMessagesDesc
	ch <- queueConsumersDesc
}

// Collect implements prometheus.Collector.
func (c *QueueCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for q, st := range c.state {
		ch <- prometheus.MustNewConstMetric(queueMessagesDesc, prometheus.GaugeValue, float64(st[0]), q)
		ch <- prometheus.MustNewConstMetric(queueConsumersDesc, prometheus.GaugeValue, float64(st[1]), q)
	}
}
