package saga

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	json "github.com/goccy/go-json"
)

// Waiting steps: a saga that waits for a signal from outside.

const (
	stAwait    = "await_delivery"
	stApprove  = "await_approval"
	sigDeliver = "shipping.delivered"
	sigApprove = "manager.approved"
)

// deliveryDefinition is the test saga with a waiting step after the pivot:
// once the stock is committed it waits 100s for the delivery.
func deliveryDefinition(t testing.TB) *Definition {
	t.Helper()
	steps := append(testSteps(), Step{
		Name: stAwait, State: "awaiting_delivery", Wait: sigDeliver, Kind: Retriable, Timeout: 100 * s,
		SucceededEvent: "shop.delivered", OverdueEvent: "shop.delivery_overdue", OverdueReason: "delivery not confirmed",
	})
	d := &Definition{Name: sagaName, Steps: steps, Retry: testRetry()}
	if err := d.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	return d
}

// approvalDefinition waits 50s for an approval between the reservation and
// the charge: before the pivot.
func approvalDefinition(t testing.TB) *Definition {
	t.Helper()
	st := testSteps()
	steps := append([]Step{st[0], {Name: stApprove, State: "awaiting_approval", Wait: sigApprove, Kind: Compensatable, Timeout: 50 * s}}, st[1:]...)
	d := &Definition{Name: sagaName, Steps: steps, Retry: testRetry()}
	if err := d.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	return d
}

// at starts the saga at t0 and lets steps 0..i-1 succeed (a waiting step
// by its signal), step j at t0+(j+1)s.
func at(t testing.TB, d *Definition, i int) Instance {
	t.Helper()
	in := apply(t, d, newSaga(t, d), startIn(), t0)
	for j := 0; j < i; j++ {
		inp := okIn(d.Steps[j].Name, "")
		if d.Steps[j].Waits() {
			inp = signalIn(d.Steps[j].Wait, "key-"+d.Steps[j].Name, "")
		}
		in = apply(t, d, in, inp, ts(time.Duration(j+1)*s))
	}
	return in
}

func signalIn(name, key, payload string) Input {
	sg := &Signal{Name: name, Key: key}
	if payload != "" {
		sg.Payload = json.RawMessage(payload)
	}
	return Input{Kind: InputSignal, SagaID: sagaID, Signal: sg}
}

func decide(t *testing.T, d *Definition, in Instance, inp Input, now time.Time) Decision {
	t.Helper()
	dec, err := d.Decide(in, inp, now)
	if err != nil {
		t.Fatalf("Decide(%s): %v", inp.Kind, err)
	}
	return dec
}

func eventTypes(evs []Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Type)
	}
	return out
}

func signalRecords(in Instance) []StepRecord {
	var out []StepRecord
	for _, r := range in.History {
		if r.Kind == KindSignal {
			out = append(out, r)
		}
	}
	return out
}

func TestWaitingStepSendsNothingAndTakesItsSignal(t *testing.T) {
	d := deliveryDefinition(t)
	in := runningAt(t, d, 3)
	dec := decide(t, d, in, okIn(stCommit, ""), ts(10*s))
	if len(dec.Commands) != 0 {
		t.Fatalf("a waiting step sent %v", commandTypes(dec.Commands))
	}
	in = dec.Instance
	if in.State != "awaiting_delivery" || in.Phase != Running || !in.Deadline.Equal(ts(110*s)) {
		t.Fatalf("state %s, phase %s, deadline %v; want awaiting_delivery, running, t0+110s", in.State, in.Phase, in.Deadline)
	}

	dec = decide(t, d, in, signalIn(sigDeliver, "k1", `{"delivered_at":"2025-03-14T09:01:00Z"}`), ts(20*s))
	if !dec.Changed || dec.Instance.Phase != Completed || len(dec.Commands) != 0 {
		t.Fatalf("changed %v, phase %s, commands %v; want a completed saga", dec.Changed, dec.Instance.Phase, commandTypes(dec.Commands))
	}
	if got, want := eventTypes(dec.Events), []string{"shop.delivered", "shop.completed"}; !slices.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
	if got := string(dec.Instance.Data); !strings.Contains(got, `"delivered_at":"2025-03-14T09:01:00Z"`) || !strings.Contains(got, `"order_id":"o-1"`) {
		t.Errorf("data %s: the signal's payload is not merged in", got)
	}
	sigs := signalRecords(dec.Instance)
	if len(sigs) != 1 || sigs[0].Status != SignalConsumed || sigs[0].Key != "k1" || sigs[0].Payload != nil || sigs[0].FinishedAt == nil {
		t.Errorf("signal records %+v, want one consumed record of k1 without its payload", sigs)
	}
	if r := dec.Instance.record(stAwait); r == nil || r.Status != StepSucceeded {
		t.Errorf("the waiting step's record is %+v, want succeeded", r)
	}

	// The same signal again, even on a completed saga, is a duplicate.
	assertIgnored(t, d, dec.Instance, signalIn(sigDeliver, "k1", `{"delivered_at":"later"}`), ts(30*s))
	// Another key is news the saga no longer waits for.
	if _, err := d.Decide(dec.Instance, signalIn(sigDeliver, "k2", ""), ts(30*s)); !errors.Is(err, ErrNotWaiting) {
		t.Errorf("a new signal for a completed saga: err %v, want ErrNotWaiting", err)
	}
}

