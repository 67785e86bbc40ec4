package coordinator

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sagaflow/sagaflow/saga"
)

// TestRunDrivesTripsToTheirEnd runs every stage together: trips submitted,
// their commands published, replies applied as a worker would send them,
// until one completes and one is cancelled; then Run stops with nothing
// left behind (goleak checks the goroutines).
func TestRunDrivesTripsToTheirEnd(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	ctx, cancel := context.WithCancel(h.ctx)
	var run sync.WaitGroup
	run.Add(1)
	go func() { defer run.Done(); _ = h.c.Run(ctx) }()
	defer func() { cancel(); run.Wait() }()

	ok, _, err := h.c.Submit(h.ctx, submission(normal))
	if err != nil {
		t.Fatal(err)
	}
	bad, _, err := h.c.Submit(h.ctx, submission(high))
	if err != nil {
		t.Fatal(err)
	}
	// The worker's side: answer each command as it is published.
	var seen []string
	answer := func(id string, status saga.ReplyStatus) {
		t.Helper()
		waitFor(t, "a command of "+id, func() bool {
			for _, p := range h.published() {
				seen = append(seen, p)
			}
			for i, p := range seen {
				key, sagaID, _ := strings.Cut(p, " ")
				if sagaID == id && slices.Contains(commandTypes, key) {
					seen = append(seen[:i], seen[i+1:]...)
					return true
				}
			}
			return false
		})
		in := h.get(ok.ID)
		if id == bad.ID.String() {
			in = h.get(bad.ID)
		}
		_, wait := h.c.HandleReplies(h.ctx, [][]byte{h.reply(in, status, "no")})
		if _, err := wait(h.ctx); err != nil {
			t.Fatal(err)
		}
	}
	answer(ok.ID.String(), saga.ReplyOK)      // hotel
	answer(bad.ID.String(), saga.ReplyOK)     // hotel
	answer(ok.ID.String(), saga.ReplyOK)      // flight
	answer(bad.ID.String(), saga.ReplyFailed) // flight: compensate
	answer(ok.ID.String(), saga.ReplyOK)      // confirm
	answer(bad.ID.String(), saga.ReplyOK)     // cancel hotel (the flight failed: nothing to cancel)

	if got := h.get(ok.ID).Phase; got != saga.Completed {
		t.Errorf("the good trip is %s, want completed", got)
	}
	if got := h.get(bad.ID).Phase; got != saga.Cancelled {
		t.Errorf("the trip whose flight failed is %s, want cancelled", got)
	}
	waitFor(t, "the outbox to empty", func() bool { return h.outboxRows() == 0 })

	cancel()
	done := make(chan struct{})
	go func() { run.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}
