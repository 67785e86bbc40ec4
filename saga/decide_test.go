package saga

import (
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/uuid"
)

// ---------------------------------------------------------------------------
// Fixtures: a small saga shaped like the order saga (three compensatable
// steps, then a retriable one), fixed times, and views of decisions that
// keep what the tests assert.
// ---------------------------------------------------------------------------

const (
	sagaName  = "shop"
	startData = `{"order_id":"o-1"}`
	prio      = Priority(3)
	s         = time.Second

	stReserve  = "reserve_stock"
	stCharge   = "charge_payment"
	stPrepare  = "prepare_shipment"
	stCommit   = "commit_stock"
	stRelease  = "release_stock"
	stRefund   = "refund_payment"
	stCancelSh = "cancel_shipment"

	act  = KindAction
	comp = KindCompensation
)

var (
	t0      = time.Date(2025, time.March, 14, 9, 0, 0, 0, time.UTC)
	sagaID  = uuid.MustParse("5b3f7a52-8d0e-4c6a-9a51-2f4c1d7e9b30")
	otherID = uuid.MustParse("0c6d3e1f-2a4b-4c5d-8e6f-7a8b9c0d1e2f")
	zero    time.Time
)

// ts is a fixed instant: t0 plus d.
func ts(d time.Duration) time.Time { return t0.Add(d) }

// testRetry has jitter disabled (a negative Jitter means none) so that
// every deadline is exact: timeouts 10s, 20s, then capped at 35s; backoffs
// 1s, 2s, then capped at 3s.
func testRetry() Retry {
	return Retry{
		Timeout: 10 * s, MaxTimeout: 35 * s,
		Backoff: 1 * s, MaxBackoff: 3 * s,
		Multiplier: 2, Jitter: -1,
		MaxAttempts: 3, CompensationAttempts: 2, RetriableAttempts: 4,
	}
}

func testSteps() []Step {
	return []Step{
		{
			Name: stReserve, State: "reserving_stock", Command: "inventory.reserve", Kind: Compensatable,
			Compensation:   &Compensation{Name: stRelease, Command: "inventory.release", Event: "inventory.released"},
			SucceededEvent: "inventory.reserved",
			FailedEvent:    "inventory.reservation_failed",
			FailedEvents:   map[string]string{"out_of_stock": "inventory.out_of_stock"},
		},
		{
			Name: stCharge, State: "charging_payment", Command: "payment.charge", Kind: Compensatable,
			Compensation:   &Compensation{Name: stRefund, Command: "payment.refund", Event: "payment.refunded"},
			SucceededEvent: "payment.succeeded",
			FailedEvent:    "payment.failed",
		},
		{
			Name: stPrepare, State: "preparing_shipment", Command: "shipping.prepare", Kind: Compensatable,
			Compensation:   &Compensation{Name: stCancelSh, Command: "shipping.cancel", Event: "shipping.cancelled"},
			Timeout:        30 * s, // overrides Retry.Timeout, for the step and its compensation
			SucceededEvent: "shipping.prepared",
			FailedEvent:    "shipping.failed",
		},
		{
			Name: stCommit, State: "committing_stock", Command: "inventory.commit", Kind: Retriable,
			SucceededEvent: "inventory.committed",
		},
	}
}

func testDefinition(t testing.TB) *Definition {
	t.Helper()
	d := &Definition{Name: sagaName, Steps: testSteps(), Retry: testRetry()}
	if err := d.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	return d
}

func mid(step string) string { return MessageID(sagaID, step) }

// evID is the id the n-th event of the saga must have.
func evID(n int) uuid.UUID { return uuid.NewSHA1(sagaID, []byte(strconv.Itoa(n))) }

// Inputs.

func startIn() Input   { return Input{Kind: InputStart, SagaID: sagaID} }
func timeoutIn() Input { return Input{Kind: InputTimeout, SagaID: sagaID} }
func replayIn() Input  { return Input{Kind: InputReplay, SagaID: sagaID} }
func cancelIn(reason string) Input {
	return Input{Kind: InputCancel, SagaID: sagaID, Reason: reason}
}

func replyIn(corr string, st ReplyStatus, code, msg, payload string) Input {
	r := &Reply{CorrelationID: corr, Status: st, Code: code, Message: msg}
	if payload != "" {
		r.Payload = json.RawMessage(payload)
	}
	return Input{Kind: InputReply, SagaID: sagaID, Reply: r}
}

func okIn(step, payload string) Input { return replyIn(mid(step), ReplyOK, "", "", payload) }
func failedIn(step, code, msg string) Input {
	return replyIn(mid(step), ReplyFailed, code, msg, "")
}
func retryIn(step, code, msg string) Input { return replyIn(mid(step), ReplyRetry, code, msg, "") }

// retryOf is a retry answer to a given attempt.
func retryOf(step string, attempt int) Input {
	in := retryIn(step, "db_busy", "")
	in.Reply.Attempt = attempt
	return in
}

// transitionNames turns typed transitions into strings, for tables.
func transitionNames(ts []Transition) []string {
	var out []string
	for _, t := range ts {
		out = append(out, string(t))
	}
	return out
}

// Views.

type recView struct {
	Name     string
	Kind     string
	Status   string
	Attempts int
	Error    string
	Finished bool
}

type instView struct {
	Phase       Phase
	State       string
	Step        int
	Attempt     int
	Waiting     bool
	Deadline    time.Time
	StuckIn     Phase // only while stuck: it means nothing otherwise
	Reason      string
	StuckReason string
	Seq         int
	History     []recView
}

type cmdView struct {
	Type      string
	Step      string
	MessageID string
	Attempt   int
	Deadline  time.Time
}

type evView struct {
	Type string
	ID   uuid.UUID
}

type decView struct {
	Changed     bool
	Transitions []string
	Instance    instView
	Commands    []cmdView
	Events      []evView
}

func viewInstance(in Instance) instView {
	v := instView{
		Phase: in.Phase, State: in.State, Step: in.Step, Attempt: in.Attempt, Waiting: in.Waiting,
		Deadline: in.Deadline, Reason: in.Reason, StuckReason: in.StuckReason, Seq: in.Seq,
	}
	if in.Phase == Stuck {
		v.StuckIn = in.StuckIn
	}
	for _, r := range in.History {
		v.History = append(v.History, recView{
			Name: r.Name, Kind: r.Kind, Status: r.Status, Attempts: r.Attempts, Error: r.Error,
			Finished: r.FinishedAt != nil,
		})
	}
	return v
}

func viewCommands(cmds []Command) []cmdView {
	var out []cmdView
	for _, c := range cmds {
		out = append(out, cmdView{Type: c.Type, Step: c.Step, MessageID: c.MessageID, Attempt: c.Attempt, Deadline: c.Deadline})
	}
	return out
}

func viewEvents(evs []Event) []evView {
	var out []evView
	for _, e := range evs {
		out = append(out, evView{Type: e.Type, ID: e.ID})
	}
	return out
}

func viewDecision(d Decision) decView {
	return decView{
		Changed: d.Changed, Transitions: transitionNames(d.Transitions), Instance: viewInstance(d.Instance),
		Commands: viewCommands(d.Commands), Events: viewEvents(d.Events),
	}
}

// History record shorthands; Finished follows from the status.
func recRun(name, kind string, attempts int, err string) recView {
	return recView{Name: name, Kind: kind, Status: StepRunning, Attempts: attempts, Error: err}
}

func recOK(name, kind string, attempts int) recView {
	return recView{Name: name, Kind: kind, Status: StepSucceeded, Attempts: attempts, Finished: true}
}

func recFail(name, kind string, attempts int, err string) recView {
	return recView{Name: name, Kind: kind, Status: StepFailed, Attempts: attempts, Error: err, Finished: true}
}

func cmdOf(d *Definition, name string, attempt int, deadline time.Time) cmdView {
	for _, st := range d.Steps {
		if st.Name == name {
			return cmdView{Type: st.Command, Step: name, MessageID: mid(name), Attempt: attempt, Deadline: deadline}
		}
		if st.Compensation != nil && st.Compensation.Name == name {
			return cmdView{Type: st.Compensation.Command, Step: name, MessageID: mid(name), Attempt: attempt, Deadline: deadline}
		}
	}
	panic("no step " + name)
}

var diffOpts = []cmp.Option{cmpopts.EquateEmpty()}

// Driving a saga.

func newSaga(t testing.TB, d *Definition) Instance {
	t.Helper()
	in, _ := d.New(sagaID, json.RawMessage(startData), prio, t0)
	return in
}

// apply decides and insists that the input changed the saga.
func apply(t testing.TB, d *Definition, in Instance, inp Input, now time.Time) Instance {
	t.Helper()
	dec, err := d.Decide(in, inp, now)
	if err != nil {
		t.Fatalf("Decide(%s) at %s: %v", inp.Kind, now.Format(time.RFC3339Nano), err)
	}
	if !dec.Changed {
		t.Fatalf("Decide(%s) at %s: saga unexpectedly unchanged (phase %s)", inp.Kind, now.Format(time.RFC3339Nano), in.Phase)
	}
	return dec.Instance
}

// runningAt starts the saga at t0 and lets steps 0..i-1 succeed, step j at
// t0+(j+1)s: step i is then in flight with its first attempt.
func runningAt(t testing.TB, d *Definition, i int) Instance {
	t.Helper()
	in := apply(t, d, newSaga(t, d), startIn(), t0)
	for j := 0; j < i; j++ {
		in = apply(t, d, in, okIn(d.Steps[j].Name, ""), ts(time.Duration(j+1)*s))
	}
	return in
}

// declined: the payment is declined at t0+5s; release_stock is in flight
// (deadline t0+15s, seq 4).
func declined(t testing.TB, d *Definition) Instance {
	t.Helper()
	return apply(t, d, runningAt(t, d, 1), failedIn(stCharge, "card_declined", "insufficient funds"), ts(5*s))
}

// shipmentRefused: the carrier refuses at t0+5s; refund_payment is in
// flight (deadline t0+15s, seq 5).
func shipmentRefused(t testing.TB, d *Definition) Instance {
	t.Helper()
	return apply(t, d, runningAt(t, d, 2), failedIn(stPrepare, "address_refused", "country ZZ"), ts(5*s))
}

// timeouts fires n timeouts, each at the saga's deadline.
func timeouts(t testing.TB, d *Definition, in Instance, n int) Instance {
	t.Helper()
	for range n {
		in = apply(t, d, in, timeoutIn(), in.Deadline)
	}
	return in
}

// exhaust fires timeouts at the deadline until the saga leaves its phase.
func exhaust(t testing.TB, d *Definition, in Instance) Instance {
	t.Helper()
	p := in.Phase
	for i := 0; in.Phase == p; i++ {
		if i > 50 {
			t.Fatalf("saga never left phase %s", p)
		}
		in = apply(t, d, in, timeoutIn(), in.Deadline)
	}
	return in
}

// stuckRunning: commit_stock ran out of its 4 attempts at t0+103s (seq 5).
func stuckRunning(t testing.TB, d *Definition) Instance {
	t.Helper()
	return exhaust(t, d, runningAt(t, d, 3))
}

func completedSaga(t testing.TB, d *Definition) Instance {
	t.Helper()
	return apply(t, d, runningAt(t, d, 3), okIn(stCommit, ""), ts(4*s))
}

func rejectedSaga(t testing.TB, d *Definition) Instance {
	t.Helper()
	return apply(t, d, runningAt(t, d, 0), failedIn(stReserve, "out_of_stock", ""), ts(1*s))
}

func cancelledSaga(t testing.TB, d *Definition) Instance {
	t.Helper()
	return apply(t, d, declined(t, d), okIn(stRelease, ""), ts(6*s))
}

// move is one input of a scenario and the decision it must produce.
type move struct {
	name string
	at   time.Time
	in   Input
	want decView
}

// play applies moves in order and returns the final instance and every
// command sent along the way. An unchanged decision must hand back the
// instance it was given, untouched.
func play(t *testing.T, d *Definition, in Instance, moves []move) (Instance, []Command) {
	t.Helper()
	var sent []Command
	for _, m := range moves {
		dec, err := d.Decide(in, m.in, m.at)
		if err != nil {
			t.Fatalf("%s: Decide: %v", m.name, err)
		}
		if diff := cmp.Diff(m.want, viewDecision(dec), diffOpts...); diff != "" {
			t.Fatalf("%s: decision mismatch (-want +got):\n%s", m.name, diff)
		}
		if !dec.Changed {
			if diff := cmp.Diff(in, dec.Instance); diff != "" {
				t.Fatalf("%s: unchanged decision altered the instance (-want +got):\n%s", m.name, diff)
			}
		} else if !dec.Instance.UpdatedAt.Equal(m.at) {
			t.Fatalf("%s: UpdatedAt = %v, want %v", m.name, dec.Instance.UpdatedAt, m.at)
		}
		sent = append(sent, dec.Commands...)
		in = dec.Instance
	}
	return in, sent
}

