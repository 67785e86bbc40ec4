package saga

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// Versions: a definition changes while sagas of it are in flight.

const (
	stChargeCard = "charge_card"
	stRefundCard = "refund_card"
	stNotify     = "notify_customer"
	stScreen     = "screen_fraud"
	stUnscreen   = "clear_screening"
)

// versionTwo is the test saga's version 2: charge_payment renamed
// charge_card (with its compensation), and notify_customer added after
// the pivot; it upgrades version 1's sagas step by step.
func versionTwo(t testing.TB) *Definition {
	t.Helper()
	steps := testSteps()
	steps[1].Name, steps[1].State, steps[1].Compensation.Name = stChargeCard, "charging_card", stRefundCard
	steps = append(steps, Step{Name: stNotify, State: "notifying_customer", Command: "mail.send", Kind: Retriable})
	d := &Definition{Name: sagaName, Version: 2, Steps: steps, Retry: testRetry(), Upgrades: []Upgrade{
		{From: 1, Steps: map[string]string{stCharge: stChargeCard, stRefund: stRefundCard}},
	}}
	if err := d.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	return d
}

func TestNewSagasRecordTheirVersion(t *testing.T) {
	if in := newSaga(t, testDefinition(t)); in.Version != 1 {
		t.Errorf("version 1 (by default): saga of version %d", in.Version)
	}
	if in := newSaga(t, versionTwo(t)); in.Version != 2 {
		t.Errorf("version 2: saga of version %d", in.Version)
	}
}

// A saga whose charge was sent under version 1 is upgraded when its reply
// comes: the reply to charge_payment still matches the renamed step, and
// the saga goes on to the step version 2 added.
func TestUpgradeMatchesRepliesOfRenamedSteps(t *testing.T) {
	v1, v2 := testDefinition(t), versionTwo(t)
	in := runningAt(t, v1, 1) // charge_payment in flight, key <id>:charge_payment

	// A re-send after the upgrade keeps the key the worker knows.
	dec := decide(t, v2, in, timeoutIn(), ts(11*s))
	if len(dec.Commands) != 1 || dec.Commands[0].MessageID != mid(stCharge) || dec.Commands[0].Step != stChargeCard {
		t.Fatalf("re-send after the upgrade: %+v, want key %s for step %s", dec.Commands, mid(stCharge), stChargeCard)
	}
	if dec.Instance.Version != 2 || dec.Instance.State != "charging_card" {
		t.Errorf("upgraded saga: version %d, state %s; want 2, charging_card", dec.Instance.Version, dec.Instance.State)
	}
	rec := dec.Instance.record(stChargeCard)
	if rec == nil || rec.Was != stCharge || rec.Attempts != 2 {
		t.Fatalf("renamed record: %+v, want charge_card, was charge_payment, 2 attempts", rec)
	}

	in = apply(t, v2, dec.Instance, okIn(stCharge, ""), ts(12*s)) // the reply to the old name
	if in.State != "preparing_shipment" {
		t.Fatalf("after the reply to %s: state %s, want preparing_shipment", stCharge, in.State)
	}
	in = apply(t, v2, in, okIn(stPrepare, ""), ts(13*s))
	in = apply(t, v2, in, okIn(stCommit, ""), ts(14*s))
	if in.State != "notifying_customer" {
		t.Fatalf("after the last step of version 1: state %s, want the step version 2 added", in.State)
	}
	in = apply(t, v2, in, okIn(stNotify, ""), ts(15*s))
	if in.Phase != Completed {
		t.Fatalf("phase %s, want completed", in.Phase)
	}
}

// An upgrade that does not change the saga is not saved: the next input
// upgrades it again, the same way.
func TestUpgradeAloneChangesNothing(t *testing.T) {
	in := runningAt(t, testDefinition(t), 1)
	dec := decide(t, versionTwo(t), in, okIn("no_such_step", ""), ts(5*s))
	if dec.Changed || dec.Instance.Version != 1 {
		t.Fatalf("a stray reply upgraded and changed the saga: changed %v, version %d", dec.Changed, dec.Instance.Version)
	}
}

