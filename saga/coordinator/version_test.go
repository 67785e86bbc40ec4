package coordinator

import (
	"slices"
	"strings"
	"testing"
	"time"

	json "github.com/goccy/go-json"
	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow/saga"
)

// tripV2 is the trip's version 2: book_flight renamed reserve_flight,
// and send_itinerary added after the pivot. It upgrades version 1.
func tripV2(t testing.TB) *saga.Definition {
	t.Helper()
	d := trip(t)
	d.Version = 2
	d.Steps = slices.Clone(d.Steps)
	d.Steps[1].Name, d.Steps[1].State = "reserve_flight", "reserving_flight"
	d.Steps = append(d.Steps, saga.Step{Name: "send_itinerary", State: "sending_itinerary", Command: "trip.confirm", Kind: saga.Retriable})
	d.Upgrades = []saga.Upgrade{{From: 1, Steps: map[string]string{"book_flight": "reserve_flight"}}}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	return d
}

// replyTo is a worker's answer to the command with this key.
func (h *harness) replyTo(in saga.Instance, key string, status saga.ReplyStatus) []byte {
	return saga.Envelope{
		ID: uuid.NewString(), CorrelationID: in.ID.String() + ":" + key, SagaID: in.ID.String(), Type: "reply",
		At: h.clock.Now(), Status: status, Code: "no",
	}.Encode()
}

// answer applies a reply to the command with this key and returns the
// saga after it.
func (h *harness) answer(id uuid.UUID, key string, status saga.ReplyStatus) saga.Instance {
	h.t.Helper()
	if _, dead, err := h.applyReplies(h.replyTo(h.get(id), key, status)); err != nil || len(dead) > 0 {
		h.t.Fatalf("reply to %s of %s: dead %v, %v", key, id, dead, err)
	}
	return h.get(id)
}

