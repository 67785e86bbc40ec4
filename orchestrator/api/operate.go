package api

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/sagaflow/sagaflow/internal/contract"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/console"
	"github.com/sagaflow/sagaflow/saga/coordinator"
	"github.com/sagaflow/sagaflow/saga/pgstore"
)

// Bulk actions: at most maxBulk sagas per request, applied at bulkRate per
// second, one bulk action at a time per orchestrator (429 otherwise), so
// that an operator's replay of a thousand stuck sagas does not arrive at
// the workers as a flood.
const (
	maxBulk  = 1000
	bulkRate = 50
)

// bulkGate lets one bulk action run at a time.
var bulkGate sync.Mutex

// lockBulk takes bulkGate, or answers 429 while another bulk action holds
// it; the caller unlocks it when it took it.
func lockBulk(c *gin.Context) bool {
	if bulkGate.TryLock() {
		return true
	}
	abort(c, errorf(http.StatusTooManyRequests, CodeRateLimited, "another bulk action is running; try again when it is done"))
	return false
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
	in, err := s.Store.Get(c, id)
	if err != nil {
		abort(c, err)
		return
	}
	v := s.sagaView(&in)
	// One saga: worth asking the broker whether its worker is there.
	if cause, _ := console.Diagnose(c, s.Bus, contract.QueueOf, s.Coordinator.Definition(in.Definition), &in); cause != "" {
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
	if _, err := s.Store.Get(c, id); err != nil {
		abort(c, err)
		return
	}
	var trail contract.OrderEventsReply
	if err := s.rpc.call(c, contract.AuditOrderEvents, contract.OrderRef{OrderID: id.String()}, &trail); err != nil {
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
	var older time.Duration
	if b.OlderThan != "" {
		d, err := time.ParseDuration(b.OlderThan)
		if err != nil || d < 0 {
			abort(c, invalid("older_than %q is not a duration such as 30m or 2h", b.OlderThan))
			return
		}
		older = d
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
	if !contains(states, b.State) || saga.Phase(b.State).Terminal() {
		abort(c, invalid("state %q is not a state of a saga that has not ended", b.State))
		return
	}
	if !b.DryRun {
		if !lockBulk(c) {
			return
		}
		defer bulkGate.Unlock()
	}
	sagas, err := s.selectSagas(c, b, older)
	if err != nil {
		abort(c, err)
		return
	}
	op := operatorOf(c)
	out := []PlannedReplay{}
	tick := time.NewTicker(time.Second / bulkRate)
	defer tick.Stop()
	for _, in := range sagas {
		def := s.Coordinator.Definition(in.Definition)
		pr := PlannedReplay{SagaID: in.ID.String(), Definition: in.Definition, State: in.State, Queues: []string{}}
		plan, err := def.PlanReplay(in, time.Now())
		if err == nil {
			pr.ReplayPlan = plan
			for _, cmd := range plan.Commands {
				pr.Queues = append(pr.Queues, contract.QueueOf(cmd.Type))
			}
		}
		if err == nil && !b.DryRun {
			select {
			case <-tick.C:
			case <-c.Done():
				abort(c, c.Err())
				return
			}
			_, err = s.Coordinator.Replay(c, in.ID, coordinator.Action{Operator: op, Reason: b.Reason})
		}
		if err != nil {
			pr.Error = err.Error()
		}
		out = append(out, pr)
	}
	if !b.DryRun {
		logOf(c).Info().Str("operator", op).Str("reason", b.Reason).Str("state", b.State).Int("sagas", len(out)).
			Msg("operator replayed sagas in bulk")
	}
	c.JSON(http.StatusOK, gin.H{"dry_run": b.DryRun, "sagas": out})
}

// selectSagas pages through the sagas in b.State (of b.Definition), newest
// first, keeping those unchanged for older, up to b.Limit.
func (s *server) selectSagas(c *gin.Context, b BulkReplay, older time.Duration) ([]saga.Instance, error) {
	var out []saga.Instance
	f := pgstore.ListFilter{State: b.State, Definition: b.Definition, Limit: maxPage}
	cutoff := time.Now().Add(-older)
	for len(out) < b.Limit {
		page, err := s.Store.List(c, f)
		if err != nil {
			return nil, err
		}
		for _, in := range page {
			if len(out) < b.Limit && (older == 0 || in.UpdatedAt.Before(cutoff)) && s.Coordinator.Definition(in.Definition) != nil {
				out = append(out, in)
			}
		}
		if len(page) < f.Limit {
			break
		}
		f.Before = page[len(page)-1].ID
	}
	return out, nil
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// deadLetters lists the messages kept in saga.dead, oldest first.
func (s *server) deadLetters(c *gin.Context) {
	limit, err := limitParam(c, 100, maxBulk)
	if err != nil {
		abort(c, err)
		return
	}
	list, err := s.Bus.DeadLetters(c, limit)
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
	if !lockBulk(c) {
		return
	}
	defer bulkGate.Unlock()
	ids := map[string]bool{}
	for _, id := range r.MessageIDs {
		ids[id] = true
	}
	done, err := s.Bus.Redrive(c, r.Limit, func(m amqpbus.DeadMessage) bool {
		return r.All || ids[m.MessageID] || (r.Queue != "" && m.Queue == r.Queue)
	})
	if err != nil && len(done) == 0 {
		abort(c, brokerUnavailable(c, err))
		return
	}
	if done == nil {
		done = []amqpbus.DeadMessage{}
	}
	console.RecordRedrives(c, s.Coordinator, coordinator.Action{Operator: operatorOf(c), Reason: r.Reason}, done, *logOf(c))
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
	rows, err := s.Store.ListOutbox(c, limit)
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
