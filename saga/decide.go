package saga

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"strconv"
	"time"

	json "github.com/goccy/go-json"
	"github.com/google/uuid"
	"github.com/looplab/fsm"
)

// InputKind is what happened to a saga.
type InputKind int

// The inputs a saga reacts to.
const (
	InputStart   InputKind = iota + 1 // begin a pending saga
	InputReply                        // a worker answered a command
	InputTimeout                      // the saga's deadline passed
	InputReplay                       // an operator re-drives the saga with a fresh attempt budget
	InputCancel                       // an operator forces compensation
	InputSignal                       // something outside the saga happened that a waiting step may wait for
	InputNote                         // an operator did something about the saga that changes nothing in it (a re-drive): on the record
	InputSLA                          // the coordinator asks whether the saga stayed in its state longer than the step's SLA
)

func (k InputKind) String() string {
	switch k {
	case InputStart:
		return "start"
	case InputReply:
		return "reply"
	case InputTimeout:
		return "timeout"
	case InputReplay:
		return "replay"
	case InputCancel:
		return "cancel"
	case InputSignal:
		return "signal"
	case InputNote:
		return "note"
	case InputSLA:
		return "sla"
	}
	return "input(" + strconv.Itoa(int(k)) + ")"
}

// Input is one thing that happened to one saga.
type Input struct {
	Kind   InputKind
	SagaID uuid.UUID
	// Reply is set for InputReply.
	Reply *Reply
	// Reason is the operator's reason for InputReplay and InputCancel.
	Reason string
	// Operator names who asked for InputReplay or InputCancel; with
	// Reason, it is recorded in the saga's trail by an operator event
	// (EventReplayed, EventCancelled).
	Operator string
	// Signal is set for InputSignal.
	Signal *Signal
	// Note is, for InputNote, the operator event to record
	// (EventRedriven) and the message it is about.
	Note, Subject string
}

// Signal is news from outside a saga that a waiting step waits for
// (Step.Wait): a delivery confirmed, a payment settled.
type Signal struct {
	// Name is what happened ("shipping.delivered").
	Name string `json:"name"`
	// Key makes the signal idempotent: a second signal with the same key
	// is a duplicate and changes nothing.
	Key string `json:"key"`
	// Payload is a JSON object merged into the saga's data when the
	// waiting step takes the signal.
	Payload json.RawMessage `json:"payload,omitempty"`
}

// Operator events: an operator's action on a saga, emitted (through the
// outbox, like every event) by the decision it caused, with the operator
// and the reason in their data (OperatorData).
const (
	EventReplayed  = "saga.replayed"
	EventCancelled = "saga.cancelled"
	// EventRedriven: an operator sent a dead letter of the saga back to
	// where it came from; Subject names the message.
	EventRedriven = "saga.redriven"
)

// OperatorData is the data of an operator event.
type OperatorData struct {
	Operator string `json:"operator"`
	Reason   string `json:"reason"`
	// Message is the message the action was about (a re-drive's).
	Message string `json:"message,omitempty"`
}

// ErrNotWaiting is returned for a signal that no step of the saga waits
// for or will wait for: a saga that ended, compensates, is past the step
// that waited for it, or has no such step.
var ErrNotWaiting = errors.New("saga: not waiting for this signal")

// ErrInvalidSignal is returned for a signal without a name or a key.
var ErrInvalidSignal = errors.New("saga: a signal needs a name and a key")

// ReplyStatus is a worker's verdict on a command.
type ReplyStatus string

// Reply statuses. A business failure (Failed) compensates; a transient one
// (Retry) is retried with backoff and never compensates by itself.
const (
	ReplyOK     ReplyStatus = "ok"
	ReplyFailed ReplyStatus = "failed"
	ReplyRetry  ReplyStatus = "retry"
)

// Reply is a worker's answer to a command.
type Reply struct {
	// CorrelationID is the message id of the command answered.
	CorrelationID string
	Status        ReplyStatus
	// Code is a stable snake_case failure code ("card_declined").
	Code    string
	Message string
	// Payload is merged into the saga's data when Status is ok.
	Payload json.RawMessage
	// Attempt is the attempt of the command answered (0: unknown). A
	// retry answer to an attempt already counted (an earlier one, or the
	// current one while the saga waits to re-send) is a duplicate and
	// changes nothing: a redelivered retry must not spend the budget.
	Attempt int
}