// A saga compensating under version 1 goes on compensating under version
// 2, with the renamed compensation's key, and its own steps only.
func TestUpgradeCompensatesWhatTheSagaDid(t *testing.T) {
	v1 := testDefinition(t)
	// Version 2 screens for fraud between the reservation and the charge:
	// sagas of version 1 never ran that step, so nothing undoes it.
	steps := testSteps()
	screen := Step{Name: stScreen, State: "screening", Command: "fraud.screen", Kind: Compensatable,
		Compensation: &Compensation{Name: stUnscreen, Command: "fraud.clear"}}
	steps = append(steps[:1], append([]Step{screen}, steps[1:]...)...)
	v2 := &Definition{Name: sagaName, Version: 2, Steps: steps, Retry: testRetry(), Upgrades: []Upgrade{{From: 1}}}
	if err := v2.Validate(); err != nil {
		t.Fatal(err)
	}

	in := runningAt(t, v1, 2) // preparing_shipment, after reserve and charge
	in = apply(t, v2, in, failedIn(stPrepare, "no_carrier", ""), ts(5*s))
	if in.Phase != Compensating || in.Step != 2 {
		t.Fatalf("after the refusal: %s at step %d, want compensating at charge_payment (2 in version 2)", in.Phase, in.Step)
	}
	in = apply(t, v2, in, okIn(stRefund, ""), ts(6*s))
	if r := in.History[len(in.History)-1]; r.Name != stRelease {
		t.Fatalf("after the refund: compensating %s, want %s (never %s: the saga did not screen)", r.Name, stRelease, stUnscreen)
	}
	in = apply(t, v2, in, okIn(stRelease, ""), ts(7*s))
	if in.Phase != Cancelled {
		t.Fatalf("phase %s, want cancelled", in.Phase)
	}
}

// A version that keeps its predecessor drives that version's sagas with
// the old steps to their end; new sagas start on the new version.
func TestKeptVersionDrivesItsSagas(t *testing.T) {
	v1 := testDefinition(t)
	steps := testSteps()[:1] // version 2 only reserves
	steps[0].Kind, steps[0].Compensation = Retriable, nil
	v2 := &Definition{Name: sagaName, Version: 2, Steps: steps, Retry: testRetry(), Upgrades: []Upgrade{{From: 1, Keep: v1}}}
	if err := v2.Validate(); err != nil {
		t.Fatal(err)
	}
	in := runningAt(t, v1, 1)
	for i, step := range []string{stCharge, stPrepare, stCommit} {
		dec := decide(t, v2, in, okIn(step, ""), ts(time.Duration(5+i)*s))
		in = dec.Instance
		if in.Version != 1 {
			t.Fatalf("kept saga moved to version %d", in.Version)
		}
	}
	if in.Phase != Completed {
		t.Fatalf("kept saga: phase %s, want completed after version 1's four steps", in.Phase)
	}
	if got := v2.States(); !slices.Contains(got, "charging_payment") {
		t.Errorf("States() = %v: the kept version's states are missing", got)
	}
	if n := newSaga(t, v2); n.Version != 2 {
		t.Errorf("new saga of version %d, want 2", n.Version)
	}
}

