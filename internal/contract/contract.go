// Package contract holds the messages of the order system: command types,
// queue names, payloads and failure codes, in one place for the
// orchestrator and the workers. docs/topology.md describes them on the
// wire; every payload travels inside a saga.Envelope (schema version 1).
package contract

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	json "github.com/goccy/go-json"

	"github.com/sagaflow/sagaflow/saga"
)

// IDName is the order saga's name for a saga id: the order id. Log lines
// of the orchestrator and the workers carry it.
const IDName = "order_id"

// Command types, also the routing keys on saga.commands.
const (
	InventoryReserve       = "inventory.reserve"
	InventoryRelease       = "inventory.release"
	InventoryCommit        = "inventory.commit"
	InventoryGetProduct    = "inventory.get_product"
	InventoryUpsertProduct = "inventory.upsert_product"
	InventoryRestock       = "inventory.restock"

	PaymentCharge = "payment.charge"
	PaymentRefund = "payment.refund"
	PaymentLedger = "payment.ledger"

	ShippingPrepare = "shipping.prepare"
	ShippingCancel  = "shipping.cancel"
	ShippingLedger  = "shipping.ledger"
	// ShippingConfirmDelivery relays a customer's confirmation of receipt.
	ShippingConfirmDelivery = "shipping.confirm_delivery"

	NotificationLedger = "notification.ledger"
	AuditOrderEvents   = "audit.order_events"
)

// Step names of the order saga (steps[].name in the API), and the service
// each one's command goes to.
const (
	StepReserveStock    = "reserve_stock"
	StepChargePayment   = "charge_payment"
	StepPrepareShipment = "prepare_shipment"
	StepCommitStock     = "commit_stock"
	StepAwaitDelivery   = "await_delivery"
	StepReleaseStock    = "release_stock"
	StepRefundPayment   = "refund_payment"
	StepCancelShipment  = "cancel_shipment"
)

var stepService = map[string]string{
	StepReserveStock: "inventory", StepReleaseStock: "inventory", StepCommitStock: "inventory",
	StepChargePayment: "payment", StepRefundPayment: "payment",
	StepPrepareShipment: "shipping", StepCancelShipment: "shipping",
}

// gaveUp is how the engine says a step ran out of attempts, and noReply
// how it says one attempt timed out.
var (
	gaveUp  = regexp.MustCompile(`^(\w+): gave up after \d+ attempts: `)
	noReply = regexp.MustCompile(`^no reply to attempt \d+$`)
)

// PublicReason is the reason of an order (or a step's error) as customers
// see it: a stable code and a sentence. Business failures already are
// ("card_declined: the card was declined"); a step that ran out of
// attempts becomes "<service>_unavailable: the <service> service did not
// answer"; a set-aside saga "needs_attention: ..."; workers' transient
// failures arrive already worded ("payment_unavailable: ..."). What the
// engine recorded in full stays for operators (the admin API, the logs).
func PublicReason(reason string) string {
	switch {
	case reason == "":
		return ""
	case strings.HasPrefix(reason, "quarantined: "):
		return "needs_attention: the order is waiting for an operator"
	case noReply.MatchString(reason):
		return "no_reply: the service did not answer in time; retrying"
	}
	if m := gaveUp.FindStringSubmatch(reason); m != nil {
		if svc, ok := stepService[m[1]]; ok {
			return fmt.Sprintf("%s_unavailable: the %s service did not answer", svc, svc)
		}
		return "unavailable: a service did not answer"
	}
	return reason
}

// Worker command queues: saga commands only.
const (
	InventoryQueue = "inventory.commands"
	PaymentQueue   = "payment.commands"
	ShippingQueue  = "shipping.commands"
)

// QueueOf is the queue a saga command type goes to ("payment.charge":
// payment.commands), as the topology binds it.
func QueueOf(commandType string) string {
	service, _, _ := strings.Cut(commandType, ".")
	return service + ".commands"
}

