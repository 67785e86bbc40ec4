package coordinator

import (
	"context"
	"errors"
	"fmt"
	"time"

	json "github.com/goccy/go-json"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/internal/collect"
)

// Submission is a request to start a saga.
type Submission struct {
	Definition string
	ID         uuid.UUID
	Data       json.RawMessage
	Priority   saga.Priority
	// Key is the client's idempotency key; empty for none.
	Key string
	// Fingerprint identifies the request behind Key.
	Fingerprint string
	// TraceParent is the W3C trace context to carry on every message.
	TraceParent string
}

// Submit creates a pending saga and returns once it is committed:
// accepting never waits on a worker. Concurrent submissions are committed
// together (group commit). The starter starts the saga when there is room
// (MaxActive). created is false when Key named an existing saga, which is
// returned.
func (c *Coordinator) Submit(ctx context.Context, s Submission) (in saga.Instance, created bool, err error) {
	def := c.defs[s.Definition]
	if def == nil {
		return saga.Instance{}, false, fmt.Errorf("%w: %q", ErrUnknownDefinition, s.Definition)
	}
	now := c.cfg.Clock.Now()
	in, ev := def.New(s.ID, s.Data, s.Priority, now)
	in.TraceParent = s.TraceParent
	msgs := c.messages(saga.Decision{Instance: in, Events: []saga.Event{ev}}, now)
	cr := &creation{
		saga: saga.NewSaga{Instance: in, Key: s.Key, Fingerprint: s.Fingerprint, Messages: msgs},
		done: make(chan saga.CreateResult, 1),
	}
	select {
	case c.creates <- cr:
	case <-ctx.Done():
		return saga.Instance{}, false, ctx.Err()
	}
	var res saga.CreateResult
	select {
	case res = <-cr.done:
	case <-ctx.Done():
		return saga.Instance{}, false, ctx.Err()
	}
	if res.Err == nil && res.Created {
		c.cfg.Observer.SagaCreated(def, res.Instance)
	}
	return res.Instance, res.Created, res.Err
}

type creation struct {
	saga saga.NewSaga
	done chan saga.CreateResult
}

// createLoop commits the waiting submissions together, then wakes the
// starter and hands their events to the relay.
func (c *Coordinator) createLoop(ctx context.Context) {
	linger := time.NewTimer(c.cfg.CreateLinger)
	defer linger.Stop()
	var batch, next []*creation
	for {
		batch, next, _ = collect.Batch(ctx, c.creates, next, c.cfg.BatchSize, linger, c.cfg.CreateLinger, nil)
		if batch == nil {
			return
		}
		c.createBatch(ctx, batch)
	}
}