func TestVersionsNotServed(t *testing.T) {
	v1, v2 := testDefinition(t), versionTwo(t)
	// Version 3 drops preparing_shipment and says nothing of version 1.
	steps := slices.Delete(versionTwo(t).Steps, 2, 3)
	v3 := &Definition{Name: sagaName, Version: 3, Steps: steps, Retry: testRetry(), Upgrades: []Upgrade{{From: 2}}}
	if err := v3.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		def  *Definition
		in   Instance
		want string
	}{
		{"a newer version", v1, runningAt(t, v2, 1), "version 2"},
		{"no upgrade from it", v3, runningAt(t, v1, 1), "drives versions [3]"},
		{"its step dropped", v3, runningAt(t, v2, 2), `no step to go on from "prepare_shipment"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := c.def.Decide(c.in, timeoutIn(), ts(time.Hour))
			if !errors.Is(err, ErrVersionNotServed) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Decide: %v, want ErrVersionNotServed saying %q", err, c.want)
			}
		})
	}
	// A saga that went through the dropped step cannot be upgraded
	// either: its compensation would be forgotten.
	at := apply(t, v2, runningAt(t, v2, 3), timeoutIn(), ts(time.Hour))
	if _, err := v3.Decide(at, timeoutIn(), ts(2*time.Hour)); !errors.Is(err, ErrVersionNotServed) || !strings.Contains(err.Error(), "went through") {
		t.Fatalf("saga past the dropped step: %v", err)
	}
	// Mapping it to "" says that nothing needs undoing.
	v3.Upgrades[0].Steps = map[string]string{stPrepare: ""}
	if _, err := v3.Decide(at, timeoutIn(), ts(2*time.Hour)); err != nil {
		t.Fatalf("with the dropped step mapped to \"\": %v", err)
	}
	// A saga that ended needs no driving, whatever its version.
	done := apply(t, v1, runningAt(t, v1, 0), failedIn(stReserve, "out_of_stock", ""), ts(5*s))
	if dec, err := v3.Decide(done, okIn(stReserve, ""), ts(6*s)); err != nil || dec.Changed {
		t.Fatalf("a reply for a rejected saga of version 1: %v (changed %v)", err, dec.Changed)
	}
}

func TestCheckDeploy(t *testing.T) {
	v2 := versionTwo(t)
	pos := func(v int, phase Phase, at string, passed ...string) Position {
		return Position{Definition: sagaName, Version: v, Phase: phase, StuckIn: Running, At: at, Passed: passed, Count: 3, Oldest: t0}
	}
	ps := []Position{
		pos(2, Running, stNotify, stReserve, stNotify),                // served as it is
		pos(1, Pending, ""),                                           // nothing done yet
		pos(1, Running, stCharge, stReserve, stCharge),                // renamed: mapped
		pos(1, Stuck, stCommit, stReserve, stCharge, stCommit),        // kept name
		pos(1, Running, "ship_by_drone", stReserve, "ship_by_drone"),  // no such step in version 2
		pos(3, Running, stReserve, stReserve),                         // newer than this deployment
		{Definition: "other", Version: 9, Phase: Running, At: "x"},    // not this deployment's
		pos(1, Compensating, stRelease, stReserve, stCharge, "audit"), // went through a dropped step
	}
	got := CheckDeploy([]*Definition{v2}, ps)
	var where []string
	for _, s := range got {
		where = append(where, s.At)
		if s.Why == "" || s.Count != 3 {
			t.Errorf("stranded %+v: no reason or count", s)
		}
	}
	if want := []string{"ship_by_drone", stReserve, stRelease}; !slices.Equal(where, want) {
		t.Fatalf("stranded at %v, want %v", where, want)
	}
}

func TestValidateUpgrades(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(d *Definition)
		want string
	}{
		{"from a later version", func(d *Definition) { d.Upgrades[0].From = 2 }, "must be earlier"},
		{"to an unknown step", func(d *Definition) { d.Upgrades[0].Steps = map[string]string{"a": "b"} }, `to "b"`},
		{"twice from one version", func(d *Definition) { d.Upgrades = append(d.Upgrades, Upgrade{From: 1}) }, "two upgrades"},
		{"keeps the wrong version", func(d *Definition) {
			d.Upgrades = []Upgrade{{From: 1, Keep: &Definition{Name: sagaName, Version: 3, Steps: testSteps()}}}
		}, "keeps"},
		{"keeps and maps", func(d *Definition) {
			d.Upgrades[0].Keep = &Definition{Name: sagaName, Steps: testSteps()}
		}, "not both"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := versionTwo(t)
			c.edit(d)
			if err := d.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Validate: %v, want an error saying %q", err, c.want)
			}
		})
	}
}