// Worker request queues: what the API relays (product queries, restocks,
// ledgers, audit trails) travels on queues of its own, with consumers of
// their own, never ahead of saga commands. notification and audit serve
// only requests.
const (
	InventoryRequests    = "inventory.requests"
	PaymentRequests      = "payment.requests"
	ShippingRequests     = "shipping.requests"
	NotificationRequests = "notification.commands"
	AuditRequests        = "audit.commands"
)

// Event routing: audit takes every event; order outcomes fan out to the
// notification channels.
const (
	AuditEventsQueue     = "audit.events"        // bound to saga.events with "#"
	NotificationExchange = "notification.fanout" // bound to saga.events by each of NotificationEvents
	EmailQueue           = "notification.email"  // bound to notification.fanout
	SMSQueue             = "notification.sms"    // bound to notification.fanout
	// OrderEventPattern bound notification.fanout until this release: it
	// brought every order event to the email and SMS queues, where all but
	// the outcomes were dropped.
	OrderEventPattern = "order.*"
)

// Order outcome events: each gets one email and one SMS.
const (
	EventOrderCompleted = "order.completed"
	// EventOrderDelivered: the order's delivery was confirmed (just
	// before order.completed).
	EventOrderDelivered = "order.delivered"
	// EventOrderDeliveryOverdue: DELIVERY_TIMEOUT passed without a
	// confirmed delivery; the order is stuck for an operator.
	EventOrderDeliveryOverdue = "order.delivery_overdue"
	EventOrderCancelled       = "order.cancelled"
	EventOrderRejected        = "order.rejected"
)

// NotificationEvents are the order outcomes customers are told about: the
// only events bound to the notification channels.
var NotificationEvents = []string{EventOrderCompleted, EventOrderCancelled, EventOrderRejected}

// Failure codes of replies.
const (
	CodeOutOfStock        = "out_of_stock"
	CodeUnknownSKU        = "unknown_sku"
	CodeCardDeclined      = "card_declined"
	CodeCarrierRefused    = "carrier_refused"
	CodeAlreadyReleased   = "already_released"  // a reserve that arrived after its release
	CodeAlreadyRefunded   = "already_refunded"  // a charge that arrived after its refund
	CodeAlreadyCanceled   = "already_cancelled" // a prepare that arrived after its cancel
	CodeNotReserved       = "not_reserved"      // commit or release of a reservation in the wrong state
	CodeNotFound          = "not_found"
	CodeVersionMismatch   = "version_mismatch"   // a product changed since the version an operator named
	CodeInsufficientStock = "insufficient_stock" // a restock would take available stock below zero
)

// Simulation rules (docs/api.md).
const (
	DeclineToken   = "tok_decline" // the payment gateway declines it
	RefusedCountry = "ZZ"          // the carrier refuses to ship there
)

// Item is one line of an order.
type Item struct {
	SKU      string `json:"sku"`
	Quantity int64  `json:"quantity"`
}

// Address is a shipping address.
type Address struct {
	Line1   string `json:"line1"`
	City    string `json:"city"`
	Country string `json:"country"`
}

// ReserveRequest asks inventory to reserve every line of an order, or none.
type ReserveRequest struct {
	OrderID string `json:"order_id"`
	Items   []Item `json:"items"`
}

// Validate checks what inventory needs to reserve.
func (r *ReserveRequest) Validate() error {
	if r.OrderID == "" || len(r.Items) == 0 {
		return errors.New("order_id and items are required")
	}
	for _, it := range r.Items {
		if it.SKU == "" || it.Quantity <= 0 {
			return fmt.Errorf("bad line %+v", it)
		}
	}
	return nil
}

// PricedLine is an order line priced from the catalog.
type PricedLine struct {
	SKU        string `json:"sku"`
	Quantity   int64  `json:"quantity"`
	PriceCents int64  `json:"price_cents"`
}

// ReserveReply prices the reserved order: the amount to charge comes from
// here, never from the client.
type ReserveReply struct {
	Lines       []PricedLine `json:"lines"`
	AmountCents int64        `json:"amount_cents"`
}

