package api

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/console"
	"github.com/sagaflow/sagaflow/saga/coordinator"
	"github.com/sagaflow/sagaflow/saga/pgstore"
)

const maxBulk = console.MaxBulk

// lockBulk takes the process's bulk gate (console.TryBulk), or answers
// 429 while another bulk action, here or in the console, holds it.
func lockBulk(c *gin.Context) (release func(), ok bool) {
	if release, ok = console.TryBulk(); !ok {
		abort(c, errorf(http.StatusTooManyRequests, CodeRateLimited, "another bulk action is running; try again when it is done"))
	}
	return release, ok
}

// hasReason answers 400 unless an operator's action says why.
func hasReason(c *gin.Context, reason string) bool {
	if p := textProblem("reason", reason, maxReasonLen, true); p != "" {
		abort(c, invalid("%s: an operator's action says why (body {\"reason\": \"…\"})", p))
		return false
	}
	return true
}

// getSaga shows one saga, of any definition.
func (s *server) getSaga(c *gin.Context) {
	id, err := parseID(c, "saga")
	if err != nil {
		abort(c, err)
		return
	}
	in, err := s.Store.Get(c.Request.Context(), id)
	if err != nil {
		abort(c, err)
		return
	}
	v := s.sagaView(&in)
	// One saga: worth asking the broker whether its worker is there.
	if cause, _ := console.Diagnose(c.Request.Context(), s.Bus, contract.QueueOf, s.Coordinator.Definition(in.Definition), &in); cause != "" {
		v.Cause = string(cause)
	}
	c.JSON(http.StatusOK, v)
}

// sagaEvents is a saga's audit trail (the audit service keeps every
// saga's, whatever its definition).
func (s *server) sagaEvents(c *gin.Context) {
	id, err := parseID(c, "saga")
	if err != nil {
		abort(c, err)
		return
	}
	if _, err := s.Store.Get(c.Request.Context(), id); err != nil {
		abort(c, err)
		return
	}
	var trail contract.OrderEventsReply
	if err := s.rpc.call(c.Request.Context(), contract.AuditOrderEvents, contract.OrderRef{OrderID: id.String()}, &trail); err != nil {
		abort(c, err)
		return
	}
	if trail.Events == nil {
		trail.Events = []contract.AuditEvent{}
	}
	c.JSON(http.StatusOK, trail)
}

// BulkReplay is the body of POST /admin/replays.
type BulkReplay struct {
	// State is the state of the sagas to replay (default stuck).
	State string `json:"state"`
	// Definition limits them to one saga type.
	Definition string `json:"definition"`
	// OlderThan keeps those that have not changed for this long ("1h").
	OlderThan string `json:"older_than"`
	// Limit bounds how many (default and most 1000).
	Limit  int    `json:"limit"`
	Reason string `json:"reason"`
	// DryRun answers the plan without replaying anything.
	DryRun bool `json:"dry_run"`
}

// PlannedReplay is one saga of a bulk replay: what the replay will do (or
// did), with the queue each command goes to.
type PlannedReplay struct {
	SagaID     string `json:"saga_id"`
	Definition string `json:"definition"`
	State      string `json:"state"`
	saga.ReplayPlan
	Queues []string `json:"queues"`
	// Error is why this saga was not (or would not be) replayed.
	Error string `json:"error,omitempty"`
}

// bulkReplay replays (or, with dry_run, plans the replay of) the sagas a
// filter selects.
func (s *server) bulkReplay(c *gin.Context) {
	var b BulkReplay
	if err := s.readJSON(c, &b); err != nil {
		abort(c, err)
		return
	}
	if !hasReason(c, b.Reason) {
		return
	}
	if b.State == "" {
		b.State = string(saga.Stuck)
	}
	if b.Limit <= 0 || b.Limit > maxBulk {
		if b.Limit < 0 || b.Limit > maxBulk {
			abort(c, invalid("limit must be between 1 and %d", maxBulk))
			return
		}
		b.Limit = maxBulk
	}
	if b.OlderThan != "" {
		if d, err := time.ParseDuration(b.OlderThan); err != nil || d < 0 {
			abort(c, invalid("older_than %q is not a duration such as 30m or 2h", b.OlderThan))
			return
		}
	}
	var states []string
	if b.Definition != "" {
		def := s.Coordinator.Definition(b.Definition)
		if def == nil {
			abort(c, invalid("definition %q is not one this orchestrator drives", b.Definition))
			return
		}
		states = def.States()
	} else {
		for _, def := range s.Coordinator.Definitions() {
			states = append(states, def.States()...)
		}
	}
	if !slices.Contains(states, b.State) || saga.Phase(b.State).Terminal() {
		abort(c, invalid("state %q is not a state of a saga that has not ended", b.State))
		return
	}
	var act *coordinator.Action
	if !b.DryRun {
		release, ok := lockBulk(c)
		if !ok {
			return
		}
		defer release()
		act = &coordinator.Action{Operator: operatorOf(c), Reason: b.Reason}
	}
	f, _ := console.ParseFilter(url.Values{"state": {b.State}, "definition": {b.Definition}, "older_than": {b.OlderThan}})
	sagas, _, err := console.SelectSagas(c.Request.Context(), s.Store, f, b.Limit, 20*maxBulk)
	if err != nil {
		abort(c, err)
		return
	}
	// Only the sagas this orchestrator drives: the others are another
	// deployment's to replay.
	sagas = slices.DeleteFunc(sagas, func(in saga.Instance) bool { return s.Coordinator.Definition(in.Definition) == nil })
	done, err := console.ReplayAll(c.Request.Context(), s.Coordinator, sagas, act)
	if err != nil {
		abort(c, err)
		return
	}
	out := make([]PlannedReplay, 0, len(done))
	for _, d := range done {
		pr := PlannedReplay{SagaID: d.Instance.ID.String(), Definition: d.Instance.Definition, State: d.Instance.State,
			Queues: []string{}}
		if d.Err != nil {
			pr.Error = d.Err.Error()
		} else {
			pr.ReplayPlan = d.Plan
			for _, cmd := range d.Plan.Commands {
				pr.Queues = append(pr.Queues, contract.QueueOf(cmd.Type))
			}
		}
		out = append(out, pr)
	}
	if !b.DryRun {
		logOf(c).Info().Str("operator", operatorOf(c)).Str("reason", b.Reason).Str("state", b.State).Int("sagas", len(out)).
			Msg("operator replayed sagas in bulk")
	}
	c.JSON(http.StatusOK, gin.H{"dry_run": b.DryRun, "sagas": out})
}