// Command is a message the saga sends to a worker.
type Command struct {
	// MessageID is the idempotency key, the same on every attempt:
	// "<saga id>:<step or compensation name>".
	MessageID string
	SagaID    uuid.UUID
	// Type is the command type ("payment.charge").
	Type string
	// Step is the step or compensation name.
	Step     string
	Attempt  int
	Priority Priority
	// Deadline is when the saga stops waiting for this attempt; a command
	// still queued then is useless (it becomes the message TTL).
	Deadline time.Time
	Payload  json.RawMessage
}

// Event is a domain event: something that happened to a saga, for
// consumers such as audit and notifications.
type Event struct {
	// ID is stable: derived from the saga id and the event's sequence number.
	ID uuid.UUID
	// Seq numbers the saga's events from 1, in the order they happened; the
	// payload carries it as "seq".
	Seq     int
	Type    string
	SagaID  uuid.UUID
	At      time.Time
	Payload json.RawMessage
}

// Decision is the outcome of one input: the new state, and what to send.
type Decision struct {
	Instance Instance
	// Changed is false when the input was stale or redundant (a duplicate
	// reply, a timer that lost a race); nothing needs saving then.
	Changed bool
	// Transitions are the state machine events fired, in order.
	Transitions []Transition
	Commands    []Command
	Events      []Event
}

// Transition is an event of the saga state machine. Decision.Transitions
// lists the ones a decision fired; observers and admission count by them.
type Transition string

// The transitions of the state machine (the table is transitions).
const (
	TransitionStart              Transition = "start"
	TransitionAdvance            Transition = "advance"
	TransitionRetry              Transition = "retry"
	TransitionComplete           Transition = "complete"
	TransitionReject             Transition = "reject"
	TransitionCompensate         Transition = "compensate"
	TransitionCompensateNext     Transition = "compensate_next"
	TransitionRetryCompensation  Transition = "retry_compensation"
	TransitionFinishCompensation Transition = "finish_compensation"
	TransitionStick              Transition = "stick"
	TransitionResume             Transition = "resume"
	TransitionResumeCompensation Transition = "resume_compensation"
	TransitionAbort              Transition = "abort"
)

// ErrConflict is returned when an operator asks for something the saga's
// state does not allow (replay a completed saga, cancel past the pivot).
var ErrConflict = errors.New("saga: not allowed in this state")

// The state machine, as a table. Decide rebuilds it from the persisted
// phase for every decision; it has no callbacks and does no I/O.
var transitions = fsm.Events{
	{Name: string(TransitionStart), Src: []string{string(Pending)}, Dst: string(Running)},
	{Name: string(TransitionAdvance), Src: []string{string(Running)}, Dst: string(Running)},
	{Name: string(TransitionRetry), Src: []string{string(Running)}, Dst: string(Running)},
	{Name: string(TransitionComplete), Src: []string{string(Running)}, Dst: string(Completed)},
	{Name: string(TransitionReject), Src: []string{string(Running)}, Dst: string(Rejected)},
	{Name: string(TransitionCompensate), Src: []string{string(Running)}, Dst: string(Compensating)},
	{Name: string(TransitionCompensateNext), Src: []string{string(Compensating)}, Dst: string(Compensating)},
	{Name: string(TransitionRetryCompensation), Src: []string{string(Compensating)}, Dst: string(Compensating)},
	{Name: string(TransitionFinishCompensation), Src: []string{string(Compensating)}, Dst: string(Cancelled)},
	{Name: string(TransitionStick), Src: []string{string(Running), string(Compensating)}, Dst: string(Stuck)},
	{Name: string(TransitionResume), Src: []string{string(Stuck)}, Dst: string(Running)},
	{Name: string(TransitionResumeCompensation), Src: []string{string(Stuck)}, Dst: string(Compensating)},
	{Name: string(TransitionAbort), Src: []string{string(Pending)}, Dst: string(Cancelled)},
}

// Transitions returns the state machine table, for documentation and tests.
func Transitions() fsm.Events {
	out := make(fsm.Events, len(transitions))
	for i, e := range transitions {
		out[i] = fsm.EventDesc{Name: e.Name, Src: append([]string(nil), e.Src...), Dst: e.Dst}
	}
	return out
}

