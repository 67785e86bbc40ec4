// Package order is the order saga: its definition on the saga engine, the
// data it carries, and how it looks through the REST API.
package order

import (
	"fmt"
	"time"

	json "github.com/goccy/go-json"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga"
)

// SagaName is the saga type of orders, and the prefix of their events
// ("order.created", "order.completed", ...).
const SagaName = "order"

// States (the API's "state" field).
const (
	StatePending           = "pending"
	StateReservingStock    = "reserving_stock"
	StateChargingPayment   = "charging_payment"
	StatePreparingShipment = "preparing_shipment"
	StateCommittingStock   = "committing_stock"
	StateAwaitingDelivery  = "awaiting_delivery"
	StateCompleted         = "completed"
	StateRejected          = "rejected"
	StateCompensating      = "compensating"
	StateCancelled         = "cancelled"
	StateStuck             = "stuck"
)

// Step names (the API's steps[].name), from the contract.
const (
	StepReserveStock    = contract.StepReserveStock
	StepChargePayment   = contract.StepChargePayment
	StepPrepareShipment = contract.StepPrepareShipment
	StepCommitStock     = contract.StepCommitStock
	StepAwaitDelivery   = contract.StepAwaitDelivery
	StepReleaseStock    = contract.StepReleaseStock
	StepRefundPayment   = contract.StepRefundPayment
	StepCancelShipment  = contract.StepCancelShipment
)

// Priorities of orders, as message priorities on the command queues.
const (
	PriorityNormal saga.Priority = 1
	PriorityHigh   saga.Priority = 2
)

// Definition returns the order saga: reserve stock, charge payment and
// prepare the shipment (each compensatable), then commit stock, a
// retriable step after the pivot, then wait for the delivery (the signal
// shipping.delivered) up to deliveryTimeout; an order whose delivery is
// not confirmed by then is stuck, with an order.delivery_overdue event.
func Definition(retry saga.Retry, deliveryTimeout time.Duration) *saga.Definition {
	return &saga.Definition{
		Name: SagaName,
		Steps: []saga.Step{
			{
				Name: StepReserveStock, State: StateReservingStock, Command: contract.InventoryReserve,
				Kind:           saga.Compensatable,
				Compensation:   &saga.Compensation{Name: StepReleaseStock, Command: contract.InventoryRelease, Event: "inventory.released"},
				SucceededEvent: "inventory.reserved",
				FailedEvent:    "inventory.reservation_failed",
				FailedEvents: map[string]string{
					contract.CodeOutOfStock: "inventory.out_of_stock",
					contract.CodeUnknownSKU: "inventory.unknown_sku",
				},
			},
			{
				Name: StepChargePayment, State: StateChargingPayment, Command: contract.PaymentCharge,
				Kind:           saga.Compensatable,
				Compensation:   &saga.Compensation{Name: StepRefundPayment, Command: contract.PaymentRefund, Event: "payment.refunded"},
				SucceededEvent: "payment.succeeded",
				FailedEvent:    "payment.failed",
			},
			{
				Name: StepPrepareShipment, State: StatePreparingShipment, Command: contract.ShippingPrepare,
				Kind:           saga.Compensatable,
				Compensation:   &saga.Compensation{Name: StepCancelShipment, Command: contract.ShippingCancel, Event: "shipping.cancelled"},
				SucceededEvent: "shipping.prepared",
				FailedEvent:    "shipping.failed",
			},
			{
				Name: StepCommitStock, State: StateCommittingStock, Command: contract.InventoryCommit,
				Kind:           saga.Retriable,
				SucceededEvent: "inventory.committed",
			},
			{
				Name: StepAwaitDelivery, State: StateAwaitingDelivery, Wait: contract.ShippingDelivered,
				Kind: saga.Retriable, Timeout: deliveryTimeout,
				SucceededEvent: contract.EventOrderDelivered,
				OverdueEvent:   contract.EventOrderDeliveryOverdue, OverdueReason: contract.ReasonDeliveryNotConfirmed,
			},
		},
		Retry:     retry,
		Request:   request,
		EventData: eventData,
		IDName:    contract.IDName,
	}
}

// Data is the order saga's data: the accepted order, then what the
// workers replied (merged in by the engine).
type Data struct {
	OrderID         string           `json:"order_id"`
	CustomerID      string           `json:"customer_id"`
	Items           []contract.Item  `json:"items"`
	PaymentToken    string           `json:"payment_token"`
	ShippingAddress contract.Address `json:"shipping_address"`
	Priority        string           `json:"priority"`

	// From inventory.reserve.
	Lines       []contract.PricedLine `json:"lines,omitempty"`
	AmountCents int64                 `json:"amount_cents,omitempty"`
	// From payment.charge.
	PaymentID    string `json:"payment_id,omitempty"`
	ChargedCents int64  `json:"charged_cents,omitempty"`
	// From shipping.prepare.
	TrackingNumber string `json:"tracking_number,omitempty"`
	// From the delivery signal (shipping.delivered).
	DeliveredAt *time.Time `json:"delivered_at,omitempty"`
}

