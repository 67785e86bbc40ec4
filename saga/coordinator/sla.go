package coordinator

import (
	"context"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/saga"
)

// slaLoop looks, every SLAInterval, at the sagas in the states of steps
// with an SLA, and has each that stayed too long say so (saga.InputSLA:
// "<name>.sla_missed", once per stay). Without any SLA it only waits.
func (c *Coordinator) slaLoop(ctx context.Context) {
	cursors := map[saga.StateRef]uuid.UUID{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.cfg.Clock.After(c.cfg.SLAInterval):
		}
		c.slaPass(ctx, cursors)
	}
}

// slaPass reads up to SLABatch sagas of each state with an SLA, from where
// the last pass stopped (round and round), and applies InputSLA to them:
// the decision says whether one is late, and once.
func (c *Coordinator) slaPass(ctx context.Context, cursors map[saga.StateRef]uuid.UUID) {
	for _, def := range c.Definitions() {
		for _, state := range def.SLAStates() {
			ref := saga.StateRef{Definition: def.Name, State: state}
			ids, err := c.store.InState(ctx, def.Name, state, cursors[ref], c.cfg.SLABatch)
			if err != nil {
				if ctx.Err() == nil {
					c.log.Warn().Err(err).Str("state", state).Msg("sla: list sagas failed")
				}
				continue
			}
			if len(ids) < c.cfg.SLABatch {
				cursors[ref] = uuid.Nil // the next pass starts again from the oldest
			} else {
				cursors[ref] = ids[len(ids)-1]
			}
			if len(ids) == 0 {
				continue
			}
			inputs := make([]saga.Input, len(ids))
			for i, id := range ids {
				inputs[i] = saga.Input{Kind: saga.InputSLA, SagaID: id}
			}
			outs, msgs, err := c.store.Apply(ctx, inputs, c.transition)
			if err != nil {
				if ctx.Err() == nil {
					c.log.Warn().Err(err).Str("state", state).Msg("sla: apply failed")
				}
				continue
			}
			c.observe(outs)
			c.sendRelay(ctx, msgs)
		}
	}
}
