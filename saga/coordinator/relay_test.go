package coordinator

import (
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/saga"
)

// deletions takes every batch of outbox ids handed to the deleter so far.
func (h *harness) deletions() []uuid.UUID {
	var out []uuid.UUID
	for {
		select {
		case ids := <-h.c.deletes:
			out = append(out, ids...)
		default:
			return out
		}
	}
}

// expireLeases makes every outbox row claimable by the recovery scan, as
// if its writer had crashed long enough ago.
func (h *harness) expireLeases() {
	h.t.Helper()
	if _, err := h.pool.Exec(h.ctx, `UPDATE outbox SET leased_until = now() - interval '1 minute'`); err != nil {
		h.t.Fatal(err)
	}
}

// createdAndBooked lists, sorted, "<routing key> <saga id>" of each
// saga's created event and first command.
func createdAndBooked(ins ...saga.Instance) []string {
	var out []string
	for _, in := range ins {
		out = append(out, "hotel.book "+in.ID.String(), "trip.created "+in.ID.String())
	}
	slices.Sort(out)
	return out
}

func sorted(s []string) []string {
	slices.Sort(s)
	return s
}

func TestRelayPublishesThenDeletesWhatWasConfirmed(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	sagas := h.create(submission(normal), submission(high))
	msgs := h.staged()

	h.c.relaySend(h.ctx, msgs)()
	if diff := cmp.Diff(createdAndBooked(sagas...), sorted(h.published())); diff != "" {
		t.Errorf("published (-want +got):\n%s", diff)
	}
	ids := h.deletions()
	if len(ids) != 1 {
		t.Errorf("rows to delete %v, want the batch's one outbox row", ids)
	}
	h.c.deleteBatch(h.ctx, ids)
	if n := h.outboxRows(); n != 0 {
		t.Errorf("%d outbox rows left after their messages were confirmed", n)
	}
	if h.obs.confirmed != 4 || h.obs.failed != 0 || h.obs.batch("publish") != 4 {
		t.Errorf("observer: %d confirmed, %d failed, publish batches of %d; want 4, 0, 4", h.obs.confirmed, h.obs.failed, h.obs.batch("publish"))
	}
}

// TestRelayKeepsARowWithAnUnconfirmedMessage: a row goes only once all its
// messages are confirmed; the others of the batch go.
func TestRelayKeepsARowWithAnUnconfirmedMessage(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	// Two transactions, two rows.
	a := h.create(submission(normal))[0]
	b := h.create(submission(normal))[0]
	msgs := h.staged()
	h.pub.setRefuse(func(m saga.Message) bool {
		return m.Kind == saga.MessageCommand && m.CorrelationID == a.ID.String()+":book_hotel"
	})

	h.c.relaySend(h.ctx, msgs)()
	if diff := cmp.Diff(sorted([]string{"trip.created " + a.ID.String(), "hotel.book " + b.ID.String(), "trip.created " + b.ID.String()}), sorted(h.published())); diff != "" {
		t.Errorf("published (-want +got):\n%s", diff)
	}
	h.c.deleteBatch(h.ctx, h.deletions())
	if n := h.outboxRows(); n != 1 {
		t.Errorf("%d outbox rows left, want saga a's (its command was not confirmed)", n)
	}
	if h.obs.failed != 1 {
		t.Errorf("observer: %d failed, want 1", h.obs.failed)
	}
}

func TestDeleterLeavesRowsWhenTheStoreIsDown(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	h.create(submission(normal))
	h.c.relaySend(h.ctx, h.staged())()
	h.store.setDown(true)
	h.c.deleteBatch(h.ctx, h.deletions())
	h.store.setDown(false)
	if n := h.outboxRows(); n != 1 {
		t.Errorf("%d outbox rows, want the undeleted one (the recovery scan publishes it again; consumers deduplicate)", n)
	}
}

