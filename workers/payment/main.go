// Command payment is the payment worker: it charges and refunds orders
// against a simulated gateway (token tok_decline is declined) and keeps
// the payments ledger. Configuration: README.md.
package main

import (
	"os"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga/pgmigrate"
	"github.com/sagaflow/sagaflow/saga/service"
	"github.com/sagaflow/sagaflow/workers/payment/migrations"
)

func main() {
	os.Exit(service.RunWorker(service.WorkerSpec{
		Name:         "payment",
		Summary:      "the payment worker: charges and refunds against a simulated gateway",
		Queue:        contract.PaymentQueue,
		RequestQueue: contract.PaymentRequests,
		MetricsAddr:  ":9102",
		Topology:     contract.Topology,
		Migrations:   []pgmigrate.Set{migrations.Set},
		IDName:       contract.IDName,
		Register:     register,
		DBConns:      10,
	}))
}