// assertIgnored checks that an input is a no-op.
func assertIgnored(t *testing.T, d *Definition, in Instance, inp Input, now time.Time) {
	t.Helper()
	dec, err := d.Decide(in, inp, now)
	if err != nil {
		t.Fatalf("Decide: unexpected error %v", err)
	}
	want := decView{Changed: false, Instance: viewInstance(in)}
	if diff := cmp.Diff(want, viewDecision(dec), diffOpts...); diff != "" {
		t.Errorf("decision (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(in, dec.Instance); diff != "" {
		t.Errorf("instance must be returned untouched (-want +got):\n%s", diff)
	}
}

func commandTypes(cmds []Command) []string {
	var out []string
	for _, c := range cmds {
		out = append(out, c.Type)
	}
	return out
}

func jsonValue(t testing.TB, raw []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("invalid JSON %q: %v", raw, err)
	}
	return v
}

// ---------------------------------------------------------------------------
// The state machine table.
// ---------------------------------------------------------------------------

func TestTransitionTable(t *testing.T) {
	t.Parallel()
	type row struct {
		Name string
		Src  []string
		Dst  string
	}
	want := []row{
		{"start", []string{"pending"}, "running"},
		{"advance", []string{"running"}, "running"},
		{"retry", []string{"running"}, "running"},
		{"complete", []string{"running"}, "completed"},
		{"reject", []string{"running"}, "rejected"},
		{"compensate", []string{"running"}, "compensating"},
		{"compensate_next", []string{"compensating"}, "compensating"},
		{"retry_compensation", []string{"compensating"}, "compensating"},
		{"finish_compensation", []string{"compensating"}, "cancelled"},
		{"stick", []string{"running", "compensating"}, "stuck"},
		{"resume", []string{"stuck"}, "running"},
		{"resume_compensation", []string{"stuck"}, "compensating"},
		{"abort", []string{"pending"}, "cancelled"},
	}
	var got []row
	for _, e := range Transitions() {
		got = append(got, row{e.Name, e.Src, e.Dst})
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Transitions() (-want +got):\n%s", diff)
	}
}

