package coordinator

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/internal/collect"
)

// queued is inputs that go to the batch loop together: the replies of one
// delivered batch stay in one transaction, in their order, so that
// concurrent batch loops cannot interleave them (and high-priority sagas,
// delivered first, keep their lead).
type queued struct {
	inputs []saga.Input
	errs   []error    // per input, set before done is signalled
	done   chan error // the transaction's error, nil once committed
}

// batchLoop applies queued inputs, as many as are waiting (up to
// BatchSize), in one transaction: one commit for many sagas.
func (c *Coordinator) batchLoop(ctx context.Context) {
	linger := time.NewTimer(c.cfg.Linger)
	defer linger.Stop()
	var batch, next []*queued
	for {
		batch, next, _ = collect.Batch(ctx, c.inputs, next, c.cfg.BatchSize, linger, c.cfg.Linger, func(q *queued) int { return len(q.inputs) })
		if batch == nil {
			return
		}
		c.applyBatch(ctx, batch)
	}
}

// applyBatch applies the inputs of a batch, in order, in one transaction,
// tells each caller its inputs' outcome, and hands the messages the
// decisions caused to the relay.
func (c *Coordinator) applyBatch(ctx context.Context, batch []*queued) {
	var inputs []saga.Input
	for _, q := range batch {
		inputs = append(inputs, q.inputs...)
	}
	// Finish a batch already taken even while stopping: its callers are
	// waiting to ack their deliveries.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	began := c.cfg.Clock.Now()
	outs, msgs, err := c.store.Apply(actx, inputs, c.transition)
	cancel()
	c.cfg.Observer.Batch("inputs", len(inputs), c.since(began))
	if err != nil {
		c.log.Error().Err(err).Int("inputs", len(inputs)).Msg("apply batch failed")
	}
	// Committed: the callers may ack their deliveries now, before the relay
	// has room for the messages (the outbox has them).
	i := 0
	for _, q := range batch {
		if err == nil {
			q.errs = make([]error, len(q.inputs))
			for k, inp := range q.inputs {
				o := outs[i+k]
				if o.Err != nil && !errors.Is(o.Err, saga.ErrNotFound) && !errors.Is(o.Err, saga.ErrQuarantined) && !refused(o.Err) {
					c.sagaFields(c.log.Error().Err(o.Err), c.defs[o.Instance.Definition], &o.Instance).
						Str("input", inp.Kind.String()).Msg("input not applied")
				}
				q.errs[k] = o.Err
			}
		}
		i += len(q.inputs)
		q.done <- err
	}
	if err == nil {
		c.observe(outs)
		c.sendRelay(ctx, msgs)
	}
}

// Action is who asks for an operator's action on a saga, and why: both go
// into the saga's trail, in the operator event the action emits
// (saga.EventReplayed, saga.EventCancelled).
type Action struct {
	Operator string
	Reason   string
}

// Replay re-drives a saga that is not terminal from where it stands, with a
// fresh attempt budget. It returns ErrConflict for a terminal saga.
func (c *Coordinator) Replay(ctx context.Context, id uuid.UUID, a Action) (saga.Instance, error) {
	return c.applyNow(ctx, saga.Input{Kind: saga.InputReplay, SagaID: id, Operator: a.Operator, Reason: a.Reason})
}

// Cancel forces compensation of a saga that has not passed its pivot; its
// reason becomes "cancelled by operator: <reason>". It returns ErrConflict
// when the saga is terminal, compensating, or past its pivot.
func (c *Coordinator) Cancel(ctx context.Context, id uuid.UUID, a Action) (saga.Instance, error) {
	return c.applyNow(ctx, saga.Input{Kind: saga.InputCancel, SagaID: id, Operator: a.Operator, Reason: a.Reason})
}

// Note records an operator's action about a saga that changes nothing in
// it (a re-drive of one of its messages) as an operator event in its
// trail: event (saga.EventRedriven) with the action's operator and reason
// and the subject (the message id).
func (c *Coordinator) Note(ctx context.Context, id uuid.UUID, a Action, event, subject string) error {
	_, err := c.applyNow(ctx, saga.Input{Kind: saga.InputNote, SagaID: id, Operator: a.Operator, Reason: a.Reason,
		Note: event, Subject: subject})
	return err
}

// Signal hands a signal to a saga (see saga.Step.Wait): the waiting step it
// is at takes it and the saga moves on, or it is kept for a waiting step
// ahead; a duplicate (same key) changes nothing. It returns
// saga.ErrNotWaiting when no step of the saga waits or will wait for it,
// saga.ErrNotFound for an unknown saga.
func (c *Coordinator) Signal(ctx context.Context, id uuid.UUID, sig saga.Signal) (saga.Instance, error) {
	return c.applyNow(ctx, saga.Input{Kind: saga.InputSignal, SagaID: id, Signal: &sig})
}

