// Package collect holds the one way every batching loop of the engine takes
// its batch: the coordinator's (new sagas, replies, the relay, deletes)
// and the bus's batch consumers (deliveries).
package collect

import (
	"context"
	"time"
)

// Batch takes the next item from ch (or carry, the next of the previous
// call), then whatever else arrives within wait while the items' total
// size (size of each; nil counts 1 each) stays within limit: a batch of
// what is waiting, taken without waiting long. Items are never split: the
// one that would pass limit comes back as next, to open the following
// batch, and one larger than limit makes a batch of its own. It returns
// nil once ctx is done and nothing is carried, and closed once ch is
// closed (with the items that came before, if any).
func Batch[T any](ctx context.Context, ch <-chan T, carry []T, limit int, linger *time.Timer, wait time.Duration, size func(T) int) (items, next []T, closed bool) {
	if size == nil {
		size = func(T) int { return 1 }
	}
	if len(carry) == 0 {
		select {
		case it, ok := <-ch:
			if !ok {
				return nil, nil, true
			}
			carry = []T{it}
		case <-ctx.Done():
			return nil, nil, false
		}
	}
	items = carry
	n := size(items[0])
	linger.Reset(wait)
	for n < limit {
		select {
		case it, ok := <-ch:
			if !ok {
				linger.Stop()
				return items, nil, true
			}
			if n+size(it) > limit {
				linger.Stop()
				return items, []T{it}, false
			}
			items = append(items, it)
			n += size(it)
		case <-linger.C:
			return items, nil, false
		}
	}
	linger.Stop()
	return items, nil, false
}