// TestEveryTransitionIsExercised drives the saga through each event of the
// table and checks that the phases before and after match the table.
func TestEveryTransitionIsExercised(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	type tc struct {
		setup func(t *testing.T) Instance
		in    Input
		at    func(in Instance) time.Time
	}
	atDeadline := func(in Instance) time.Time { return in.Deadline }
	later := func(in Instance) time.Time { return in.UpdatedAt.Add(1 * s) }
	cases := map[string]tc{
		"start":   {func(t *testing.T) Instance { return newSaga(t, d) }, startIn(), later},
		"advance": {func(t *testing.T) Instance { return runningAt(t, d, 0) }, okIn(stReserve, ""), later},
		"retry":   {func(t *testing.T) Instance { return runningAt(t, d, 0) }, timeoutIn(), atDeadline},
		"complete": {func(t *testing.T) Instance { return runningAt(t, d, 3) },
			okIn(stCommit, ""), later},
		"reject": {func(t *testing.T) Instance { return runningAt(t, d, 0) },
			failedIn(stReserve, "out_of_stock", ""), later},
		"compensate": {func(t *testing.T) Instance { return runningAt(t, d, 1) },
			failedIn(stCharge, "card_declined", ""), later},
		"compensate_next": {func(t *testing.T) Instance { return shipmentRefused(t, d) },
			okIn(stRefund, ""), later},
		"retry_compensation": {func(t *testing.T) Instance { return declined(t, d) }, timeoutIn(), atDeadline},
		"finish_compensation": {func(t *testing.T) Instance { return declined(t, d) },
			okIn(stRelease, ""), later},
		"stick": {func(t *testing.T) Instance { return timeouts(t, d, runningAt(t, d, 3), 3) },
			timeoutIn(), atDeadline},
		"resume": {func(t *testing.T) Instance { return stuckRunning(t, d) }, replayIn(), later},
		"resume_compensation": {func(t *testing.T) Instance { return exhaust(t, d, declined(t, d)) },
			replayIn(), later},
		"abort": {func(t *testing.T) Instance { return newSaga(t, d) }, cancelIn(""), later},
	}
	for _, e := range Transitions() {
		t.Run(e.Name, func(t *testing.T) {
			t.Parallel()
			c, ok := cases[e.Name]
			if !ok {
				t.Fatalf("no test case drives transition %q", e.Name)
			}
			in := c.setup(t)
			if !slices.Contains(e.Src, string(in.Phase)) {
				t.Fatalf("setup phase %s is not a source of %q (%v)", in.Phase, e.Name, e.Src)
			}
			dec, err := d.Decide(in, c.in, c.at(in))
			if err != nil {
				t.Fatalf("Decide: %v", err)
			}
			if diff := cmp.Diff([]string{e.Name}, transitionNames(dec.Transitions)); diff != "" {
				t.Errorf("Transitions (-want +got):\n%s", diff)
			}
			if string(dec.Instance.Phase) != e.Dst {
				t.Errorf("phase after %q = %s, want %s", e.Name, dec.Instance.Phase, e.Dst)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// New and the happy path.
// ---------------------------------------------------------------------------

func TestNew(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	// A non-UTC time with sub-microsecond precision: stored as UTC, truncated.
	now := time.Date(2025, time.March, 14, 10, 0, 0, 1500, time.FixedZone("CET", 3600))
	in, ev := d.New(sagaID, json.RawMessage(startData), prio, now)

	// A pending saga has no deadline: the coordinator's starter admits it.
	want := Instance{
		ID: sagaID, Definition: sagaName, Version: 1, Phase: Pending, State: "pending", Step: 0, Attempt: 0,
		Priority: prio, Data: json.RawMessage(startData),
		Seq: 1, CreatedAt: ts(time.Microsecond), UpdatedAt: ts(time.Microsecond),
	}
	if diff := cmp.Diff(want, in); diff != "" {
		t.Errorf("New instance (-want +got):\n%s", diff)
	}
	for name, tm := range map[string]time.Time{"CreatedAt": in.CreatedAt, "UpdatedAt": in.UpdatedAt, "Deadline": in.Deadline} {
		if tm.Location() != time.UTC {
			t.Errorf("%s location = %v, want UTC", name, tm.Location())
		}
	}
	wantEv := Event{ID: evID(1), Type: "shop.created", SagaID: sagaID, At: ts(time.Microsecond)}
	if diff := cmp.Diff(wantEv, ev, cmpopts.IgnoreFields(Event{}, "Payload")); diff != "" {
		t.Errorf("created event (-want +got):\n%s", diff)
	}
	wantPayload := map[string]any{"saga_id": sagaID.String(), "seq": 1.0, "state": "pending", "data": map[string]any{"order_id": "o-1"}}
	if diff := cmp.Diff(any(wantPayload), jsonValue(t, ev.Payload)); diff != "" {
		t.Errorf("created event payload (-want +got):\n%s", diff)
	}
}

func TestEventIDsAreStable(t *testing.T) {
	t.Parallel()
	// Golden values (cross-checked with Python's uuid.uuid5): event ids are a
	// name-based UUID (v5) of the saga id and the sequence number. Changing the derivation would make consumers see
	// replayed events as new ones.
	golden := map[int]string{
		1: "90a03012-2671-598f-95d0-f4a964c2ca12",
		2: "e9ac12d7-136c-5c59-8758-d3a0fa7b4c95",
	}
	for n, want := range golden {
		if got := evID(n).String(); got != want {
			t.Errorf("event id #%d = %s, want %s", n, got, want)
		}
	}
	d := testDefinition(t)
	in := completedSaga(t, d)
	if in.Seq != 6 {
		t.Fatalf("Seq after the happy path = %d, want 6", in.Seq)
	}
	_, ev := d.New(sagaID, json.RawMessage(startData), prio, t0)
	if ev.ID.String() != golden[1] {
		t.Errorf("created event id = %s, want %s", ev.ID, golden[1])
	}
	dec, err := d.Decide(runningAt(t, d, 0), okIn(stReserve, ""), ts(1*s))
	if err != nil {
		t.Fatal(err)
	}
	if len(dec.Events) != 1 || dec.Events[0].ID.String() != golden[2] {
		t.Errorf("second event = %+v, want id %s", dec.Events, golden[2])
	}
	// Another saga numbers its events from 1 too, with other ids.
	_, other := d.New(otherID, json.RawMessage(startData), prio, t0)
	if other.ID == ev.ID {
		t.Errorf("two sagas share event id %s", ev.ID)
	}
}

func TestMessageID(t *testing.T) {
	t.Parallel()
	if got, want := MessageID(sagaID, stCharge), "5b3f7a52-8d0e-4c6a-9a51-2f4c1d7e9b30:charge_payment"; got != want {
		t.Errorf("MessageID = %q, want %q", got, want)
	}
}

func TestDecideHappyPath(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	in := newSaga(t, d)
	final, sent := play(t, d, in, []move{
		{"start", t0, startIn(), decView{
			Changed: true, Transitions: []string{"start"},
			Instance: instView{Phase: Running, State: "reserving_stock", Step: 0, Attempt: 1, Deadline: ts(10 * s), Seq: 1,
				History: []recView{recRun(stReserve, act, 1, "")}},
			Commands: []cmdView{cmdOf(d, stReserve, 1, ts(10*s))},
		}},
		{"reserve ok", ts(1 * s), okIn(stReserve, `{"amount_cents":1500}`), decView{
			Changed: true, Transitions: []string{"advance"},
			Instance: instView{Phase: Running, State: "charging_payment", Step: 1, Attempt: 1, Deadline: ts(11 * s), Seq: 2,
				History: []recView{recOK(stReserve, act, 1), recRun(stCharge, act, 1, "")}},
			Commands: []cmdView{cmdOf(d, stCharge, 1, ts(11*s))},
			Events:   []evView{{"inventory.reserved", evID(2)}},
		}},
		{"charge ok", ts(2 * s), okIn(stCharge, `{"payment_id":"pay-9"}`), decView{
			Changed: true, Transitions: []string{"advance"},
			// prepare_shipment has its own 30s timeout.
			Instance: instView{Phase: Running, State: "preparing_shipment", Step: 2, Attempt: 1, Deadline: ts(32 * s), Seq: 3,
				History: []recView{recOK(stReserve, act, 1), recOK(stCharge, act, 1), recRun(stPrepare, act, 1, "")}},
			Commands: []cmdView{cmdOf(d, stPrepare, 1, ts(32*s))},
			Events:   []evView{{"payment.succeeded", evID(3)}},
		}},
		{"prepare ok", ts(3 * s), okIn(stPrepare, `{"tracking":"TRK-1"}`), decView{
			Changed: true, Transitions: []string{"advance"},
			Instance: instView{Phase: Running, State: "committing_stock", Step: 3, Attempt: 1, Deadline: ts(13 * s), Seq: 4,
				History: []recView{recOK(stReserve, act, 1), recOK(stCharge, act, 1), recOK(stPrepare, act, 1), recRun(stCommit, act, 1, "")}},
			Commands: []cmdView{cmdOf(d, stCommit, 1, ts(13*s))},
			Events:   []evView{{"shipping.prepared", evID(4)}},
		}},
		{"commit ok", ts(4 * s), okIn(stCommit, ""), decView{
			Changed: true, Transitions: []string{"complete"},
			Instance: instView{Phase: Completed, State: "completed", Step: 3, Attempt: 1, Deadline: zero, Seq: 6,
				History: []recView{recOK(stReserve, act, 1), recOK(stCharge, act, 1), recOK(stPrepare, act, 1), recOK(stCommit, act, 1)}},
			Events: []evView{{"inventory.committed", evID(5)}, {"shop.completed", evID(6)}},
		}},
	})

	if diff := cmp.Diff([]string{"inventory.reserve", "payment.charge", "shipping.prepare", "inventory.commit"}, commandTypes(sent)); diff != "" {
		t.Errorf("commands sent (-want +got):\n%s", diff)
	}
	wantData := map[string]any{"order_id": "o-1", "amount_cents": 1500.0, "payment_id": "pay-9", "tracking": "TRK-1"}
	if diff := cmp.Diff(any(wantData), jsonValue(t, final.Data)); diff != "" {
		t.Errorf("final data (-want +got):\n%s", diff)
	}
	if !final.CreatedAt.Equal(t0) || !final.UpdatedAt.Equal(ts(4*s)) {
		t.Errorf("CreatedAt, UpdatedAt = %v, %v; want %v, %v", final.CreatedAt, final.UpdatedAt, t0, ts(4*s))
	}
	// Each record starts when its command is first sent and finishes with
	// the reply.
	type span struct {
		Name            string
		Started, Finish time.Time
	}
	var got []span
	for _, r := range final.History {
		sp := span{Name: r.Name, Started: r.StartedAt}
		if r.FinishedAt != nil {
			sp.Finish = *r.FinishedAt
		}
		got = append(got, sp)
	}
	want := []span{
		{stReserve, t0, ts(1 * s)}, {stCharge, ts(1 * s), ts(2 * s)},
		{stPrepare, ts(2 * s), ts(3 * s)}, {stCommit, ts(3 * s), ts(4 * s)},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("history times (-want +got):\n%s", diff)
	}
}

// TestDecideCommandAndEventDetails checks the fields of commands and events
// that the scenario views leave out: saga id, priority, payload, time.
func TestDecideCommandAndEventDetails(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	started, err := d.Decide(newSaga(t, d), startIn(), t0)
	if err != nil {
		t.Fatal(err)
	}
	wantCmd := Command{
		MessageID: mid(stReserve), SagaID: sagaID, Type: "inventory.reserve", Step: stReserve,
		Attempt: 1, Priority: prio, Deadline: ts(10 * s), Payload: json.RawMessage(startData),
	}
	if diff := cmp.Diff([]Command{wantCmd}, started.Commands); diff != "" {
		t.Errorf("start command (-want +got):\n%s", diff)
	}

	dec, err := d.Decide(started.Instance, okIn(stReserve, `{"amount_cents":1500}`), ts(1*s))
	if err != nil {
		t.Fatal(err)
	}
	if len(dec.Commands) != 1 {
		t.Fatalf("commands = %+v, want one", dec.Commands)
	}
	// The next command carries the data merged with the reply.
	wantData := map[string]any{"order_id": "o-1", "amount_cents": 1500.0}
	if diff := cmp.Diff(any(wantData), jsonValue(t, dec.Commands[0].Payload)); diff != "" {
		t.Errorf("charge payload (-want +got):\n%s", diff)
	}
	if len(dec.Events) != 1 {
		t.Fatalf("events = %+v, want one", dec.Events)
	}
	ev := dec.Events[0]
	if ev.SagaID != sagaID || !ev.At.Equal(ts(1*s)) {
		t.Errorf("event saga, at = %s, %v; want %s, %v", ev.SagaID, ev.At, sagaID, ts(1*s))
	}
	wantPayload := map[string]any{
		"saga_id": sagaID.String(), "seq": 2.0, "state": "reserving_stock", "step": stReserve,
		"data": map[string]any{"order_id": "o-1", "amount_cents": 1500.0},
	}
	if diff := cmp.Diff(any(wantPayload), jsonValue(t, ev.Payload)); diff != "" {
		t.Errorf("inventory.reserved payload (-want +got):\n%s", diff)
	}

	// A business failure names the step, code and message, and the reason.
	failed, err := d.Decide(dec.Instance, failedIn(stCharge, "card_declined", "insufficient funds"), ts(2*s))
	if err != nil {
		t.Fatal(err)
	}
	if got := len(failed.Events); got != 2 {
		t.Fatalf("events = %d, want 2", got)
	}
	wantFailed := map[string]any{
		"saga_id": sagaID.String(), "seq": 3.0, "state": "charging_payment", "reason": "card_declined: insufficient funds",
		"step": stCharge, "code": "card_declined", "message": "insufficient funds",
		"data": map[string]any{"order_id": "o-1", "amount_cents": 1500.0},
	}
	if diff := cmp.Diff(any(wantFailed), jsonValue(t, failed.Events[0].Payload)); diff != "" {
		t.Errorf("payment.failed payload (-want +got):\n%s", diff)
	}
	wantComp := map[string]any{
		"saga_id": sagaID.String(), "seq": 4.0, "state": "compensating", "reason": "card_declined: insufficient funds",
		"data": map[string]any{"order_id": "o-1", "amount_cents": 1500.0},
	}
	if diff := cmp.Diff(any(wantComp), jsonValue(t, failed.Events[1].Payload)); diff != "" {
		t.Errorf("shop.compensating payload (-want +got):\n%s", diff)
	}

	// A stuck event names the step and the reason it is stuck.
	stuck := timeouts(t, d, runningAt(t, d, 3), 3)
	sd, err := d.Decide(stuck, timeoutIn(), stuck.Deadline)
	if err != nil {
		t.Fatal(err)
	}
	if len(sd.Events) != 1 {
		t.Fatalf("events = %+v, want one", sd.Events)
	}
	wantStuck := map[string]any{
		"saga_id": sagaID.String(), "seq": 5.0, "state": "stuck", "step": stCommit, "code": string(CauseNoReply),
		"message": "commit_stock: gave up after 4 attempts: no reply to attempt 4",
		"data":    map[string]any{"order_id": "o-1"},
	}
	if diff := cmp.Diff(any(wantStuck), jsonValue(t, sd.Events[0].Payload)); diff != "" {
		t.Errorf("shop.stuck payload (-want +got):\n%s", diff)
	}
}

// TestDecideNormalizesTime: the clock's reading is stored as UTC truncated
// to microseconds (what PostgreSQL keeps), so a saga read back equals the
// one decided.
func TestDecideNormalizesTime(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	now := time.Date(2025, time.March, 14, 10, 0, 1, 999_999, time.FixedZone("CET", 3600)) // t0+1.000999999s
	dec, err := d.Decide(runningAt(t, d, 0), okIn(stReserve, ""), now)
	if err != nil {
		t.Fatal(err)
	}
	want := ts(1*s + 999*time.Microsecond)
	got := map[string]time.Time{
		"UpdatedAt":         dec.Instance.UpdatedAt,
		"Deadline":          dec.Instance.Deadline,
		"Command.Deadline":  dec.Commands[0].Deadline,
		"Event.At":          dec.Events[0].At,
		"History.StartedAt": dec.Instance.History[1].StartedAt,
		"History.Finished":  *dec.Instance.History[0].FinishedAt,
	}
	wantTimes := map[string]time.Time{
		"UpdatedAt": want, "Deadline": want.Add(10 * s), "Command.Deadline": want.Add(10 * s),
		"Event.At": want, "History.StartedAt": want, "History.Finished": want,
	}
	if diff := cmp.Diff(wantTimes, got); diff != "" {
		t.Errorf("times (-want +got):\n%s", diff)
	}
	for name, tm := range got {
		if tm.Location() != time.UTC {
			t.Errorf("%s is in %v, want UTC", name, tm.Location())
		}
	}
}

// TestDecideRequestAndEventData checks the projections of a definition.
func TestDecideRequestAndEventData(t *testing.T) {
	t.Parallel()
	d := &Definition{Name: sagaName, Steps: testSteps(), Retry: testRetry(),
		Request: func(command string, data json.RawMessage) (json.RawMessage, error) {
			if command == "inventory.release" {
				return nil, errors.New("cannot build")
			}
			return json.RawMessage(`{"cmd":"` + command + `"}`), nil
		},
		EventData: func(json.RawMessage) json.RawMessage { return json.RawMessage(`{"public":true}`) },
	}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	dec, err := d.Decide(newSaga(t, d), startIn(), t0)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(dec.Commands[0].Payload); got != `{"cmd":"inventory.reserve"}` {
		t.Errorf("projected payload = %s", got)
	}
	dec, err = d.Decide(dec.Instance, failedIn(stReserve, "unknown_sku", ""), ts(1*s))
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range dec.Events {
		p := jsonValue(t, ev.Payload).(map[string]any)
		if diff := cmp.Diff(any(map[string]any{"public": true}), p["data"]); diff != "" {
			t.Errorf("%s data (-want +got):\n%s", ev.Type, diff)
		}
	}
	// A projection that fails falls back to the whole data object.
	in := runningAt(t, d, 1)
	dec, err = d.Decide(in, failedIn(stCharge, "card_declined", ""), ts(5*s))
	if err != nil {
		t.Fatal(err)
	}
	if len(dec.Commands) != 1 || string(dec.Commands[0].Payload) != startData {
		t.Errorf("release payload = %+v, want the saga data %s", dec.Commands, startData)
	}
}

// ---------------------------------------------------------------------------
// Business failures.
// ---------------------------------------------------------------------------

func TestDecideBusinessFailure(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	const declinedMsg = "card_declined: insufficient funds"
	const refusedMsg = "address_refused: country ZZ"
	cases := []struct {
		name  string
		setup func(t *testing.T) Instance
		moves []move
		// compensations is the ordered list of commands sent after the failure.
		compensations []string
	}{
		{
			name:  "first step fails with a mapped code: rejected",
			setup: func(t *testing.T) Instance { return runningAt(t, d, 0) },
			moves: []move{{"reserve failed", ts(1 * s), failedIn(stReserve, "out_of_stock", "sku A-1 sold out"), decView{
				Changed: true, Transitions: []string{"reject"},
				Instance: instView{Phase: Rejected, State: "rejected", Step: 0, Attempt: 1, Deadline: zero,
					Reason: "out_of_stock: sku A-1 sold out", Seq: 3,
					History: []recView{recFail(stReserve, act, 1, "out_of_stock: sku A-1 sold out")}},
				Events: []evView{{"inventory.out_of_stock", evID(2)}, {"shop.rejected", evID(3)}},
			}}},
		},
		{
			name:  "first step fails with another code: default failed event",
			setup: func(t *testing.T) Instance { return runningAt(t, d, 0) },
			moves: []move{{"reserve failed", ts(1 * s), failedIn(stReserve, "unknown_warehouse", ""), decView{
				Changed: true, Transitions: []string{"reject"},
				Instance: instView{Phase: Rejected, State: "rejected", Step: 0, Attempt: 1, Deadline: zero,
					Reason: "unknown_warehouse", Seq: 3,
					History: []recView{recFail(stReserve, act, 1, "unknown_warehouse")}},
				Events: []evView{{"inventory.reservation_failed", evID(2)}, {"shop.rejected", evID(3)}},
			}}},
		},
		{
			name:  "second step fails: only the first is compensated",
			setup: func(t *testing.T) Instance { return runningAt(t, d, 1) },
			moves: []move{
				{"charge failed", ts(5 * s), failedIn(stCharge, "card_declined", "insufficient funds"), decView{
					Changed: true, Transitions: []string{"compensate"},
					Instance: instView{Phase: Compensating, State: "compensating", Step: 0, Attempt: 1, Deadline: ts(15 * s),
						Reason: declinedMsg, Seq: 4,
						History: []recView{recOK(stReserve, act, 1), recFail(stCharge, act, 1, declinedMsg), recRun(stRelease, comp, 1, "")}},
					Commands: []cmdView{cmdOf(d, stRelease, 1, ts(15*s))},
					Events:   []evView{{"payment.failed", evID(3)}, {"shop.compensating", evID(4)}},
				}},
				{"release ok", ts(6 * s), okIn(stRelease, ""), decView{
					Changed: true, Transitions: []string{"finish_compensation"},
					Instance: instView{Phase: Cancelled, State: "cancelled", Step: 0, Attempt: 1, Deadline: zero,
						Reason: declinedMsg, Seq: 6,
						History: []recView{recOK(stReserve, act, 1), recFail(stCharge, act, 1, declinedMsg), recOK(stRelease, comp, 1)}},
					Events: []evView{{"inventory.released", evID(5)}, {"shop.cancelled", evID(6)}},
				}},
			},
			compensations: []string{"inventory.release"},
		},
		{
			name:  "third step fails: compensations in reverse order",
			setup: func(t *testing.T) Instance { return runningAt(t, d, 2) },
			moves: []move{
				{"prepare failed", ts(5 * s), failedIn(stPrepare, "address_refused", "country ZZ"), decView{
					Changed: true, Transitions: []string{"compensate"},
					Instance: instView{Phase: Compensating, State: "compensating", Step: 1, Attempt: 1, Deadline: ts(15 * s),
						Reason: refusedMsg, Seq: 5,
						History: []recView{recOK(stReserve, act, 1), recOK(stCharge, act, 1), recFail(stPrepare, act, 1, refusedMsg),
							recRun(stRefund, comp, 1, "")}},
					Commands: []cmdView{cmdOf(d, stRefund, 1, ts(15*s))},
					Events:   []evView{{"shipping.failed", evID(4)}, {"shop.compensating", evID(5)}},
				}},
				{"refund ok", ts(6 * s), okIn(stRefund, ""), decView{
					Changed: true, Transitions: []string{"compensate_next"},
					Instance: instView{Phase: Compensating, State: "compensating", Step: 0, Attempt: 1, Deadline: ts(16 * s),
						Reason: refusedMsg, Seq: 6,
						History: []recView{recOK(stReserve, act, 1), recOK(stCharge, act, 1), recFail(stPrepare, act, 1, refusedMsg),
							recOK(stRefund, comp, 1), recRun(stRelease, comp, 1, "")}},
					Commands: []cmdView{cmdOf(d, stRelease, 1, ts(16*s))},
					Events:   []evView{{"payment.refunded", evID(6)}},
				}},
				{"release ok", ts(7 * s), okIn(stRelease, ""), decView{
					Changed: true, Transitions: []string{"finish_compensation"},
					Instance: instView{Phase: Cancelled, State: "cancelled", Step: 0, Attempt: 1, Deadline: zero,
						Reason: refusedMsg, Seq: 8,
						History: []recView{recOK(stReserve, act, 1), recOK(stCharge, act, 1), recFail(stPrepare, act, 1, refusedMsg),
							recOK(stRefund, comp, 1), recOK(stRelease, comp, 1)}},
					Events: []evView{{"inventory.released", evID(7)}, {"shop.cancelled", evID(8)}},
				}},
			},
			compensations: []string{"payment.refund", "inventory.release"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			final, sent := play(t, d, c.setup(t), c.moves)
			if diff := cmp.Diff(c.compensations, commandTypes(sent), diffOpts...); diff != "" {
				t.Errorf("compensation commands, in order (-want +got):\n%s", diff)
			}
			if !final.Phase.Terminal() {
				t.Errorf("final phase %s is not terminal", final.Phase)
			}
			// A failed reply's payload is never merged.
			if got := string(final.Data); got != startData {
				t.Errorf("data = %s, want %s", got, startData)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Timeouts.
// ---------------------------------------------------------------------------

// TestDecideTimeoutWaits checks the wait of each attempt: the base timeout
// (the step's own, else Retry.Timeout), times Multiplier per attempt,
// capped by MaxTimeout.
func TestDecideTimeoutWaits(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	cases := []struct {
		name  string
		setup func(t *testing.T) Instance
		step  string
		waits []time.Duration
	}{
		{"compensatable step", func(t *testing.T) Instance { return runningAt(t, d, 0) }, stReserve, []time.Duration{10 * s, 20 * s, 35 * s}},
		{"step with its own timeout", func(t *testing.T) Instance { return runningAt(t, d, 2) }, stPrepare, []time.Duration{30 * s, 35 * s, 35 * s}},
		{"retriable step", func(t *testing.T) Instance { return runningAt(t, d, 3) }, stCommit, []time.Duration{10 * s, 20 * s, 35 * s, 35 * s}},
		{"compensation", func(t *testing.T) Instance { return declined(t, d) }, stRelease, []time.Duration{10 * s, 20 * s}},
		{"compensation of a step with its own timeout", func(t *testing.T) Instance {
			return apply(t, d, runningAt(t, d, 2), cancelIn(""), ts(5*s))
		}, stCancelSh, []time.Duration{30 * s, 35 * s}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			in := c.setup(t)
			var got []time.Duration
			got = append(got, in.Deadline.Sub(in.UpdatedAt))
			for attempt := 2; attempt <= len(c.waits); attempt++ {
				now := in.Deadline
				dec, err := d.Decide(in, timeoutIn(), now)
				if err != nil {
					t.Fatal(err)
				}
				want := []cmdView{cmdOf(d, c.step, attempt, now.Add(c.waits[attempt-1]))}
				if diff := cmp.Diff(want, viewCommands(dec.Commands)); diff != "" {
					t.Fatalf("attempt %d: re-sent command (-want +got):\n%s", attempt, diff)
				}
				if dec.Instance.Attempt != attempt {
					t.Fatalf("attempt %d: Instance.Attempt = %d", attempt, dec.Instance.Attempt)
				}
				in = dec.Instance
				got = append(got, in.Deadline.Sub(now))
			}
			if diff := cmp.Diff(c.waits, got); diff != "" {
				t.Errorf("waits (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecideTimeout(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	const gaveUpCharge = "charge_payment: gave up after 3 attempts: no reply to attempt 3"
	const gaveUpCommit = "commit_stock: gave up after 4 attempts: no reply to attempt 4"
	const gaveUpRelease = "release_stock: gave up after 2 attempts: no reply to attempt 2"
	const declinedMsg = "card_declined: insufficient funds"
	done3 := []recView{recOK(stReserve, act, 1), recOK(stCharge, act, 1), recOK(stPrepare, act, 1)}
	cases := []struct {
		name  string
		setup func(t *testing.T) Instance
		moves []move
	}{
		{
			name:  "compensatable step: re-sent until its budget is spent, then compensated from itself",
			setup: func(t *testing.T) Instance { return runningAt(t, d, 1) }, // deadline t0+11s
			moves: []move{
				{"1µs before the deadline", ts(11*s - time.Microsecond), timeoutIn(), decView{
					Instance: instView{Phase: Running, State: "charging_payment", Step: 1, Attempt: 1, Deadline: ts(11 * s), Seq: 2,
						History: []recView{recOK(stReserve, act, 1), recRun(stCharge, act, 1, "")}},
				}},
				{"at the deadline", ts(11 * s), timeoutIn(), decView{
					Changed: true, Transitions: []string{"retry"},
					Instance: instView{Phase: Running, State: "charging_payment", Step: 1, Attempt: 2, Deadline: ts(31 * s), Seq: 2,
						History: []recView{recOK(stReserve, act, 1), recRun(stCharge, act, 2, "no reply to attempt 1")}},
					Commands: []cmdView{cmdOf(d, stCharge, 2, ts(31*s))},
				}},
				{"second timeout, wait capped", ts(31 * s), timeoutIn(), decView{
					Changed: true, Transitions: []string{"retry"},
					Instance: instView{Phase: Running, State: "charging_payment", Step: 1, Attempt: 3, Deadline: ts(66 * s), Seq: 2,
						History: []recView{recOK(stReserve, act, 1), recRun(stCharge, act, 3, "no reply to attempt 2")}},
					Commands: []cmdView{cmdOf(d, stCharge, 3, ts(66*s))},
				}},
				{"budget spent", ts(66 * s), timeoutIn(), decView{
					Changed: true, Transitions: []string{"compensate"},
					Instance: instView{Phase: Compensating, State: "compensating", Step: 1, Attempt: 1, Deadline: ts(76 * s),
						Reason: gaveUpCharge, Seq: 3,
						History: []recView{recOK(stReserve, act, 1), recFail(stCharge, act, 3, gaveUpCharge), recRun(stRefund, comp, 1, "")}},
					// The last attempt may have charged: refund first.
					Commands: []cmdView{cmdOf(d, stRefund, 1, ts(76*s))},
					Events:   []evView{{"shop.compensating", evID(3)}},
				}},
				{"refund ok", ts(77 * s), okIn(stRefund, ""), decView{
					Changed: true, Transitions: []string{"compensate_next"},
					Instance: instView{Phase: Compensating, State: "compensating", Step: 0, Attempt: 1, Deadline: ts(87 * s),
						Reason: gaveUpCharge, Seq: 4,
						History: []recView{recOK(stReserve, act, 1), recFail(stCharge, act, 3, gaveUpCharge), recOK(stRefund, comp, 1),
							recRun(stRelease, comp, 1, "")}},
					Commands: []cmdView{cmdOf(d, stRelease, 1, ts(87*s))},
					Events:   []evView{{"payment.refunded", evID(4)}},
				}},
				{"release ok", ts(78 * s), okIn(stRelease, ""), decView{
					Changed: true, Transitions: []string{"finish_compensation"},
					Instance: instView{Phase: Cancelled, State: "cancelled", Step: 0, Attempt: 1, Deadline: zero,
						Reason: gaveUpCharge, Seq: 6,
						History: []recView{recOK(stReserve, act, 1), recFail(stCharge, act, 3, gaveUpCharge), recOK(stRefund, comp, 1),
							recOK(stRelease, comp, 1)}},
					Events: []evView{{"inventory.released", evID(5)}, {"shop.cancelled", evID(6)}},
				}},
			},
		},
		{
			name:  "first step out of attempts compensates itself",
			setup: func(t *testing.T) Instance { return timeouts(t, d, runningAt(t, d, 0), 2) }, // attempt 3, deadline t0+65s
			moves: []move{{"budget spent", ts(65 * s), timeoutIn(), decView{
				Changed: true, Transitions: []string{"compensate"},
				Instance: instView{Phase: Compensating, State: "compensating", Step: 0, Attempt: 1, Deadline: ts(75 * s),
					Reason: "reserve_stock: gave up after 3 attempts: no reply to attempt 3", Seq: 2,
					History: []recView{recFail(stReserve, act, 3, "reserve_stock: gave up after 3 attempts: no reply to attempt 3"),
						recRun(stRelease, comp, 1, "")}},
				Commands: []cmdView{cmdOf(d, stRelease, 1, ts(75*s))},
				Events:   []evView{{"shop.compensating", evID(2)}},
			}}},
		},
		{
			name:  "retriable step out of attempts: stuck in running",
			setup: func(t *testing.T) Instance { return runningAt(t, d, 3) }, // deadline t0+13s
			moves: []move{
				{"timeout 1", ts(13 * s), timeoutIn(), decView{
					Changed: true, Transitions: []string{"retry"},
					Instance: instView{Phase: Running, State: "committing_stock", Step: 3, Attempt: 2, Deadline: ts(33 * s), Seq: 4,
						History: append(slices.Clone(done3), recRun(stCommit, act, 2, "no reply to attempt 1"))},
					Commands: []cmdView{cmdOf(d, stCommit, 2, ts(33*s))},
				}},
				{"timeout 2", ts(33 * s), timeoutIn(), decView{
					Changed: true, Transitions: []string{"retry"},
					Instance: instView{Phase: Running, State: "committing_stock", Step: 3, Attempt: 3, Deadline: ts(68 * s), Seq: 4,
						History: append(slices.Clone(done3), recRun(stCommit, act, 3, "no reply to attempt 2"))},
					Commands: []cmdView{cmdOf(d, stCommit, 3, ts(68*s))},
				}},
				{"timeout 3", ts(68 * s), timeoutIn(), decView{
					Changed: true, Transitions: []string{"retry"},
					Instance: instView{Phase: Running, State: "committing_stock", Step: 3, Attempt: 4, Deadline: ts(103 * s), Seq: 4,
						History: append(slices.Clone(done3), recRun(stCommit, act, 4, "no reply to attempt 3"))},
					Commands: []cmdView{cmdOf(d, stCommit, 4, ts(103*s))},
				}},
				{"budget spent", ts(103 * s), timeoutIn(), decView{
					Changed: true, Transitions: []string{"stick"},
					Instance: instView{Phase: Stuck, State: "stuck", Step: 3, Attempt: 4, Deadline: zero,
						StuckIn: Running, StuckReason: gaveUpCommit, Seq: 5,
						History: append(slices.Clone(done3), recFail(stCommit, act, 4, gaveUpCommit))},
					Events: []evView{{"shop.stuck", evID(5)}},
				}},
				{"no timer while stuck", ts(1000 * s), timeoutIn(), decView{
					Instance: instView{Phase: Stuck, State: "stuck", Step: 3, Attempt: 4, Deadline: zero,
						StuckIn: Running, StuckReason: gaveUpCommit, Seq: 5,
						History: append(slices.Clone(done3), recFail(stCommit, act, 4, gaveUpCommit))},
				}},
			},
		},
		{
			name:  "compensation out of attempts: stuck in compensating",
			setup: func(t *testing.T) Instance { return declined(t, d) }, // deadline t0+15s
			moves: []move{
				{"timeout 1", ts(15 * s), timeoutIn(), decView{
					Changed: true, Transitions: []string{"retry_compensation"},
					Instance: instView{Phase: Compensating, State: "compensating", Step: 0, Attempt: 2, Deadline: ts(35 * s),
						Reason: declinedMsg, Seq: 4,
						History: []recView{recOK(stReserve, act, 1), recFail(stCharge, act, 1, declinedMsg),
							recRun(stRelease, comp, 2, "no reply to attempt 1")}},
					Commands: []cmdView{cmdOf(d, stRelease, 2, ts(35*s))},
				}},
				{"budget spent", ts(35 * s), timeoutIn(), decView{
					Changed: true, Transitions: []string{"stick"},
					Instance: instView{Phase: Stuck, State: "stuck", Step: 0, Attempt: 2, Deadline: zero,
						StuckIn: Compensating, Reason: declinedMsg, StuckReason: gaveUpRelease, Seq: 5,
						History: []recView{recOK(stReserve, act, 1), recFail(stCharge, act, 1, declinedMsg),
							recFail(stRelease, comp, 2, gaveUpRelease)}},
					Events: []evView{{"shop.stuck", evID(5)}},
				}},
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			play(t, d, c.setup(t), c.moves)
		})
	}
}

// ---------------------------------------------------------------------------
// Transient failures.
// ---------------------------------------------------------------------------

func TestDecideTransientFailure(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	const gaveUp = "reserve_stock: gave up after 3 attempts: db_busy: deadlock detected"
	in := runningAt(t, d, 0) // deadline t0+10s
	play(t, d, in, []move{
		{"retry reply", ts(2 * s), retryIn(stReserve, "db_busy", ""), decView{
			Changed: true, Transitions: []string{"retry"},
			Instance: instView{Phase: Running, State: "reserving_stock", Step: 0, Attempt: 1, Waiting: true, Deadline: ts(3 * s), Seq: 1,
				History: []recView{recRun(stReserve, act, 1, "db_busy")}},
		}},
		{"timer during the backoff", ts(2500 * time.Millisecond), timeoutIn(), decView{
			Instance: instView{Phase: Running, State: "reserving_stock", Step: 0, Attempt: 1, Waiting: true, Deadline: ts(3 * s), Seq: 1,
				History: []recView{recRun(stReserve, act, 1, "db_busy")}},
		}},
		{"backoff over: re-sent", ts(3 * s), timeoutIn(), decView{
			Changed: true, Transitions: []string{"retry"},
			Instance: instView{Phase: Running, State: "reserving_stock", Step: 0, Attempt: 2, Deadline: ts(23 * s), Seq: 1,
				History: []recView{recRun(stReserve, act, 2, "db_busy")}},
			Commands: []cmdView{cmdOf(d, stReserve, 2, ts(23*s))},
		}},
		{"retry reply without a code", ts(4 * s), retryIn(stReserve, "", ""), decView{
			Changed: true, Transitions: []string{"retry"},
			Instance: instView{Phase: Running, State: "reserving_stock", Step: 0, Attempt: 2, Waiting: true, Deadline: ts(6 * s), Seq: 1,
				History: []recView{recRun(stReserve, act, 2, "retry")}},
		}},
		{"second backoff over: re-sent", ts(6 * s), timeoutIn(), decView{
			Changed: true, Transitions: []string{"retry"},
			Instance: instView{Phase: Running, State: "reserving_stock", Step: 0, Attempt: 3, Deadline: ts(41 * s), Seq: 1,
				History: []recView{recRun(stReserve, act, 3, "retry")}},
			Commands: []cmdView{cmdOf(d, stReserve, 3, ts(41*s))},
		}},
		{"budget spent: compensated from itself", ts(7 * s), retryIn(stReserve, "db_busy", "deadlock detected"), decView{
			Changed: true, Transitions: []string{"compensate"},
			Instance: instView{Phase: Compensating, State: "compensating", Step: 0, Attempt: 1, Deadline: ts(17 * s),
				Reason: gaveUp, Seq: 2,
				History: []recView{recFail(stReserve, act, 3, gaveUp), recRun(stRelease, comp, 1, "")}},
			Commands: []cmdView{cmdOf(d, stRelease, 1, ts(17*s))},
			Events:   []evView{{"shop.compensating", evID(2)}},
		}},
	})
}

// TestDecideRetryAnswersCountOncePerAttempt: a retry answer delivered
// again (the broker redelivers, a worker answers twice) does not spend a
// second attempt: it changed nothing before it was numbered, it burnt one.
func TestDecideRetryAnswersCountOncePerAttempt(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	in := runningAt(t, d, 0) // attempt 1, deadline t0+10s
	waiting := instView{Phase: Running, State: "reserving_stock", Step: 0, Attempt: 1, Waiting: true, Deadline: ts(3 * s), Seq: 1,
		History: []recView{recRun(stReserve, act, 1, "db_busy")}}
	play(t, d, in, []move{
		{"retry answer to attempt 1", ts(2 * s), retryOf(stReserve, 1), decView{
			Changed: true, Transitions: []string{"retry"}, Instance: waiting,
		}},
		{"the same answer again, while waiting", ts(2500 * time.Millisecond), retryOf(stReserve, 1), decView{Instance: waiting}},
		{"backoff over: re-sent", ts(3 * s), timeoutIn(), decView{
			Changed: true, Transitions: []string{"retry"},
			Instance: instView{Phase: Running, State: "reserving_stock", Step: 0, Attempt: 2, Deadline: ts(23 * s), Seq: 1,
				History: []recView{recRun(stReserve, act, 2, "db_busy")}},
			Commands: []cmdView{cmdOf(d, stReserve, 2, ts(23*s))},
		}},
		{"attempt 1's answer once more, late", ts(4 * s), retryOf(stReserve, 1), decView{
			Instance: instView{Phase: Running, State: "reserving_stock", Step: 0, Attempt: 2, Deadline: ts(23 * s), Seq: 1,
				History: []recView{recRun(stReserve, act, 2, "db_busy")}},
		}},
	})
}

// TestDecideBackoffGrowsAndCaps: backoffs 1s, 2s, then MaxBackoff 3s; the
// retriable step's budget then leaves the saga stuck.
func TestDecideBackoffGrowsAndCaps(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	in := runningAt(t, d, 3)
	now := ts(5 * s)
	var backoffs []time.Duration
	for attempt := 1; attempt <= 3; attempt++ {
		dec, err := d.Decide(in, retryIn(stCommit, "busy", ""), now)
		if err != nil {
			t.Fatal(err)
		}
		if !dec.Instance.Waiting || len(dec.Commands) != 0 || dec.Instance.Attempt != attempt {
			t.Fatalf("attempt %d: waiting=%v commands=%d attempt=%d; want waiting, none, %d",
				attempt, dec.Instance.Waiting, len(dec.Commands), dec.Instance.Attempt, attempt)
		}
		backoffs = append(backoffs, dec.Instance.Deadline.Sub(now))
		now = dec.Instance.Deadline
		dec, err = d.Decide(dec.Instance, timeoutIn(), now)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]cmdView{cmdOf(d, stCommit, attempt+1, dec.Instance.Deadline)}, viewCommands(dec.Commands)); diff != "" {
			t.Fatalf("attempt %d: re-send (-want +got):\n%s", attempt, diff)
		}
		in = dec.Instance
		now = now.Add(1 * s)
	}
	if diff := cmp.Diff([]time.Duration{1 * s, 2 * s, 3 * s}, backoffs); diff != "" {
		t.Errorf("backoffs (-want +got):\n%s", diff)
	}
	dec, err := d.Decide(in, retryIn(stCommit, "busy", ""), now)
	if err != nil {
		t.Fatal(err)
	}
	want := decView{
		Changed: true, Transitions: []string{"stick"},
		Instance: instView{Phase: Stuck, State: "stuck", Step: 3, Attempt: 4, Deadline: zero, StuckIn: Running,
			StuckReason: "commit_stock: gave up after 4 attempts: busy", Seq: 5,
			History: []recView{recOK(stReserve, act, 1), recOK(stCharge, act, 1), recOK(stPrepare, act, 1),
				recFail(stCommit, act, 4, "commit_stock: gave up after 4 attempts: busy")}},
		Events: []evView{{"shop.stuck", evID(5)}},
	}
	if diff := cmp.Diff(want, viewDecision(dec), diffOpts...); diff != "" {
		t.Errorf("out of attempts (-want +got):\n%s", diff)
	}
}

// TestDecideFailedReplyWhereFailingIsNotAllowed: a business failure of a
// compensation or of a step after the pivot is retried, never fails the
// saga, and ends stuck when the budget is spent.
func TestDecideFailedReplyWhereFailingIsNotAllowed(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	const declinedMsg = "card_declined: insufficient funds"
	done3 := []recView{recOK(stReserve, act, 1), recOK(stCharge, act, 1), recOK(stPrepare, act, 1)}
	cases := []struct {
		name  string
		setup func(t *testing.T) Instance
		moves []move
	}{
		{
			name:  "retriable step",
			setup: func(t *testing.T) Instance { return timeouts(t, d, runningAt(t, d, 3), 2) }, // attempt 3, deadline t0+68s
			moves: []move{
				{"failed", ts(40 * s), failedIn(stCommit, "ledger_closed", "try later"), decView{
					Changed: true, Transitions: []string{"retry"},
					Instance: instView{Phase: Running, State: "committing_stock", Step: 3, Attempt: 3, Waiting: true, Deadline: ts(43 * s), Seq: 4,
						History: append(slices.Clone(done3), recRun(stCommit, act, 3, "ledger_closed: try later"))},
				}},
				{"backoff over", ts(43 * s), timeoutIn(), decView{
					Changed: true, Transitions: []string{"retry"},
					Instance: instView{Phase: Running, State: "committing_stock", Step: 3, Attempt: 4, Deadline: ts(78 * s), Seq: 4,
						History: append(slices.Clone(done3), recRun(stCommit, act, 4, "ledger_closed: try later"))},
					Commands: []cmdView{cmdOf(d, stCommit, 4, ts(78*s))},
				}},
				{"failed again, budget spent", ts(44 * s), failedIn(stCommit, "ledger_closed", ""), decView{
					Changed: true, Transitions: []string{"stick"},
					Instance: instView{Phase: Stuck, State: "stuck", Step: 3, Attempt: 4, Deadline: zero, StuckIn: Running,
						StuckReason: "commit_stock: gave up after 4 attempts: ledger_closed", Seq: 5,
						History: append(slices.Clone(done3), recFail(stCommit, act, 4, "commit_stock: gave up after 4 attempts: ledger_closed"))},
					Events: []evView{{"shop.stuck", evID(5)}},
				}},
			},
		},
		{
			name:  "compensation",
			setup: func(t *testing.T) Instance { return declined(t, d) }, // release in flight, deadline t0+15s
			moves: []move{
				{"failed", ts(6 * s), failedIn(stRelease, "gone", ""), decView{
					Changed: true, Transitions: []string{"retry_compensation"},
					Instance: instView{Phase: Compensating, State: "compensating", Step: 0, Attempt: 1, Waiting: true, Deadline: ts(7 * s),
						Reason: declinedMsg, Seq: 4,
						History: []recView{recOK(stReserve, act, 1), recFail(stCharge, act, 1, declinedMsg), recRun(stRelease, comp, 1, "gone")}},
				}},
				{"backoff over", ts(7 * s), timeoutIn(), decView{
					Changed: true, Transitions: []string{"retry_compensation"},
					Instance: instView{Phase: Compensating, State: "compensating", Step: 0, Attempt: 2, Deadline: ts(27 * s),
						Reason: declinedMsg, Seq: 4,
						History: []recView{recOK(stReserve, act, 1), recFail(stCharge, act, 1, declinedMsg), recRun(stRelease, comp, 2, "gone")}},
					Commands: []cmdView{cmdOf(d, stRelease, 2, ts(27*s))},
				}},
				{"failed again, budget spent", ts(8 * s), failedIn(stRelease, "gone", "no such reservation"), decView{
					Changed: true, Transitions: []string{"stick"},
					Instance: instView{Phase: Stuck, State: "stuck", Step: 0, Attempt: 2, Deadline: zero, StuckIn: Compensating,
						Reason: declinedMsg, StuckReason: "release_stock: gave up after 2 attempts: gone: no such reservation", Seq: 5,
						History: []recView{recOK(stReserve, act, 1), recFail(stCharge, act, 1, declinedMsg),
							recFail(stRelease, comp, 2, "release_stock: gave up after 2 attempts: gone: no such reservation")}},
					Events: []evView{{"shop.stuck", evID(5)}},
				}},
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			play(t, d, c.setup(t), c.moves)
		})
	}
}

// ---------------------------------------------------------------------------
// Stale and redundant inputs.
// ---------------------------------------------------------------------------

func TestDecideIgnoresStaleInputs(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	cases := []struct {
		name  string
		setup func(t *testing.T) Instance
		in    Input
		at    time.Duration
	}{
		{"reply with an unknown correlation id", func(t *testing.T) Instance { return runningAt(t, d, 1) },
			replyIn(mid("bogus"), ReplyOK, "", "", `{"x":1}`), 5 * s},
		{"reply with an empty correlation id", func(t *testing.T) Instance { return runningAt(t, d, 1) },
			replyIn("", ReplyFailed, "card_declined", "", ""), 5 * s},
		{"reply to another saga's command", func(t *testing.T) Instance { return runningAt(t, d, 1) },
			replyIn(MessageID(otherID, stCharge), ReplyFailed, "card_declined", "", ""), 5 * s},
		{"duplicate ok reply to the previous step", func(t *testing.T) Instance { return runningAt(t, d, 1) },
			okIn(stReserve, `{"x":1}`), 5 * s},
		{"late failed reply to the previous step", func(t *testing.T) Instance { return runningAt(t, d, 1) },
			failedIn(stReserve, "out_of_stock", ""), 5 * s},
		{"late retry reply to the previous step", func(t *testing.T) Instance { return runningAt(t, d, 2) },
			retryIn(stCharge, "busy", ""), 5 * s},
		{"reply to a later step", func(t *testing.T) Instance { return runningAt(t, d, 1) },
			okIn(stCommit, ""), 5 * s},
		{"action reply while its compensation runs", func(t *testing.T) Instance {
			return apply(t, d, runningAt(t, d, 2), cancelIn(""), ts(5*s))
		}, okIn(stPrepare, `{"tracking":"late"}`), 6 * s},
		{"late action reply while compensating", func(t *testing.T) Instance { return shipmentRefused(t, d) },
			okIn(stCharge, ""), 6 * s},
		{"reply to a pending saga", func(t *testing.T) Instance { return newSaga(t, d) },
			okIn(stReserve, ""), 1 * s},
		{"start on a running saga", func(t *testing.T) Instance { return runningAt(t, d, 1) }, startIn(), 5 * s},
		{"start on a compensating saga", func(t *testing.T) Instance { return declined(t, d) }, startIn(), 6 * s},
		{"start on a stuck saga", func(t *testing.T) Instance { return stuckRunning(t, d) }, startIn(), 200 * s},
		{"start on a completed saga", func(t *testing.T) Instance { return completedSaga(t, d) }, startIn(), 5 * s},
		{"timeout before the deadline", func(t *testing.T) Instance { return runningAt(t, d, 1) }, timeoutIn(), 5 * s},
		{"timeout before the backoff is over", func(t *testing.T) Instance {
			return apply(t, d, runningAt(t, d, 0), retryIn(stReserve, "busy", ""), ts(1*s))
		}, timeoutIn(), 1500 * time.Millisecond},
		{"timeout before a compensation's deadline", func(t *testing.T) Instance { return declined(t, d) }, timeoutIn(), 14 * s},
		{"timeout on a stuck saga", func(t *testing.T) Instance { return stuckRunning(t, d) }, timeoutIn(), 1000 * s},
		{"timeout on a saga stuck compensating", func(t *testing.T) Instance { return exhaust(t, d, declined(t, d)) }, timeoutIn(), 1000 * s},
		{"stuck saga: reply to another command", func(t *testing.T) Instance { return stuckRunning(t, d) },
			okIn(stPrepare, ""), 200 * s},
		{"completed: timeout", func(t *testing.T) Instance { return completedSaga(t, d) }, timeoutIn(), 1000 * s},
		{"completed: duplicate reply to the last command", func(t *testing.T) Instance { return completedSaga(t, d) },
			okIn(stCommit, `{"x":1}`), 5 * s},
		{"completed: failed reply to the last command", func(t *testing.T) Instance { return completedSaga(t, d) },
			failedIn(stCommit, "x", ""), 5 * s},
		{"rejected: timeout", func(t *testing.T) Instance { return rejectedSaga(t, d) }, timeoutIn(), 1000 * s},
		{"rejected: start", func(t *testing.T) Instance { return rejectedSaga(t, d) }, startIn(), 2 * s},
		{"rejected: duplicate reply", func(t *testing.T) Instance { return rejectedSaga(t, d) },
			failedIn(stReserve, "out_of_stock", ""), 2 * s},
		{"cancelled: timeout", func(t *testing.T) Instance { return cancelledSaga(t, d) }, timeoutIn(), 1000 * s},
		{"cancelled: duplicate reply to the last compensation", func(t *testing.T) Instance { return cancelledSaga(t, d) },
			okIn(stRelease, ""), 7 * s},
		{"cancelled: start", func(t *testing.T) Instance { return cancelledSaga(t, d) }, startIn(), 7 * s},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			assertIgnored(t, d, c.setup(t), c.in, ts(c.at))
		})
	}
}

func TestDecideOperatorConflicts(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	setups := []struct {
		name  string
		setup func(t *testing.T) Instance
		// cancelOnly: replay is allowed there, cancel is not.
		cancelOnly bool
	}{
		{"completed", func(t *testing.T) Instance { return completedSaga(t, d) }, false},
		{"rejected", func(t *testing.T) Instance { return rejectedSaga(t, d) }, false},
		{"cancelled after compensation", func(t *testing.T) Instance { return cancelledSaga(t, d) }, false},
		{"cancelled while pending", func(t *testing.T) Instance { return apply(t, d, newSaga(t, d), cancelIn(""), t0) }, false},
		{"running past the pivot", func(t *testing.T) Instance { return runningAt(t, d, 3) }, true},
		{"running past the pivot, waiting", func(t *testing.T) Instance {
			return apply(t, d, runningAt(t, d, 3), retryIn(stCommit, "busy", ""), ts(4*s))
		}, true},
		{"stuck in running", func(t *testing.T) Instance { return stuckRunning(t, d) }, true},
		{"compensating", func(t *testing.T) Instance { return shipmentRefused(t, d) }, true},
		{"stuck in compensating", func(t *testing.T) Instance { return exhaust(t, d, declined(t, d)) }, true},
	}
	for _, c := range setups {
		kinds := []Input{cancelIn("please"), replayIn()}
		if c.cancelOnly {
			kinds = kinds[:1]
		}
		for _, inp := range kinds {
			t.Run(c.name+"/"+inp.Kind.String(), func(t *testing.T) {
				t.Parallel()
				in := c.setup(t)
				dec, err := d.Decide(in, inp, ts(2000*s))
				if !errors.Is(err, ErrConflict) {
					t.Fatalf("err = %v, want ErrConflict", err)
				}
				if diff := cmp.Diff(decView{}, viewDecision(dec), diffOpts...); diff != "" {
					t.Errorf("a refused input decides nothing (-want +got):\n%s", diff)
				}
			})
		}
	}
}

func TestDecideInvalidInput(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	in := runningAt(t, d, 0)
	for name, inp := range map[string]Input{
		"reply without a reply": {Kind: InputReply, SagaID: sagaID},
		"unknown kind":          {Kind: InputKind(99), SagaID: sagaID},
		"zero kind":             {SagaID: sagaID},
	} {
		dec, err := d.Decide(in, inp, ts(1*s))
		if err == nil || errors.Is(err, ErrConflict) {
			t.Errorf("%s: err = %v, want a plain error", name, err)
		}
		if dec.Changed || len(dec.Commands) != 0 || len(dec.Events) != 0 {
			t.Errorf("%s: decision = %+v, want none", name, dec)
		}
	}
}

// ---------------------------------------------------------------------------
// Stuck sagas: late replies and replays.
// ---------------------------------------------------------------------------

func TestDecideLateReplyResumesStuckSaga(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	const refusedMsg = "address_refused: country ZZ"
	const declinedMsg = "card_declined: insufficient funds"
	done3 := []recView{recOK(stReserve, act, 1), recOK(stCharge, act, 1), recOK(stPrepare, act, 1)}
	cases := []struct {
		name  string
		setup func(t *testing.T) Instance
		moves []move
	}{
		{
			name:  "stuck in running: ok completes",
			setup: func(t *testing.T) Instance { return stuckRunning(t, d) },
			moves: []move{{"late commit ok", ts(150 * s), okIn(stCommit, `{"committed":true}`), decView{
				Changed: true, Transitions: []string{"resume", "complete"},
				Instance: instView{Phase: Completed, State: "completed", Step: 3, Attempt: 4, Deadline: zero, Seq: 7,
					History: append(slices.Clone(done3), recOK(stCommit, act, 4))},
				Events: []evView{{"inventory.committed", evID(6)}, {"shop.completed", evID(7)}},
			}}},
		},
		{
			name:  "stuck in running: a transient reply leaves it stuck",
			setup: func(t *testing.T) Instance { return stuckRunning(t, d) },
			moves: []move{{"late retry", ts(150 * s), retryIn(stCommit, "busy", ""), decView{
				Changed: true, Transitions: []string{"resume", "stick"},
				Instance: instView{Phase: Stuck, State: "stuck", Step: 3, Attempt: 4, Deadline: zero, StuckIn: Running,
					StuckReason: "commit_stock: gave up after 4 attempts: busy", Seq: 6,
					History: append(slices.Clone(done3), recFail(stCommit, act, 4, "commit_stock: gave up after 4 attempts: busy"))},
				Events: []evView{{"shop.stuck", evID(6)}},
			}}},
		},
		{
			name:  "stuck compensating a middle step: ok goes on with the previous compensation",
			setup: func(t *testing.T) Instance { return exhaust(t, d, shipmentRefused(t, d)) }, // seq 6
			moves: []move{
				{"late refund ok", ts(100 * s), okIn(stRefund, ""), decView{
					Changed: true, Transitions: []string{"resume_compensation", "compensate_next"},
					Instance: instView{Phase: Compensating, State: "compensating", Step: 0, Attempt: 1, Deadline: ts(110 * s),
						Reason: refusedMsg, Seq: 7,
						History: []recView{recOK(stReserve, act, 1), recOK(stCharge, act, 1), recFail(stPrepare, act, 1, refusedMsg),
							recOK(stRefund, comp, 2), recRun(stRelease, comp, 1, "")}},
					Commands: []cmdView{cmdOf(d, stRelease, 1, ts(110*s))},
					Events:   []evView{{"payment.refunded", evID(7)}},
				}},
				{"release ok", ts(101 * s), okIn(stRelease, ""), decView{
					Changed: true, Transitions: []string{"finish_compensation"},
					Instance: instView{Phase: Cancelled, State: "cancelled", Step: 0, Attempt: 1, Deadline: zero,
						Reason: refusedMsg, Seq: 9,
						History: []recView{recOK(stReserve, act, 1), recOK(stCharge, act, 1), recFail(stPrepare, act, 1, refusedMsg),
							recOK(stRefund, comp, 2), recOK(stRelease, comp, 1)}},
					Events: []evView{{"inventory.released", evID(8)}, {"shop.cancelled", evID(9)}},
				}},
			},
		},
		{
			name:  "stuck compensating the first step: ok cancels",
			setup: func(t *testing.T) Instance { return exhaust(t, d, declined(t, d)) }, // seq 5
			moves: []move{{"late release ok", ts(100 * s), okIn(stRelease, ""), decView{
				Changed: true, Transitions: []string{"resume_compensation", "finish_compensation"},
				Instance: instView{Phase: Cancelled, State: "cancelled", Step: 0, Attempt: 2, Deadline: zero,
					Reason: declinedMsg, Seq: 7,
					History: []recView{recOK(stReserve, act, 1), recFail(stCharge, act, 1, declinedMsg), recOK(stRelease, comp, 2)}},
				Events: []evView{{"inventory.released", evID(6)}, {"shop.cancelled", evID(7)}},
			}}},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			in := c.setup(t)
			if in.Phase != Stuck || in.StuckReason == "" {
				t.Fatalf("setup: phase %s, stuck reason %q; want a stuck saga", in.Phase, in.StuckReason)
			}
			play(t, d, in, c.moves)
		})
	}
}

func TestDecideReplay(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	const gaveUpCommit = "commit_stock: gave up after 4 attempts: no reply to attempt 4"
	const gaveUpRelease = "release_stock: gave up after 2 attempts: no reply to attempt 2"
	const declinedMsg = "card_declined: insufficient funds"
	done3 := []recView{recOK(stReserve, act, 1), recOK(stCharge, act, 1), recOK(stPrepare, act, 1)}
	cases := []struct {
		name  string
		setup func(t *testing.T) Instance
		moves []move
	}{
		{
			name:  "stuck in running: fresh budget",
			setup: func(t *testing.T) Instance { return stuckRunning(t, d) },
			moves: []move{
				{"replay", ts(200 * s), replayIn(), decView{
					Changed: true, Transitions: []string{"resume"},
					Instance: instView{Phase: Running, State: "committing_stock", Step: 3, Attempt: 1, Deadline: ts(210 * s), Seq: 6,
						History: append(slices.Clone(done3), recRun(stCommit, act, 5, gaveUpCommit))},
					Commands: []cmdView{cmdOf(d, stCommit, 1, ts(210*s))},
					Events:   []evView{{EventReplayed, evID(6)}},
				}},
				{"timeout after the replay: re-sent, not stuck", ts(210 * s), timeoutIn(), decView{
					Changed: true, Transitions: []string{"retry"},
					Instance: instView{Phase: Running, State: "committing_stock", Step: 3, Attempt: 2, Deadline: ts(230 * s), Seq: 6,
						History: append(slices.Clone(done3), recRun(stCommit, act, 6, "no reply to attempt 1"))},
					Commands: []cmdView{cmdOf(d, stCommit, 2, ts(230*s))},
				}},
				{"ok", ts(211 * s), okIn(stCommit, ""), decView{
					Changed: true, Transitions: []string{"complete"},
					Instance: instView{Phase: Completed, State: "completed", Step: 3, Attempt: 2, Deadline: zero, Seq: 8,
						History: append(slices.Clone(done3), recOK(stCommit, act, 6))},
					Events: []evView{{"inventory.committed", evID(7)}, {"shop.completed", evID(8)}},
				}},
			},
		},
		{
			name:  "stuck in compensating: fresh budget",
			setup: func(t *testing.T) Instance { return exhaust(t, d, declined(t, d)) },
			moves: []move{
				{"replay", ts(100 * s), replayIn(), decView{
					Changed: true, Transitions: []string{"resume_compensation"},
					Instance: instView{Phase: Compensating, State: "compensating", Step: 0, Attempt: 1, Deadline: ts(110 * s),
						Reason: declinedMsg, Seq: 6,
						History: []recView{recOK(stReserve, act, 1), recFail(stCharge, act, 1, declinedMsg), recRun(stRelease, comp, 3, gaveUpRelease)}},
					Commands: []cmdView{cmdOf(d, stRelease, 1, ts(110*s))},
					Events:   []evView{{EventReplayed, evID(6)}},
				}},
				{"timeout after the replay: re-sent, not stuck", ts(110 * s), timeoutIn(), decView{
					Changed: true, Transitions: []string{"retry_compensation"},
					Instance: instView{Phase: Compensating, State: "compensating", Step: 0, Attempt: 2, Deadline: ts(130 * s),
						Reason: declinedMsg, Seq: 6,
						History: []recView{recOK(stReserve, act, 1), recFail(stCharge, act, 1, declinedMsg), recRun(stRelease, comp, 4, "no reply to attempt 1")}},
					Commands: []cmdView{cmdOf(d, stRelease, 2, ts(130*s))},
				}},
				{"release ok", ts(111 * s), okIn(stRelease, ""), decView{
					Changed: true, Transitions: []string{"finish_compensation"},
					Instance: instView{Phase: Cancelled, State: "cancelled", Step: 0, Attempt: 2, Deadline: zero,
						Reason: declinedMsg, Seq: 8,
						History: []recView{recOK(stReserve, act, 1), recFail(stCharge, act, 1, declinedMsg), recOK(stRelease, comp, 4)}},
					Events: []evView{{"inventory.released", evID(7)}, {"shop.cancelled", evID(8)}},
				}},
			},
		},
		{
			name:  "running: re-sent now with attempt 1",
			setup: func(t *testing.T) Instance { return timeouts(t, d, runningAt(t, d, 1), 1) }, // attempt 2, deadline t0+31s
			moves: []move{{"replay", ts(12 * s), replayIn(), decView{
				Changed: true, Transitions: []string{"retry"},
				Instance: instView{Phase: Running, State: "charging_payment", Step: 1, Attempt: 1, Deadline: ts(22 * s), Seq: 3,
					History: []recView{recOK(stReserve, act, 1), recRun(stCharge, act, 3, "no reply to attempt 1")}},
				Commands: []cmdView{cmdOf(d, stCharge, 1, ts(22*s))},
				Events:   []evView{{EventReplayed, evID(3)}},
			}}},
		},
		{
			name: "running, waiting for a backoff: re-sent now",
			setup: func(t *testing.T) Instance {
				return apply(t, d, runningAt(t, d, 0), retryIn(stReserve, "db_busy", ""), ts(2*s))
			},
			moves: []move{{"replay", ts(2500 * time.Millisecond), replayIn(), decView{
				Changed: true, Transitions: []string{"retry"},
				Instance: instView{Phase: Running, State: "reserving_stock", Step: 0, Attempt: 1, Deadline: ts(12500 * time.Millisecond), Seq: 2,
					History: []recView{recRun(stReserve, act, 2, "db_busy")}},
				Commands: []cmdView{cmdOf(d, stReserve, 1, ts(12500*time.Millisecond))},
				Events:   []evView{{EventReplayed, evID(2)}},
			}}},
		},
		{
			name:  "compensating: re-sent now",
			setup: func(t *testing.T) Instance { return declined(t, d) },
			moves: []move{{"replay", ts(6 * s), replayIn(), decView{
				Changed: true, Transitions: []string{"retry_compensation"},
				Instance: instView{Phase: Compensating, State: "compensating", Step: 0, Attempt: 1, Deadline: ts(16 * s),
					Reason: declinedMsg, Seq: 5,
					History: []recView{recOK(stReserve, act, 1), recFail(stCharge, act, 1, declinedMsg), recRun(stRelease, comp, 2, "")}},
				Commands: []cmdView{cmdOf(d, stRelease, 1, ts(16*s))},
				Events:   []evView{{EventReplayed, evID(5)}},
			}}},
		},
		{
			name:  "pending: started",
			setup: func(t *testing.T) Instance { return newSaga(t, d) },
			moves: []move{{"replay", ts(1 * s), replayIn(), decView{
				Changed: true, Transitions: []string{"start"},
				Instance: instView{Phase: Running, State: "reserving_stock", Step: 0, Attempt: 1, Deadline: ts(11 * s), Seq: 2,
					History: []recView{recRun(stReserve, act, 1, "")}},
				Commands: []cmdView{cmdOf(d, stReserve, 1, ts(11*s))},
				Events:   []evView{{EventReplayed, evID(2)}},
			}}},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			in := c.setup(t)
			final, _ := play(t, d, in, c.moves[:1])
			if final.StuckReason != "" {
				t.Errorf("StuckReason after replay = %q, want empty", final.StuckReason)
			}
			play(t, d, final, c.moves[1:])
		})
	}
}

// ---------------------------------------------------------------------------
// Cancel.
// ---------------------------------------------------------------------------

func TestDecideCancel(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	// The saga's reason says an operator cancelled it, and why; the
	// operator's event (saga.cancelled) comes first.
	const why = "fraud suspected"
	const reason = "cancelled by operator: " + why
	cases := []struct {
		name          string
		setup         func(t *testing.T) Instance
		moves         []move
		compensations []string
	}{
		{
			name:  "pending: cancelled with no commands",
			setup: func(t *testing.T) Instance { return newSaga(t, d) },
			moves: []move{{"cancel", ts(1 * s), cancelIn("customer changed their mind"), decView{
				Changed: true, Transitions: []string{"abort"},
				Instance: instView{Phase: Cancelled, State: "cancelled", Step: 0, Attempt: 0, Deadline: zero,
					Reason: "cancelled by operator: customer changed their mind", Seq: 3},
				Events: []evView{{EventCancelled, evID(2)}, {"shop.cancelled", evID(3)}},
			}}},
		},
		{
			name:  "pending, no reason given",
			setup: func(t *testing.T) Instance { return newSaga(t, d) },
			moves: []move{{"cancel", ts(1 * s), cancelIn(""), decView{
				Changed: true, Transitions: []string{"abort"},
				Instance: instView{Phase: Cancelled, State: "cancelled", Step: 0, Attempt: 0, Deadline: zero,
					Reason: "cancelled by operator", Seq: 3},
				Events: []evView{{EventCancelled, evID(2)}, {"shop.cancelled", evID(3)}},
			}}},
		},
		{
			name:  "running the first step: its own compensation",
			setup: func(t *testing.T) Instance { return runningAt(t, d, 0) },
			moves: []move{
				{"cancel", ts(2 * s), cancelIn(why), decView{
					Changed: true, Transitions: []string{"compensate"},
					Instance: instView{Phase: Compensating, State: "compensating", Step: 0, Attempt: 1, Deadline: ts(12 * s),
						Reason: reason, Seq: 3,
						History: []recView{recFail(stReserve, act, 1, reason), recRun(stRelease, comp, 1, "")}},
					Commands: []cmdView{cmdOf(d, stRelease, 1, ts(12*s))},
					Events:   []evView{{EventCancelled, evID(2)}, {"shop.compensating", evID(3)}},
				}},
				{"release ok", ts(3 * s), okIn(stRelease, ""), decView{
					Changed: true, Transitions: []string{"finish_compensation"},
					Instance: instView{Phase: Cancelled, State: "cancelled", Step: 0, Attempt: 1, Deadline: zero,
						Reason: reason, Seq: 5,
						History: []recView{recFail(stReserve, act, 1, reason), recOK(stRelease, comp, 1)}},
					Events: []evView{{"inventory.released", evID(4)}, {"shop.cancelled", evID(5)}},
				}},
			},
			compensations: []string{"inventory.release"},
		},
		{
			name: "running the last compensatable step, waiting: from that step back",
			setup: func(t *testing.T) Instance {
				return apply(t, d, runningAt(t, d, 2), retryIn(stPrepare, "busy", ""), ts(4*s))
			},
			moves: []move{
				{"cancel", ts(5 * s), cancelIn(why), decView{
					Changed: true, Transitions: []string{"compensate"},
					Instance: instView{Phase: Compensating, State: "compensating", Step: 2, Attempt: 1, Deadline: ts(35 * s),
						Reason: reason, Seq: 5,
						History: []recView{recOK(stReserve, act, 1), recOK(stCharge, act, 1), recFail(stPrepare, act, 1, reason),
							recRun(stCancelSh, comp, 1, "")}},
					Commands: []cmdView{cmdOf(d, stCancelSh, 1, ts(35*s))},
					Events:   []evView{{EventCancelled, evID(4)}, {"shop.compensating", evID(5)}},
				}},
				{"cancel_shipment ok", ts(6 * s), okIn(stCancelSh, ""), decView{
					Changed: true, Transitions: []string{"compensate_next"},
					Instance: instView{Phase: Compensating, State: "compensating", Step: 1, Attempt: 1, Deadline: ts(16 * s),
						Reason: reason, Seq: 6,
						History: []recView{recOK(stReserve, act, 1), recOK(stCharge, act, 1), recFail(stPrepare, act, 1, reason),
							recOK(stCancelSh, comp, 1), recRun(stRefund, comp, 1, "")}},
					Commands: []cmdView{cmdOf(d, stRefund, 1, ts(16*s))},
					Events:   []evView{{"shipping.cancelled", evID(6)}},
				}},
				{"refund ok", ts(7 * s), okIn(stRefund, ""), decView{
					Changed: true, Transitions: []string{"compensate_next"},
					Instance: instView{Phase: Compensating, State: "compensating", Step: 0, Attempt: 1, Deadline: ts(17 * s),
						Reason: reason, Seq: 7,
						History: []recView{recOK(stReserve, act, 1), recOK(stCharge, act, 1), recFail(stPrepare, act, 1, reason),
							recOK(stCancelSh, comp, 1), recOK(stRefund, comp, 1), recRun(stRelease, comp, 1, "")}},
					Commands: []cmdView{cmdOf(d, stRelease, 1, ts(17*s))},
					Events:   []evView{{"payment.refunded", evID(7)}},
				}},
				{"release ok", ts(8 * s), okIn(stRelease, ""), decView{
					Changed: true, Transitions: []string{"finish_compensation"},
					Instance: instView{Phase: Cancelled, State: "cancelled", Step: 0, Attempt: 1, Deadline: zero,
						Reason: reason, Seq: 9,
						History: []recView{recOK(stReserve, act, 1), recOK(stCharge, act, 1), recFail(stPrepare, act, 1, reason),
							recOK(stCancelSh, comp, 1), recOK(stRefund, comp, 1), recOK(stRelease, comp, 1)}},
					Events: []evView{{"inventory.released", evID(8)}, {"shop.cancelled", evID(9)}},
				}},
			},
			compensations: []string{"shipping.cancel", "payment.refund", "inventory.release"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			_, sent := play(t, d, c.setup(t), c.moves)
			if diff := cmp.Diff(c.compensations, commandTypes(sent), diffOpts...); diff != "" {
				t.Errorf("compensation commands, in order (-want +got):\n%s", diff)
			}
		})
	}
}

// ---------------------------------------------------------------------------
// Reply payloads.
// ---------------------------------------------------------------------------

func TestDecideMergesReplyPayload(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	cases := []struct {
		name    string
		payload string
		want    string // "" means the data is kept byte for byte
	}{
		{"new key", `{"amount_cents":1500}`, `{"amount_cents":1500,"order_id":"o-1"}`},
		{"overrides a key", `{"order_id":"o-2","lines":[{"sku":"A","cents":500}]}`, `{"lines":[{"cents":500,"sku":"A"}],"order_id":"o-2"}`},
		{"nested object", `{"payment":{"id":"p-1","cents":10}}`, `{"order_id":"o-1","payment":{"cents":10,"id":"p-1"}}`},
		{"no payload", ``, ``},
		{"null", `null`, ``},
		{"empty object", `{}`, ``},
		{"array", `[{"order_id":"x"}]`, ``},
		{"string", `"hello"`, ``},
		{"number", `42`, ``},
		{"bool", `true`, ``},
		{"invalid JSON", `{"order_id":`, ``},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			in := runningAt(t, d, 0)
			dec, err := d.Decide(in, okIn(stReserve, c.payload), ts(1*s))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]Transition{TransitionAdvance}, dec.Transitions); diff != "" {
				t.Fatalf("an ok reply advances whatever its payload (-want +got):\n%s", diff)
			}
			if c.want == "" {
				if got := string(dec.Instance.Data); got != startData {
					t.Errorf("data = %s, want it untouched: %s", got, startData)
				}
			} else if diff := cmp.Diff(jsonValue(t, []byte(c.want)), jsonValue(t, dec.Instance.Data)); diff != "" {
				t.Errorf("data (-want +got):\n%s", diff)
			}
			// The next command carries the data as it now stands.
			if len(dec.Commands) != 1 || string(dec.Commands[0].Payload) != string(dec.Instance.Data) {
				t.Errorf("next command payload = %+v, want %s", dec.Commands, dec.Instance.Data)
			}
			// The caller's instance keeps its own data.
			if string(in.Data) != startData {
				t.Errorf("input instance data changed to %s", in.Data)
			}
		})
	}
}

func TestMergeObject(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, base, patch, want string
	}{
		{"empty base", ``, `{"a":1}`, `{"a":1}`},
		{"patch wins", `{"a":1,"b":2}`, `{"b":3,"c":4}`, `{"a":1,"b":3,"c":4}`},
		{"patch sets null", `{"a":1}`, `{"a":null}`, `{"a":null}`},
		{"non-object patch", `{"a":1}`, `[1]`, `{"a":1}`},
		{"null patch", `{"a":1}`, `null`, `{"a":1}`},
	}
	for _, c := range cases {
		got := mergeObject(json.RawMessage(c.base), json.RawMessage(c.patch))
		if string(got) != c.want {
			t.Errorf("%s: mergeObject(%s, %s) = %s, want %s", c.name, c.base, c.patch, got, c.want)
		}
	}
}

// ---------------------------------------------------------------------------
// Determinism and jitter.
// ---------------------------------------------------------------------------

func TestDecideIsDeterministic(t *testing.T) {
	t.Parallel()
	d := &Definition{Name: sagaName, Steps: testSteps(), Retry: testRetry()}
	d.Retry.Jitter = 0.3 // with jitter: it must not make decisions random
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		setup func(t *testing.T) Instance
		in    Input
		at    time.Duration
	}{
		{"start", func(t *testing.T) Instance { return newSaga(t, d) }, startIn(), 1 * s},
		{"advance", func(t *testing.T) Instance { return runningAt(t, d, 0) }, okIn(stReserve, `{"b":2,"a":1}`), 1 * s},
		{"timeout", func(t *testing.T) Instance { return runningAt(t, d, 1) }, timeoutIn(), 100 * s},
		{"transient", func(t *testing.T) Instance { return runningAt(t, d, 1) }, retryIn(stCharge, "busy", ""), 3 * s},
		{"business failure", func(t *testing.T) Instance { return runningAt(t, d, 2) }, failedIn(stPrepare, "x", "y"), 3 * s},
		{"stick", func(t *testing.T) Instance { return timeouts(t, d, runningAt(t, d, 3), 3) }, timeoutIn(), 1000 * s},
		{"replay", func(t *testing.T) Instance { return stuckRunning(t, d) }, replayIn(), 2000 * s},
		{"cancel", func(t *testing.T) Instance { return runningAt(t, d, 2) }, cancelIn("r"), 3 * s},
		{"ignored", func(t *testing.T) Instance { return runningAt(t, d, 2) }, okIn(stReserve, ""), 3 * s},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			in, pristine := c.setup(t), c.setup(t)
			if diff := cmp.Diff(pristine, in); diff != "" {
				t.Fatalf("setup is not reproducible (-first +second):\n%s", diff)
			}
			first, err := d.Decide(in, c.in, ts(c.at))
			if err != nil {
				t.Fatal(err)
			}
			second, err := d.Decide(in, c.in, ts(c.at))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(first, second); diff != "" {
				t.Errorf("two decisions on the same input differ (-first +second):\n%s", diff)
			}
			if diff := cmp.Diff(pristine, in); diff != "" {
				t.Errorf("Decide changed its input instance (-before +after):\n%s", diff)
			}
		})
	}
}