// New returns a pending saga of this definition and its "<name>.created"
// event. A pending saga has no deadline: it waits for a Start input (the
// coordinator's starter admits it when there is room).
func (d *Definition) New(id uuid.UUID, data json.RawMessage, prio Priority, now time.Time) (Instance, Event) {
	now = now.UTC().Truncate(time.Microsecond)
	in := Instance{
		ID: id, Definition: d.Name, Version: max(d.Version, 1), Phase: Pending, Step: 0, Priority: prio, Data: data,
		CreatedAt: now, UpdatedAt: now, State: string(Pending),
	}
	x := decider{def: d, in: in, now: now}
	x.emit(d.Name+".created", eventDetail{})
	return x.in, x.events[0]
}

// Decide applies one input to a saga and returns the new state with the
// commands and events it causes. It is a pure function of its arguments:
// no I/O, no clock, no randomness (jitter is derived from the saga id).
//
// A saga of another version is driven by the version that keeps it
// (Upgrade.Keep), or upgraded to this one first (Upgrade.Steps; saved with
// the decision when it changes anything); ErrVersionNotServed when
// neither applies.
func (d *Definition) Decide(in Instance, inp Input, now time.Time) (Decision, error) {
	if VersionOf(&in) == max(d.Version, 1) || in.Phase.Terminal() || inp.Kind == InputNote {
		return d.decide(in, inp, now) // a saga that ended needs no driving, whatever its version
	}
	k, up, err := d.resolve(in)
	if err != nil {
		return Decision{}, err
	}
	dec, err := k.decide(up, inp, now)
	if err == nil && !dec.Changed {
		dec.Instance = in // nothing to save: upgraded again next time
	}
	return dec, err
}

func (d *Definition) decide(in Instance, inp Input, now time.Time) (Decision, error) {
	x := &decider{def: d, in: in.clone(), now: now.UTC().Truncate(time.Microsecond)}
	x.m = fsm.NewFSM(string(in.Phase), transitions, nil)
	var err error
	switch inp.Kind {
	case InputStart:
		if x.in.Phase == Pending {
			err = x.start()
		}
	case InputTimeout:
		err = x.timeout()
	case InputReply:
		if inp.Reply == nil {
			return Decision{}, errors.New("saga: reply input without a reply")
		}
		err = x.reply(inp.Reply)
	case InputReplay:
		err = x.replay(inp.Operator, inp.Reason)
	case InputCancel:
		err = x.cancel(inp.Operator, inp.Reason)
	case InputSignal:
		if inp.Signal == nil {
			return Decision{}, errors.New("saga: signal input without a signal")
		}
		err = x.signal(inp.Signal)
	case InputSLA:
		x.sla()
	case InputNote:
		if inp.Note == "" {
			return Decision{}, errors.New("saga: note input without an event")
		}
		// The saga's trail records it; nothing else changes, whatever the
		// saga's phase.
		data, _ := json.Marshal(OperatorData{Operator: inp.Operator, Reason: inp.Reason, Message: inp.Subject})
		x.emitData(inp.Note, eventDetail{}, data)
		x.changed = true
	default:
		return Decision{}, fmt.Errorf("saga: unknown input %d", inp.Kind)
	}
	if err != nil {
		return Decision{}, err
	}
	dec := Decision{Instance: x.in, Changed: x.changed, Transitions: x.fired, Commands: x.commands, Events: x.events}
	if x.changed {
		dec.Instance.UpdatedAt = x.now
		dec.Instance.State = d.StateOf(&dec.Instance)
		if p := dec.Instance.Phase; p.Terminal() || p == Stuck {
			// Nothing is in flight or waiting any more.
			dec.Instance.Waiting, dec.Instance.Deadline = false, time.Time{}
		}
	} else {
		dec.Instance = in
	}
	return dec, nil
}

type eventDetail struct {
	Step    string `json:"step,omitempty"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message,omitempty"`
}

type decider struct {
	def      *Definition
	in       Instance
	now      time.Time
	m        *fsm.FSM
	changed  bool
	fired    []Transition
	commands []Command
	events   []Event
}

