package coordinator

import (
	"context"

	"github.com/google/uuid"
)

// recoveryLoop publishes, every OutboxInterval, what the relay left
// behind: messages of a crashed process, of publishes that failed while the
// broker was away, or that the relay had no room for.
func (c *Coordinator) recoveryLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.cfg.Clock.After(c.cfg.OutboxInterval):
		}
		for ctx.Err() == nil && c.recoveryPass(ctx) {
		}
	}
}

// recoveryPass claims up to OutboxBatch outbox rows whose lease expired,
// publishes their messages and waits for their confirms; it reports
// whether more may be waiting (it claimed a full batch of rows). Consumers
// deduplicate what was published twice.
func (c *Coordinator) recoveryPass(ctx context.Context) (more bool) {
	msgs, err := c.store.ClaimOutbox(ctx, c.cfg.OutboxBatch)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Error().Err(err).Msg("recovery: claim outbox failed")
		}
		return false
	}
	if len(msgs) == 0 {
		return false
	}
	c.log.Debug().Int("messages", len(msgs)).Msg("recovery: republishing")
	c.publish(ctx, msgs)
	rows := map[uuid.UUID]bool{}
	for _, m := range msgs {
		rows[m.OutboxID] = true
	}
	return len(rows) == c.cfg.OutboxBatch
}