func TestDecideJitter(t *testing.T) {
	t.Parallel()
	const jitter = 0.5
	d := &Definition{Name: sagaName, Steps: testSteps(), Retry: testRetry()}
	d.Retry.Jitter = jitter
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	within := func(t *testing.T, what string, got, base time.Duration) {
		t.Helper()
		hi := time.Duration(float64(base) * (1 + jitter))
		if got < base || got > hi {
			t.Errorf("%s = %v, want within [%v, %v]", what, got, base, hi)
		}
	}
	distinct := map[string]map[time.Duration]bool{"first": {}, "backoff": {}, "second": {}, "capped": {}}
	for i := range 64 {
		id := uuid.NewSHA1(uuid.NameSpaceOID, []byte(strconv.Itoa(i)))
		pending, _ := d.New(id, json.RawMessage(startData), prio, t0)
		dec, err := d.Decide(pending, startIn(), t0)
		if err != nil {
			t.Fatal(err)
		}
		first := dec.Instance.Deadline.Sub(t0)
		within(t, "first wait", first, 10*s)
		distinct["first"][first] = true
		if again, _ := d.Decide(pending, startIn(), t0); !again.Instance.Deadline.Equal(dec.Instance.Deadline) {
			t.Errorf("saga %s: jitter is not reproducible: %v then %v", id, dec.Instance.Deadline, again.Instance.Deadline)
		}

		retry := Input{Kind: InputReply, SagaID: id, Reply: &Reply{CorrelationID: MessageID(id, stReserve), Status: ReplyRetry}}
		bdec, err := d.Decide(dec.Instance, retry, ts(1*s))
		if err != nil {
			t.Fatal(err)
		}
		backoff := bdec.Instance.Deadline.Sub(ts(1 * s))
		within(t, "backoff", backoff, 1*s)
		distinct["backoff"][backoff] = true

		now := dec.Instance.Deadline
		tdec, err := d.Decide(dec.Instance, timeoutIn(), now)
		if err != nil {
			t.Fatal(err)
		}
		second := tdec.Instance.Deadline.Sub(now)
		within(t, "second wait", second, 20*s)
		distinct["second"][second] = true
		if tdec.Commands[0].Deadline != tdec.Instance.Deadline {
			t.Errorf("command deadline %v != saga deadline %v", tdec.Commands[0].Deadline, tdec.Instance.Deadline)
		}

		now = tdec.Instance.Deadline
		cdec, err := d.Decide(tdec.Instance, timeoutIn(), now)
		if err != nil {
			t.Fatal(err)
		}
		capped := cdec.Instance.Deadline.Sub(now)
		within(t, "capped wait", capped, 35*s)
		distinct["capped"][capped] = true
	}
	// Jitter spreads the sagas: 64 of them do not share one wait.
	for what, set := range distinct {
		if len(set) < 32 {
			t.Errorf("%s: only %d distinct waits over 64 sagas", what, len(set))
		}
	}
}

