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
	return amqpbus.SagaTopology(o).Merge(
		amqpbus.CommandQueue(contract.InventoryQueue, contract.InventoryCommands, o),
		amqpbus.CommandQueue(contract.PaymentQueue, contract.PaymentCommands, o),
		amqpbus.CommandQueue(contract.ShippingQueue, contract.ShippingCommands, o),
	)
}
