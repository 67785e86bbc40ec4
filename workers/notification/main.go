// Command notification tells customers the outcome of their order: one
// email and one SMS (simulated: recorded in its own table) when an order is
// completed, cancelled or rejected. It never blocks an order: it only
// consumes events. Configuration: README.md.
package main

import (
	"os"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga/pgmigrate"
	"github.com/sagaflow/sagaflow/saga/service"
	"github.com/sagaflow/sagaflow/workers/notification/migrations"
)

func main() {
	os.Exit(service.RunWorker(service.WorkerSpec{
		Name:         "notification",
		Summary:      "the notification service: one email and one SMS per order outcome (simulated)",
		RequestQueue: contract.NotificationRequests,
		MetricsAddr:  ":9104",
		Topology:     contract.Topology,
		Migrations:   []pgmigrate.Set{migrations.Set},
		IDName:       contract.IDName,
		Register:     register,
		DBConns:      4,
	}))
}