// ---------------------------------------------------------------------------
// Definitions.
// ---------------------------------------------------------------------------

func TestDefinitionValidate(t *testing.T) {
	t.Parallel()
	withSteps := func(edit func(steps []Step) []Step) Definition {
		return Definition{Name: sagaName, Steps: edit(testSteps())}
	}
	cases := []struct {
		name    string
		def     Definition
		wantErr string // "" for a valid definition
	}{
		{"valid", withSteps(func(st []Step) []Step { return st }), ""},
		{"retriable steps only", Definition{Name: "n", Steps: []Step{{Name: "a", State: "a", Command: "a", Kind: Retriable}}}, ""},
		{"empty name", Definition{Steps: testSteps()}, "empty name"},
		{"no steps", Definition{Name: sagaName}, "no steps"},
		{"step without a state", withSteps(func(st []Step) []Step { st[1].State = ""; return st }),
			"step 1: name, state and a command or a signal to wait for are required"},
		{"step without a command", withSteps(func(st []Step) []Step { st[3].Command = ""; return st }),
			"step 3: name, state and a command or a signal to wait for are required"},
		{"compensatable without compensation", withSteps(func(st []Step) []Step { st[1].Compensation = nil; return st }),
			`step "charge_payment": a compensatable step needs a compensation`},
		{"compensation without a command", withSteps(func(st []Step) []Step { st[0].Compensation.Command = ""; return st }),
			`step "reserve_stock": a compensatable step needs a compensation`},
		{"retriable with compensation", withSteps(func(st []Step) []Step {
			st[3].Compensation = &Compensation{Name: "uncommit", Command: "inventory.uncommit"}
			return st
		}), `step "commit_stock": a retriable step has no compensation`},
		{"compensatable after retriable", withSteps(func(st []Step) []Step {
			return []Step{st[0], st[3], st[1]}
		}), `step "charge_payment": a compensatable step cannot follow a retriable one`},
		{"duplicate step names", withSteps(func(st []Step) []Step {
			st[2].Name = stCharge
			return st
		}), `step 2: duplicate name "charge_payment"`},
		{"compensation named like a step", withSteps(func(st []Step) []Step {
			st[2].Compensation.Name = stReserve
			return st
		}), `step 2: duplicate name "reserve_stock"`},
		{"unknown kind", withSteps(func(st []Step) []Step { st[3].Kind = StepKind(7); return st }),
			`step "commit_stock": unknown kind 7`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			d := c.def
			err := d.Validate()
			if c.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				if d.Retry.Timeout != 10*s || d.Retry.MaxAttempts != 5 {
					t.Errorf("Validate did not fill in the retry defaults: %+v", d.Retry)
				}
				return
			}
			if !errors.Is(err, ErrInvalidDefinition) {
				t.Fatalf("err = %v, want ErrInvalidDefinition", err)
			}
			if !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("err = %q, want it to say %q", err, c.wantErr)
			}
		})
	}
}