// applyNow applies one input in its own transaction, for operator actions
// and signals that need the outcome.
func (c *Coordinator) applyNow(ctx context.Context, inp saga.Input) (saga.Instance, error) {
	outs, msgs, err := c.store.Apply(ctx, []saga.Input{inp}, c.transition)
	if err != nil {
		return saga.Instance{}, err
	}
	c.observe(outs)
	c.offerRelay(msgs)
	return outs[0].Instance, outs[0].Err
}

// transition is the TransitionFunc: decide, then turn the decision into
// outbox messages.
func (c *Coordinator) transition(in saga.Instance, inp saga.Input) (saga.Decision, []saga.Message, error) {
	def := c.defs[in.Definition]
	if def == nil {
		return saga.Decision{}, nil, fmt.Errorf("%w: %q", ErrUnknownDefinition, in.Definition)
	}
	now := c.cfg.Clock.Now()
	d, err := def.Decide(in, inp, now)
	if err != nil || !d.Changed {
		return d, nil, err
	}
	return d, c.messages(d, now), nil
}

// messages renders a decision's commands and events as broker messages.
func (c *Coordinator) messages(d saga.Decision, now time.Time) []saga.Message {
	msgs := make([]saga.Message, 0, len(d.Commands)+len(d.Events))
	var headers map[string]string
	if tp := d.Instance.TraceParent; tp != "" {
		headers = map[string]string{"traceparent": tp}
	}
	for _, cmd := range d.Commands {
		m := saga.Message{
			Kind: saga.MessageCommand, Type: cmd.Type, MessageID: cmd.MessageID, CorrelationID: cmd.MessageID,
			Priority: cmd.Priority, Timestamp: now, Headers: headers,
			Body: saga.Envelope{
				ID: cmd.MessageID, CorrelationID: cmd.MessageID, SagaID: cmd.SagaID.String(),
				Type: cmd.Type, At: now, Attempt: cmd.Attempt, Payload: cmd.Payload,
			}.Encode(),
		}
		if !c.cfg.DisableCommandTTL {
			m.TTL = cmd.Deadline.Sub(now)
		}
		msgs = append(msgs, m)
	}
	for _, ev := range d.Events {
		id := ev.ID.String()
		msgs = append(msgs, saga.Message{
			Kind: saga.MessageEvent, Type: ev.Type, MessageID: id,
			CorrelationID: ev.SagaID.String(), Priority: d.Instance.Priority,
			Timestamp: ev.At, Headers: headers,
			Body: saga.Envelope{
				ID: id, CorrelationID: ev.SagaID.String(), SagaID: ev.SagaID.String(),
				Type: ev.Type, At: ev.At, Payload: ev.Payload,
			}.Encode(),
		})
	}
	return msgs
}

// observe reports committed decisions to the observer, and logs what an
// operator should know: a saga compensating, stuck, or back from stuck.
func (c *Coordinator) observe(outs []saga.Outcome) {
	for _, o := range outs {
		if o.Err != nil || !o.Changed {
			continue
		}
		def := c.defs[o.Instance.Definition]
		c.cfg.Observer.SagaChanged(def, o.Decision)
		for _, tr := range o.Transitions {
			switch tr {
			case saga.TransitionStart, saga.TransitionResume, saga.TransitionResumeCompensation:
				c.adjustActive(+1)
			}
		}
		if o.Instance.Phase.Terminal() || o.Instance.Phase == saga.Stuck {
			if len(o.Transitions) > 0 && o.Transitions[0] != saga.TransitionAbort {
				c.adjustActive(-1)
			}
			c.wakeStarter() // room for a pending saga
		}
		for _, tr := range o.Transitions {
			var ev *zerolog.Event
			switch tr {
			case saga.TransitionCompensate:
				ev = c.log.Info().Str("reason", o.Instance.Reason)
			case saga.TransitionStick:
				ev = c.log.Warn().Str("reason", o.Instance.StuckReason)
			case saga.TransitionResume, saga.TransitionResumeCompensation:
				ev = c.log.Info()
			case saga.TransitionRetry, saga.TransitionRetryCompensation:
				ev = c.log.Debug().Int("attempt", o.Instance.Attempt)
			default:
				continue
			}
			c.sagaFields(ev, def, &o.Instance).Str("transition", string(tr)).Str("state", o.Instance.State).Msg("saga " + string(tr))
		}
	}
}

// sagaFields adds the saga's identity to a log line: saga_id, the domain's
// alias of it (order_id), and the current step.
func (c *Coordinator) sagaFields(ev *zerolog.Event, def *saga.Definition, in *saga.Instance) *zerolog.Event {
	id := in.ID.String()
	ev = ev.Str("saga_id", id).Str("correlation_id", id)
	if def == nil {
		return ev
	}
	if def.IDName != "" {
		ev = ev.Str(def.IDName, id)
	}
	if d := def.For(in); d != nil && in.Step >= 0 && in.Step < len(d.Steps) {
		ev = ev.Str("step", d.Steps[in.Step].Name) // of the version that drives it
	}
	return ev
}
