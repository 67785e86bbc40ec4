// Command audit keeps the audit log: every domain event, once, in an
// append-only table, and each order's trail on request. Configuration:
// README.md.
package main

import (
	"os"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga/pgmigrate"
	"github.com/sagaflow/sagaflow/saga/service"
	"github.com/sagaflow/sagaflow/workers/audit/migrations"
)

func main() {
	os.Exit(service.RunWorker(service.WorkerSpec{
		Name:         "audit",
		Summary:      "the audit service: every domain event, once, in an append-only log",
		RequestQueue: contract.AuditRequests,
		MetricsAddr:  ":9105",
		Topology:     contract.Topology,
		Migrations:   []pgmigrate.Set{migrations.Set},
		IDName:       contract.IDName,
		Register:     register,
		DBConns:      4,
	}))
}
