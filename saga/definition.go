// Package saga is the core of sagaflow's engine: saga definitions, the
// state machine that decides the next move from a reply or a timer (with
// typed transitions), the messages a decision causes, and the interfaces
// of a Store and a Publisher.
//
// It knows nothing about orders, PostgreSQL or RabbitMQ: saga/coordinator
// drives sagas through those interfaces, adapters (saga/pgstore,
// saga/amqpbus, saga/worker) implement them, and applications (the order
// saga, examples/trip) are built on top.
package saga

import (
	"errors"
	"fmt"
	"slices"
	"time"

	json "github.com/goccy/go-json"
)

// StepKind tells how a step behaves when the saga has to go back.
type StepKind int

const (
	// Compensatable steps come before the pivot. When a later step fails,
	// their compensations run in reverse order.
	Compensatable StepKind = iota
	// Retriable steps come after the pivot. They are retried until they
	// succeed and never fail the saga; one that runs out of attempts leaves
	// the saga stuck for an operator.
	Retriable
)

func (k StepKind) String() string {
	if k == Retriable {
		return "retriable"
	}
	return "compensatable"
}

// Step is one forward step of a saga: a command sent to a worker and, for a
// compensatable step, the command that undoes it; or, for a waiting step
// (Wait set), a signal from outside the saga that it waits for.
type Step struct {
	// Name identifies the step in the saga's history and in message ids
	// ("reserve_stock").
	Name string
	// State is the saga's state label while this step runs
	// ("reserving_stock").
	State string
	// Command is the type of the step's command ("inventory.reserve");
	// empty for a waiting step.
	Command string
	// Wait makes this a waiting step: it sends nothing and waits for the
	// signal of this name addressed to the saga ("shipping.delivered"),
	// whose payload is merged into the saga's data. A signal that comes
	// before the saga reaches the step is kept until it does. Timeout is
	// the deadline of the wait (required); when it passes, a waiting step
	// before the pivot fails like a step that was refused (the steps before
	// it are compensated), one after the pivot leaves the saga stuck with
	// OverdueReason, for an operator whose replay waits again.
	Wait string
	// Kind is Compensatable (needs Compensation, unless the step waits) or
	// Retriable.
	Kind StepKind
	// Compensation undoes the step; required for Compensatable steps that
	// send a command, none for a waiting step (waiting changes nothing).
	Compensation *Compensation
	// Timeout overrides Retry.Timeout for this step's first attempt; for a
	// waiting step, it is how long the saga waits for the signal.
	Timeout time.Duration
	// SucceededEvent is the domain event emitted when the step succeeds
	// ("inventory.reserved"); empty for none.
	SucceededEvent string
	// FailedEvent is the domain event emitted when the step fails for a
	// business reason ("payment.failed"); empty for none.
	FailedEvent string
	// FailedEvents overrides FailedEvent for a failure code
	// ({"out_of_stock": "inventory.out_of_stock"}).
	FailedEvents map[string]string
	// OverdueEvent is the domain event emitted when a waiting step's
	// deadline passes ("order.delivery_overdue"); empty for none.
	OverdueEvent string
	// OverdueReason is the saga's reason when a waiting step's deadline
	// passes (default "<signal> not received within <timeout>").
	OverdueReason string
	// SLA is how long a saga may stay in this step's state before someone
	// should know, whatever its attempts (0: no SLA). Once it is passed
	// the saga emits "<Name>.sla_missed", once per stay, and goes on as
	// before (the coordinator looks every Config.SLAInterval).
	SLA time.Duration
}

// Waits reports whether the step waits for a signal instead of sending a
// command.
func (s *Step) Waits() bool { return s.Wait != "" }

// Compensation is the command that semantically undoes a step.
type Compensation struct {
	// Name identifies the compensation in history and message ids
	// ("release_stock").
	Name string
	// Command is the type of its command ("inventory.release").
	Command string
	// Event is the domain event emitted when it succeeds
	// ("inventory.released"); empty for none.
	Event string
}

