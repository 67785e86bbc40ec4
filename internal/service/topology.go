package service

import (
	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
)

// Topology is the order system on the broker: the engine's exchanges and
// queues, and one command queue per worker bound by the commands it handles.
// docs/topology.md draws it.
func Topology(qt amqpbus.QueueType, deadMax int64) amqpbus.Topology {
	o := amqpbus.QueueOptions{Type: qt}
	events := amqpbus.QueueOptions{Type: qt, DeadLetter: true}
	// Audit appends in arrival order: one consumer at a time, the others on
	// standby (the trail itself is ordered by each saga's event sequence).
	audit := events
	audit.SingleActiveConsumer = true
	return amqpbus.SagaTopology(amqpbus.QueueOptions{Type: qt, MaxLength: deadMax}).Merge(
		amqpbus.CommandQueue(contract.InventoryQueue, contract.InventoryCommands, o),
		amqpbus.CommandQueue(contract.PaymentQueue, contract.PaymentCommands, o),
		amqpbus.CommandQueue(contract.ShippingQueue, contract.ShippingCommands, o),
		amqpbus.CommandQueue(contract.InventoryRequests, contract.InventoryRequestTypes, o),
		amqpbus.CommandQueue(contract.PaymentRequests, contract.PaymentRequestTypes, o),
		amqpbus.CommandQueue(contract.ShippingRequests, contract.ShippingRequestTypes, o),
		amqpbus.CommandQueue(contract.NotificationRequests, contract.NotificationRequestTypes, o),
		amqpbus.CommandQueue(contract.AuditRequests, contract.AuditRequestTypes, o),
		amqpbus.Topology{
			Exchanges: []amqpbus.Exchange{{Name: contract.NotificationExchange, Kind: "fanout"}},
			Queues: []amqpbus.Queue{
				{Name: contract.AuditEventsQueue, Args: audit.Args()},
				{Name: contract.EmailQueue, Args: events.Args()},
				{Name: contract.SMSQueue, Args: events.Args()},
			},
			// Until this release requests shared the command queues: a
			// broker that still binds them there would deliver each twice.
			Unbindings: []amqpbus.Binding{
				{Source: amqpbus.CommandExchange, Key: contract.InventoryGetProduct, Queue: contract.InventoryQueue},
				{Source: amqpbus.CommandExchange, Key: contract.InventoryUpsertProduct, Queue: contract.InventoryQueue},
				{Source: amqpbus.CommandExchange, Key: contract.PaymentLedger, Queue: contract.PaymentQueue},
				{Source: amqpbus.CommandExchange, Key: contract.ShippingLedger, Queue: contract.ShippingQueue},
			},
			Bindings: []amqpbus.Binding{
				{Source: amqpbus.EventExchange, Key: "#", Queue: contract.AuditEventsQueue},
				{Source: amqpbus.EventExchange, Key: contract.OrderEventPattern, Exchange: contract.NotificationExchange},
				{Source: contract.NotificationExchange, Queue: contract.EmailQueue},
				{Source: contract.NotificationExchange, Queue: contract.SMSQueue},
			},
		},
	)
}
