package pgstore_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/pgstore"
)

// quarantines records what a store reports to Config.OnQuarantine.
type quarantines struct {
	mu   sync.Mutex
	seen map[uuid.UUID]string
}

func (q *quarantines) hook(kind string, id uuid.UUID, why error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.seen == nil {
		q.seen = map[uuid.UUID]string{}
	}
	q.seen[id] = kind + ": " + why.Error()
}

// TestCorruptSagaIsQuarantinedAndTheTimerGoesOn: one saga whose history
// does not parse no longer stops every pass of the timer (it failed the
// whole claim before): the others are timed out, it is set aside, stuck
// with the reason, reported, listed, and never claimed again.
func TestCorruptSagaIsQuarantinedAndTheTimerGoesOn(t *testing.T) {
	t.Parallel()
	var q quarantines
	s, pool := newStore(t, pgstore.Config{OnQuarantine: q.hook})
	ctx := testContext(t)
	def := tripDefinition(t)
	t0 := now()
	var ins []saga.Instance
	for range 3 {
		in := newSaga(t, def, t0.Add(-time.Hour), t0.Add(-time.Minute))
		create(t, s, in)
		ins = append(ins, in)
	}
	bad := ins[1]
	if _, err := pool.Exec(ctx, `UPDATE sagas SET history = '"not a list of steps"' WHERE id = $1`, bad.ID); err != nil {
		t.Fatal(err)
	}

	outs, _, err := s.ApplyDue(ctx, dueClaim(t0, 100), transition(def, t0))
	if err != nil {
		t.Fatalf("ApplyDue with a corrupt saga among the due ones: %v", err)
	}
	if diff := cmp.Diff(sortUUIDs([]uuid.UUID{ins[0].ID, ins[2].ID}), sortedIDs(outs)); diff != "" {
		t.Errorf("timed out (-want +got):\n%s", diff)
	}
	if why := q.seen[bad.ID]; !strings.HasPrefix(why, "saga: history does not parse") {
		t.Errorf("OnQuarantine for the corrupt saga = %q, want a saga whose history does not parse", why)
	}
	var phase, reason string
	var deadline *time.Time
	if err := pool.QueryRow(ctx, `SELECT phase, stuck_reason, deadline FROM sagas WHERE id = $1`, bad.ID).Scan(&phase, &reason, &deadline); err != nil {
		t.Fatal(err)
	}
	if phase != "stuck" || !strings.HasPrefix(reason, pgstore.QuarantinePrefix) || deadline != nil {
		t.Errorf("corrupt saga: phase %s, reason %q, deadline %v; want stuck, quarantined, none", phase, reason, deadline)
	}
	if outs, _, err := s.ApplyDue(ctx, dueClaim(t0.Add(time.Hour), 100), transition(def, t0)); err != nil || len(outs) != 2 {
		t.Errorf("next pass: %d outcomes, %v; want the 2 good sagas only", len(outs), err)
	}
	list, err := s.ListQuarantined(ctx, 10)
	if err != nil || len(list) != 1 || list[0].ID != bad.ID || list[0].Kind != "saga" {
		t.Errorf("ListQuarantined = %+v, %v; want the corrupt saga", list, err)
	}

	// A reply for it is answered ErrQuarantined; the batch's others apply.
	in0 := ins[0]
	got, _ := s.Get(ctx, in0.ID)
	outs, _, err = s.Apply(ctx, []saga.Input{
		{Kind: saga.InputReply, SagaID: bad.ID, Reply: &saga.Reply{CorrelationID: "x", Status: saga.ReplyOK}},
		{Kind: saga.InputReply, SagaID: in0.ID, Reply: okReply(got, "book_hotel")},
	}, transition(def, t0))
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if !errors.Is(outs[0].Err, saga.ErrQuarantined) || outs[1].Err != nil || !outs[1].Changed {
		t.Errorf("Apply outcomes: %v / %v changed %v; want ErrQuarantined, then applied", outs[0].Err, outs[1].Err, outs[1].Changed)
	}
}

// TestFailingTransitionIsQuarantinedByTheTimer: a saga whose transition
// fails every time would be claimed again on every pass (every 200 ms);
// the timer sets it aside instead.
func TestFailingTransitionIsQuarantinedByTheTimer(t *testing.T) {
	t.Parallel()
	var q quarantines
	s, _ := newStore(t, pgstore.Config{OnQuarantine: q.hook})
	ctx := testContext(t)
	def := tripDefinition(t)
	t0 := now()
	good, bad := newSaga(t, def, t0.Add(-time.Hour), t0.Add(-time.Minute)), newSaga(t, def, t0.Add(-time.Hour), t0.Add(-time.Minute))
	create(t, s, good, bad)
	fn := func(in saga.Instance, inp saga.Input) (saga.Decision, []saga.Message, error) {
		if in.ID == bad.ID {
			return saga.Decision{}, nil, errors.New("a bug in the definition")
		}
		return transition(def, t0)(in, inp)
	}
	outs, _, err := s.ApplyDue(ctx, dueClaim(t0, 100), fn)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range outs {
		if o.Instance.ID == bad.ID && !errors.Is(o.Err, saga.ErrQuarantined) {
			t.Errorf("outcome of the failing saga: %v, want ErrQuarantined", o.Err)
		}
	}
	if _, ok := q.seen[bad.ID]; !ok {
		t.Error("the failing saga was not reported quarantined")
	}
	if outs, _, err := s.ApplyDue(ctx, dueClaim(t0.Add(time.Hour), 100), fn); err != nil || len(outs) != 1 || outs[0].Instance.ID != good.ID {
		t.Errorf("next pass: %d outcomes, %v; want only the good saga", len(outs), err)
	}
}