func TestRetryDefaults(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		in   Retry
		want Retry
	}{
		{"zero", Retry{}, Retry{
			Timeout: 10 * s, MaxTimeout: 2 * time.Minute, Backoff: 200 * time.Millisecond, MaxBackoff: 30 * s,
			Multiplier: 2, Jitter: 0.2, MaxAttempts: 5, CompensationAttempts: 10, RetriableAttempts: 20,
		}},
		// No jitter is -1 after Validate, so that validating again keeps it.
		{"explicit values kept", testRetry(), func() Retry { r := testRetry(); r.Jitter = -1; return r }()},
		{"jitter out of range disables it", Retry{Jitter: 1.5, Multiplier: 0.5}, Retry{
			Timeout: 10 * s, MaxTimeout: 2 * time.Minute, Backoff: 200 * time.Millisecond, MaxBackoff: 30 * s,
			Multiplier: 2, Jitter: -1, MaxAttempts: 5, CompensationAttempts: 10, RetriableAttempts: 20,
		}},
		{"jitter in range kept", Retry{Jitter: 0.5, Multiplier: 3}, Retry{
			Timeout: 10 * s, MaxTimeout: 2 * time.Minute, Backoff: 200 * time.Millisecond, MaxBackoff: 30 * s,
			Multiplier: 3, Jitter: 0.5, MaxAttempts: 5, CompensationAttempts: 10, RetriableAttempts: 20,
		}},
	}
	for _, c := range cases {
		d := Definition{Name: sagaName, Steps: testSteps(), Retry: c.in}
		if err := d.Validate(); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(c.want, d.Retry); diff != "" {
			t.Errorf("%s: retry (-want +got):\n%s", c.name, diff)
		}
	}
}

