package coordinator

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/internal/collect"
)

// offerRelay hands staged messages to the relay without blocking; if the
// relay is saturated the recovery scan publishes them after their lease.
func (c *Coordinator) offerRelay(msgs []saga.Message) {
	if len(msgs) == 0 {
		return
	}
	select {
	case c.relayq <- msgs:
	default:
	}
}

// sendRelay hands messages to the relay, waiting for room: a slow broker
// slows the batch loop down instead of growing memory.
func (c *Coordinator) sendRelay(ctx context.Context, msgs []saga.Message) {
	if len(msgs) == 0 {
		return
	}
	select {
	case c.relayq <- msgs:
	case <-ctx.Done():
	}
}

// relayLoop publishes staged messages right after their commit, as many
// as are waiting in one batch, and waits for each batch's confirms in a
// goroutine of its own (RelayInFlight at most), which hands the confirmed
// rows to the deleter. Failures are left to the recovery scan.
func (c *Coordinator) relayLoop(ctx context.Context) {
	var inflight sync.WaitGroup
	defer inflight.Wait()
	sem := make(chan struct{}, c.cfg.RelayInFlight)
	linger := time.NewTimer(c.cfg.Linger)
	defer linger.Stop()
	var parts, next [][]saga.Message
	for {
		parts, next, _ = collect.Batch(ctx, c.relayq, next, c.cfg.OutboxBatch, linger, c.cfg.Linger, func(m []saga.Message) int { return len(m) })
		if parts == nil {
			return
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		confirm := c.relaySend(ctx, slices.Concat(parts...))
		inflight.Add(1)
		go func() {
			defer inflight.Done()
			defer func() { <-sem }()
			confirm()
		}()
	}
}

// relaySend publishes a batch in commit order (so that a high-priority
// saga's messages keep their lead), without waiting long for a broker that
// is away (the recovery scan publishes what this could not), and returns
// the wait for its confirms.
func (c *Coordinator) relaySend(ctx context.Context, msgs []saga.Message) (confirm func()) {
	began := c.cfg.Clock.Now()
	sctx, scancel := context.WithTimeout(ctx, time.Second)
	confirms := c.pub.Send(sctx, msgs)
	scancel()
	return func() {
		pctx, cancel := context.WithTimeout(ctx, c.cfg.PublishTimeout)
		defer cancel()
		c.confirmed(ctx, pctx, msgs, confirms, began)
	}
}

// publish sends messages and waits for their confirms (the recovery scan).
func (c *Coordinator) publish(ctx context.Context, msgs []saga.Message) {
	pctx, cancel := context.WithTimeout(ctx, c.cfg.PublishTimeout)
	defer cancel()
	c.confirmed(ctx, pctx, msgs, c.pub.Send(pctx, msgs), c.cfg.Clock.Now())
}

// confirmed waits (within wait) for the confirms of published messages and
// hands the outbox rows whose messages were all confirmed to the deleter.
func (c *Coordinator) confirmed(ctx, wait context.Context, msgs []saga.Message, confirms saga.Confirms, began time.Time) {
	ok, err := confirms(wait)
	c.cfg.Observer.Batch("publish", len(msgs), c.since(began))
	c.cfg.Observer.Published(len(ok), len(msgs)-len(ok))
	if err != nil && ctx.Err() == nil {
		c.log.Warn().Err(err).Int("confirmed", len(ok)).Int("failed", len(msgs)-len(ok)).
			Msg("publish failed; the recovery scan retries")
	}
	if len(ok) == 0 {
		return
	}
	// A row goes once every message it holds is confirmed; a row with a
	// failure stays for the recovery scan (its confirmed messages are
	// published again, and consumers deduplicate them).
	left := map[uuid.UUID]int{} // messages of each row not yet confirmed
	for _, m := range msgs {
		left[m.OutboxID]++
	}
	for _, m := range ok {
		left[m.OutboxID]--
	}
	ids := make([]uuid.UUID, 0, len(left))
	for id, n := range left {
		if id != uuid.Nil && n == 0 {
			ids = append(ids, id)
		}
	}
	select {
	case c.deletes <- ids:
	default:
		// The deleter is behind: the rows' leases expire and the recovery scan
		// publishes them again; consumers deduplicate.
	}
}

// deleteLoop deletes published outbox rows in batches, every 10 Linger
// at most: a lost delete only means a message published twice.
func (c *Coordinator) deleteLoop(ctx context.Context) {
	linger := time.NewTimer(c.cfg.Linger)
	defer linger.Stop()
	var parts, next [][]uuid.UUID
	for {
		parts, next, _ = collect.Batch(ctx, c.deletes, next, 4*c.cfg.OutboxBatch, linger, 10*c.cfg.Linger, func(ids []uuid.UUID) int { return len(ids) })
		if parts == nil {
			return
		}
		c.deleteBatch(ctx, slices.Concat(parts...))
	}
}

// deleteBatch deletes published outbox rows, even while stopping.
func (c *Coordinator) deleteBatch(ctx context.Context, ids []uuid.UUID) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := c.store.DeleteOutbox(dctx, ids); err != nil {
		// Published but still in the outbox: published again after their
		// lease, and consumers deduplicate by message id.
		c.log.Warn().Err(err).Int("rows", len(ids)).Msg("delete published outbox rows failed")
	}
}
