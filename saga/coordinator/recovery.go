package coordinator

import (
	"context"
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

// recoveryPass claims up to OutboxBatch outbox messages whose lease
// expired, publishes them and waits for their confirms; it reports whether
// more may be waiting. Consumers deduplicate what was published twice.
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
	return len(msgs) == c.cfg.OutboxBatch
}