func TestEarlySignalIsKeptUntilTheStepWaits(t *testing.T) {
	d := deliveryDefinition(t)
	for _, tc := range []struct {
		name string
		in   func(t *testing.T) Instance
	}{
		{"pending", func(t *testing.T) Instance { return newSaga(t, d) }},
		{"at an earlier step", func(t *testing.T) Instance { return runningAt(t, d, 1) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in(t)
			dec := decide(t, d, in, signalIn(sigDeliver, "early", `{"by":"customer"}`), ts(500*time.Millisecond))
			if !dec.Changed || len(dec.Transitions) != 0 || len(dec.Commands) != 0 || len(dec.Events) != 0 {
				t.Fatalf("keeping a signal: changed %v, transitions %v, commands %v, events %v; want a saved record only",
					dec.Changed, dec.Transitions, dec.Commands, dec.Events)
			}
			if dec.Instance.Phase != in.Phase || dec.Instance.Step != in.Step || !dec.Instance.Deadline.Equal(in.Deadline) {
				t.Fatalf("keeping a signal moved the saga: %s step %d", dec.Instance.Phase, dec.Instance.Step)
			}
			in = dec.Instance
			assertIgnored(t, d, in, signalIn(sigDeliver, "early", ""), ts(600*time.Millisecond))

			if in.Phase == Pending {
				in = apply(t, d, in, startIn(), t0)
			}
			for in.Phase == Running {
				in = apply(t, d, in, okIn(d.Steps[in.Step].Name, ""), ts(time.Duration(in.Step+1)*s))
			}
			if in.Phase != Completed || !strings.Contains(string(in.Data), `"by":"customer"`) {
				t.Fatalf("phase %s, data %s: the kept signal was not taken when the step came", in.Phase, in.Data)
			}
			if sigs := signalRecords(in); len(sigs) != 1 || sigs[0].Status != SignalConsumed {
				t.Errorf("signal records %+v, want one, consumed", sigs)
			}
		})
	}
}

