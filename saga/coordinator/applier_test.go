package coordinator

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	json "github.com/goccy/go-json"
	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/saga"
)

// started creates sagas and starts them at once (there is room).
func (h *harness) started(prios ...saga.Priority) []saga.Instance {
	h.t.Helper()
	subs := make([]Submission, len(prios))
	for i, p := range prios {
		subs[i] = submission(p)
	}
	out := h.create(subs...)
	for i := range out {
		out[i] = h.get(out[i].ID)
		if out[i].Phase != saga.Running {
			h.t.Fatalf("saga %d is %s, want running", i, out[i].Phase)
		}
	}
	h.staged()
	return out
}

func TestApplierAppliesRepliesAndStagesTheNextCommands(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	sagas := h.started(normal, high)
	poison, dead, err := h.applyReplies(h.reply(sagas[0], saga.ReplyOK, ""), h.reply(sagas[1], saga.ReplyOK, ""))
	if err != nil || len(dead) > 0 || poison[0] != nil || poison[1] != nil {
		t.Fatalf("applyReplies: poison %v, dead %v, err %v", poison, dead, err)
	}
	for _, in := range sagas {
		if got := h.get(in.ID); got.Step != 1 || got.State != "booking_flight" {
			t.Errorf("saga %s at step %d (%s), want book_flight", in.ID, got.Step, got.State)
		}
	}
	// In the order the replies came (each decision's commands, then its
	// events).
	if diff := cmp.Diff([]string{"flight.book", "hotel.booked", "flight.book", "hotel.booked"}, types(h.staged())); diff != "" {
		t.Errorf("staged (-want +got):\n%s", diff)
	}
	if h.obs.count(saga.TransitionAdvance) != 2 || h.obs.batch("inputs") != 2 {
		t.Errorf("observer: %d advances, %d inputs; want 2 and 2", h.obs.count(saga.TransitionAdvance), h.obs.batch("inputs"))
	}
}

// TestApplierSortsPoisonFromDeadFromApplied: a reply that cannot be read is
// poison at once (the consumer dead-letters it); one for a saga the store
// does not have, or has quarantined, is dead after the commit; the others
// are applied.
func TestApplierSortsPoisonFromDeadFromApplied(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	sagas := h.started(normal, normal)
	badStatus := saga.Envelope{ID: "r", SagaID: sagas[0].ID.String(), Type: "reply", Status: "maybe"}.Encode()
	badID := saga.Envelope{ID: "r", SagaID: "not-a-uuid", Type: "reply", Status: saga.ReplyOK}.Encode()
	stranger := sagas[0]
	stranger.ID = uuid.Must(uuid.NewV7())
	// Quarantine the second saga: its history no longer reads.
	if _, err := h.pool.Exec(h.ctx, `UPDATE sagas SET history = '"not a list"' WHERE id = $1`, sagas[1].ID); err != nil {
		t.Fatal(err)
	}

	poison, dead, err := h.applyReplies(
		[]byte("{not json"), badStatus, badID,
		h.reply(stranger, saga.ReplyOK, ""),
		h.reply(sagas[1], saga.ReplyOK, ""),
		h.reply(sagas[0], saga.ReplyOK, ""),
	)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range poison {
		if want := i < 3; (p != nil) != want {
			t.Errorf("reply %d: poison %v, want poison %v", i, p, want)
		}
	}
	if len(dead) != 2 || !errors.Is(dead[4], saga.ErrQuarantined) || dead[3] == nil {
		t.Errorf("dead %v, want reply 3 (no such saga) and reply 4 (quarantined)", dead)
	}
	if got := h.get(sagas[0].ID); got.Step != 1 {
		t.Errorf("the good reply was not applied: step %d", got.Step)
	}
}

func TestApplierReportsAStoreFailureToTheWait(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	in := h.started(normal)[0]
	h.store.setDown(true)
	if _, _, err := h.applyReplies(h.reply(in, saga.ReplyOK, "")); !errors.Is(err, errStoreDownByTheTest) {
		t.Errorf("wait = %v, want the store's error (the consumer retries the delivery)", err)
	}
	h.store.setDown(false)
	if got := h.get(in.ID); got.Step != 0 {
		t.Errorf("a failed batch moved the saga to step %d", got.Step)
	}
	if got := h.staged(); len(got) != 0 {
		t.Errorf("staged %v from a failed batch", types(got))
	}
	// All poison: nothing to wait for.
	poison, dead, err := h.applyReplies([]byte("x"))
	if poison[0] == nil || dead != nil || err != nil {
		t.Errorf("only poison: poison %v, dead %v, err %v", poison, dead, err)
	}
}

