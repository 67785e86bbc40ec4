package saga

import (
	"time"

	json "github.com/goccy/go-json"
	"github.com/google/uuid"
)

// Phase is where a saga stands in its lifecycle.
type Phase string

// The phases of a saga. Completed, Rejected and Cancelled are terminal.
const (
	Pending      Phase = "pending"      // accepted, first command not yet sent
	Running      Phase = "running"      // a forward step is in flight
	Compensating Phase = "compensating" // undoing completed steps, in reverse
	Completed    Phase = "completed"    // every step succeeded
	Rejected     Phase = "rejected"     // the first step failed: nothing to undo
	Cancelled    Phase = "cancelled"    // compensated
	Stuck        Phase = "stuck"        // out of attempts where failing is not allowed; waits for an operator
)

// Terminal reports whether no input will ever change the saga again.
func (p Phase) Terminal() bool {
	return p == Completed || p == Rejected || p == Cancelled
}

// Priority orders commands in worker queues: higher goes first.
type Priority uint8

// Step record statuses.
const (
	StepRunning   = "running"
	StepSucceeded = "succeeded"
	StepFailed    = "failed"
)

// Signal record statuses: kept until a waiting step takes it, then
// consumed.
const (
	SignalKept     = "kept"
	SignalConsumed = "consumed"
)

// Step record kinds. A signal's record names the signal and carries its
// key (and, while it is kept, its payload).
const (
	KindAction       = "action"
	KindCompensation = "compensation"
	KindSignal       = "signal"
)

// StepRecord is one entry of a saga's history: a step or a compensation,
// however many times it was attempted.
type StepRecord struct {
	Name       string     `json:"name"`
	Kind       string     `json:"kind"`
	Status     string     `json:"status"`
	Attempts   int        `json:"attempts"`
	StartedAt  time.Time  `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	Error      string     `json:"error,omitempty"`
	// Key is a signal's idempotency key.
	Key string `json:"key,omitempty"`
	// Payload is a kept signal's payload, merged into the data (and
	// dropped from the record) when a waiting step consumes it.
	Payload json.RawMessage `json:"payload,omitempty"`
	// Was is the name a step or compensation had when it began, before an
	// upgrade renamed it (Upgrade.Steps): its commands keep the
	// idempotency key of that name.
	Was string `json:"was,omitempty"`
	// Cause classifies why the saga got stuck at this step or
	// compensation (set when it did; see StuckCause).
	Cause StuckCause `json:"cause,omitempty"`
	// SLAMissed is set once the step stayed longer than its SLA.
	SLAMissed bool `json:"sla_missed,omitempty"`
}

// Instance is the persisted state of one saga. The store saves it whole
// after each decision; nothing about a saga lives in memory.
type Instance struct {
	ID         uuid.UUID
	Definition string
	// Version is the version of the definition that drives the saga: the
	// one it started with, or the one an Upgrade took it to.
	Version int
	Phase   Phase
	// State is the definition's label for where the saga stands
	// (Definition.StateOf), kept with the saga so it can be listed by it.
	State string
	// Step is the index of the running step, or of the step whose
	// compensation is running.
	Step int
	// Attempt counts the sends of the current command (1 after the first).
	Attempt int
	// Waiting is true while the current command is not in flight: it failed
	// transiently and waits for Deadline to be re-sent.
	Waiting bool
	// Deadline is when the timer looks at the saga next; zero for terminal
	// and stuck sagas.
	Deadline time.Time
	// StuckIn is the phase a stuck saga resumes on replay.
	StuckIn Phase
	// Reason says why the saga left its happy path (rejected, compensating,
	// cancelled).
	Reason string
	// StuckReason says why a stuck saga waits for an operator; cleared when
	// it resumes.
	StuckReason string
	Priority    Priority
	// Data is the saga's JSON object: its input, merged with the payloads of
	// successful replies.
	Data    json.RawMessage
	History []StepRecord
	// TraceParent is the W3C trace context of the request that created the
	// saga; every message of the saga carries it.
	TraceParent string
	// Seq numbers the saga's domain events, so that their ids are stable.
	Seq       int
	CreatedAt time.Time
	UpdatedAt time.Time
}

// record returns the last history entry with this name, or nil.
func (in *Instance) record(name string) *StepRecord {
	for i := len(in.History) - 1; i >= 0; i-- {
		if in.History[i].Name == name {
			return &in.History[i]
		}
	}
	return nil
}

// began reports whether the saga began the step of this name.
func (in *Instance) began(name string) bool {
	for i := range in.History {
		if in.History[i].Kind == KindAction && in.History[i].Name == name {
			return true
		}
	}
	return false
}

// signal returns the record of the signal with this key, or nil.
func (in *Instance) signal(key string) *StepRecord {
	for i := range in.History {
		if in.History[i].Kind == KindSignal && in.History[i].Key == key {
			return &in.History[i]
		}
	}
	return nil
}

// kept returns the kept signal of this name, or nil.
func (in *Instance) kept(name string) *StepRecord {
	for i := range in.History {
		if r := &in.History[i]; r.Kind == KindSignal && r.Name == name && r.Status == SignalKept {
			return r
		}
	}
	return nil
}

// clone copies the instance deeply enough for a decision to change it
// without touching the caller's copy.
func (in Instance) clone() Instance {
	in.History = append([]StepRecord(nil), in.History...)
	return in
}