func TestDefinitionPivot(t *testing.T) {
	t.Parallel()
	st := testSteps()
	cases := []struct {
		name  string
		steps []Step
		want  int
	}{
		{"order-like", st, 2},
		{"compensatable only", st[:3], 2},
		{"one compensatable then retriable", []Step{st[0], st[3], {Name: "x", State: "x", Command: "x", Kind: Retriable}}, 0},
		{"retriable only", []Step{st[3]}, -1},
		{"no steps", nil, -1},
	}
	for _, c := range cases {
		d := Definition{Name: sagaName, Steps: c.steps}
		if got := d.Pivot(); got != c.want {
			t.Errorf("%s: Pivot() = %d, want %d", c.name, got, c.want)
		}
	}
}

func TestDefinitionStateOf(t *testing.T) {
	t.Parallel()
	d := testDefinition(t)
	cases := []struct {
		phase Phase
		step  int
		want  string
	}{
		{Pending, 0, "pending"},
		{Running, 0, "reserving_stock"},
		{Running, 1, "charging_payment"},
		{Running, 2, "preparing_shipment"},
		{Running, 3, "committing_stock"},
		{Running, 4, "running"},
		{Running, -1, "running"},
		{Compensating, 1, "compensating"},
		{Completed, 3, "completed"},
		{Rejected, 0, "rejected"},
		{Cancelled, 0, "cancelled"},
		{Stuck, 3, "stuck"},
	}
	for _, c := range cases {
		if got := d.StateOf(&Instance{Phase: c.phase, Step: c.step}); got != c.want {
			t.Errorf("StateOf(%s, step %d) = %q, want %q", c.phase, c.step, got, c.want)
		}
	}
	wantStates := []string{"pending", "reserving_stock", "charging_payment", "preparing_shipment", "committing_stock",
		"completed", "rejected", "compensating", "cancelled", "stuck"}
	if diff := cmp.Diff(wantStates, d.States()); diff != "" {
		t.Errorf("States() (-want +got):\n%s", diff)
	}
	wantNames := []string{stReserve, stRelease, stCharge, stRefund, stPrepare, stCancelSh, stCommit}
	if diff := cmp.Diff(wantNames, d.StepNames()); diff != "" {
		t.Errorf("StepNames() (-want +got):\n%s", diff)
	}
}