// TestApplierFailureCompensatesThenCancels walks a saga through a failed
// step and its compensation.
func TestApplierFailureCompensatesThenCancels(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	in := h.started(normal)[0]
	h.applyReplies(h.reply(in, saga.ReplyOK, ""))
	h.staged()
	in = h.get(in.ID)
	h.applyReplies(h.reply(in, saga.ReplyFailed, "no_seat"))
	in = h.get(in.ID)
	if in.Phase != saga.Compensating {
		t.Fatalf("after the flight failed: %s, want compensating", in.Phase)
	}
	if diff := cmp.Diff([]string{"hotel.cancel", "trip.compensating"}, types(h.staged())); diff != "" {
		t.Errorf("staged (-want +got):\n%s", diff)
	}
	active, _ := h.c.activeSagas(h.ctx)
	h.applyReplies(h.reply(in, saga.ReplyOK, ""))
	if got := h.get(in.ID); got.Phase != saga.Cancelled {
		t.Errorf("after the hotel was cancelled: %s, want cancelled", got.Phase)
	}
	if after, _ := h.c.activeSagas(h.ctx); after != active-1 {
		t.Errorf("active estimate %d after the saga ended, want %d", after, active-1)
	}
	select {
	case <-h.c.wake:
	default:
		t.Error("a saga that ended did not wake the starter (room for a pending one)")
	}
}

func TestOperatorActions(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	sagas := h.started(normal, normal)

	// Cancel before the pivot compensates, starting with the step in
	// flight (its command may have been carried out).
	h.applyReplies(h.reply(sagas[0], saga.ReplyOK, ""))
	h.staged()
	got, err := h.c.Cancel(h.ctx, sagas[0].ID, Action{Operator: "ada", Reason: "the traveller changed their mind"})
	if err != nil || got.Phase != saga.Compensating || got.Reason != "cancelled by operator: the traveller changed their mind" {
		t.Errorf("Cancel = %s (%s), %v; want compensating", got.Phase, got.Reason, err)
	}
	// The operator's event goes through the outbox with the cancel.
	if diff := cmp.Diff([]string{"flight.cancel", saga.EventCancelled, "trip.compensating"}, types(h.staged())); diff != "" {
		t.Errorf("staged by Cancel (-want +got):\n%s", diff)
	}
	if _, err := h.c.Cancel(h.ctx, sagas[0].ID, Action{Operator: "ada", Reason: "again"}); !errors.Is(err, saga.ErrConflict) {
		t.Errorf("Cancel of a compensating saga: %v, want ErrConflict", err)
	}

	// Replay re-sends the command in flight with a fresh budget.
	ops := Action{Operator: "bo", Reason: "the hotel desk is back"}
	got, err = h.c.Replay(h.ctx, sagas[1].ID, ops)
	if err != nil || got.Phase != saga.Running {
		t.Errorf("Replay = %s, %v", got.Phase, err)
	}
	if diff := cmp.Diff([]string{"hotel.book", saga.EventReplayed}, types(h.staged())); diff != "" {
		t.Errorf("staged by Replay (-want +got):\n%s", diff)
	}
	if _, err := h.c.Replay(h.ctx, uuid.Must(uuid.NewV7()), ops); !errors.Is(err, saga.ErrNotFound) {
		t.Errorf("Replay of an unknown saga: %v, want ErrNotFound", err)
	}
	h.store.setDown(true)
	if _, err := h.c.Replay(h.ctx, sagas[1].ID, ops); !errors.Is(err, errStoreDownByTheTest) {
		t.Errorf("Replay with the store down: %v", err)
	}
}

func TestTransitionOfAnUnknownDefinition(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	if _, _, err := h.c.transition(saga.Instance{Definition: "cruise"}, saga.Input{Kind: saga.InputTimeout}); !errors.Is(err, ErrUnknownDefinition) {
		t.Errorf("transition = %v, want ErrUnknownDefinition", err)
	}
	if h.c.Definition("trip") != h.def || h.c.Definition("cruise") != nil {
		t.Error("Definition does not return the registered definitions only")
	}
}

