package sagatest

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Clock is a simulated saga.Clock: time moves only when Advance is called,
// so tests of deadlines and backoff never sleep.
type Clock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
	waits   int           // After calls so far
	changed chan struct{} // closed (and replaced) when a wait begins
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

// NewClock returns a clock standing at start.
func NewClock(start time.Time) *Clock {
	return &Clock{now: start.UTC(), changed: make(chan struct{})}
}

// Now returns the simulated time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After fires once the clock has been advanced by d.
func (c *Clock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, waiter{at: c.now.Add(d), ch: ch})
	c.waits++
	close(c.changed)
	c.changed = make(chan struct{})
	return ch
}

// Waits counts the calls of After so far.
func (c *Clock) Waits() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.waits
}

// BlockUntil returns once After has been called n times in all, or with
// ctx's error. A test reads Waits, pokes a loop (a message, a wake-up),
// and BlockUntil(ctx, waits+1) returns once the loop has gone back to
// waiting on the clock: an Advance then reaches it.
func (c *Clock) BlockUntil(ctx context.Context, n int) error {
	for {
		c.mu.Lock()
		waits, changed := c.waits, c.changed
		c.mu.Unlock()
		if waits >= n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("sagatest: %d waits on the clock, want %d: %w", waits, n, ctx.Err())
		}
	}
}

// Advance moves the clock forward and fires the waits that fall due.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.at.After(c.now) {
			kept = append(kept, w)
			continue
		}
		w.ch <- c.now
	}
	c.waiters = kept
}