func TestOverdueWaitAfterThePivotSticksAndReplayWaitsAgain(t *testing.T) {
	d := deliveryDefinition(t)
	in := apply(t, d, runningAt(t, d, 3), okIn(stCommit, ""), ts(10*s))
	assertIgnored(t, d, in, timeoutIn(), ts(109*s)) // not yet due

	dec := decide(t, d, in, timeoutIn(), ts(110*s))
	if dec.Instance.Phase != Stuck || dec.Instance.StuckReason != "delivery not confirmed" || !dec.Instance.Deadline.IsZero() {
		t.Fatalf("phase %s, stuck reason %q, deadline %v; want stuck, 'delivery not confirmed', none",
			dec.Instance.Phase, dec.Instance.StuckReason, dec.Instance.Deadline)
	}
	if got, want := eventTypes(dec.Events), []string{"shop.delivery_overdue", "shop.stuck"}; !slices.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
	if got, want := transitionNames(dec.Transitions), []string{"stick"}; !slices.Equal(got, want) {
		t.Errorf("transitions %v, want %v", got, want)
	}
	stuck := dec.Instance

	// An operator's replay waits again, as long as the first time.
	dec = decide(t, d, stuck, replayIn(), ts(200*s))
	if dec.Instance.Phase != Running || dec.Instance.State != "awaiting_delivery" || !dec.Instance.Deadline.Equal(ts(300*s)) || len(dec.Commands) != 0 {
		t.Fatalf("replay: phase %s, state %s, deadline %v, commands %v; want awaiting_delivery until t0+300s, nothing sent",
			dec.Instance.Phase, dec.Instance.State, dec.Instance.Deadline, commandTypes(dec.Commands))
	}
	if r := dec.Instance.record(stAwait); r == nil || r.Status != StepRunning || r.Attempts != 2 {
		t.Errorf("the waiting step's record after replay: %+v, want running, 2 attempts", r)
	}

	// A signal that comes late, to the stuck saga, resumes and completes it.
	dec = decide(t, d, stuck, signalIn(sigDeliver, "late", ""), ts(250*s))
	if dec.Instance.Phase != Completed || dec.Instance.StuckReason != "" {
		t.Fatalf("late signal: phase %s, stuck reason %q; want completed", dec.Instance.Phase, dec.Instance.StuckReason)
	}
	if got, want := transitionNames(dec.Transitions), []string{"resume", "complete"}; !slices.Equal(got, want) {
		t.Errorf("transitions %v, want %v", got, want)
	}
}

func TestOverdueWaitBeforeThePivotCompensates(t *testing.T) {
	d := approvalDefinition(t)
	in := runningAt(t, d, 1) // reserved at t0+1s, waiting for the approval until t0+51s
	if in.State != "awaiting_approval" || !in.Deadline.Equal(ts(51*s)) {
		t.Fatalf("state %s, deadline %v", in.State, in.Deadline)
	}
	dec := decide(t, d, in, timeoutIn(), ts(51*s))
	if dec.Instance.Phase != Compensating || dec.Instance.Reason != "manager.approved not received within 50s" {
		t.Fatalf("phase %s, reason %q", dec.Instance.Phase, dec.Instance.Reason)
	}
	if got, want := commandTypes(dec.Commands), []string{"inventory.release"}; !slices.Equal(got, want) {
		t.Errorf("commands %v, want %v (the waiting step has nothing to undo)", got, want)
	}
	in = apply(t, d, dec.Instance, okIn(stRelease, ""), ts(52*s))
	if in.Phase != Cancelled {
		t.Errorf("phase %s, want cancelled", in.Phase)
	}
}

func TestCompensationPassesOverWaitingSteps(t *testing.T) {
	d := approvalDefinition(t)
	in := at(t, d, 2) // approved; charging
	dec := decide(t, d, in, failedIn(stCharge, "card_declined", ""), ts(10*s))
	if got, want := commandTypes(dec.Commands), []string{"inventory.release"}; !slices.Equal(got, want) {
		t.Fatalf("commands %v, want %v", got, want)
	}
	// A refused shipment refunds, then releases: the wait between is skipped.
	in = apply(t, d, at(t, d, 3), failedIn(stPrepare, "address_refused", ""), ts(10*s))
	dec = decide(t, d, in, okIn(stRefund, ""), ts(11*s))
	if got, want := commandTypes(dec.Commands), []string{"inventory.release"}; !slices.Equal(got, want) {
		t.Fatalf("after the refund: commands %v, want %v", got, want)
	}
	if dec.Instance.Step != 0 {
		t.Errorf("compensating step %d, want 0", dec.Instance.Step)
	}
}

func TestCancelWhileWaiting(t *testing.T) {
	d := approvalDefinition(t)
	dec := decide(t, d, runningAt(t, d, 1), cancelIn("customer changed their mind"), ts(5*s))
	if dec.Instance.Phase != Compensating || !slices.Equal(commandTypes(dec.Commands), []string{"inventory.release"}) {
		t.Fatalf("phase %s, commands %v; want compensating the reservation", dec.Instance.Phase, commandTypes(dec.Commands))
	}
	dd := deliveryDefinition(t)
	waiting := apply(t, dd, runningAt(t, dd, 3), okIn(stCommit, ""), ts(10*s))
	if _, err := dd.Decide(waiting, cancelIn("too late"), ts(11*s)); !errors.Is(err, ErrConflict) {
		t.Errorf("cancel while waiting after the pivot: err %v, want ErrConflict", err)
	}
}