// request gives each worker only what it needs: inventory never sees the
// payment token, payment never sees the address.
func request(command string, raw json.RawMessage) (json.RawMessage, error) {
	var d Data
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, fmt.Errorf("order: data: %w", err)
	}
	var v any
	switch command {
	case contract.InventoryReserve:
		v = contract.ReserveRequest{OrderID: d.OrderID, Items: d.Items}
	case contract.PaymentCharge:
		v = contract.ChargeRequest{OrderID: d.OrderID, CustomerID: d.CustomerID, AmountCents: d.AmountCents, PaymentToken: d.PaymentToken}
	case contract.ShippingPrepare:
		v = contract.PrepareRequest{OrderID: d.OrderID, ShippingAddress: d.ShippingAddress, Items: d.Items}
	default: // release, commit, refund, cancel
		v = contract.OrderRef{OrderID: d.OrderID}
	}
	return json.Marshal(v)
}

// eventData is the order as domain events carry it: no payment token.
func eventData(raw json.RawMessage) json.RawMessage {
	var d Data
	if json.Unmarshal(raw, &d) != nil {
		return nil
	}
	b, _ := json.Marshal(contract.OrderEventData{
		OrderID: d.OrderID, CustomerID: d.CustomerID, Items: d.Items, Priority: d.Priority,
		Country: d.ShippingAddress.Country, Lines: d.Lines, AmountCents: d.AmountCents,
		TrackingNumber: d.TrackingNumber,
	})
	return b
}

// Step is one entry of an order's steps in the API.
type Step struct {
	Name       string     `json:"name"`
	Status     string     `json:"status"`
	Attempts   int        `json:"attempts"`
	StartedAt  time.Time  `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at"`
	Error      string     `json:"error,omitempty"`
}

// View is an order as the public GET /orders/{id} shows it: what a
// customer needs to follow it (state, steps, amount, items), and nothing
// that would let anyone who knows an order id find where someone lives.
type View struct {
	OrderID     string                `json:"order_id"`
	State       string                `json:"state"`
	Reason      string                `json:"reason"`
	CustomerID  string                `json:"customer_id"`
	Items       []contract.Item       `json:"items"`
	Lines       []contract.PricedLine `json:"lines,omitempty"`
	AmountCents int64                 `json:"amount_cents"`
	Priority    string                `json:"priority"`
	CreatedAt   time.Time             `json:"created_at"`
	UpdatedAt   time.Time             `json:"updated_at"`
	// DeliveredAt is when the delivery was reported or confirmed.
	DeliveredAt *time.Time `json:"delivered_at,omitempty"`
	Steps       []Step     `json:"steps"`
}

// AdminView is an order as the admin API shows it: the public view with
// the shipping address and the tracking number.
type AdminView struct {
	View
	ShippingAddress contract.Address `json:"shipping_address"`
	TrackingNumber  string           `json:"tracking_number,omitempty"`
}

// AdminViewOf renders a saga instance as an order for operators.
func AdminViewOf(in *saga.Instance) (AdminView, error) {
	v, err := ViewOf(in)
	if err != nil {
		return AdminView{}, err
	}
	var d Data
	if err := json.Unmarshal(in.Data, &d); err != nil {
		return AdminView{}, fmt.Errorf("order %s: data: %w", in.ID, err)
	}
	return AdminView{View: v, ShippingAddress: d.ShippingAddress, TrackingNumber: d.TrackingNumber}, nil
}

// ViewOf renders a saga instance as an order.
func ViewOf(in *saga.Instance) (View, error) {
	var d Data
	if err := json.Unmarshal(in.Data, &d); err != nil {
		return View{}, fmt.Errorf("order %s: data: %w", in.ID, err)
	}
	reason := in.Reason
	if in.Phase == saga.Stuck {
		reason = in.StuckReason
	}
	reason = contract.PublicReason(reason)
	v := View{
		OrderID: in.ID.String(), State: in.State, Reason: reason, CustomerID: d.CustomerID,
		Items: d.Items, Lines: d.Lines, AmountCents: d.AmountCents, Priority: d.Priority,
		CreatedAt: in.CreatedAt, UpdatedAt: in.UpdatedAt, DeliveredAt: d.DeliveredAt, Steps: make([]Step, 0, len(in.History)),
	}
	for _, r := range in.History {
		if r.Kind == saga.KindSignal {
			continue // the signals a waiting step took are not steps
		}
		v.Steps = append(v.Steps, Step{
			Name: r.Name, Status: r.Status, Attempts: r.Attempts, StartedAt: r.StartedAt,
			FinishedAt: r.FinishedAt, Error: contract.PublicReason(r.Error),
		})
	}
	return v, nil
}

// NewData is the data of a newly accepted order.
func NewData(id uuid.UUID, customerID string, items []contract.Item, token string, addr contract.Address, priority string) (json.RawMessage, error) {
	return json.Marshal(Data{
		OrderID: id.String(), CustomerID: customerID, Items: items, PaymentToken: token,
		ShippingAddress: addr, Priority: priority,
	})
}