func TestPhaseTerminal(t *testing.T) {
	t.Parallel()
	want := map[Phase]bool{
		Pending: false, Running: false, Compensating: false, Stuck: false,
		Completed: true, Rejected: true, Cancelled: true,
	}
	for p, terminal := range want {
		if got := p.Terminal(); got != terminal {
			t.Errorf("%s.Terminal() = %v, want %v", p, got, terminal)
		}
	}
}

func TestKindStrings(t *testing.T) {
	t.Parallel()
	got := []string{
		InputStart.String(), InputReply.String(), InputTimeout.String(), InputReplay.String(), InputCancel.String(),
		InputKind(42).String(), Compensatable.String(), Retriable.String(),
	}
	want := []string{"start", "reply", "timeout", "replay", "cancel", "input(42)", "compensatable", "retriable"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("String() (-want +got):\n%s", diff)
	}
}

// TestValidateIsIdempotent: a definition is validated by its author and
// again by the coordinator; the second pass must not change it (a Jitter
// of -1, "none", once became the default 0.2 on the second pass).
func TestValidateIsIdempotent(t *testing.T) {
	for _, r := range []Retry{{}, {Jitter: -1}, {Jitter: 0.5, Multiplier: 3, MaxAttempts: 2}, {Jitter: 7}} {
		def := &Definition{Name: "t", Steps: []Step{{Name: "s", State: "s", Command: "c", Kind: Retriable}}, Retry: r}
		if err := def.Validate(); err != nil {
			t.Fatal(err)
		}
		once := def.Retry
		if err := def.Validate(); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(once, def.Retry); diff != "" {
			t.Errorf("Retry %+v: a second Validate changed it (-once +twice):\n%s", r, diff)
		}
	}
}
