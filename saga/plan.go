package saga

import (
	"time"
)

// ReplayPlan is what a replay of a saga would do, worked out by the same
// decision a replay makes, without saving or sending anything: what an
// operator reads before replaying many sagas at once.
type ReplayPlan struct {
	// After is where the saga would stand after the replay.
	After string `json:"after"`
	// Commands are the commands it would send at once, each with its
	// idempotency key (the one the worker has seen, when it has).
	Commands []PlannedCommand `json:"commands"`
	// Compensations are the compensations that would run after the one
	// re-sent, in order (a compensating saga's; none otherwise).
	Compensations []string `json:"compensations"`
	// Forward is true for a saga past its pivot: it only goes forward
	// (nothing is compensated, and cancel is refused).
	Forward bool `json:"forward"`
	// Waits names the signal a waiting step would wait for again (no
	// command is sent).
	Waits string `json:"waits,omitempty"`
}

// PlannedCommand is a command a replay would send.
type PlannedCommand struct {
	Type string `json:"type"`
	Step string `json:"step"`
	// Key is the command's idempotency key (its message id).
	Key     string `json:"key"`
	Attempt int    `json:"attempt"`
}

// PlanReplay works out what Decide would do with a replay of in at now.
// It returns Decide's error for a saga a replay refuses (ErrConflict for
// one that ended).
func (d *Definition) PlanReplay(in Instance, now time.Time) (ReplayPlan, error) {
	dec, err := d.Decide(in, Input{Kind: InputReplay, SagaID: in.ID}, now)
	if err != nil {
		return ReplayPlan{}, err
	}
	k, after, err := d.resolve(dec.Instance)
	if err != nil {
		return ReplayPlan{}, err
	}
	p := ReplayPlan{After: after.State, Commands: []PlannedCommand{}, Compensations: []string{}}
	for _, c := range dec.Commands {
		p.Commands = append(p.Commands, PlannedCommand{Type: c.Type, Step: c.Step, Key: c.MessageID, Attempt: c.Attempt})
	}
	if after.Step < 0 || after.Step >= len(k.Steps) {
		return p, nil
	}
	step := &k.Steps[after.Step]
	switch after.Phase {
	case Compensating:
		for i := after.Step - 1; i >= 0; i-- {
			if s := &k.Steps[i]; s.Compensation != nil && after.began(s.Name) {
				p.Compensations = append(p.Compensations, s.Compensation.Name)
			}
		}
	case Running:
		p.Forward = step.Kind == Retriable
		p.Waits = step.Wait
	}
	return p, nil
}
