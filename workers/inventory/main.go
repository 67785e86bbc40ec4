// Command inventory is the inventory worker: it owns the catalog and the
// stock, reserves all lines of an order or none, prices the order, and
// releases or commits reservations. Configuration: README.md.
package main

import (
	"os"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga/pgmigrate"
	"github.com/sagaflow/sagaflow/saga/service"
	"github.com/sagaflow/sagaflow/workers/inventory/migrations"
)

func main() {
	os.Exit(service.RunWorker(service.WorkerSpec{
		Name:         "inventory",
		Summary:      "the inventory worker: catalog and stock (reserve, release, commit), product queries",
		Queue:        contract.InventoryQueue,
		RequestQueue: contract.InventoryRequests,
		MetricsAddr:  ":9101",
		Topology:     contract.Topology,
		Migrations:   []pgmigrate.Set{migrations.Set},
		IDName:       contract.IDName,
		Register:     register,
		DBConns:      10,
	}))
}
