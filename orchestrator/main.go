// Command orchestrator is sagaflow's coordinator of the order saga and its
// REST API. It persists sagas in PostgreSQL, sends commands to the workers
// over RabbitMQ through its outbox, and applies their replies and its
// timers in batched transactions. Configuration: README.md.
package main

import (
	"net/http"
	"os"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/orchestrator/api"
	"github.com/sagaflow/sagaflow/orchestrator/order"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/service"
)

func main() {
	cfg := &Config{}
	var public, admin http.Handler // api.New's, built once the parts run
	os.Exit(service.RunOrchestrator(service.OrchestratorSpec{
		Name:    "orchestrator",
		Summary: "the REST API and the coordinator of the order saga",
		Config:  cfg,
		Definitions: func() []*saga.Definition {
			return []*saga.Definition{order.Definition(cfg.Retry(), cfg.DeliveryTimeout)}
		},
		Topology: contract.Topology,
		WatchQueues: []string{
			contract.InventoryQueue, contract.PaymentQueue, contract.ShippingQueue,
			contract.InventoryRequests, contract.PaymentRequests, contract.ShippingRequests,
			contract.NotificationRequests, contract.AuditRequests,
			contract.EmailQueue, contract.SMSQueue, contract.AuditEventsQueue,
		},
		Handler: func(o *service.Orchestrator) (http.Handler, error) {
			public, admin = api.New(api.Deps{
				Coordinator: o.Coordinator, Store: o.Store, Bus: o.Bus, DB: o.DB, Log: o.Log,
				AdminToken: cfg.AdminToken, AdminTokens: cfg.adminTokens, RPCTimeout: cfg.RPCTimeout, MaxBodyBytes: cfg.MaxBodyBytes,
				LedgerTimeout: cfg.LedgerTimeout, ProductRate: cfg.ProductRate, ProductBurst: cfg.ProductBurst,
				ProductCacheTTL: cfg.ProductCacheTTL,
			})
			return public, nil
		},
		Admin: func(*service.Orchestrator) (http.Handler, error) { return admin, nil },
	}))
}
