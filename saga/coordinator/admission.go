package coordinator

import (
	"context"
	"slices"
	"time"

	"github.com/sagaflow/sagaflow/saga"
)

// startAtOnce starts new sagas in the transaction that creates them while
// there is room and no backlog, high priority first: one write per saga
// instead of two. The others stay pending for the starter. It returns the
// start decisions, index-aligned (nil: left pending).
func (c *Coordinator) startAtOnce(ctx context.Context, batch []*creation) []*saga.Decision {
	starts := make([]*saga.Decision, len(batch))
	if c.backlog.Load() {
		return starts
	}
	active, err := c.activeSagas(ctx)
	if err != nil {
		return starts
	}
	room := c.cfg.MaxActive - active
	order := make([]int, len(batch))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		return int(batch[b].saga.Instance.Priority) - int(batch[a].saga.Instance.Priority)
	})
	now := c.cfg.Clock.Now()
	for _, i := range order {
		if room <= 0 {
			break
		}
		cr := batch[i]
		in := cr.saga.Instance
		d, err := c.defs[in.Definition].Decide(in, saga.Input{Kind: saga.InputStart, SagaID: in.ID}, now)
		if err != nil || !d.Changed {
			continue
		}
		cr.saga.Instance = d.Instance
		cr.saga.Messages = append(cr.saga.Messages, c.messages(d, now)...)
		starts[i] = &d
		room--
	}
	return starts
}

func (c *Coordinator) wakeStarter() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// activeSagas estimates the sagas in flight; it counts them in the store
// at most every second (other coordinators start and finish sagas too).
func (c *Coordinator) activeSagas(ctx context.Context) (int, error) {
	c.activeMu.Lock()
	fresh := c.cfg.Clock.Now().Sub(c.activeAt) < time.Second
	n := c.activeCounted + c.activeDelta
	c.activeMu.Unlock()
	if fresh {
		return n, nil
	}
	counted, err := c.store.CountActive(ctx, c.waiting)
	if err != nil {
		return 0, err
	}
	c.activeMu.Lock()
	defer c.activeMu.Unlock()
	c.activeCounted, c.activeDelta, c.activeAt = counted, 0, c.cfg.Clock.Now()
	return counted, nil
}

func (c *Coordinator) adjustActive(d int) {
	c.activeMu.Lock()
	c.activeDelta += d
	c.activeMu.Unlock()
}

// startLoop starts pending sagas while fewer than MaxActive are in flight,
// highest priority first. It is also how sagas accepted before a crash get
// started: they are pending in the store.
func (c *Coordinator) startLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
		case <-c.cfg.Clock.After(c.cfg.TimerInterval):
		}
		for ctx.Err() == nil && c.startPass(ctx) {
		}
	}
}

// startPass starts pending sagas while there is room, up to BatchSize in
// one transaction, and reports whether another pass may find more.
func (c *Coordinator) startPass(ctx context.Context) (more bool) {
	active, err := c.activeSagas(ctx)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Error().Err(err).Msg("admission: count active sagas failed")
		}
		return false
	}
	room := min(c.cfg.MaxActive-active, c.cfg.BatchSize)
	if room <= 0 {
		return false
	}
	began := c.cfg.Clock.Now()
	oldest := 0
	if c.cfg.OldestShare > 0 {
		oldest = max(1, int(float64(room)*c.cfg.OldestShare))
	}
	outs, msgs, err := c.store.ApplyPending(ctx, saga.Claim{Limit: room, Definitions: c.names, Versions: c.versions, Oldest: oldest}, c.transition)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Error().Err(err).Msg("admission: start pending sagas failed")
		}
		return false
	}
	if len(outs) > 0 {
		c.cfg.Observer.Batch("start", len(outs), c.since(began))
	}
	c.observe(outs)
	c.sendRelay(ctx, msgs)
	if len(outs) < room {
		c.backlog.Store(false) // every pending saga is started
		return false
	}
	return true
}