// TestSignals: a signal that comes early is kept in the store and taken
// when the saga reaches its waiting step; the same signal again changes
// nothing; one for a saga that does not wait is refused; a wait that runs
// out on the clock leaves the saga stuck with its overdue event.
func TestSignals(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	def := h.c.Definition("parcel")
	subs := []Submission{
		{Definition: "parcel", ID: uuid.Must(uuid.NewV7()), Data: json.RawMessage(`{"parcel":"p-1"}`)},
		{Definition: "parcel", ID: uuid.Must(uuid.NewV7()), Data: json.RawMessage(`{"parcel":"p-2"}`)},
	}
	created := h.create(subs...)
	h.staged()
	h.c.startPass(h.ctx)
	h.staged()
	early, late := created[0], created[1]

	// Early: kept while the saga ships.
	got, err := h.c.Signal(h.ctx, early.ID, saga.Signal{Name: "parcel.delivered", Key: "d-1", Payload: json.RawMessage(`{"delivered_at":"noon"}`)})
	if err != nil || got.State != "shipping" {
		t.Fatalf("Signal while shipping = %s, %v; want it kept, the saga still shipping", got.State, err)
	}
	if n := len(h.staged()); n != 0 {
		t.Errorf("keeping a signal staged %d messages", n)
	}
	if _, err := h.c.Signal(h.ctx, early.ID, saga.Signal{Name: "parcel.delivered", Key: "d-1"}); err != nil {
		t.Errorf("the same signal again: %v, want nothing", err)
	}

	// The shipment succeeds: the waiting step takes the kept signal at once.
	in := h.get(early.ID)
	body := h.reply(in, saga.ReplyOK, "")
	if _, _, err := h.applyReplies(body); err != nil {
		t.Fatal(err)
	}
	in = h.get(early.ID)
	if in.Phase != saga.Completed || !strings.Contains(string(in.Data), `"delivered_at":"noon"`) {
		t.Fatalf("after the shipment: %s, data %s; want completed with the signal's payload", in.Phase, in.Data)
	}
	if diff := cmp.Diff([]string{"parcel.completed"}, types(h.staged())); diff != "" {
		t.Errorf("staged (-want +got):\n%s", diff)
	}
	if _, err := h.c.Signal(h.ctx, early.ID, saga.Signal{Name: "parcel.delivered", Key: "d-9"}); !errors.Is(err, saga.ErrNotWaiting) {
		t.Errorf("a new signal for a completed saga: %v, want ErrNotWaiting", err)
	}
	if _, err := h.c.Signal(h.ctx, uuid.Must(uuid.NewV7()), saga.Signal{Name: "parcel.delivered", Key: "d-1"}); !errors.Is(err, saga.ErrNotFound) {
		t.Errorf("a signal for an unknown saga: %v, want ErrNotFound", err)
	}

	// Late: the saga waits an hour on the clock, then is stuck.
	in = h.get(late.ID)
	body = h.reply(in, saga.ReplyOK, "")
	if _, _, err := h.applyReplies(body); err != nil {
		t.Fatal(err)
	}
	in = h.get(late.ID)
	if in.State != "awaiting_delivery" || !in.Deadline.Equal(h.clock.Now().Add(time.Hour).Truncate(time.Microsecond)) {
		t.Fatalf("state %s, deadline %v; want awaiting_delivery for an hour", in.State, in.Deadline)
	}
	h.clock.Advance(time.Hour + time.Second)
	h.c.timerPass(h.ctx)
	in = h.get(late.ID)
	if in.Phase != saga.Stuck || in.StuckReason != "not delivered" {
		t.Fatalf("after the hour: %s %q; want stuck, not delivered", in.Phase, in.StuckReason)
	}
	if diff := cmp.Diff([]string{"parcel.overdue", "parcel.stuck"}, types(h.staged())); diff != "" {
		t.Errorf("staged by the timer (-want +got):\n%s", diff)
	}
	if def.StateOf(&in) != "stuck" {
		t.Errorf("state %s", def.StateOf(&in))
	}

	// From the bus, in one batch: the late signal completes the stuck
	// saga; one for a saga that ended, one for no saga and one that does
	// not decode are dead, each with why; the same signal twice in the
	// batch has one effect.
	signal := func(id uuid.UUID, key string) []byte {
		return saga.Envelope{ID: key, SagaID: id.String(), Type: "parcel.delivered", At: h.clock.Now(), Payload: json.RawMessage(`{"late":true}`)}.Encode()
	}
	poison, dead, err := h.applySignals(
		signal(late.ID, "d-2"), signal(late.ID, "d-2"), signal(early.ID, "d-3"), signal(uuid.Must(uuid.NewV7()), "d-4"), []byte("{"),
	)
	if err != nil {
		t.Fatalf("applySignals: %v", err)
	}
	if poison[4] == nil || poison[0] != nil {
		t.Errorf("poison %v: want only the body that does not decode", poison)
	}
	if len(dead) != 2 || !strings.Contains(fmt.Sprint(dead[2]), "not waiting") || !strings.Contains(fmt.Sprint(dead[3]), "does not have") {
		t.Errorf("dead %v: want the ended saga's (not waiting) and the unknown saga's", dead)
	}
	in = h.get(late.ID)
	if in.Phase != saga.Completed || !strings.Contains(string(in.Data), `"late":true`) {
		t.Errorf("the stuck saga after its late signal: %s, %s; want completed", in.Phase, in.Data)
	}
	if diff := cmp.Diff([]string{"parcel.completed"}, types(h.staged())); diff != "" {
		t.Errorf("staged by the signals (-want +got):\n%s", diff)
	}
}
