package api

import (
	"context"
	"net/http"
	"sync"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/console"
	"github.com/sagaflow/sagaflow/saga/coordinator"
	"github.com/sagaflow/sagaflow/saga/pgstore"
)

// Ledger is what the workers themselves recorded for an order. A service
// that did not answer in time has no section (null) and is named in
// Unanswered: the ledger says what it knows instead of failing whole.
type Ledger struct {
	Payment       *contract.PaymentLedgerReply      `json:"payment"`
	Shipment      *contract.ShipmentLedgerReply     `json:"shipment"`
	Notifications *contract.NotificationLedgerReply `json:"notifications"`
	Unanswered    []string                          `json:"unanswered"`
}

// ledger asks payment, shipping and notification, over RPC and at once,
// what they recorded for an order: the services' own books, to reconcile
// with the saga's view. It answers within LedgerTimeout with what came.
func (s *server) ledger(c *gin.Context) {
	in, err := s.loadOrder(c)
	if err != nil {
		abort(c, err)
		return
	}
	c.JSON(http.StatusOK, s.ledgerOf(c.Request.Context(), *logOf(c), in.ID))
}

// ledgerOf asks the services for their books of one saga.
func (s *server) ledgerOf(parent context.Context, log zerolog.Logger, id uuid.UUID) Ledger {
	ref := contract.OrderRef{OrderID: id.String()}
	l := Ledger{Unanswered: []string{}}
	ask := func(typ string, out any) error {
		ctx, cancel := context.WithTimeout(parent, s.LedgerTimeout)
		defer cancel()
		err := s.rpc.call(ctx, typ, ref, out)
		if err != nil {
			log.Warn().Err(err).Str("service", serviceOf(typ)).Msg("ledger: a service did not answer")
		}
		return err
	}
	var (
		wg                    sync.WaitGroup
		pay                   contract.PaymentLedgerReply
		ship                  contract.ShipmentLedgerReply
		note                  contract.NotificationLedgerReply
		payErr, shipErr, nErr error
	)
	wg.Add(3)
	go func() { defer wg.Done(); payErr = ask(contract.PaymentLedger, &pay) }()
	go func() { defer wg.Done(); shipErr = ask(contract.ShippingLedger, &ship) }()
	go func() { defer wg.Done(); nErr = ask(contract.NotificationLedger, &note) }()
	wg.Wait()
	if payErr == nil {
		l.Payment = &pay
	} else {
		l.Unanswered = append(l.Unanswered, "payment")
	}
	if shipErr == nil {
		l.Shipment = &ship
	} else {
		l.Unanswered = append(l.Unanswered, "shipping")
	}
	if nErr == nil {
		l.Notifications = &note
	} else {
		l.Unanswered = append(l.Unanswered, "notification")
	}
	return l
}

func (s *server) sagaView(in *saga.Instance) contract.SagaView {
	v := contract.SagaView{
		SagaID: in.ID.String(), Definition: in.Definition, Version: saga.VersionOf(in), State: in.State, Phase: string(in.Phase),
		StuckIn: string(in.StuckIn), Reason: in.Reason, Attempt: in.Attempt,
		CreatedAt: in.CreatedAt, UpdatedAt: in.UpdatedAt, History: in.History,
	}
	if in.Phase == saga.Stuck {
		v.Reason = in.StuckReason
		cause, _ := in.Cause()
		v.Cause = string(cause)
	}
	if !in.Deadline.IsZero() {
		d := in.Deadline
		v.Deadline = &d
	}
	// The step of the version that drives the saga (one still to be
	// upgraded keeps its old version's index: its step is its history's).
	var driver *saga.Definition
	if def := s.Coordinator.Definition(in.Definition); def != nil {
		driver = def.For(in)
	}
	if driver != nil && in.Step < len(driver.Steps) {
		v.Step = driver.Steps[in.Step].Name
	} else {
		for _, r := range in.History {
			if r.Kind == saga.KindAction {
				v.Step = r.Name
			}
		}
	}
	if v.History == nil {
		v.History = []saga.StepRecord{}
	}
	return v
}

// listSagas lists sagas in a state, stuck by default, newest first, of one
// definition (?definition=) or of all this orchestrator drives.
func (s *server) listSagas(c *gin.Context) {
	var (
		states []string
		what   = "a state of any saga this orchestrator drives"
		name   = c.Query("definition")
	)
	if name != "" {
		def := s.Coordinator.Definition(name)
		if def == nil {
			abort(c, invalid("definition %q is not one this orchestrator drives", name))
			return
		}
		states, what = def.States(), "a state of "+name
	} else {
		for _, def := range s.Coordinator.Definitions() {
			states = append(states, def.States()...)
		}
	}
	f, err := page(c, string(saga.Stuck), states, what)
	if err != nil {
		abort(c, err)
		return
	}
	f.Definition = name
	// step, older_than, priority and q narrow the page read.
	more, err := console.ParseFilter(c.Request.URL.Query())
	if err != nil {
		abort(c, invalid("%s", err.Error()))
		return
	}
	list, err := s.Store.List(c.Request.Context(), f)
	if err != nil {
		abort(c, err)
		return
	}
	out := contract.SagaList{Sagas: make([]contract.SagaView, 0, len(list))}
	for i := range list {
		if more.Matches(&list[i]) {
			out.Sagas = append(out.Sagas, s.sagaView(&list[i]))
		}
	}
	if len(list) == f.Limit {
		next := list[len(list)-1].ID.String()
		out.NextCursor = &next
	}
	c.JSON(http.StatusOK, out)
}

// replaySaga re-drives a saga from where it stands, with a fresh attempt
// budget; the operator and the reason go into its trail.
func (s *server) replaySaga(c *gin.Context) {
	s.operatorAction(c, "replayed", s.Coordinator.Replay)
}

// cancelSaga forces compensation of a saga that has not passed its pivot.
func (s *server) cancelSaga(c *gin.Context) {
	s.operatorAction(c, "cancelled", s.Coordinator.Cancel)
}

// operatorAction reads an action's {"reason"} (required), applies it on
// behalf of the request's operator and answers the saga.
func (s *server) operatorAction(c *gin.Context, done string, apply func(context.Context, uuid.UUID, coordinator.Action) (saga.Instance, error)) {
	id, err := parseID(c, "saga")
	if err != nil {
		abort(c, err)
		return
	}
	var body struct {
		Reason string `json:"reason"`
	}
	if c.Request.ContentLength != 0 {
		if err := s.readJSON(c, &body); err != nil {
			abort(c, err)
			return
		}
	}
	if !hasReason(c, body.Reason) {
		return
	}
	op := operatorOf(c)
	in, err := apply(c.Request.Context(), id, coordinator.Action{Operator: op, Reason: body.Reason})
	if err != nil {
		abort(c, err)
		return
	}
	logOf(c).Info().Str("saga_id", id.String()).Str("state", in.State).Str("operator", op).Str("reason", body.Reason).
		Msg("operator " + done + " saga")
	c.JSON(http.StatusOK, s.sagaView(&in))
}

// listQuarantined lists the rows set aside because they cannot be read or
// transitioned: sagas (also listed as stuck) and outbox rows.
func (s *server) listQuarantined(c *gin.Context) {
	list, err := s.Store.ListQuarantined(c.Request.Context(), maxPage)
	if err != nil {
		abort(c, err)
		return
	}
	if list == nil {
		list = []pgstore.Quarantined{}
	}
	c.JSON(http.StatusOK, gin.H{"quarantined": list})
}
