package coordinator

import (
	"context"

	"github.com/sagaflow/sagaflow/saga"
)

// timerLoop applies timeouts to due sagas every TimerInterval: deadlines
// of commands, backoffs of retries, and pending sagas nobody started.
func (c *Coordinator) timerLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.cfg.Clock.After(c.cfg.TimerInterval):
		}
		for ctx.Err() == nil && c.timerPass(ctx) {
		}
	}
}

// timerPass applies the timeouts of up to TimerBatch due sagas in one
// transaction and reports whether more may be due.
func (c *Coordinator) timerPass(ctx context.Context) (more bool) {
	began := c.cfg.Clock.Now()
	outs, msgs, err := c.store.ApplyDue(ctx, saga.Claim{Now: began, Limit: c.cfg.TimerBatch, Definitions: c.names, Versions: c.versions}, c.transition)
	if len(outs) > 0 {
		c.cfg.Observer.Batch("timer", len(outs), c.since(began))
	}
	if err != nil {
		if ctx.Err() == nil {
			c.log.Error().Err(err).Msg("timer: apply due sagas failed")
		}
		return false
	}
	c.observe(outs)
	c.sendRelay(ctx, msgs)
	return len(outs) == c.cfg.TimerBatch
}
