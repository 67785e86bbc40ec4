package contract

import (
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
		amqpbus.CommandQueue(InventoryQueue, InventoryCommands, o),
		amqpbus.CommandQueue(PaymentQueue, PaymentCommands, o),
		amqpbus.CommandQueue(ShippingQueue, ShippingCommands, o),
		amqpbus.CommandQueue(InventoryRequests, InventoryRequestTypes, o),
		amqpbus.CommandQueue(PaymentRequests, PaymentRequestTypes, o),
		amqpbus.CommandQueue(ShippingRequests, ShippingRequestTypes, o),
		amqpbus.CommandQueue(NotificationRequests, NotificationRequestTypes, o),
		amqpbus.CommandQueue(AuditRequests, AuditRequestTypes, o),
		amqpbus.Topology{
			Exchanges: []amqpbus.Exchange{{Name: NotificationExchange, Kind: "fanout"}},
			Queues: []amqpbus.Queue{
				{Name: AuditEventsQueue, Args: audit.Args()},
				{Name: EmailQueue, Args: events.Args()},
				{Name: SMSQueue, Args: events.Args()},
			},
			// Until this release requests shared the command queues: a
			// broker that still binds them there would deliver each twice.
			Unbindings: []amqpbus.Binding{
				{Source: amqpbus.CommandExchange, Key: InventoryGetProduct, Queue: InventoryQueue},
				{Source: amqpbus.CommandExchange, Key: InventoryUpsertProduct, Queue: InventoryQueue},
				{Source: amqpbus.CommandExchange, Key: PaymentLedger, Queue: PaymentQueue},
				{Source: amqpbus.CommandExchange, Key: ShippingLedger, Queue: ShippingQueue},
				// Until this release every order event went to the
				// notification channels, only to be dropped there.
				{Source: amqpbus.EventExchange, Key: OrderEventPattern, Exchange: NotificationExchange},
			},
			Bindings: append([]amqpbus.Binding{
				{Source: amqpbus.EventExchange, Key: "#", Queue: AuditEventsQueue},
				{Source: NotificationExchange, Queue: EmailQueue},
				{Source: NotificationExchange, Queue: SMSQueue},
			}, notificationBindings()...),
		},
	)
}

// notificationBindings bind the order outcomes to the notification fanout.
func notificationBindings() []amqpbus.Binding {
	out := make([]amqpbus.Binding, len(NotificationEvents))
	for i, e := range NotificationEvents {
		out[i] = amqpbus.Binding{Source: amqpbus.EventExchange, Key: e, Exchange: NotificationExchange}
	}
	return out
}