// A deploy of version 2 while trips of version 1 are everywhere in their
// lives: pending, at each step, compensating. The new coordinator drives
// every one of them to its end; the reply to the renamed step's command,
// and its re-send, keep the key the worker knows; a version that drops a
// live state without saying where its sagas go is refused.
func TestDeployOfANewVersionStrandsNoSaga(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})

	// Version 1 at work.
	trips := h.create(submission(normal), submission(normal), submission(normal), submission(normal))
	hotel, flight, confirm, undo := trips[0].ID, trips[1].ID, trips[2].ID, trips[3].ID
	for _, id := range []uuid.UUID{flight, confirm, undo} {
		h.answer(id, "book_hotel", saga.ReplyOK)
	}
	h.answer(confirm, "book_flight", saga.ReplyOK)
	if in := h.answer(undo, "book_flight", saga.ReplyFailed); in.Phase != saga.Compensating {
		t.Fatalf("setup: the trip whose flight failed is %s", in.Phase)
	}
	pendingIn, _ := h.def.New(uuid.Must(uuid.NewV7()), json.RawMessage(`{"traveller":"bo"}`), normal, h.clock.Now())
	if _, err := h.store.CreateBatch(h.ctx, []saga.NewSaga{{Instance: pendingIn}}); err != nil {
		t.Fatal(err)
	}
	pending := pendingIn.ID
	_ = h.staged()

	// The deploy: version 1's coordinator is gone; version 2's checks the
	// database, then drives.
	var err error
	h.c, err = New(Config{Clock: h.clock, Observer: h.obs}, h.store, h.pub, zerolog.Nop(), tripV2(t), parcel(t))
	if err != nil {
		t.Fatal(err)
	}
	if stranded, err := h.c.CheckDeploy(h.ctx); err != nil || len(stranded) != 0 {
		t.Fatalf("CheckDeploy for version 2 = %+v, %v; want nothing stranded", stranded, err)
	}

	// The flight booked under version 1 times out: its re-send keeps the
	// key book_flight although the step is reserve_flight now.
	h.clock.Advance(2 * time.Minute)
	for h.c.timerPass(h.ctx) {
	}
	var resent []string
	for _, m := range h.staged() {
		if m.Kind == saga.MessageCommand {
			resent = append(resent, m.MessageID)
		}
	}
	if !slices.Contains(resent, flight.String()+":book_flight") {
		t.Fatalf("re-sent commands %v: none for %s with the key book_flight", resent, flight)
	}
	if in := h.get(flight); in.Version != 2 || in.State != "reserving_flight" {
		t.Fatalf("the re-sent flight: version %d, state %s; want 2, reserving_flight", in.Version, in.State)
	}

	// Every trip goes to its end.
	h.answer(hotel, "book_hotel", saga.ReplyOK)
	h.answer(hotel, "reserve_flight", saga.ReplyOK)
	h.answer(flight, "book_flight", saga.ReplyOK) // the old name's reply still matches
	for _, id := range []uuid.UUID{hotel, flight, confirm} {
		h.answer(id, "confirm", saga.ReplyOK)
		h.answer(id, "send_itinerary", saga.ReplyOK) // the step version 2 added
	}
	h.answer(undo, "cancel_hotel", saga.ReplyOK)
	for h.c.startPass(h.ctx) {
	}
	if in := h.get(pending); in.Version != 2 || in.Phase != saga.Running {
		t.Fatalf("the pending trip: version %d, %s; want started on version 2", in.Version, in.Phase)
	}
	for _, key := range []string{"book_hotel", "reserve_flight", "confirm", "send_itinerary"} {
		h.answer(pending, key, saga.ReplyOK)
	}
	for id, want := range map[uuid.UUID]saga.Phase{hotel: saga.Completed, flight: saga.Completed, confirm: saga.Completed, undo: saga.Cancelled, pending: saga.Completed} {
		in := h.get(id)
		var steps []string
		for _, r := range in.History {
			steps = append(steps, r.Name)
		}
		if in.Phase != want {
			t.Errorf("trip %s is %s after %v, want %s", id, in.Phase, steps, want)
		}
		if want == saga.Completed && !slices.Equal(steps, []string{"book_hotel", "reserve_flight", "confirm", "send_itinerary"}) {
			t.Errorf("trip %s went through %v", id, steps)
		}
	}
	if r := h.get(flight).History[1]; r.Was != "book_flight" || r.Attempts != 2 {
		t.Errorf("the renamed step's record: %+v, want was book_flight, 2 attempts", r)
	}

	// Version 3 drops confirm, saying nothing of where its sagas go,
	// while one is there: refused, with the count, the oldest, the state.
	live := h.create(submission(normal))[0].ID
	h.answer(live, "book_hotel", saga.ReplyOK)
	h.answer(live, "reserve_flight", saga.ReplyOK)
	v3 := tripV2(t)
	v3.Version, v3.Steps = 3, slices.Delete(slices.Clone(v3.Steps), 2, 3)
	v3.Upgrades = []saga.Upgrade{{From: 2}}
	c3, err := New(Config{Clock: h.clock}, h.store, h.pub, zerolog.Nop(), v3, parcel(t))
	if err != nil {
		t.Fatal(err)
	}
	stranded, err := c3.CheckDeploy(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(stranded) != 1 || stranded[0].Count != 1 || stranded[0].State != "confirming" || stranded[0].At != "confirm" ||
		stranded[0].Oldest.IsZero() || !strings.Contains(stranded[0].Why, `"confirm"`) {
		t.Fatalf("CheckDeploy for version 3 = %+v, want the trip at confirm", stranded)
	}
	// Saying where they go makes the deploy safe.
	v3.Upgrades[0].Steps = map[string]string{"confirm": "send_itinerary"}
	if stranded, err := c3.CheckDeploy(h.ctx); err != nil || len(stranded) != 0 {
		t.Fatalf("CheckDeploy with confirm mapped = %+v, %v", stranded, err)
	}
}

// The SLA watch reads the sagas of states with an SLA and has the late
// ones say so, once.
func TestSLAWatch(t *testing.T) {
	t.Parallel()
	h := newHarness(t, Config{})
	d := trip(t)
	d.Steps = slices.Clone(d.Steps)
	d.Steps[1].SLA = time.Minute // booking_flight
	var err error
	h.c, err = New(Config{Clock: h.clock, Observer: h.obs, SLABatch: 1}, h.store, h.pub, zerolog.Nop(), d, parcel(t))
	if err != nil {
		t.Fatal(err)
	}
	trips := h.create(submission(normal), submission(normal))
	for _, tr := range trips {
		h.answer(tr.ID, "book_hotel", saga.ReplyOK)
	}
	_ = h.staged()
	cursors := map[saga.StateRef]uuid.UUID{}
	h.c.slaPass(h.ctx, cursors)
	if n := len(h.staged()); n != 0 {
		t.Fatalf("%d messages before the SLA passed", n)
	}
	h.clock.Advance(2 * time.Minute)
	var late []string
	for range 3 { // a batch of one: one saga per pass, round and round
		h.c.slaPass(h.ctx, cursors)
		for _, m := range h.staged() {
			late = append(late, m.Type)
		}
	}
	if len(late) != 2 || late[0] != "trip.sla_missed" || late[1] != "trip.sla_missed" {
		t.Fatalf("events after the SLA passed: %v, want trip.sla_missed once for each trip", late)
	}
}
