package service

import (
	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
)

// Topology is the order system on the broker: the engine's exchanges and
// queues, and one command queue per worker bound by the commands it handles.
// docs/topology.md draws it.
func Topology(qt amqpbus.QueueType) amqpbus.Topology {
	o := amqpbus.QueueOptions{Type: qt}
	events := amqpbus.QueueOptions{Type: qt, DeadLetter: true}
	// Audit appends in arrival order: one consumer at a time, the others on
	// standby (the trail itself is ordered by each saga's event sequence).
	audit := events
	audit.SingleActiveConsumer = true
	return amqpbus.SagaTopology(o).Merge(
		amqpbus.CommandQueue(contract.InventoryQueue, contract.InventoryCommands, o),
		amqpbus.CommandQueue(contract.PaymentQueue, contract.PaymentCommands, o),
		amqpbus.CommandQueue(contract.ShippingQueue, contract.ShippingCommands, o),
		amqpbus.CommandQueue(contract.NotificationQueue, contract.NotificationCommands, o),
		amqpbus.CommandQueue(contract.AuditQueue, contract.AuditCommands, o),
		amqpbus.Topology{
			Exchanges: []amqpbus.Exchange{{Name: contract.NotificationExchange, Kind: "fanout"}},
			Queues: []amqpbus.Queue{
				{Name: contract.AuditEventsQueue, Args: audit.Args()},
				{Name: contract.EmailQueue, Args: events.Args()},
				{Name: contract.SMSQueue, Args: events.Args()},
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
