package coordinator

import (
	"testing"
	"time"

	json "github.com/goccy/go-json"
	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow/saga"
)

// pending creates sagas that stay pending (as behind a backlog), oldest
// first, and returns them.
func (h *harness) pending(prios ...saga.Priority) []saga.Instance {
	h.t.Helper()
	h.c.backlog.Store(true)
	out := make([]saga.Instance, len(prios))
	for i, p := range prios {
		// One at a time, so that their ids (UUIDv7) order them by age.
		out[i] = h.create(submission(p))[0]
	}
	h.staged()
	return out
}

// phases reads the phases of sagas.
func (h *harness) phases(ins []saga.Instance) []saga.Phase {
	h.t.Helper()
	out := make([]saga.Phase, len(ins))
	for i, in := range ins {
		out[i] = h.get(in.ID).Phase
	}
	return out
}

func TestAdmissionStartsHighFirstWithAShareForTheOldest(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{MaxActive: 4, OldestShare: 0.25})
	sagas := h.pending(normal, normal, normal, high, high, high, high, high)

	if more := h.c.startPass(h.ctx); !more {
		t.Error("startPass filled the room: it must report that more may wait")
	}
	// Room for 4: a quarter to the oldest (the first normal one), the rest
	// to the highest priority, oldest first.
	R, P := saga.Running, saga.Pending
	if diff := cmp.Diff([]saga.Phase{R, P, P, R, R, R, P, P}, h.phases(sagas)); diff != "" {
		t.Errorf("phases (-want +got):\n%s", diff)
	}
	if got := types(h.staged()); len(got) != 4 {
		t.Errorf("staged %v, want the first command of each started saga", got)
	}
	if h.obs.batch("start") != 4 {
		t.Errorf("start batches observed: %d sagas, want 4", h.obs.batch("start"))
	}
	// No room left: nothing more starts.
	if more := h.c.startPass(h.ctx); more {
		t.Error("startPass with no room reported more")
	}
	if diff := cmp.Diff([]saga.Phase{R, P, P, R, R, R, P, P}, h.phases(sagas)); diff != "" {
		t.Errorf("phases after a pass without room (-want +got):\n%s", diff)
	}
}

func TestAdmissionStrictPriority(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{MaxActive: 2, OldestShare: -1})
	sagas := h.pending(normal, high, high)
	h.c.startPass(h.ctx)
	if diff := cmp.Diff([]saga.Phase{saga.Pending, saga.Running, saga.Running}, h.phases(sagas)); diff != "" {
		t.Errorf("phases (-want +got):\n%s", diff)
	}
}

func TestAdmissionClearsTheBacklogOnceEverySagaStarted(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{MaxActive: 10})
	sagas := h.pending(normal, high, normal)
	if more := h.c.startPass(h.ctx); more {
		t.Error("startPass started every pending saga but reported more")
	}
	if h.c.backlog.Load() {
		t.Error("the backlog is still set with nothing pending: new sagas would wait for nothing")
	}
	if diff := cmp.Diff([]saga.Phase{saga.Running, saga.Running, saga.Running}, h.phases(sagas)); diff != "" {
		t.Errorf("phases (-want +got):\n%s", diff)
	}
	// Now new sagas start in the transaction that creates them.
	in := h.create(submission(normal))[0]
	if got := h.get(in.ID).Phase; got != saga.Running {
		t.Errorf("a new saga after the backlog cleared is %s, want running at once", got)
	}
}