func (x *decider) fire(event Transition) error {
	err := x.m.Event(context.Background(), string(event))
	var same fsm.NoTransitionError
	if err != nil && !errors.As(err, &same) {
		return fmt.Errorf("saga %s: %s in phase %s: %w", x.in.ID, event, x.in.Phase, err)
	}
	x.in.Phase = Phase(x.m.Current())
	x.fired = append(x.fired, event)
	x.changed = true
	return nil
}

// current is the step or compensation whose command is outstanding.
func (x *decider) current() (name, command string, budget int, ok bool) {
	phase := x.in.Phase
	if phase == Stuck {
		phase = x.in.StuckIn
	}
	if x.in.Step < 0 || x.in.Step >= len(x.def.Steps) {
		return "", "", 0, false
	}
	s := x.def.Steps[x.in.Step]
	switch {
	case phase == Running && s.Waits():
		return s.Name, "", 1, true
	case phase == Running && s.Kind == Retriable:
		return s.Name, s.Command, x.def.Retry.RetriableAttempts, true
	case phase == Running:
		return s.Name, s.Command, x.def.Retry.MaxAttempts, true
	case phase == Compensating && s.Compensation != nil:
		return s.Compensation.Name, s.Compensation.Command, x.def.Retry.CompensationAttempts, true
	}
	return "", "", 0, false
}

// MessageID is the idempotency key of a saga's step or compensation.
func MessageID(sagaID uuid.UUID, step string) string {
	return sagaID.String() + ":" + step
}

// key is the name in the idempotency key of the current step or
// compensation name: the name it began with, which an upgrade that
// renamed it kept in its record (StepRecord.Was).
func (x *decider) key(name string) string {
	if r := x.in.record(name); r != nil && r.Was != "" {
		return r.Was
	}
	return name
}

// compensable is the index of the last step at or before i that has a
// compensation and that the saga began (a step an upgrade added behind
// the saga never ran), or -1: waiting steps have none.
func (x *decider) compensable(i int) int {
	for ; i >= 0; i-- {
		if s := &x.def.Steps[i]; s.Compensation != nil && x.in.began(s.Name) {
			return i
		}
	}
	return -1
}

func (x *decider) start() error {
	if err := x.fire(TransitionStart); err != nil {
		return err
	}
	return x.begin(0, KindAction)
}

// begin starts step i (or its compensation) with a fresh attempt budget. A
// waiting step that finds its signal kept takes it at once.
func (x *decider) begin(i int, kind string) error {
	x.in.Step, x.in.Attempt, x.in.Waiting = i, 1, false
	s := &x.def.Steps[i]
	name := s.Name
	if kind == KindCompensation {
		name = s.Compensation.Name
	}
	x.in.History = append(x.in.History, StepRecord{
		Name: name, Kind: kind, Status: StepRunning, Attempts: 1, StartedAt: x.now,
	})
	if kind == KindAction && s.Waits() {
		if sig := x.in.kept(s.Wait); sig != nil {
			return x.take(sig)
		}
		x.in.Deadline = x.now.Add(s.Timeout)
		return nil
	}
	x.send()
	return nil
}

// send emits the outstanding command for the current attempt and sets the
// deadline for its reply.
func (x *decider) send() {
	name, command, _, _ := x.current()
	base := x.def.Steps[x.in.Step].Timeout
	if base <= 0 {
		base = x.def.Retry.Timeout
	}
	wait := x.grow(base, x.def.Retry.MaxTimeout, name)
	x.in.Deadline = x.now.Add(wait)
	payload := x.in.Data
	if x.def.Request != nil {
		p, err := x.def.Request(command, x.in.Data)
		if err == nil {
			payload = p
		} else {
			// A payload that cannot be built is a bug in the definition; the
			// worker will reject the whole data object and the saga's
			// retries make it visible.
			payload = x.in.Data
		}
	}
	x.commands = append(x.commands, Command{
		MessageID: MessageID(x.in.ID, x.key(name)), SagaID: x.in.ID, Type: command, Step: name,
		Attempt: x.in.Attempt, Priority: x.in.Priority, Deadline: x.in.Deadline, Payload: payload,
	})
}