// OrderRef names the order a command is about (release, commit, refund,
// cancel, ledgers).
type OrderRef struct {
	OrderID string `json:"order_id"`
}

// Validate checks that the reference names an order.
func (r *OrderRef) Validate() error {
	if r.OrderID == "" {
		return errors.New("order_id is required")
	}
	return nil
}

// ChargeRequest asks payment to charge an order.
type ChargeRequest struct {
	OrderID      string `json:"order_id"`
	CustomerID   string `json:"customer_id"`
	AmountCents  int64  `json:"amount_cents"`
	PaymentToken string `json:"payment_token"`
}

// Validate checks what payment needs to charge.
func (r *ChargeRequest) Validate() error {
	if r.OrderID == "" || r.AmountCents < 0 || r.PaymentToken == "" {
		return errors.New("order_id, an amount_cents of 0 or more and payment_token are required")
	}
	return nil
}

// ChargeReply is a successful charge.
type ChargeReply struct {
	PaymentID    string `json:"payment_id"`
	ChargedCents int64  `json:"charged_cents"`
}

// RefundReply is a refund (zero when nothing was charged).
type RefundReply struct {
	RefundedCents int64 `json:"refunded_cents"`
}

// PrepareRequest asks shipping to prepare a shipment.
type PrepareRequest struct {
	OrderID         string  `json:"order_id"`
	ShippingAddress Address `json:"shipping_address"`
	Items           []Item  `json:"items"`
}

// Validate checks what shipping needs to prepare a shipment.
func (r *PrepareRequest) Validate() error {
	if r.OrderID == "" || r.ShippingAddress.Country == "" {
		return errors.New("order_id and shipping_address.country are required")
	}
	return nil
}

// PrepareReply is a prepared shipment.
type PrepareReply struct {
	TrackingNumber string `json:"tracking_number"`
}

// ProductRef names a product.
type ProductRef struct {
	SKU string `json:"sku"`
}

// Product is a catalog entry with its stock.
type Product struct {
	SKU        string `json:"sku"`
	Name       string `json:"name"`
	PriceCents int64  `json:"price_cents"`
	Available  int64  `json:"available"`
	Reserved   int64  `json:"reserved"`
	Sold       int64  `json:"sold"`
	// Version moves on with every change of the product, its stock
	// included: the ETag of GET /products/{sku}, the If-Match of a PUT.
	Version int64 `json:"version"`
}

// UpsertProduct creates a product or sets its name, price and available
// stock; with IfVersion, only while the product is at that version.
type UpsertProduct struct {
	SKU        string `json:"sku"`
	Name       string `json:"name"`
	PriceCents int64  `json:"price_cents"`
	Available  int64  `json:"available"`
	IfVersion  int64  `json:"if_version,omitempty"`
}

// RestockProduct adds Delta to a product's available stock (negative:
// removes, never below zero).
type RestockProduct struct {
	SKU   string `json:"sku"`
	Delta int64  `json:"delta"`
}

// PaymentLedgerReply is what payment recorded for an order.
type PaymentLedgerReply struct {
	ChargedCents  int64 `json:"charged_cents"`
	RefundedCents int64 `json:"refunded_cents"`
}

// ShippingDelivered is the signal the order saga waits for after its
// stock is committed: the carrier reported the delivery, or the customer
// confirmed it. Shipping sends it for each shipment, once it is delivered;
// its key is DeliveredKey.
const ShippingDelivered = "shipping.delivered"

// DeliveredKey is the idempotency key of an order's delivery signal: one
// delivery per order, however often it is reported.
func DeliveredKey(orderID string) string { return "delivered:" + orderID }

// Delivered is the payload of the delivery signal: merged into the order.
type Delivered struct {
	DeliveredAt time.Time `json:"delivered_at"`
}

// ReasonDeliveryNotConfirmed is why an order whose delivery was never
// confirmed is stuck.
const ReasonDeliveryNotConfirmed = "delivery not confirmed"