// deadLetters lists the messages kept in saga.dead, oldest first.
func (s *server) deadLetters(c *gin.Context) {
	limit, err := limitParam(c, 100, maxBulk)
	if err != nil {
		abort(c, err)
		return
	}
	list, err := s.Bus.DeadLetters(c.Request.Context(), limit)
	if err != nil {
		abort(c, brokerUnavailable(c, err))
		return
	}
	if list == nil {
		list = []amqpbus.DeadMessage{}
	}
	c.JSON(http.StatusOK, gin.H{"dead_letters": list})
}

// Redrive is the body of POST /admin/dead-letters/redrive: the messages
// to send back (by message id, or every one taken from a queue, or all),
// and why.
type Redrive struct {
	MessageIDs []string `json:"message_ids"`
	Queue      string   `json:"queue"`
	All        bool     `json:"all"`
	Limit      int      `json:"limit"`
	Reason     string   `json:"reason"`
}

// redrive sends dead letters back to where they were published.
func (s *server) redrive(c *gin.Context) {
	var r Redrive
	if err := s.readJSON(c, &r); err != nil {
		abort(c, err)
		return
	}
	if !hasReason(c, r.Reason) {
		return
	}
	if len(r.MessageIDs) == 0 && r.Queue == "" && !r.All {
		abort(c, invalid("say which dead letters: message_ids, queue, or all"))
		return
	}
	if r.Limit <= 0 || r.Limit > maxBulk {
		r.Limit = maxBulk
	}
	release, ok := lockBulk(c)
	if !ok {
		return
	}
	defer release()
	ids := map[string]bool{}
	for _, id := range r.MessageIDs {
		ids[id] = true
	}
	done, err := console.Redrive(c.Request.Context(), s.Bus, s.Coordinator, coordinator.Action{Operator: operatorOf(c), Reason: r.Reason}, r.Limit,
		func(m amqpbus.DeadMessage) bool {
			return r.All || ids[m.MessageID] || (r.Queue != "" && m.Queue == r.Queue)
		}, *logOf(c))
	if err != nil && len(done) == 0 {
		abort(c, brokerUnavailable(c, err))
		return
	}
	if done == nil {
		done = []amqpbus.DeadMessage{}
	}
	logOf(c).Info().Str("operator", operatorOf(c)).Str("reason", r.Reason).Int("messages", len(done)).
		Msg("operator re-drove dead letters")
	c.JSON(http.StatusOK, gin.H{"redriven": done})
}

// outbox shows the outbox rows, decoded.
func (s *server) outbox(c *gin.Context) {
	limit, err := limitParam(c, 100, maxBulk)
	if err != nil {
		abort(c, err)
		return
	}
	rows, err := s.Store.ListOutbox(c.Request.Context(), limit)
	if err != nil {
		abort(c, err)
		return
	}
	if rows == nil {
		rows = []pgstore.OutboxRow{}
	}
	c.JSON(http.StatusOK, gin.H{"rows": rows})
}

// limitParam reads ?limit= (def when absent, 1..max).
func limitParam(c *gin.Context, def, max int) (int, error) {
	v := c.Query("limit")
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > max {
		return 0, invalid("limit must be an integer between 1 and %d", max)
	}
	return n, nil
}

// brokerUnavailable is a 503 for RabbitMQ, its reason logged.
func brokerUnavailable(c *gin.Context, err error) error {
	logOf(c).Warn().Err(err).Msg("saga.dead could not be read")
	return errorf(http.StatusServiceUnavailable, CodeUnavailable, "RabbitMQ is unavailable, try again")
}