// createBatch commits a batch of new sagas in one transaction (each alone
// if the batch fails), answers their submitters, starts those admission
// has room for, and hands their messages to the relay.
func (c *Coordinator) createBatch(ctx context.Context, batch []*creation) {
	starts := c.startAtOnce(ctx, batch)
	sagas := make([]saga.NewSaga, len(batch))
	for i, cr := range batch {
		sagas[i] = cr.saga
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	began := c.cfg.Clock.Now()
	res, err := c.store.CreateBatch(actx, sagas)
	if err != nil && len(sagas) > 1 {
		// One bad saga must not fail the others committed with it: each
		// goes again alone, and only the culprit fails.
		c.log.Warn().Err(err).Int("sagas", len(sagas)).Msg("create batch failed; creating its sagas one by one")
		res, err = make([]saga.CreateResult, len(sagas)), nil
		for i := range sagas {
			one, oneErr := c.store.CreateBatch(actx, sagas[i:i+1])
			if oneErr != nil {
				res[i] = saga.CreateResult{Err: oneErr}
				continue
			}
			res[i] = one[0]
		}
	}
	cancel()
	c.cfg.Observer.Batch("create", len(batch), c.since(began))
	var staged []saga.Message
	pending := false
	for i, cr := range batch {
		if err != nil {
			cr.done <- saga.CreateResult{Err: err}
			continue
		}
		if res[i].Err != nil && !res[i].Created && res[i].Instance.ID == uuid.Nil {
			cr.done <- res[i] // failed alone
			continue
		}
		staged = append(staged, res[i].Messages...)
		if res[i].Created {
			if starts[i] != nil {
				c.adjustActive(+1)
				c.cfg.Observer.SagaChanged(c.defs[starts[i].Instance.Definition], *starts[i])
			} else {
				pending = true
			}
		}
		cr.done <- res[i]
	}
	if err != nil {
		c.log.Error().Err(err).Int("sagas", len(batch)).Msg("create batch failed")
		return
	}
	c.offerRelay(staged)
	if pending {
		c.backlog.Store(true)
		c.wakeStarter()
	}
}

// HandleReplies decodes replies and queues them, in order, for the batch
// loop. It returns, index-aligned, why each poison reply cannot be applied
// (nil for the others), and a wait for the commit of the others. Ack the
// deliveries after wait.
func (c *Coordinator) HandleReplies(ctx context.Context, bodies [][]byte) (poison []error, wait saga.ReplyWait) {
	return c.handle(ctx, bodies, "reply", decodeReply)
}

// HandleSignals is HandleReplies for signals (saga.Step.Wait) that came
// as events: type the signal's name, id its idempotency key, saga_id its
// saga, payload what joins the data. A signal no step of its saga waits
// for comes back from wait as dead, with why.
func (c *Coordinator) HandleSignals(ctx context.Context, bodies [][]byte) (poison []error, wait saga.ReplyWait) {
	return c.handle(ctx, bodies, "signal", decodeSignal)
}

// handle decodes bodies into inputs and queues them, in order, for the
// batch loop; see HandleReplies.
func (c *Coordinator) handle(ctx context.Context, bodies [][]byte, what string, decode func([]byte) (saga.Input, error)) (poison []error, wait saga.ReplyWait) {
	poison = make([]error, len(bodies))
	q := &queued{done: make(chan error, 1)}
	var index []int
	for i, body := range bodies {
		inp, err := decode(body)
		if err != nil {
			poison[i] = err
			continue
		}
		q.inputs, index = append(q.inputs, inp), append(index, i)
	}
	if len(q.inputs) == 0 {
		return poison, func(context.Context) (map[int]error, error) { return nil, nil }
	}
	select {
	case c.inputs <- q:
	case <-ctx.Done():
		return poison, func(context.Context) (map[int]error, error) { return nil, ctx.Err() }
	}
	return poison, func(ctx context.Context) (map[int]error, error) {
		select {
		case err := <-q.done:
			if err != nil {
				return nil, err
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		dead := map[int]error{}
		for k, err := range q.errs {
			switch {
			case errors.Is(err, saga.ErrNotFound):
				dead[index[k]] = fmt.Errorf("%s for a saga this orchestrator's store does not have", what)
			case errors.Is(err, saga.ErrQuarantined):
				dead[index[k]] = fmt.Errorf("%s for a quarantined saga: %w", what, err)
			case refused(err):
				dead[index[k]] = fmt.Errorf("%s refused: %w", what, err)
			case err != nil:
				return nil, err
			}
		}
		return dead, nil
	}
}

// refused reports whether an input's error is the saga's answer to it,
// not a failure: a signal it does not wait for, or an input for a saga of
// a version this deployment does not drive (during a rolling deploy, a
// saga a newer orchestrator took over; its timer re-sends what the reply
// answered).
func refused(err error) bool {
	return errors.Is(err, saga.ErrNotWaiting) || errors.Is(err, saga.ErrInvalidSignal) || errors.Is(err, saga.ErrVersionNotServed)
}

// decodeFor decodes an envelope addressed to a saga.
func decodeFor(body []byte) (saga.Envelope, uuid.UUID, error) {
	env, err := saga.Decode(body)
	if err != nil {
		return env, uuid.Nil, err
	}
	id, err := uuid.Parse(env.SagaID)
	if err != nil {
		return env, uuid.Nil, fmt.Errorf("%w: message %s: saga_id %q is not a UUID", saga.ErrMalformed, env.ID, env.SagaID)
	}
	return env, id, nil
}

func decodeSignal(body []byte) (saga.Input, error) {
	env, id, err := decodeFor(body)
	if err != nil {
		return saga.Input{}, err
	}
	if env.Type == "" || env.ID == "" {
		return saga.Input{}, fmt.Errorf("%w: a signal needs a type and an id", saga.ErrMalformed)
	}
	return saga.Input{Kind: saga.InputSignal, SagaID: id, Signal: &saga.Signal{Name: env.Type, Key: env.ID, Payload: env.Payload}}, nil
}

func decodeReply(body []byte) (saga.Input, error) {
	env, id, err := decodeFor(body)
	if err != nil {
		return saga.Input{}, err
	}
	switch env.Status {
	case saga.ReplyOK, saga.ReplyFailed, saga.ReplyRetry:
	default:
		return saga.Input{}, fmt.Errorf("%w: reply status %q", saga.ErrMalformed, env.Status)
	}
	return saga.Input{Kind: saga.InputReply, SagaID: id, Reply: &saga.Reply{
		CorrelationID: env.CorrelationID, Status: env.Status, Code: env.Code,
		Message: env.Message, Payload: env.Payload, Attempt: env.Attempt,
	}}, nil
}