// Retry is the timing and attempt budget of commands. Zero fields take the
// defaults documented on each field.
type Retry struct {
	// Timeout is how long the first attempt of a command waits for its
	// reply before it is re-sent (default 10s). Each further attempt waits
	// Multiplier times longer, up to MaxTimeout.
	Timeout time.Duration
	// MaxTimeout caps the wait of one attempt, before jitter (default 2m).
	MaxTimeout time.Duration
	// Backoff is the pause before re-sending a command whose worker reported
	// a transient failure (default 200ms); it grows by Multiplier up to
	// MaxBackoff.
	Backoff time.Duration
	// MaxBackoff caps Backoff, before jitter (default 30s).
	MaxBackoff time.Duration
	// Multiplier is the growth factor of timeouts and backoffs (default 2).
	Multiplier float64
	// Jitter lengthens each wait by up to this fraction, so that retries of
	// many sagas do not arrive together (default 0.2; negative, or 1 and
	// more: none).
	Jitter float64
	// MaxAttempts is the budget of a compensatable step; when it runs out
	// the saga compensates (default 5).
	MaxAttempts int
	// CompensationAttempts is the budget of a compensation; when it runs out
	// the saga is stuck (default 10).
	CompensationAttempts int
	// RetriableAttempts is the budget of a step after the pivot; when it runs
	// out the saga is stuck, never failed (default 20).
	RetriableAttempts int
}

func (r Retry) withDefaults() Retry {
	if r.Timeout <= 0 {
		r.Timeout = 10 * time.Second
	}
	if r.MaxTimeout <= 0 {
		r.MaxTimeout = 2 * time.Minute
	}
	if r.Backoff <= 0 {
		r.Backoff = 200 * time.Millisecond
	}
	if r.MaxBackoff <= 0 {
		r.MaxBackoff = 30 * time.Second
	}
	if r.Multiplier < 1 {
		r.Multiplier = 2
	}
	switch {
	case r.Jitter < 0 || r.Jitter >= 1:
		r.Jitter = -1 // none; kept negative, so that a second pass keeps it
	case r.Jitter == 0:
		r.Jitter = 0.2
	}
	if r.MaxAttempts <= 0 {
		r.MaxAttempts = 5
	}
	if r.CompensationAttempts <= 0 {
		r.CompensationAttempts = 10
	}
	if r.RetriableAttempts <= 0 {
		r.RetriableAttempts = 20
	}
	return r
}

// RequestFunc builds the payload of a command from the saga's data. The
// default sends the whole data object.
type RequestFunc func(command string, data json.RawMessage) (json.RawMessage, error)

// Definition is a saga type: an ordered list of steps, compensatable ones
// first, then retriable ones.
type Definition struct {
	// Name is the saga type ("order"); saga-level events are "<Name>.created",
	// "<Name>.completed", "<Name>.cancelled", "<Name>.rejected",
	// "<Name>.compensating" and "<Name>.stuck".
	Name string
	// Steps in the order they run.
	Steps []Step
	// Retry is the timing and attempt budget.
	Retry Retry
	// Request projects the saga data onto a command payload; nil sends the
	// whole data object.
	Request RequestFunc
	// EventData projects the saga data onto the "data" field of its domain
	// events (to leave secrets out); nil attaches the whole data object.
	EventData func(data json.RawMessage) json.RawMessage
	// IDName is the domain's name for a saga id ("order_id"); log lines
	// about a saga carry the id under this name too.
	IDName string
	// Version numbers the definition's versions (1 when zero). Every saga
	// records the version it started with, and is driven by it or by an
	// Upgrade of a later version: a new version (steps added, removed,
	// renamed or reordered) declares how the sagas of the earlier ones go
	// on.
	Version int
	// Upgrades say, for each earlier version whose sagas may still be
	// live, how they go on under this one.
	Upgrades []Upgrade
}

// ErrInvalidDefinition is returned by Validate.
var ErrInvalidDefinition = errors.New("saga: invalid definition")

