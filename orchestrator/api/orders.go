package api

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gin-gonic/gin"
	json "github.com/goccy/go-json"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/orchestrator/order"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/coordinator"
	"github.com/sagaflow/sagaflow/saga/pgstore"
)

// Limits of an order.
const (
	MaxItems       = 100
	MaxQuantity    = 10_000
	maxTextLen     = 200
	maxKeyLen      = 255
	maxReasonLen   = 500
	defaultPage    = 20
	maxPage        = 100
	priorityNormal = "normal"
	priorityHigh   = "high"
)

var (
	orderStates = order.Definition(saga.Retry{}, time.Hour).States()
	skuRE       = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	countryRE   = regexp.MustCompile(`^[A-Z]{2}$`)
)

// OrderRequest is the body of POST /orders.
type OrderRequest struct {
	CustomerID      string            `json:"customer_id"`
	Items           []contract.Item   `json:"items"`
	PaymentToken    string            `json:"payment_token"`
	ShippingAddress *contract.Address `json:"shipping_address"`
	Priority        string            `json:"priority"`
}

// validate normalises the request and lists every problem.
func (r *OrderRequest) validate() error {
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	text := func(name, v string) {
		if p := textProblem(name, v, maxTextLen, true); p != "" {
			bad("%s", p)
		}
	}
	text("customer_id", r.CustomerID)
	text("payment_token", r.PaymentToken)
	switch n := len(r.Items); {
	case n == 0:
		bad("items must hold at least one line")
	case n > MaxItems:
		bad("items holds %d lines, at most %d are allowed", n, MaxItems)
	default:
		for i, it := range r.Items {
			if !skuRE.MatchString(it.SKU) {
				bad("items[%d].sku must be 1-64 letters, digits, '.', '_' or '-'", i)
			}
			if it.Quantity < 1 || it.Quantity > MaxQuantity {
				bad("items[%d].quantity must be between 1 and %d, got %d", i, MaxQuantity, it.Quantity)
			}
		}
	}
	if a := r.ShippingAddress; a == nil {
		bad("shipping_address is required")
	} else {
		text("shipping_address.line1", a.Line1)
		text("shipping_address.city", a.City)
		a.Country = strings.ToUpper(strings.TrimSpace(a.Country))
		if !countryRE.MatchString(a.Country) {
			bad("shipping_address.country must be a two-letter ISO country code")
		}
	}
	if r.Priority == "" {
		r.Priority = priorityNormal
	}
	if r.Priority != priorityNormal && r.Priority != priorityHigh {
		bad(`priority must be "normal" or "high"`)
	}
	if len(errs) > 0 {
		return invalid("%s", strings.Join(errs, "; "))
	}
	return nil
}

// readJSON reads a JSON body strictly: right content type, bounded size,
// no unknown fields, nothing after the value.
func (s *server) readJSON(c *gin.Context, v any) error {
	mt, _, err := mime.ParseMediaType(c.GetHeader("Content-Type"))
	if err != nil || mt != "application/json" {
		return errorf(http.StatusUnsupportedMediaType, CodeUnsupportedMediaType, "Content-Type must be application/json")
	}
	body, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, s.MaxBodyBytes))
	if err != nil {
		return err // MaxBytesError maps to 413
	}
	if !utf8.Valid(body) {
		// The decoder would turn the bad bytes into U+FFFD and store a
		// text the client never sent.
		return invalid("the body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return invalid("malformed JSON body: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	if !saga.AtEOF(dec) {
		return invalid("malformed JSON body: data after the JSON value")
	}
	return nil
}

type accepted struct {
	OrderID string `json:"order_id"`
	State   string `json:"state"`
}

// createOrder accepts an order: it commits a pending saga and returns 202.
// It never waits on a worker.
func (s *server) createOrder(c *gin.Context) {
	key := c.GetHeader("Idempotency-Key")
	if p := keyProblem(key); p != "" {
		abort(c, invalid("%s", p))
		return
	}
	var req OrderRequest
	if err := s.readJSON(c, &req); err != nil {
		abort(c, err)
		return
	}
	if err := req.validate(); err != nil {
		abort(c, err)
		return
	}
	id, err := uuid.NewV7()
	if err != nil {
		abort(c, err)
		return
	}
	data, err := order.NewData(id, req.CustomerID, req.Items, req.PaymentToken, *req.ShippingAddress, req.Priority)
	if err != nil {
		abort(c, err)
		return
	}
	prio := order.PriorityNormal
	if req.Priority == priorityHigh {
		prio = order.PriorityHigh
	}
	var fingerprint string
	if key != "" {
		canon, _ := json.Marshal(req)
		sum := sha256.Sum256(canon)
		fingerprint = hex.EncodeToString(sum[:])
	}
	in, created, err := s.Coordinator.Submit(c.Request.Context(), coordinator.Submission{
		Definition: order.SagaName, ID: id, Data: data, Priority: prio,
		Key: key, Fingerprint: fingerprint, TraceParent: traceHeaders(c.Request.Context())["traceparent"],
	})
	if err != nil {
		abort(c, err)
		return
	}
	if !created {
		c.Header("Idempotent-Replayed", "true")
	}
	c.Header("Location", "/orders/"+in.ID.String())
	c.JSON(http.StatusAccepted, accepted{OrderID: in.ID.String(), State: in.State})
}

func parseID(c *gin.Context, what string) (uuid.UUID, error) {
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return uuid.Nil, invalid("%s id must be a UUID", what)
	}
	return id, nil
}

