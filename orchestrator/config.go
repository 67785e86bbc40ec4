package main

import (
	"fmt"
	"time"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/service"
)

// Config is the orchestrator's configuration, read from the environment.
// README.md lists every variable.
type Config struct {
	service.Base
	// HTTPAddr is where the REST API listens (default :8080).
	HTTPAddr string `env:"HTTP_ADDR" envDefault:":8080" help:"address of the REST API"`
	// AdminToken guards /admin routes; empty disables them (default empty).
	AdminToken string `env:"ADMIN_TOKEN" help:"bearer token of the /admin routes; unset: the admin API is off"`
	// LedgerTimeout bounds each service's answer to the ledger (default 1s).
	LedgerTimeout time.Duration `env:"LEDGER_TIMEOUT" envDefault:"1s" help:"how long the ledger waits for each service; one that is away is marked unanswered"`
	// RPCTimeout bounds requests relayed to workers (default 5s).
	RPCTimeout time.Duration `env:"RPC_TIMEOUT" envDefault:"5s" help:"bound on a request relayed to a worker"`
	// ProductRate is GET /products/{sku} per second per client (default 20).
	ProductRate float64 `env:"PRODUCT_RATE" envDefault:"20" help:"GET /products/{sku} per second per client IP; more answer 429"`
	// ProductBurst is the burst allowed above ProductRate (default 40).
	ProductBurst int `env:"PRODUCT_BURST" envDefault:"40" help:"burst of GET /products/{sku} allowed above PRODUCT_RATE"`
	// ProductCacheTTL is how long a product answer is reused (default 1s).
	ProductCacheTTL time.Duration `env:"PRODUCT_CACHE_TTL" envDefault:"1s" help:"how long an answer of GET /products/{sku} is reused"`
	// MaxBodyBytes bounds request bodies (default 1048576).
	MaxBodyBytes int64 `env:"MAX_BODY_BYTES" envDefault:"1048576" help:"largest request body"`

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
	// orchestrator that wrote it before any orchestrator's outbox scan may
	// publish it (default 15s).
	OutboxLease time.Duration `env:"OUTBOX_LEASE" envDefault:"15s" help:"time a relay owns its staged messages before any orchestrator's scan publishes them"`
	// MaxActiveSagas bounds the orders in flight (a command outstanding)
	// across every orchestrator; the others wait as pending, high priority
	// first (default 2000). Little's law sizes it: in flight = throughput ×
	// time per saga. Too high, and commands queue in front of the workers
	// past STEP_TIMEOUT, time out and are sent again; too low, and batches
	// stay small. 2000 is five seconds of the 2-core development machine's
	// throughput (docs/benchmarks.md).
	MaxActiveSagas int `env:"MAX_ACTIVE_SAGAS" envDefault:"2000" help:"sagas in flight across orchestrators; the rest wait as pending"`
	// OldestShare is the share of each admission that goes to the oldest
	// pending orders whatever their priority (default 0.2): high priority
	// goes first, but cannot hold normal orders back without bound.
	OldestShare float64 `env:"ADMISSION_OLDEST_SHARE" envDefault:"0.2" help:"share of each admission for the oldest pending orders, whatever their priority (0: strict priority)"`
}

// Validate reports every problem at once.
func (c *Config) Validate() []error {
	errs := c.Base.Validate()
	positive := map[string]time.Duration{
		"RPC_TIMEOUT": c.RPCTimeout, "STEP_TIMEOUT": c.StepTimeout, "STEP_MAX_TIMEOUT": c.StepMaxTimeout,
		"RETRY_BACKOFF": c.RetryBackoff, "RETRY_MAX_BACKOFF": c.RetryMaxBackoff, "TIMER_INTERVAL": c.TimerInterval,
		"OUTBOX_LEASE": c.OutboxLease, "PRODUCT_CACHE_TTL": c.ProductCacheTTL, "LEDGER_TIMEOUT": c.LedgerTimeout,
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
	if c.ProductRate <= 0 || c.ProductBurst < 1 {
		errs = append(errs, fmt.Errorf("PRODUCT_RATE and PRODUCT_BURST: want positive, got %g and %d", c.ProductRate, c.ProductBurst))
	}
	if c.OldestShare < 0 || c.OldestShare > 1 {
		errs = append(errs, fmt.Errorf("ADMISSION_OLDEST_SHARE: want a share in [0,1], got %g", c.OldestShare))
	}
	if c.MaxBodyBytes < 1024 {
		errs = append(errs, fmt.Errorf("MAX_BODY_BYTES: want at least 1024, got %d", c.MaxBodyBytes))
	}
	return errs
}

// Retry is the saga retry policy from the configuration.
func (c *Config) Retry() saga.Retry {
	return saga.Retry{
		Timeout: c.StepTimeout, MaxTimeout: c.StepMaxTimeout, Backoff: c.RetryBackoff,
		MaxBackoff: c.RetryMaxBackoff, MaxAttempts: c.StepAttempts,
		CompensationAttempts: c.CompensationAttempts, RetriableAttempts: c.RetriableAttempts,
	}
}

// OldestShareOrStrict is OldestShare for saga.Config, where 0 means the
// default: strict priority is a negative share there.
func (c *Config) OldestShareOrStrict() float64 {
	if c.OldestShare == 0 {
		return -1
	}
	return c.OldestShare
}
