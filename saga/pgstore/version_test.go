package pgstore_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/pgstore"
)

// tripV2 is version 2 of the trip: charge_card renamed pay, with an
// upgrade from version 1.
func tripV2(t testing.TB) *saga.Definition {
	t.Helper()
	v1 := tripDefinition(t)
	v2 := *v1
	v2.Version = 2
	v2.Steps = append([]saga.Step(nil), v1.Steps...)
	v2.Steps[1].Name, v2.Steps[1].Compensation = "pay", &saga.Compensation{Name: "refund", Command: "card.refund"}
	v2.Upgrades = []saga.Upgrade{{From: 1, Steps: map[string]string{"charge_card": "pay", "refund_card": "refund"}}}
	if err := v2.Validate(); err != nil {
		t.Fatal(err)
	}
	return &v2
}

// The store keeps each saga's version, saves the one an upgrade gives
// it, and leaves sagas of versions newer than a claim's to others.
func TestVersionsInTheStore(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, pgstore.Config{})
	ctx := testContext(t)
	v1, v2 := tripDefinition(t), tripV2(t)
	t0 := now()

	old := newSaga(t, v1, t0.Add(-time.Hour), t0.Add(-time.Minute))
	old, _ = decide(t, v1, old, t0.Add(-time.Hour), saga.Input{Kind: saga.InputStart, SagaID: old.ID},
		saga.Input{Kind: saga.InputReply, SagaID: old.ID, Reply: okReply(old, "book_hotel")})
	newer := newSaga(t, v2, t0.Add(-time.Hour), t0.Add(-time.Minute))
	create(t, s, old, newer)
	if got, err := s.Get(ctx, newer.ID); err != nil || got.Version != 2 {
		t.Fatalf("Get(version 2 saga) = version %d, %v", got.Version, err)
	}

	// A coordinator of version 1 claims its own saga only.
	claim := saga.Claim{Now: t0.Add(time.Hour), Limit: 10, Definitions: []string{"trip"}, Versions: []int{1}}
	outs, _, err := s.ApplyDue(ctx, claim, transition(v1, t0))
	if err != nil || len(outs) != 1 || outs[0].Instance.ID != old.ID {
		t.Fatalf("ApplyDue(version 1) = %v, %v; want the version 1 saga only", sortedIDs(outs), err)
	}
	// Positions of what version 2 does not drive as it is: that saga, at
	// charge_card.
	ps, err := s.Positions(ctx, saga.ServedVersions([]*saga.Definition{v2}))
	if err != nil {
		t.Fatal(err)
	}
	want := []saga.Position{{Definition: "trip", Version: 1, Phase: saga.Running, State: "charging_card",
		At: "charge_card", Passed: []string{"book_hotel", "charge_card"}, Count: 1, Oldest: old.CreatedAt}}
	if diff := cmp.Diff(want, ps, cmpopts.EquateApproxTime(time.Millisecond), cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("Positions (-want +got):\n%s", diff)
	}
	if stranded := saga.CheckDeploy([]*saga.Definition{v2}, ps); len(stranded) != 0 {
		t.Errorf("CheckDeploy: %+v, want none (version 2 maps charge_card)", stranded)
	}

	// Version 2 upgrades it on its next decision, and the store saves
	// the version with the renamed record.
	claim.Versions = []int{2}
	if _, _, err := s.Apply(ctx, []saga.Input{{Kind: saga.InputReply, SagaID: old.ID, Reply: okReply(old, "charge_card")}}, transition(v2, t0)); err != nil {
		t.Fatal(err)
	}
	got, err := s.Get(ctx, old.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 2 || got.State != "sending_ticket" || got.History[1].Name != "pay" || got.History[1].Was != "charge_card" {
		h, _ := json.Marshal(got.History)
		t.Fatalf("upgraded saga: version %d, state %s, history %s", got.Version, got.State, h)
	}
	if ps, err := s.Positions(ctx, saga.ServedVersions([]*saga.Definition{v2})); err != nil || len(ps) != 0 {
		t.Fatalf("Positions after the upgrade = %+v, %v; want none", ps, err)
	}
}

// CountLive counts what has not ended, by definition and state, and
// nothing that has.
func TestCountLive(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, pgstore.Config{})
	ctx := testContext(t)
	def := tripDefinition(t)
	t0 := now()
	pending := newSaga(t, def, t0, t0.Add(time.Hour))
	pending.Deadline = time.Time{}
	running, _ := decide(t, def, newSaga(t, def, t0, t0), t0, saga.Input{Kind: saga.InputStart})
	done, _ := decide(t, def, newSaga(t, def, t0, t0), t0, saga.Input{Kind: saga.InputCancel})
	create(t, s, pending, running, done)
	got, err := s.CountLive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[saga.StateRef]int64{{Definition: "trip", State: "pending"}: 1, {Definition: "trip", State: "booking_hotel"}: 1}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("CountLive (-want +got):\n%s", diff)
	}
}

func TestActivity(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, pgstore.Config{})
	ctx := testContext(t)
	def := tripDefinition(t)
	t0 := now()
	done := newSaga(t, def, t0, t0)
	done, _ = decide(t, def, done, t0, saga.Input{Kind: saga.InputStart, SagaID: done.ID},
		saga.Input{Kind: saga.InputReply, SagaID: done.ID, Reply: &saga.Reply{CorrelationID: saga.MessageID(done.ID, "book_hotel"), Status: saga.ReplyFailed, Code: "full"}})
	running := newSaga(t, def, t0, t0)
	create(t, s, done, running)
	got, err := s.Activity(ctx, t0.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	var started, finished int
	for _, m := range got {
		started, finished = started+m.Started, finished+m.Finished
	}
	if started != 2 || finished != 1 {
		t.Fatalf("Activity = %+v: started %d, finished %d; want 2 and 1", got, started, finished)
	}
}
