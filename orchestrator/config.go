package main

import (
	"fmt"
	"time"

	"github.com/sagaflow/sagaflow/saga/service"
)

// Config is the orchestrator's configuration, read from the environment:
// what every orchestrator has (service.OrchestratorConfig) and the order
// API's. README.md lists every variable.
type Config struct {
	service.OrchestratorConfig
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
	// ProductCacheTTL is the window in which a hot SKU (more than 4 reads)
	// is answered with the last answer (default 1s).
	ProductCacheTTL time.Duration `env:"PRODUCT_CACHE_TTL" envDefault:"1s" help:"the window in which a SKU read more than 4 times by GET /products/{sku} is answered with inventory's last answer"`
	// DeliveryTimeout is how long an order waits for its delivery to be
	// confirmed before it is stuck (default 720h, 30 days).
	DeliveryTimeout time.Duration `env:"DELIVERY_TIMEOUT" envDefault:"720h" help:"how long a shipped order waits for its delivery to be confirmed before it is stuck (a replay waits again)"`
	// MaxBodyBytes bounds request bodies (default 1048576).
	MaxBodyBytes int64 `env:"MAX_BODY_BYTES" envDefault:"1048576" help:"largest request body"`
}

// Validate reports every problem at once.
func (c *Config) Validate() []error {
	errs := c.OrchestratorConfig.Validate()
	positive := map[string]time.Duration{
		"RPC_TIMEOUT": c.RPCTimeout, "PRODUCT_CACHE_TTL": c.ProductCacheTTL, "LEDGER_TIMEOUT": c.LedgerTimeout,
		"DELIVERY_TIMEOUT": c.DeliveryTimeout,
	}
	for name, d := range positive {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s: want a positive duration, got %s", name, d))
		}
	}
	if c.ProductRate <= 0 || c.ProductBurst < 1 {
		errs = append(errs, fmt.Errorf("PRODUCT_RATE and PRODUCT_BURST: want positive, got %g and %d", c.ProductRate, c.ProductBurst))
	}
	if c.MaxBodyBytes < 1024 {
		errs = append(errs, fmt.Errorf("MAX_BODY_BYTES: want at least 1024, got %d", c.MaxBodyBytes))
	}
	return errs
}