// Answers of shipping.confirm_delivery.
const (
	DeliveryConfirmed  = "delivered"   // the shipment is (now) delivered
	DeliveryNotShipped = "not_shipped" // no shipment prepared: cancelled, refused or never shipped
)

// DeliveryReply is shipping's answer to a confirmation of receipt.
type DeliveryReply struct {
	Status string `json:"status"`
}

// ShipmentLedgerReply is what shipping recorded for an order (counts).
type ShipmentLedgerReply struct {
	Prepared  int `json:"prepared"`
	Cancelled int `json:"cancelled"`
}

// The commands each worker handles, and the requests it answers: its
// queues' bindings.
var (
	InventoryCommands        = []string{InventoryReserve, InventoryRelease, InventoryCommit}
	InventoryRequestTypes    = []string{InventoryGetProduct, InventoryUpsertProduct, InventoryRestock}
	PaymentCommands          = []string{PaymentCharge, PaymentRefund}
	PaymentRequestTypes      = []string{PaymentLedger}
	ShippingCommands         = []string{ShippingPrepare, ShippingCancel}
	ShippingRequestTypes     = []string{ShippingLedger, ShippingConfirmDelivery}
	NotificationRequestTypes = []string{NotificationLedger}
	AuditRequestTypes        = []string{AuditOrderEvents}
)

// EventPayload is the payload of every domain event (saga.Envelope.Payload).
type EventPayload struct {
	SagaID  string `json:"saga_id"`
	Seq     int    `json:"seq"`
	State   string `json:"state"`
	Reason  string `json:"reason,omitempty"`
	Step    string `json:"step,omitempty"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
	// Data is the order as events carry it (no payment token).
	Data json.RawMessage `json:"data,omitempty"`
}

// OrderEventData is the order as domain events carry it (EventPayload.Data
// of order sagas): no payment token.
type OrderEventData struct {
	OrderID        string       `json:"order_id"`
	CustomerID     string       `json:"customer_id"`
	Items          []Item       `json:"items"`
	Priority       string       `json:"priority"`
	Country        string       `json:"country"`
	Lines          []PricedLine `json:"lines,omitempty"`
	AmountCents    int64        `json:"amount_cents,omitempty"`
	TrackingNumber string       `json:"tracking_number,omitempty"`
}

// AuditEvent is one entry of an order's audit trail.
type AuditEvent struct {
	ID      string    `json:"id"`
	Type    string    `json:"type"`
	At      time.Time `json:"at"`
	Seq     int       `json:"seq"`
	State   string    `json:"state"`
	Step    string    `json:"step,omitempty"`
	Code    string    `json:"code,omitempty"`
	Message string    `json:"message,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	// Data is, for an operator event (saga.replayed, saga.cancelled),
	// who acted and why.
	Data *saga.OperatorData `json:"data,omitempty"`
}

// OrderEventsReply is an order's audit trail, in order.
type OrderEventsReply struct {
	Events []AuditEvent `json:"events"`
}

// NotificationLedgerReply is what the notification service recorded for an
// order (counts).
type NotificationLedgerReply struct {
	Email int `json:"email"`
	SMS   int `json:"sms"`
}

// SagaView is a saga as the admin API shows it (GET /admin/sagas/{id}),
// for any saga definition.
type SagaView struct {
	SagaID     string `json:"saga_id"`
	Definition string `json:"definition"`
	Version    int    `json:"version"`
	State      string `json:"state"`
	Phase      string `json:"phase"`
	StuckIn    string `json:"stuck_in,omitempty"`
	Reason     string `json:"reason"`
	// Cause classifies why a stuck saga is stuck (saga.StuckCause).
	Cause     string            `json:"cause,omitempty"`
	Step      string            `json:"step"`
	Attempt   int               `json:"attempt"`
	Deadline  *time.Time        `json:"deadline"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
	History   []saga.StepRecord `json:"history"`
}

// SagaList is a page of sagas as GET /admin/sagas answers it.
type SagaList struct {
	Sagas      []SagaView `json:"sagas"`
	NextCursor *string    `json:"next_cursor"`
}