// TestRelayAndDeleterLoops: what the stages hand the relay is published
// and deleted by the loops, confirms waited for in the background.
func TestRelayAndDeleterLoops(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	runLoops(t, h, h.c.relayLoop, h.c.deleteLoop)
	sagas := h.create(submission(normal), submission(normal), submission(normal))
	waitFor(t, "the outbox to empty", func() bool { return h.outboxRows() == 0 })
	var got []string
	waitFor(t, "every message to arrive", func() bool {
		got = append(got, h.published()...)
		return len(got) >= 6
	})
	if diff := cmp.Diff(createdAndBooked(sagas...), sorted(got)); diff != "" {
		t.Errorf("published (-want +got):\n%s", diff)
	}
}

// TestOfferRelayNeverBlocks: intake and operator actions hand messages to
// a relay that may be saturated; what does not fit is left to the
// recovery scan instead of holding them up.
func TestOfferRelayNeverBlocks(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	for range cap(h.c.relayq) + 10 {
		h.c.offerRelay([]saga.Message{{Type: "x"}})
	}
	if got := len(h.c.relayq); got != cap(h.c.relayq) {
		t.Errorf("relay queue holds %d, want it full (%d)", got, cap(h.c.relayq))
	}
}

func TestRecoveryPublishesWhatTheRelayLeftBehind(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{OutboxBatch: 2})
	// Three rows whose relay never ran (a crash after the commit).
	a := h.create(submission(normal))[0]
	b := h.create(submission(normal))[0]
	c := h.create(submission(normal))[0]
	h.staged()

	// Their writer's lease holds them: nothing to claim yet.
	if more := h.c.recoveryPass(h.ctx); more {
		t.Error("recoveryPass with every row leased reported more")
	}
	h.expireLeases()
	if more := h.c.recoveryPass(h.ctx); !more {
		t.Error("a full recovery batch must report that more may wait")
	}
	h.c.deleteBatch(h.ctx, h.deletions())
	if more := h.c.recoveryPass(h.ctx); more {
		t.Error("the last row: recoveryPass reported more")
	}
	h.c.deleteBatch(h.ctx, h.deletions())
	if n := h.outboxRows(); n != 0 {
		t.Errorf("%d outbox rows left after recovery", n)
	}
	if diff := cmp.Diff(createdAndBooked(a, b, c), sorted(h.published())); diff != "" {
		t.Errorf("published (-want +got):\n%s", diff)
	}
}

// TestRecoveryKeepsWhatItCouldNotPublish: a broker that confirms nothing
// leaves the rows, leased again, for a later scan.
func TestRecoveryKeepsWhatItCouldNotPublish(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	h.create(submission(normal))
	h.staged()
	h.expireLeases()
	h.pub.setRefuse(func(saga.Message) bool { return true })
	h.c.recoveryPass(h.ctx)
	if ids := h.deletions(); len(ids) != 0 {
		t.Errorf("rows %v handed to the deleter with nothing confirmed", ids)
	}
	if more := h.c.recoveryPass(h.ctx); more {
		t.Error("a row just claimed again was claimed twice")
	}
	h.pub.setRefuse(nil)
	h.expireLeases()
	h.c.recoveryPass(h.ctx)
	h.c.deleteBatch(h.ctx, h.deletions())
	if n := h.outboxRows(); n != 0 {
		t.Errorf("%d outbox rows left once the broker confirmed", n)
	}
	h.store.setDown(true)
	if more := h.c.recoveryPass(h.ctx); more {
		t.Error("recoveryPass with the store down reported more")
	}
}

// TestRecoveryLoopRunsOnTheClock: the scan runs each OutboxInterval of the
// clock.
func TestRecoveryLoopRunsOnTheClock(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	waits := h.clock.Waits()
	runLoops(t, h, h.c.recoveryLoop, h.c.deleteLoop)
	h.create(submission(normal))
	h.staged()
	h.expireLeases()
	if err := h.clock.BlockUntil(h.ctx, waits+1); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(h.c.cfg.OutboxInterval)
	waitFor(t, "the recovery scan to publish and delete the row", func() bool { return h.outboxRows() == 0 })
}