// grow returns base × Multiplier^(attempt-1), capped at limit, then spread
// upwards by up to Jitter.
func (x *decider) grow(base, limit time.Duration, name string) time.Duration {
	r := x.def.Retry
	f := float64(base) * math.Pow(r.Multiplier, float64(x.in.Attempt-1))
	if f > float64(limit) {
		f = float64(limit)
	}
	// Jitter after the cap: sagas at the cap stay spread out.
	f *= 1 + max(r.Jitter, 0)*x.unit(name)
	return time.Duration(f).Truncate(time.Microsecond)
}

// unit is a number in [0,1) derived from the saga, the step and the attempt:
// jitter without randomness, so decisions stay reproducible.
func (x *decider) unit(name string) float64 {
	h := fnv.New64a()
	h.Write(x.in.ID[:])
	h.Write([]byte(name))
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(x.in.Attempt))
	h.Write(b[:])
	return float64(h.Sum64()>>11) / float64(1<<53)
}

func (x *decider) emit(typ string, d eventDetail) {
	if typ == "" {
		return
	}
	data := x.in.Data
	if x.def.EventData != nil {
		data = x.def.EventData(data)
	}
	x.emitData(typ, d, data)
}

// emitData emits an event whose payload carries data.
func (x *decider) emitData(typ string, d eventDetail, data json.RawMessage) {
	x.in.Seq++
	body := struct {
		SagaID string `json:"saga_id"`
		Seq    int    `json:"seq"`
		State  string `json:"state"`
		Reason string `json:"reason,omitempty"`
		eventDetail
		Data json.RawMessage `json:"data,omitempty"`
	}{x.in.ID.String(), x.in.Seq, x.def.StateOf(&x.in), x.in.Reason, d, data}
	payload, _ := json.Marshal(body) // cannot fail: strings and valid JSON only
	x.events = append(x.events, Event{
		ID:      uuid.NewSHA1(x.in.ID, []byte(strconv.Itoa(x.in.Seq))),
		Type:    typ,
		SagaID:  x.in.ID,
		At:      x.now,
		Payload: payload,
	})
}

// emitOperator emits an operator event: the action's operator and
// reason are its data.
func (x *decider) emitOperator(typ, operator, reason string) {
	data, _ := json.Marshal(OperatorData{Operator: operator, Reason: reason}) // strings only
	x.emitData(typ, eventDetail{}, data)
}

func (x *decider) finishRecord(name, status, errMsg string) {
	if r := x.in.record(name); r != nil {
		r.Status = status
		t := x.now
		r.FinishedAt = &t
		r.Error = errMsg
	}
}

func (x *decider) timeout() error {
	switch {
	case x.in.Phase == Pending:
		return x.start()
	case x.in.Phase != Running && x.in.Phase != Compensating:
		return nil // terminal or stuck: no timer
	case x.in.Deadline.IsZero() || x.in.Deadline.After(x.now):
		return nil // another input moved the deadline since the timer looked
	case x.in.Waiting:
		return x.resend()
	case x.in.Phase == Running && x.def.Steps[x.in.Step].Waits():
		return x.overdue()
	}
	return x.fail(fmt.Sprintf("no reply to attempt %d", x.in.Attempt), false)
}

// overdue handles a waiting step whose deadline passed: before the pivot
// the saga compensates the steps before it (waiting changed nothing);
// after it, the saga is stuck for an operator.
func (x *decider) overdue() error {
	s := &x.def.Steps[x.in.Step]
	msg := s.OverdueReason
	if msg == "" {
		msg = fmt.Sprintf("%s not received within %s", s.Wait, s.Timeout)
	}
	x.finishRecord(s.Name, StepFailed, msg)
	x.emit(s.OverdueEvent, eventDetail{Step: s.Name, Message: msg})
	if s.Kind == Compensatable {
		return x.compensateFrom(x.in.Step-1, msg)
	}
	if err := x.fire(TransitionStick); err != nil {
		return err
	}
	x.in.StuckIn = Running
	x.in.Deadline, x.in.Waiting = time.Time{}, false
	x.in.StuckReason = msg
	if rec := x.in.record(s.Name); rec != nil {
		rec.Cause = CauseSignalOverdue
	}
	x.emit(x.def.Name+".stuck", eventDetail{Step: s.Name, Code: string(CauseSignalOverdue), Message: msg})
	return nil
}

