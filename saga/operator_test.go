package saga

import (
	"testing"
	"time"

	json "github.com/goccy/go-json"
)

// An operator's replay or cancel is on the record: the decision emits an
// operator event, in the same transaction as the change, with who acted
// and why; a refused action emits nothing.
func TestOperatorActionsAreOnTheRecord(t *testing.T) {
	d := testDefinition(t)
	check := func(t *testing.T, dec Decision, typ, operator, reason string) {
		t.Helper()
		if len(dec.Events) == 0 || dec.Events[0].Type != typ {
			t.Fatalf("events %v: want %s first", viewEvents(dec.Events), typ)
		}
		var body struct {
			State string       `json:"state"`
			Data  OperatorData `json:"data"`
		}
		if err := json.Unmarshal(dec.Events[0].Payload, &body); err != nil {
			t.Fatal(err)
		}
		if body.Data != (OperatorData{Operator: operator, Reason: reason}) {
			t.Errorf("%s data %+v, want %s for %q", typ, body.Data, operator, reason)
		}
	}

	stuck := timeouts(t, d, runningAt(t, d, 3), 4) // commit_stock out of attempts
	if stuck.Phase != Stuck {
		t.Fatalf("setup: %s", stuck.Phase)
	}
	replay := Input{Kind: InputReplay, SagaID: sagaID, Operator: "alice", Reason: "inventory is back"}
	dec := decide(t, d, stuck, replay, ts(time.Hour))
	check(t, dec, EventReplayed, "alice", "inventory is back")
	if dec.Instance.Phase != Running || len(dec.Commands) != 1 {
		t.Errorf("after the replay: %s, %d commands", dec.Instance.Phase, len(dec.Commands))
	}

	cancel := Input{Kind: InputCancel, SagaID: sagaID, Operator: "bob", Reason: "customer called"}
	dec = decide(t, d, runningAt(t, d, 1), cancel, ts(time.Hour))
	check(t, dec, EventCancelled, "bob", "customer called")
	if dec.Instance.Reason != "cancelled by operator: customer called" {
		t.Errorf("reason %q", dec.Instance.Reason)
	}
	dec = decide(t, d, newSaga(t, d), cancel, ts(time.Hour))
	check(t, dec, EventCancelled, "bob", "customer called")
	if dec.Instance.Phase != Cancelled || dec.Events[1].Type != sagaName+".cancelled" {
		t.Errorf("pending saga cancelled: %s, events %v", dec.Instance.Phase, viewEvents(dec.Events))
	}

	// Refused: no event, no change.
	if _, err := d.Decide(stuck, cancel, ts(time.Hour)); err == nil {
		t.Error("cancel past the pivot was not refused")
	}
}

// A replay's plan is what the replay then does.
func TestPlanReplay(t *testing.T) {
	d := testDefinition(t)
	stuckComp := exhaust(t, d, declined(t, d)) // release_stock out of attempts
	p, err := d.PlanReplay(stuckComp, ts(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if p.After != "compensating" || len(p.Commands) != 1 || p.Commands[0].Key != mid(stRelease) || p.Forward || len(p.Compensations) != 0 {
		t.Errorf("plan of a saga stuck releasing: %+v", p)
	}
	shipped := shipmentRefused(t, d) // refund_payment in flight, release_stock after it
	p, err = d.PlanReplay(shipped, ts(time.Hour))
	if err != nil || len(p.Commands) != 1 || p.Commands[0].Type != "payment.refund" || len(p.Compensations) != 1 || p.Compensations[0] != stRelease {
		t.Errorf("plan of a saga refunding: %+v, %v", p, err)
	}
	stuck := timeouts(t, d, runningAt(t, d, 3), 4)
	p, err = d.PlanReplay(stuck, ts(time.Hour))
	if err != nil || !p.Forward || p.After != "committing_stock" || p.Commands[0].Key != mid(stCommit) || p.Commands[0].Attempt != 1 {
		t.Errorf("plan of a saga stuck committing: %+v, %v", p, err)
	}
	if dec := decide(t, d, stuck, replayIn(), ts(time.Hour)); dec.Commands[0].MessageID != p.Commands[0].Key {
		t.Errorf("the replay sent %s, the plan said %s", dec.Commands[0].MessageID, p.Commands[0].Key)
	}
	if _, err := d.PlanReplay(apply(t, d, runningAt(t, d, 0), failedIn(stReserve, "out_of_stock", ""), ts(s)), ts(time.Hour)); err == nil {
		t.Error("a plan for a saga that ended")
	}
}