// Validate checks the definition and fills in the retry defaults. Call it
// once before use; the coordinator does.
func (d *Definition) Validate() error {
	var errs []error
	if d.Name == "" {
		errs = append(errs, errors.New("empty name"))
	}
	if len(d.Steps) == 0 {
		errs = append(errs, errors.New("no steps"))
	}
	seen := map[string]bool{}
	afterPivot := false
	waits := map[string]bool{}
	for i, s := range d.Steps {
		for _, n := range []string{s.Name, s.State, s.Command + s.Wait} {
			if n == "" {
				errs = append(errs, fmt.Errorf("step %d: name, state and a command or a signal to wait for are required", i))
				break
			}
		}
		if s.SLA < 0 {
			errs = append(errs, fmt.Errorf("step %q: a negative SLA", s.Name))
		}
		if s.Waits() {
			switch {
			case s.Command != "":
				errs = append(errs, fmt.Errorf("step %q: a waiting step sends no command", s.Name))
			case s.Compensation != nil:
				errs = append(errs, fmt.Errorf("step %q: a waiting step has nothing to compensate", s.Name))
			case s.Timeout <= 0:
				errs = append(errs, fmt.Errorf("step %q: a waiting step needs a timeout (its deadline)", s.Name))
			case waits[s.Wait]:
				errs = append(errs, fmt.Errorf("step %q: another step waits for %q", s.Name, s.Wait))
			}
			waits[s.Wait] = true
		}
		names := []string{s.Name}
		if s.Compensation != nil {
			names = append(names, s.Compensation.Name)
		}
		for _, n := range names {
			if seen[n] {
				errs = append(errs, fmt.Errorf("step %d: duplicate name %q", i, n))
			}
			seen[n] = true
		}
		switch s.Kind {
		case Compensatable:
			if afterPivot {
				errs = append(errs, fmt.Errorf("step %q: a compensatable step cannot follow a retriable one", s.Name))
			}
			if !s.Waits() && (s.Compensation == nil || s.Compensation.Name == "" || s.Compensation.Command == "") {
				errs = append(errs, fmt.Errorf("step %q: a compensatable step needs a compensation", s.Name))
			}
		case Retriable:
			afterPivot = true
			if s.Compensation != nil {
				errs = append(errs, fmt.Errorf("step %q: a retriable step has no compensation", s.Name))
			}
		default:
			errs = append(errs, fmt.Errorf("step %q: unknown kind %d", s.Name, s.Kind))
		}
	}
	if d.Version == 0 {
		d.Version = 1
	}
	if d.Version < 0 {
		errs = append(errs, fmt.Errorf("version %d: versions count from 1", d.Version))
	} else {
		errs = append(errs, d.validateUpgrades()...)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w %q: %w", ErrInvalidDefinition, d.Name, errors.Join(errs...))
	}
	d.Retry = d.Retry.withDefaults()
	return nil
}

// Pivot is the index of the last compensatable step: once it has succeeded
// the saga only goes forward.
func (d *Definition) Pivot() int {
	p := -1
	for i, s := range d.Steps {
		if s.Kind == Compensatable {
			p = i
		}
	}
	return p
}

// waitFor is the index of the step that waits for the signal name, or -1.
func (d *Definition) waitFor(name string) int {
	for i := range d.Steps {
		if d.Steps[i].Wait == name {
			return i
		}
	}
	return -1
}

// StateOf is the state label of an instance: "pending", the running step's
// State, "compensating", or the terminal phase.
func (d *Definition) StateOf(in *Instance) string {
	if in.Phase == Running && in.Step >= 0 && in.Step < len(d.Steps) {
		return d.Steps[in.Step].State
	}
	return string(in.Phase)
}

// States lists every state label of the definition, in lifecycle order,
// then the states of the versions it keeps (Upgrade.Keep) that it has
// not.
func (d *Definition) States() []string {
	out := []string{string(Pending)}
	for _, k := range d.drivers() {
		for _, s := range k.Steps {
			if !slices.Contains(out, s.State) {
				out = append(out, s.State)
			}
		}
		if k == d {
			out = append(out, string(Completed), string(Rejected), string(Compensating), string(Cancelled), string(Stuck))
		}
	}
	return out
}

// SLAStates lists the states of the steps that have an SLA.
func (d *Definition) SLAStates() []string {
	var out []string
	for _, s := range d.Steps {
		if s.SLA > 0 {
			out = append(out, s.State)
		}
	}
	return out
}

// Signals lists the names of the signals the waiting steps of the
// definition, and of the versions it keeps, wait for.
func (d *Definition) Signals() []string {
	var out []string
	for _, k := range d.drivers() {
		for _, s := range k.Steps {
			if s.Waits() && !slices.Contains(out, s.Wait) {
				out = append(out, s.Wait)
			}
		}
	}
	return out
}

// WaitingStates lists the states of the waiting steps of the definition
// and of the versions it keeps.
func (d *Definition) WaitingStates() []StateRef {
	var out []StateRef
	for _, k := range d.drivers() {
		for _, s := range k.Steps {
			if ref := (StateRef{Definition: d.Name, State: s.State}); s.Waits() && !slices.Contains(out, ref) {
				out = append(out, ref)
			}
		}
	}
	return out
}

// StepNames lists the names of steps and compensations.
func (d *Definition) StepNames() []string {
	var out []string
	for _, s := range d.Steps {
		out = append(out, s.Name)
		if s.Compensation != nil {
			out = append(out, s.Compensation.Name)
		}
	}
	return out
}
