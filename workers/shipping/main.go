// Command shipping is the shipping worker: it prepares and cancels
// shipments against a simulated carrier (country ZZ is refused).
// Configuration: README.md.
package main

import (
	"os"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga/pgmigrate"
	"github.com/sagaflow/sagaflow/saga/service"
	"github.com/sagaflow/sagaflow/workers/shipping/migrations"
)

func main() {
	os.Exit(service.RunWorker(service.WorkerSpec{
		Name:         "shipping",
		Summary:      "the shipping worker: prepares and cancels shipments with a simulated carrier",
		Queue:        contract.ShippingQueue,
		RequestQueue: contract.ShippingRequests,
		MetricsAddr:  ":9103",
		Topology:     contract.Topology,
		Migrations:   []pgmigrate.Set{migrations.Set},
		IDName:       contract.IDName,
		Register:     register,
		DBConns:      10,
	}))
}