func TestSignalsNoStepWaitsFor(t *testing.T) {
	d := approvalDefinition(t)
	dd := deliveryDefinition(t)
	for _, tc := range []struct {
		name string
		d    *Definition
		in   func(t *testing.T) Instance
		sig  Input
		want error
	}{
		{"no step waits for it", d, func(t *testing.T) Instance { return runningAt(t, d, 0) }, signalIn("shipping.lost", "k", ""), ErrNotWaiting},
		{"past the step that waited", d, func(t *testing.T) Instance { return at(t, d, 2) }, signalIn(sigApprove, "k", ""), ErrNotWaiting},
		{"compensating", d, func(t *testing.T) Instance {
			return apply(t, d, at(t, d, 2), failedIn(stCharge, "card_declined", ""), ts(5*s))
		}, signalIn(sigApprove, "k", ""), ErrNotWaiting},
		{"cancelled", d, func(t *testing.T) Instance {
			return apply(t, d, apply(t, d, at(t, d, 2), failedIn(stCharge, "card_declined", ""), ts(5*s)), okIn(stRelease, ""), ts(6*s))
		}, signalIn(sigApprove, "k", ""), ErrNotWaiting},
		{"rejected", dd, func(t *testing.T) Instance { return rejectedSaga(t, dd) }, signalIn(sigDeliver, "k", ""), ErrNotWaiting},
		{"no key", dd, func(t *testing.T) Instance { return runningAt(t, dd, 4) }, signalIn(sigDeliver, "", ""), ErrInvalidSignal},
		{"no name", dd, func(t *testing.T) Instance { return runningAt(t, dd, 4) }, signalIn("", "k", ""), ErrInvalidSignal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dec, err := tc.d.Decide(tc.in(t), tc.sig, ts(time.Hour))
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			if dec.Changed {
				t.Errorf("the refused signal changed the saga")
			}
		})
	}
}

func TestWaitingStepIgnoresReplies(t *testing.T) {
	d := deliveryDefinition(t)
	in := apply(t, d, runningAt(t, d, 3), okIn(stCommit, ""), ts(10*s))
	assertIgnored(t, d, in, okIn(stAwait, `{"forged":true}`), ts(11*s))
	assertIgnored(t, d, in, failedIn(stAwait, "nope", ""), ts(11*s))
}

func TestValidateWaitingSteps(t *testing.T) {
	wait := func(mod func(*Step)) *Definition {
		st := testSteps()
		w := Step{Name: stAwait, State: "awaiting_delivery", Wait: sigDeliver, Kind: Retriable, Timeout: s}
		mod(&w)
		return &Definition{Name: sagaName, Steps: append(st, w), Retry: testRetry()}
	}
	for _, tc := range []struct {
		name string
		d    *Definition
		want string
	}{
		{"sends a command", wait(func(s *Step) { s.Command = "shipping.wait" }), "a waiting step sends no command"},
		{"has a compensation", wait(func(s *Step) { s.Compensation = &Compensation{Name: "x", Command: "y"} }), "a waiting step has nothing to compensate"},
		{"no timeout", wait(func(s *Step) { s.Timeout = 0 }), "a waiting step needs a timeout"},
		{"two waits for one signal", func() *Definition {
			d := wait(func(*Step) {})
			d.Steps = append(d.Steps, Step{Name: "again", State: "again", Wait: sigDeliver, Kind: Retriable, Timeout: s})
			return d
		}(), `another step waits for "shipping.delivered"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.d.Validate()
			if !errors.Is(err, ErrInvalidDefinition) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %v, want it to say %q", err, tc.want)
			}
		})
	}
	if err := wait(func(*Step) {}).Validate(); err != nil {
		t.Errorf("a valid waiting step: %v", err)
	}
}
