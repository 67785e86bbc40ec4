package coordinator

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sagaflow/sagaflow/saga"
)

func TestTimerResendsACommandWhoseDeadlinePassed(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	in := h.started(normal)[0]

	// Before the deadline (a minute): nothing is due.
	h.clock.Advance(59 * time.Second)
	if more := h.c.timerPass(h.ctx); more {
		t.Error("timerPass with nothing due reported more")
	}
	if got := h.staged(); len(got) != 0 {
		t.Errorf("staged %v before the deadline", types(got))
	}
	// After it: the command goes again, second attempt.
	h.clock.Advance(2 * time.Second)
	h.c.timerPass(h.ctx)
	if got := h.get(in.ID); got.Attempt != 2 || got.Phase != saga.Running {
		t.Errorf("after the deadline: attempt %d, %s; want attempt 2, running", got.Attempt, got.Phase)
	}
	if diff := cmp.Diff([]string{"hotel.book"}, types(h.staged())); diff != "" {
		t.Errorf("staged (-want +got):\n%s", diff)
	}
	if h.obs.count(saga.TransitionRetry) != 1 || h.obs.batch("timer") != 1 {
		t.Errorf("observer: %d retries, timer batches of %d; want 1 and 1", h.obs.count(saga.TransitionRetry), h.obs.batch("timer"))
	}
}

func TestTimerPassReportsMoreWhenItsBatchIsFull(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{TimerBatch: 2})
	sagas := h.started(normal, normal, normal)
	h.clock.Advance(2 * time.Minute)
	if more := h.c.timerPass(h.ctx); !more {
		t.Error("a full timer batch must report that more may be due")
	}
	if more := h.c.timerPass(h.ctx); more {
		t.Error("the last saga due: timerPass reported more")
	}
	for _, in := range sagas {
		if got := h.get(in.ID).Attempt; got != 2 {
			t.Errorf("saga %s at attempt %d, want 2", in.ID, got)
		}
	}
}

func TestTimerWaitsOutAStoreThatIsDown(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	in := h.started(normal)[0]
	h.clock.Advance(2 * time.Minute)
	h.store.setDown(true)
	if more := h.c.timerPass(h.ctx); more {
		t.Error("timerPass with the store down reported more")
	}
	h.store.setDown(false)
	h.c.timerPass(h.ctx)
	if got := h.get(in.ID).Attempt; got != 2 {
		t.Errorf("after the store came back: attempt %d, want 2", got)
	}
}

// TestTimerLoopRunsOnTheClock: the loop looks for due sagas each
// TimerInterval of the clock, and only then.
func TestTimerLoopRunsOnTheClock(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{TimerInterval: time.Second})
	in := h.started(normal)[0]
	waits := h.clock.Waits()
	runLoops(t, h, h.c.timerLoop)
	if err := h.clock.BlockUntil(h.ctx, waits+1); err != nil {
		t.Fatal(err)
	}
	waits = h.clock.Waits()
	h.clock.Advance(time.Minute + time.Second)
	// The pass stages the re-sent command, then the loop waits again.
	select {
	case msgs := <-h.c.relayq:
		if diff := cmp.Diff([]string{"hotel.book"}, types(msgs)); diff != "" {
			t.Errorf("staged (-want +got):\n%s", diff)
		}
	case <-h.ctx.Done():
		t.Fatal("the timer loop did not run when the clock passed its interval")
	}
	if err := h.clock.BlockUntil(h.ctx, waits+1); err != nil {
		t.Fatal(err)
	}
	if got := h.get(in.ID).Attempt; got != 2 {
		t.Errorf("attempt %d, want 2", got)
	}
}