// TestTimerClaimsOnlyItsDefinitions: sagas of a type this coordinator does
// not drive are left to the coordinators that do.
func TestTimerClaimsOnlyItsDefinitions(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, pgstore.Config{})
	ctx := testContext(t)
	def := tripDefinition(t)
	t0 := now()
	in := newSaga(t, def, t0.Add(-time.Hour), t0.Add(-time.Minute))
	create(t, s, in)
	other := saga.Claim{Now: t0, Limit: 10, Definitions: []string{"hotel"}}
	if outs, _, err := s.ApplyDue(ctx, other, transition(def, t0)); err != nil || len(outs) != 0 {
		t.Errorf("ApplyDue for another definition: %d outcomes, %v; want none", len(outs), err)
	}
	if outs, _, err := s.ApplyPending(ctx, saga.Claim{Limit: 10, Definitions: []string{"hotel"}}, transition(def, t0)); err != nil || len(outs) != 0 {
		t.Errorf("ApplyPending for another definition: %d outcomes, %v; want none", len(outs), err)
	}
}

// TestUndecodableOutboxRowIsQuarantined: one outbox row whose payload does
// not decode failed the whole claim before; now it is set aside with the
// reason and the other rows are published.
func TestUndecodableOutboxRowIsQuarantined(t *testing.T) {
	t.Parallel()
	var q quarantines
	s, pool := newStore(t, pgstore.Config{OutboxLease: time.Millisecond, OnQuarantine: q.hook})
	ctx := testContext(t)
	def := tripDefinition(t)
	t0 := now()
	in := newSaga(t, def, t0, t0)
	_, _, msgs, err := s.Create(ctx, saga.NewSaga{Instance: in, Messages: []saga.Message{{Kind: saga.MessageEvent, Type: "k", MessageID: "m-1", Body: []byte("x")}}})
	if err != nil || len(msgs) != 1 {
		t.Fatalf("Create: %d messages, %v", len(msgs), err)
	}
	badID := uuid.Must(uuid.NewV7())
	if _, err := pool.Exec(ctx, `INSERT INTO outbox (id, messages, payload, created_at, leased_until)
		VALUES ($1, 3, '\xdeadbeef', now(), now() - interval '1 minute')`, badID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond) // the good row's lease ends
	claimed, err := s.ClaimOutbox(ctx, 100)
	if err != nil {
		t.Fatalf("ClaimOutbox with an undecodable row: %v", err)
	}
	if len(claimed) != 1 || claimed[0].MessageID != "m-1" {
		t.Errorf("ClaimOutbox = %+v, want the good row's message", claimed)
	}
	if _, ok := q.seen[badID]; !ok {
		t.Errorf("the undecodable row was not reported: %v", q.seen)
	}
	if n, _, err := s.OutboxStats(ctx); err != nil || n != 1 {
		t.Errorf("OutboxStats = %d, %v; want 1: a quarantined row is no backlog", n, err)
	}
	list, err := s.ListQuarantined(ctx, 10)
	if err != nil || len(list) != 1 || list[0].ID != badID || list[0].Kind != "outbox" {
		t.Errorf("ListQuarantined = %+v, %v; want the bad outbox row", list, err)
	}
	time.Sleep(5 * time.Millisecond)
	if again, err := s.ClaimOutbox(ctx, 100); err != nil || len(again) != 1 {
		t.Errorf("next claim: %d messages, %v; want the good one again (lease expired), never the bad row", len(again), err)
	}
}

// TestApplyPendingGivesTheOldestTheirShare: high priority goes first, but
// the oldest pending sagas, whatever their priority, get Claim.Oldest of
// each admission: normal sagas cannot wait without bound behind a stream
// of high ones.
func TestApplyPendingGivesTheOldestTheirShare(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, pgstore.Config{})
	ctx := testContext(t)
	def := tripDefinition(t)
	t0 := now()
	var normal, high []uuid.UUID
	for i := range 10 {
		in := newSaga(t, def, t0.Add(time.Duration(i)*time.Millisecond), time.Time{})
		in.Deadline = time.Time{}
		if i < 4 {
			in.Priority = 0
			normal = append(normal, in.ID)
		} else {
			in.Priority = 2
			high = append(high, in.ID)
		}
		create(t, s, in)
	}
	claim := saga.Claim{Limit: 4, Definitions: []string{def.Name}, Oldest: 1}
	outs, _, err := s.ApplyPending(ctx, claim, transition(def, t0))
	if err != nil {
		t.Fatal(err)
	}
	want := sortUUIDs([]uuid.UUID{normal[0], high[0], high[1], high[2]})
	if diff := cmp.Diff(want, sortedIDs(outs)); diff != "" {
		t.Errorf("admitted (-want +got):\n%s", diff)
	}
	if outs[0].Instance.Priority != 2 {
		t.Errorf("first admitted has priority %d, want the high ones first in the batch", outs[0].Instance.Priority)
	}
	// Strict priority (Oldest 0) admits only high ones while they wait.
	outs, _, err = s.ApplyPending(ctx, saga.Claim{Limit: 3, Definitions: []string{def.Name}}, transition(def, t0))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range outs {
		if o.Instance.Priority != 2 {
			t.Errorf("strict priority admitted a normal saga while high ones waited")
		}
	}
}
