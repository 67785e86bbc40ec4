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

// A note (a re-drive of one of its messages) goes on the saga's record
// and changes nothing else, whatever its phase or version.
func TestNoteIsOnTheRecordOnly(t *testing.T) {
	d := testDefinition(t)
	done := apply(t, d, runningAt(t, d, 0), failedIn(stReserve, "out_of_stock", ""), ts(s))
	note := Input{Kind: InputNote, SagaID: sagaID, Operator: "fay", Reason: "inventory back", Note: EventRedriven, Subject: mid(stReserve)}
	dec := decide(t, d, done, note, ts(time.Hour))
	if !dec.Changed || len(dec.Events) != 1 || dec.Events[0].Type != EventRedriven || len(dec.Commands) != 0 {
		t.Fatalf("note: changed %v, events %v, %d commands", dec.Changed, viewEvents(dec.Events), len(dec.Commands))
	}
	var body struct {
		Data OperatorData `json:"data"`
	}
	if err := json.Unmarshal(dec.Events[0].Payload, &body); err != nil || body.Data.Message != mid(stReserve) || body.Data.Operator != "fay" {
		t.Errorf("note data %+v, %v", body.Data, err)
	}
	after := dec.Instance
	after.Seq, after.UpdatedAt, after.State = done.Seq, done.UpdatedAt, done.State
	if after.Phase != done.Phase || after.Step != done.Step || len(after.History) != len(done.History) {
		t.Errorf("a note changed the saga: %+v", dec.Instance)
	}
}

// A stuck saga says why, classified by the engine when it got stuck.
func TestStuckCause(t *testing.T) {
	d := testDefinition(t)
	check := func(name string, in Instance, want StuckCause) {
		t.Helper()
		if got, _ := in.Cause(); got != want {
			t.Errorf("%s: cause %q, want %q (reason %q)", name, got, want, in.StuckReason)
		}
	}
	noReply := timeouts(t, d, runningAt(t, d, 3), 4)
	check("commit never answered", noReply, CauseNoReply)
	in := runningAt(t, d, 3)
	for i := 1; i <= 4; i++ {
		r := retryOf(stCommit, i)
		in = apply(t, d, in, r, ts(time.Duration(10+i)*s))
		if in.Phase != Stuck {
			in = apply(t, d, in, timeoutIn(), ts(time.Duration(10+i)*s+30*s))
		}
	}
	check("commit answered retry each time", in, CauseWorkerError)
	check("release never answered", exhaust(t, d, declined(t, d)), CauseCompensationExhausted)
	dd := deliveryDefinition(t)
	check("delivery overdue", apply(t, dd, at(t, dd, 4), timeoutIn(), ts(time.Hour)), CauseSignalOverdue)
	q := noReply
	q.StuckReason = QuarantinePrefix + "history does not parse"
	check("quarantined", q, CauseQuarantined)
	check("replayed", apply(t, d, noReply, replayIn(), ts(time.Hour)), "")
	if dec := decide(t, d, noReply, replayIn(), ts(time.Hour)); dec.Instance.History[len(dec.Instance.History)-1].Cause != "" {
		t.Error("a replayed step keeps its cause")
	}
}

// A step's SLA: the saga says it stayed too long, once per stay, and goes
// on as before.
func TestSLA(t *testing.T) {
	steps := testSteps()
	steps[1].SLA = 30 * s // charging_payment
	d := &Definition{Name: sagaName, Steps: steps, Retry: testRetry()}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	sla := Input{Kind: InputSLA, SagaID: sagaID}
	in := runningAt(t, d, 1) // charge_payment began at t0+1s
	if dec := decide(t, d, in, sla, ts(30*s)); dec.Changed {
		t.Fatal("late before the SLA passed")
	}
	dec := decide(t, d, in, sla, ts(32*s))
	if !dec.Changed || len(dec.Events) != 1 || dec.Events[0].Type != sagaName+".sla_missed" || len(dec.Commands) != 0 ||
		dec.Instance.Deadline != in.Deadline || dec.Instance.Attempt != in.Attempt {
		t.Fatalf("SLA passed: changed %v, events %v, commands %d", dec.Changed, viewEvents(dec.Events), len(dec.Commands))
	}
	if again := decide(t, d, dec.Instance, sla, ts(90*s)); again.Changed {
		t.Error("said twice for one stay")
	}
	// The next step has no SLA; the one that ended is not late any more.
	next := apply(t, d, dec.Instance, okIn(stCharge, ""), ts(95*s))
	if later := decide(t, d, next, sla, ts(time.Hour)); later.Changed {
		t.Error("a step without an SLA said it was late")
	}
	if got := d.SLAStates(); len(got) != 1 || got[0] != "charging_payment" {
		t.Errorf("SLAStates() = %v", got)
	}
}
