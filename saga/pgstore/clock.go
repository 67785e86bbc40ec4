package pgstore

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Clock is PostgreSQL's clock as seen from this host: the host's time plus
// the offset to the server's now(), measured by Sync. Deadlines are
// written by every orchestrator and compared by whichever one's timer
// claims them: with each host's own clock, a host running ahead would time
// sagas out before their deadline and one running behind after it. With
// this clock they all agree with the one database. It implements
// saga.Clock.
type Clock struct {
	pool  *pgxpool.Pool
	local func() time.Time

	mu     sync.Mutex
	offset time.Duration
}

// NewClock returns a clock on pool; until the first Sync it is the host's.
func NewClock(pool *pgxpool.Pool) *Clock {
	return &Clock{pool: pool, local: time.Now}
}

// Now returns the database's current time, in UTC.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.local().Add(c.offset).UTC()
}

// After waits d (durations are the same on every clock).
func (c *Clock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Offset is the database's clock minus the host's, as last measured.
func (c *Clock) Offset() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.offset
}

// Sync measures the offset: the server's clock_timestamp() against the
// midpoint of the round trip that read it.
func (c *Clock) Sync(ctx context.Context) error {
	before := c.local()
	var db time.Time
	if err := c.pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&db); err != nil {
		return fmt.Errorf("pgstore: read the database clock: %w", err)
	}
	after := c.local()
	mid := before.Add(after.Sub(before) / 2)
	c.mu.Lock()
	c.offset = db.Sub(mid)
	c.mu.Unlock()
	return nil
}

// Run syncs every interval until ctx is done (a host's clock drifts, and
// NTP steps it); a failed sync keeps the last offset and reports the error
// to onError, if set.
func (c *Clock) Run(ctx context.Context, every time.Duration, onError func(error)) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := c.Sync(ctx); err != nil && onError != nil && ctx.Err() == nil {
				onError(err)
			}
		}
	}
}