// loadOrder loads an order's saga; other saga types are not orders.
func (s *server) loadOrder(c *gin.Context) (saga.Instance, error) {
	id, err := parseID(c, "order")
	if err != nil {
		return saga.Instance{}, err
	}
	in, err := s.Store.Get(c.Request.Context(), id)
	if err == nil && in.Definition != order.SagaName {
		err = saga.ErrNotFound
	}
	if errors.Is(err, saga.ErrNotFound) {
		return saga.Instance{}, errorf(http.StatusNotFound, CodeNotFound, "no order %s", id)
	}
	return in, err
}

func (s *server) getOrder(c *gin.Context) { showOrder(s, c, order.ViewOf) }

// getAdminOrder shows an order with what the public view leaves out: the
// shipping address and the tracking number.
func (s *server) getAdminOrder(c *gin.Context) { showOrder(s, c, order.AdminViewOf) }

// showOrder answers an order, rendered by view.
func showOrder[V any](s *server, c *gin.Context, view func(*saga.Instance) (V, error)) {
	in, err := s.loadOrder(c)
	if err != nil {
		abort(c, err)
		return
	}
	v, err := view(&in)
	if err != nil {
		abort(c, err)
		return
	}
	c.JSON(http.StatusOK, v)
}

// page reads state, limit and cursor; what the state may be is states
// (of what: "an order state").
func page(c *gin.Context, defState string, states []string, what string) (pgstore.ListFilter, error) {
	f := pgstore.ListFilter{State: c.DefaultQuery("state", defState), Limit: defaultPage}
	if f.State != "" && !slices.Contains(states, f.State) {
		return f, invalid("state %q is not %s", f.State, what)
	}
	if l := c.Query("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > maxPage {
			return f, invalid("limit must be between 1 and %d", maxPage)
		}
		f.Limit = n
	}
	if cur := c.Query("cursor"); cur != "" {
		id, err := uuid.Parse(cur)
		if err != nil {
			return f, invalid("cursor is not valid")
		}
		f.Before = id
	}
	return f, nil
}

type orderList struct {
	Orders     []order.View `json:"orders"`
	NextCursor *string      `json:"next_cursor"`
}

// listOrders lists orders newest first; next_cursor continues the list.
func (s *server) listOrders(c *gin.Context) {
	f, err := page(c, "", orderStates, "an order state")
	if err != nil {
		abort(c, err)
		return
	}
	f.Definition = order.SagaName
	list, err := s.Store.List(c.Request.Context(), f)
	if err != nil {
		abort(c, err)
		return
	}
	out := orderList{Orders: make([]order.View, 0, len(list))}
	for i := range list {
		v, err := order.ViewOf(&list[i])
		if err != nil {
			abort(c, err)
			return
		}
		out.Orders = append(out.Orders, v)
	}
	if len(list) == f.Limit {
		next := list[len(list)-1].ID.String()
		out.NextCursor = &next
	}
	c.JSON(http.StatusOK, out)
}

// orderEvents returns the order's audit trail, in order, as the audit
// service recorded it (asked over RPC).
func (s *server) orderEvents(c *gin.Context) {
	in, err := s.loadOrder(c)
	if err != nil {
		abort(c, err)
		return
	}
	var trail contract.OrderEventsReply
	if err := s.rpc.call(c.Request.Context(), contract.AuditOrderEvents, contract.OrderRef{OrderID: in.ID.String()}, &trail); err != nil {
		abort(c, err)
		return
	}
	if trail.Events == nil {
		trail.Events = []contract.AuditEvent{}
	}
	c.JSON(http.StatusOK, trail)
}

// confirmDelivery relays a customer's confirmation of receipt to shipping,
// which reports the delivery: the signal the order waits for. 202 with
// where the order stands (a confirmation that comes while its stock is
// still being committed is kept until the order waits); the same again
// changes nothing. 409 not_shipped for an order with no shipment: it was
// cancelled, rejected, or is not shipped yet.
func (s *server) confirmDelivery(c *gin.Context) {
	in, err := s.loadOrder(c)
	if err != nil {
		abort(c, err)
		return
	}
	var r contract.DeliveryReply
	if err := s.rpc.call(c.Request.Context(), contract.ShippingConfirmDelivery, contract.OrderRef{OrderID: in.ID.String()}, &r); err != nil {
		abort(c, err)
		return
	}
	if r.Status != contract.DeliveryConfirmed {
		abort(c, errorf(http.StatusConflict, CodeNotShipped, "order %s has no shipment to deliver (it is %s)", in.ID, in.State))
		return
	}
	c.JSON(http.StatusAccepted, gin.H{"order_id": in.ID.String(), "state": in.State})
}