// signal keeps a signal for a waiting step ahead, or gives it to the
// waiting step the saga is at (a stuck one resumes); a duplicate changes
// nothing.
func (x *decider) signal(sg *Signal) error {
	if sg.Name == "" || sg.Key == "" {
		return ErrInvalidSignal
	}
	if x.in.signal(sg.Key) != nil {
		return nil // a duplicate
	}
	at := x.def.waitFor(sg.Name)
	phase := x.in.Phase
	if phase == Stuck {
		phase = x.in.StuckIn
	}
	switch {
	case at < 0:
		return fmt.Errorf("%w: no step of %s waits for %s", ErrNotWaiting, x.def.Name, sg.Name)
	case x.in.Phase.Terminal() || phase == Compensating:
		return fmt.Errorf("%w: the saga is %s", ErrNotWaiting, x.in.Phase)
	case x.in.Phase != Pending && at < x.in.Step:
		return fmt.Errorf("%w: the saga is past its step %s", ErrNotWaiting, x.def.Steps[at].Name)
	}
	x.in.History = append(x.in.History, StepRecord{
		Name: sg.Name, Kind: KindSignal, Status: SignalKept, StartedAt: x.now, Key: sg.Key, Payload: sg.Payload,
	})
	x.changed = true
	if x.in.Phase == Pending || at > x.in.Step {
		return nil // kept for its step
	}
	if err := x.resume(); err != nil {
		return err
	}
	return x.take(&x.in.History[len(x.in.History)-1])
}

// sla emits "<name>.sla_missed" once for a saga that has been at a step
// with an SLA for longer than it: the step's record keeps that it did.
// Anything else is no change (the step ended meanwhile, or it was said).
func (x *decider) sla() {
	if x.in.Phase != Running || x.in.Step < 0 || x.in.Step >= len(x.def.Steps) {
		return
	}
	s := &x.def.Steps[x.in.Step]
	rec := x.in.record(s.Name)
	if s.SLA <= 0 || rec == nil || rec.SLAMissed || rec.Status != StepRunning || x.now.Before(rec.StartedAt.Add(s.SLA)) {
		return
	}
	rec.SLAMissed = true
	x.changed = true
	x.emit(x.def.Name+".sla_missed", eventDetail{Step: s.Name,
		Message: fmt.Sprintf("in %s for more than its SLA of %s", s.State, s.SLA)})
}

// resume takes a stuck saga back to the phase it was stuck in; others
// are left as they are.
func (x *decider) resume() error {
	if x.in.Phase != Stuck {
		return nil
	}
	ev := TransitionResume
	if x.in.StuckIn == Compensating {
		ev = TransitionResumeCompensation
	}
	if err := x.fire(ev); err != nil {
		return err
	}
	x.in.StuckReason = ""
	if name, _, _, ok := x.current(); ok {
		if rec := x.in.record(name); rec != nil {
			rec.Cause = ""
		}
	}
	return nil
}

// take gives the kept signal sig to the waiting step the saga is at: its
// payload joins the data and the step succeeds.
func (x *decider) take(sig *StepRecord) error {
	payload := sig.Payload
	t := x.now
	sig.Status, sig.FinishedAt, sig.Payload = SignalConsumed, &t, nil
	x.changed = true
	return x.succeed(payload)
}

// fail handles a failed attempt that may be retried: a timeout (re-sent at
// once, its next deadline longer) or a transient failure (re-sent after a
// backoff). When the budget is spent the saga compensates or is stuck.
func (x *decider) fail(msg string, transient bool) error {
	name, _, budget, _ := x.current()
	rec := x.in.record(name)
	if rec != nil {
		rec.Error = msg
	}
	if x.in.Attempt >= budget {
		cause := CauseNoReply
		if transient {
			cause = CauseWorkerError
		}
		return x.exhausted(fmt.Sprintf("%s: gave up after %d attempts: %s", name, x.in.Attempt, msg), cause)
	}
	if err := x.fire(x.retryEvent()); err != nil {
		return err
	}
	if transient {
		x.in.Waiting = true
		x.in.Deadline = x.now.Add(x.grow(x.def.Retry.Backoff, x.def.Retry.MaxBackoff, name))
		return nil
	}
	return x.resend()
}

