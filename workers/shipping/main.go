// Command shipping is the shipping worker: it prepares and cancels
// shipments against a simulated carrier (country ZZ is refused), and tells
// each order when its shipment is delivered (SIM_DELIVERY_DELAY after the
// prepare, or when the customer confirms receipt).
// Configuration: README.md.
package main

import (
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga/pgmigrate"
	"github.com/sagaflow/sagaflow/saga/service"
	"github.com/sagaflow/sagaflow/saga/worker"
	"github.com/sagaflow/sagaflow/workers/shipping/migrations"
)

// config is what every worker reads, and when the simulated carrier
// reports a delivery.
type config struct {
	service.WorkerConfig
	// DeliveryDelay is how long after a shipment is prepared the simulated
	// carrier reports it delivered (default 0s: at once).
	DeliveryDelay time.Duration `env:"SIM_DELIVERY_DELAY" envDefault:"0s" help:"simulation: how long after a shipment is prepared the carrier reports it delivered (0s: at once; a customer's confirmation delivers it sooner)"`
}

// Validate reports every problem at once.
func (c *config) Validate() []error {
	errs := c.WorkerConfig.Validate()
	if c.DeliveryDelay < 0 {
		errs = append(errs, fmt.Errorf("SIM_DELIVERY_DELAY: want a non-negative duration, got %s", c.DeliveryDelay))
	}
	return errs
}

func main() {
	cfg := &config{}
	os.Exit(service.RunWorker(service.WorkerSpec{
		Name:         "shipping",
		Summary:      "the shipping worker: prepares and cancels shipments with a simulated carrier",
		Queue:        contract.ShippingQueue,
		RequestQueue: contract.ShippingRequests,
		MetricsAddr:  ":9103",
		Topology:     contract.Topology,
		Migrations:   []pgmigrate.Set{migrations.Set},
		IDName:       contract.IDName,
		Register:     func(rt *worker.Runtime, db *pgxpool.Pool) { register(rt, db, cfg.DeliveryDelay) },
		DBConns:      10,
		Config:       cfg,
	}))
}