// TestAdmissionCountsInTheStoreEverySecond: the estimate of active sagas
// follows this coordinator's own starts and ends, and is counted again in
// the store (where other coordinators' sagas are) once a second of the
// clock has passed.
func TestAdmissionCountsInTheStoreEverySecond(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{MaxActive: 100})
	if n, err := h.c.activeSagas(h.ctx); err != nil || n != 0 {
		t.Fatalf("activeSagas = %d, %v; want 0", n, err)
	}
	// Another coordinator on the same store starts two sagas.
	other, err := New(Config{Clock: h.clock}, h.store, h.pub, zerolog.Nop(), h.def)
	if err != nil {
		t.Fatal(err)
	}
	batch := []*creation{h.creation(submission(normal)), h.creation(submission(normal))}
	other.createBatch(h.ctx, batch)
	for _, cr := range batch {
		if res := <-cr.done; res.Err != nil {
			t.Fatal(res.Err)
		}
	}
	// This one starts one itself.
	h.create(submission(normal))
	if n, _ := h.c.activeSagas(h.ctx); n != 1 {
		t.Errorf("within the second: estimate %d, want 1 (its own start only)", n)
	}
	h.clock.Advance(time.Second)
	if n, _ := h.c.activeSagas(h.ctx); n != 3 {
		t.Errorf("a second later: estimate %d, want 3 counted in the store", n)
	}
}

// TestAdmissionDoesNotCountWaitingSagas: a saga at a waiting step sends
// nothing, for as long as it waits; it must not hold the room of sagas
// that would.
func TestAdmissionDoesNotCountWaitingSagas(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{MaxActive: 1})
	parcelOf := func() Submission {
		return Submission{Definition: "parcel", ID: uuid.Must(uuid.NewV7()), Data: json.RawMessage(`{}`)}
	}
	first := h.create(parcelOf())[0]
	h.c.backlog.Store(true)
	second := h.create(parcelOf())[0]
	h.staged()
	if got := h.phases([]saga.Instance{first, second}); got[0] != saga.Running || got[1] != saga.Pending {
		t.Fatalf("phases %v, want the first running and the second pending (room for one)", got)
	}
	in := h.get(first.ID)
	body := h.reply(in, saga.ReplyOK, "")
	if _, _, err := h.applyReplies(body); err != nil {
		t.Fatal(err)
	}
	if got := h.get(first.ID).State; got != "awaiting_delivery" {
		t.Fatalf("the first is %s, want awaiting_delivery", got)
	}
	h.clock.Advance(time.Second) // the next count is in the store
	h.c.startPass(h.ctx)
	if got := h.get(second.ID).Phase; got != saga.Running {
		t.Errorf("the second is %s while the first only waits: want running", got)
	}
}

func TestAdmissionWaitsOutAStoreThatIsDown(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{MaxActive: 10})
	sagas := h.pending(normal)
	h.clock.Advance(time.Second) // the next pass counts in the store
	h.store.setDown(true)
	if more := h.c.startPass(h.ctx); more {
		t.Error("startPass with the store down reported more")
	}
	h.store.setDown(false)
	h.c.startPass(h.ctx)
	if got := h.phases(sagas)[0]; got != saga.Running {
		t.Errorf("after the store came back: %s, want running", got)
	}
}

// TestAdmissionLoopWakesOnNewPendingSagasAndOnTheClock: the starter waits
// on its wake channel and on the clock; a pending saga this process
// created wakes it at once, one another process left is found on the next
// interval.
func TestAdmissionLoopWakesOnNewPendingSagasAndOnTheClock(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{MaxActive: 10})
	waits := h.clock.Waits()
	runLoops(t, h, h.c.startLoop)
	if err := h.clock.BlockUntil(h.ctx, waits+1); err != nil {
		t.Fatal(err)
	}
	waits = h.clock.Waits()
	in := h.pending(high)[0] // wakes the starter
	waitFor(t, "the pending saga to start", func() bool { return h.get(in.ID).Phase == saga.Running })
	if err := h.clock.BlockUntil(h.ctx, waits+1); err != nil {
		t.Fatal(err)
	}

	lost, _ := h.def.New(uuid.Must(uuid.NewV7()), []byte(`{}`), normal, h.clock.Now())
	if _, err := h.store.CreateBatch(h.ctx, []saga.NewSaga{{Instance: lost}}); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(h.c.cfg.TimerInterval)
	waitFor(t, "the lost pending saga to start", func() bool { return h.get(lost.ID).Phase == saga.Running })
}