func (x *decider) retryEvent() Transition {
	if x.in.Phase == Compensating {
		return TransitionRetryCompensation
	}
	return TransitionRetry
}

// resend sends the outstanding command again, same idempotency key.
func (x *decider) resend() error {
	if !x.changed {
		if err := x.fire(x.retryEvent()); err != nil {
			return err
		}
	}
	name, _, _, _ := x.current()
	x.in.Attempt++
	x.in.Waiting = false
	if rec := x.in.record(name); rec != nil {
		rec.Attempts++
	}
	x.send()
	return nil
}

func (x *decider) exhausted(msg string, cause StuckCause) error {
	name, _, _, _ := x.current()
	s := x.def.Steps[x.in.Step]
	if x.in.Phase == Running && s.Kind == Compensatable {
		x.finishRecord(name, StepFailed, msg)
		// The last attempt may have taken effect: undo this step too.
		return x.compensateFrom(x.in.Step, msg)
	}
	prev := x.in.Phase
	if err := x.fire(TransitionStick); err != nil {
		return err
	}
	x.in.StuckIn = prev
	x.in.Deadline, x.in.Waiting = time.Time{}, false
	x.in.StuckReason = msg
	x.finishRecord(name, StepFailed, msg)
	if prev == Compensating {
		cause = CauseCompensationExhausted
	}
	if rec := x.in.record(name); rec != nil {
		rec.Cause = cause
	}
	x.emit(x.def.Name+".stuck", eventDetail{Step: name, Code: string(cause), Message: msg})
	return nil
}

// compensateFrom undoes steps from..0 in reverse. With nothing to undo the
// saga is rejected.
func (x *decider) compensateFrom(from int, reason string) error {
	x.in.Reason = reason
	from = x.compensable(from)
	if from < 0 {
		if err := x.fire(TransitionReject); err != nil {
			return err
		}
		x.in.Deadline = time.Time{}
		x.emit(x.def.Name+".rejected", eventDetail{})
		return nil
	}
	if err := x.fire(TransitionCompensate); err != nil {
		return err
	}
	x.emit(x.def.Name+".compensating", eventDetail{})
	return x.begin(from, KindCompensation)
}

func (x *decider) reply(r *Reply) error {
	name, command, _, ok := x.current()
	if !ok || x.in.Phase.Terminal() || x.in.Phase == Pending || r.CorrelationID != MessageID(x.in.ID, x.key(name)) ||
		command == "" {
		return nil // a duplicate, a reply to a command the saga moved past, or to none (it waits for a signal)
	}
	if r.Status == ReplyRetry && r.Attempt > 0 &&
		(r.Attempt < x.in.Attempt || (r.Attempt == x.in.Attempt && x.in.Waiting)) {
		return nil // a retry answer already counted
	}
	// A stuck saga's command that ran out of attempts answered after all.
	if err := x.resume(); err != nil {
		return err
	}
	step := x.def.Steps[x.in.Step]
	switch {
	case r.Status == ReplyOK && x.in.Phase == Running:
		return x.succeed(r.Payload)
	case r.Status == ReplyOK: // compensating
		x.finishRecord(name, StepSucceeded, "")
		x.emit(step.Compensation.Event, eventDetail{Step: name})
		if next := x.compensable(x.in.Step - 1); next >= 0 {
			if err := x.fire(TransitionCompensateNext); err != nil {
				return err
			}
			return x.begin(next, KindCompensation)
		}
		if err := x.fire(TransitionFinishCompensation); err != nil {
			return err
		}
		x.in.Deadline = time.Time{}
		x.emit(x.def.Name+".cancelled", eventDetail{})
		return nil
	case r.Status == ReplyFailed && x.in.Phase == Running && step.Kind == Compensatable:
		msg := r.Code
		if msg == "" {
			msg = "failed"
		}
		if r.Message != "" {
			msg += ": " + r.Message
		}
		x.finishRecord(name, StepFailed, msg)
		typ := step.FailedEvent
		if t, ok := step.FailedEvents[r.Code]; ok {
			typ = t
		}
		// The step did not take effect: undo only the ones before it.
		x.in.Reason = msg
		x.emit(typ, eventDetail{Step: name, Code: r.Code, Message: r.Message})
		return x.compensateFrom(x.in.Step-1, msg)
	default:
		// A transient failure, or a business failure where failing is not
		// allowed (a compensation, a step after the pivot): retry later.
		msg := string(r.Status)
		if r.Code != "" {
			msg = r.Code
		}
		if r.Message != "" {
			msg += ": " + r.Message
		}
		return x.fail(msg, true)
	}
}

// succeed finishes the running step with payload merged into the data,
// and begins the next step or completes the saga.
func (x *decider) succeed(payload json.RawMessage) error {
	step := &x.def.Steps[x.in.Step]
	x.finishRecord(step.Name, StepSucceeded, "")
	x.in.Data = mergeObject(x.in.Data, payload)
	x.emit(step.SucceededEvent, eventDetail{Step: step.Name})
	if x.in.Step+1 < len(x.def.Steps) {
		if err := x.fire(TransitionAdvance); err != nil {
			return err
		}
		return x.begin(x.in.Step+1, KindAction)
	}
	if err := x.fire(TransitionComplete); err != nil {
		return err
	}
	x.in.Deadline = time.Time{}
	x.emit(x.def.Name+".completed", eventDetail{})
	return nil
}

func (x *decider) replay(operator, reason string) error {
	if x.in.Phase.Terminal() {
		return fmt.Errorf("%w: saga is %s", ErrConflict, x.in.Phase)
	}
	x.emitOperator(EventReplayed, operator, reason)
	switch {
	case x.in.Phase == Pending:
		return x.start()
	case x.in.Phase == Stuck:
		if err := x.resume(); err != nil {
			return err
		}
	default:
		if err := x.fire(x.retryEvent()); err != nil {
			return err
		}
	}
	name, _, _, _ := x.current()
	if rec := x.in.record(name); rec != nil {
		rec.Status, rec.FinishedAt = StepRunning, nil
		rec.Attempts++
	}
	x.in.Attempt, x.in.Waiting = 1, false
	if s := &x.def.Steps[x.in.Step]; x.in.Phase == Running && s.Waits() {
		x.in.Deadline = x.now.Add(s.Timeout) // wait again, as long as the first time
		return nil
	}
	x.send()
	return nil
}

func (x *decider) cancel(operator, why string) error {
	reason := "cancelled by operator"
	if why != "" {
		reason += ": " + why
	}
	switch {
	case x.in.Phase.Terminal():
		return fmt.Errorf("%w: saga is %s", ErrConflict, x.in.Phase)
	case x.in.Phase == Compensating || (x.in.Phase == Stuck && x.in.StuckIn == Compensating):
		return fmt.Errorf("%w: saga is already compensating", ErrConflict)
	case x.in.Phase == Stuck || (x.in.Phase != Pending && x.def.Steps[x.in.Step].Kind == Retriable):
		return fmt.Errorf("%w: saga is past its pivot step and can only go forward", ErrConflict)
	}
	x.emitOperator(EventCancelled, operator, why)
	switch {
	case x.in.Phase == Pending:
		x.in.Reason = reason
		if err := x.fire(TransitionAbort); err != nil {
			return err
		}
		x.in.Deadline = time.Time{}
		x.emit(x.def.Name+".cancelled", eventDetail{})
		return nil
	}
	name, _, _, _ := x.current()
	x.finishRecord(name, StepFailed, reason)
	if x.def.Steps[x.in.Step].Waits() {
		return x.compensateFrom(x.in.Step-1, reason) // waiting changed nothing
	}
	// The step in flight may yet take effect: its compensation covers it.
	return x.compensateFrom(x.in.Step, reason)
}

// mergeObject returns the JSON object base with the keys of patch set.
// A patch that is not an object is ignored.
func mergeObject(base, patch json.RawMessage) json.RawMessage {
	if len(patch) == 0 || string(patch) == "null" {
		return base
	}
	var p map[string]json.RawMessage
	if json.Unmarshal(patch, &p) != nil || len(p) == 0 {
		return base
	}
	b := map[string]json.RawMessage{}
	if len(base) > 0 {
		_ = json.Unmarshal(base, &b)
	}
	for k, v := range p {
		b[k] = v
	}
	out, err := json.Marshal(b)
	if err != nil {
		return base
	}
	return out
}
