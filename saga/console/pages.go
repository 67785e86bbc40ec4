package console

import (
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/coordinator"
	"github.com/sagaflow/sagaflow/saga/pgstore"
)

// overview: counts per definition and state, the last hour's activity as
// charts, the outbox, dead letters, and the stuck sagas with their reason.
func (c *Console) overview(w http.ResponseWriter, r *http.Request, s session) {
	ctx := r.Context()
	live, err := c.o.Store.CountLive(ctx)
	if err != nil {
		c.fail(w, s, http.StatusServiceUnavailable, err)
		return
	}
	var pending int64
	for ref, n := range live {
		if ref.State == string(saga.Pending) {
			pending += n
		}
	}
	backlog, age, err := c.o.Store.OutboxStats(ctx)
	if err != nil {
		c.fail(w, s, http.StatusServiceUnavailable, err)
		return
	}
	stuck, err := c.o.Store.List(ctx, pgstore.ListFilter{State: string(saga.Stuck), Limit: 50})
	if err != nil {
		c.fail(w, s, http.StatusServiceUnavailable, err)
		return
	}
	act, err := c.o.Store.Activity(ctx, time.Now().Add(-time.Hour))
	if err != nil {
		c.fail(w, s, http.StatusServiceUnavailable, err)
		return
	}
	dead, deadErr := -1, ""
	if c.o.Bus != nil {
		if n, _, err := c.o.Bus.Inspect(ctx, amqpbus.DeadLetterQueue); err == nil {
			dead = n
		} else {
			deadErr = err.Error()
		}
	}
	c.render(w, http.StatusOK, "overview", page{Title: "Overview", Operator: s.operator, CSRF: s.csrf, Data: map[string]any{
		"Counts": sortedRefs(live), "Pending": pending, "Backlog": backlog, "OutboxAge": age.Round(time.Millisecond),
		"Stuck": stuck, "Dead": dead, "DeadErr": deadErr,
		"Throughput": chart(act, "sagas per minute", func(m pgstore.Minute) (float64, float64) { return float64(m.Started), float64(m.Finished) }),
		"Latency":    chart(act, "p99 step latency, seconds", func(m pgstore.Minute) (float64, float64) { return m.StepP99Seconds, -1 }),
	}})
}

// chart draws the last hour, a bar per minute (and a second series as a
// line of dots), as an SVG the page inlines: no script, no library.
func chart(ms []pgstore.Minute, title string, value func(pgstore.Minute) (float64, float64)) template.HTML {
	const w, h, pad = 600.0, 120.0, 20.0
	now := time.Now().UTC().Truncate(time.Minute)
	by := map[time.Time][2]float64{}
	top := 0.0
	for _, m := range ms {
		a, b := value(m)
		by[m.At] = [2]float64{a, b}
		top = max(top, a, b)
	}
	if top == 0 {
		top = 1
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg class="chart" viewBox="0 0 %.0f %.0f" role="img" aria-label="%s"><title>%s</title>`, w, h+pad, template.HTMLEscapeString(title), template.HTMLEscapeString(title))
	bw := w / 60
	for i := 0; i < 60; i++ {
		t := now.Add(time.Duration(i-59) * time.Minute)
		v := by[t]
		x := float64(i) * bw
		if v[0] > 0 {
			bh := v[0] / top * h
			fmt.Fprintf(&sb, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>%s: %g</title></rect>`, x+1, h-bh, bw-2, bh, t.Format("15:04"), v[0])
		}
		if v[1] > 0 {
			fmt.Fprintf(&sb, `<circle cx="%.1f" cy="%.1f" r="2.5"><title>%s: %g finished</title></circle>`, x+bw/2, h-v[1]/top*h, t.Format("15:04"), v[1])
		}
	}
	fmt.Fprintf(&sb, `<line x1="0" y1="%.0f" x2="%.0f" y2="%.0f"/>`, h, w, h)
	fmt.Fprintf(&sb, `<text x="0" y="%.0f">-60 min</text><text x="%.0f" y="%.0f" text-anchor="end">now · max %.3g</text></svg>`, h+pad-4, w, h+pad-4, top)
	return template.HTML(sb.String()) //nolint:gosec // built from numbers and escaped text
}

// Filter selects sagas, as the console's list and the admin API's
// GET /admin/sagas take it from a query: definition, state, step,
// older_than (unchanged for that long), priority, q (text in the reason,
// the errors or the data: a customer, a SKU) and cursor.
type Filter struct {
	Definition, State, Step, Text string
	OlderThan                     string
	Priority                      string
	Cursor                        string
	older                         time.Duration
}

type filter = Filter

// ParseFilter reads a Filter from a query.
func ParseFilter(q url.Values) (Filter, error) { return filterOf(q) }

// Matches applies what the store's listing (by definition and state)
// does not: step, age, priority and text.
func (f Filter) Matches(in *saga.Instance) bool { return f.matches(in, stepOf(in)) }

func filterOf(q url.Values) (filter, error) {
	f := filter{Definition: q.Get("definition"), State: q.Get("state"), Step: q.Get("step"), Text: q.Get("q"),
		OlderThan: q.Get("older_than"), Priority: q.Get("priority"), Cursor: q.Get("cursor")}
	if f.OlderThan != "" {
		d, err := time.ParseDuration(f.OlderThan)
		if err != nil || d < 0 {
			return f, fmt.Errorf("older than %q: want a duration such as 30m or 2h", f.OlderThan)
		}
		f.older = d
	}
	return f, nil
}

// matches applies the filters the store's listing does not.
func (f filter) matches(in *saga.Instance, step string) bool {
	if f.older > 0 && time.Since(in.UpdatedAt) < f.older {
		return false
	}
	if f.Step != "" && step != f.Step {
		return false
	}
	if f.Priority != "" && strconv.Itoa(int(in.Priority)) != f.Priority {
		return false
	}
	if f.Text != "" {
		hay := strings.ToLower(in.Reason + " " + in.StuckReason + " " + string(in.Data))
		for _, r := range in.History {
			hay += " " + strings.ToLower(r.Error)
		}
		if !strings.Contains(hay, strings.ToLower(f.Text)) {
			return false
		}
	}
	return true
}

type row struct {
	saga.Instance
	Step string
}

// stepOf is the step a saga is at: its last action record.
func stepOf(in *saga.Instance) string {
	step := ""
	for _, r := range in.History {
		if r.Kind == saga.KindAction {
			step = r.Name
		}
	}
	return step
}

// selectSagas is SelectSagas with each saga's step, for the tables.
func (c *Console) selectSagas(r *http.Request, f filter, limit, scan int) ([]row, string, error) {
	list, next, err := SelectSagas(r.Context(), c.o.Store, f, limit, scan)
	rows := make([]row, len(list))
	for i := range list {
		rows[i] = row{list[i], stepOf(&list[i])}
	}
	return rows, next, err
}

func (c *Console) sagas(w http.ResponseWriter, r *http.Request, s session) {
	f, err := filterOf(r.URL.Query())
	var rows []row
	next := ""
	if err == nil {
		rows, next, err = c.selectSagas(r, f, 50, 5000)
	}
	p := page{Title: "Sagas", Operator: s.operator, CSRF: s.csrf}
	if err != nil {
		p.Error = err.Error()
	}
	q := r.URL.Query()
	q.Set("cursor", next)
	p.Data = map[string]any{"Filter": f, "Rows": rows, "Next": next, "NextQuery": q.Encode(), "Definitions": c.o.Coordinator.Definitions()}
	c.render(w, http.StatusOK, "sagas", p)
}

// sent lists the commands a saga sent: one per step and compensation
// record, with the idempotency key every attempt of it carried.
type sentCommand struct {
	Name, Kind, Key string
	Attempts        int
}

func (c *Console) saga(w http.ResponseWriter, r *http.Request, s session) {
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		c.fail(w, s, http.StatusBadRequest, fmt.Errorf("%q is not a saga id", r.PathValue("id")))
		return
	}
	in, err := c.o.Store.Get(r.Context(), id)
	if errors.Is(err, saga.ErrNotFound) {
		c.fail(w, s, http.StatusNotFound, fmt.Errorf("no saga %s", id))
		return
	} else if err != nil {
		c.fail(w, s, http.StatusServiceUnavailable, err)
		return
	}
	data := map[string]any{"Saga": in, "Step": stepOf(&in)}
	if cause, detail := Diagnose(r.Context(), c.o.Bus, c.o.QueueOf, c.o.Coordinator.Definition(in.Definition), &in); cause != "" {
		data["Cause"], data["CauseDetail"] = cause, detail
	}
	var sent []sentCommand
	for _, rec := range in.History {
		if rec.Kind != saga.KindSignal {
			sent = append(sent, sentCommand{rec.Name, rec.Kind, saga.MessageID(in.ID, keyName(rec)), rec.Attempts})
		}
	}
	data["Sent"] = sent
	if def := c.o.Coordinator.Definition(in.Definition); def != nil && !in.Phase.Terminal() {
		if plan, err := def.PlanReplay(in, time.Now()); err == nil {
			data["Plan"] = plan
		}
	}
	if c.o.Trail != nil {
		trail, err := c.o.Trail(r.Context(), in.ID)
		data["Trail"], data["TrailErr"] = trail, errText(err)
	}
	if c.o.Ledger != nil {
		l, err := c.o.Ledger(r.Context(), in.ID)
		data["Ledger"], data["LedgerErr"] = indent(l), errText(err)
	}
	raw, _ := json.MarshalIndent(in, "", "  ")
	data["Raw"] = string(raw)
	data["Flash"] = r.URL.Query().Get("done")
	c.render(w, http.StatusOK, "saga", page{Title: "Saga " + in.ID.String(), Operator: s.operator, CSRF: s.csrf,
		Flash: r.URL.Query().Get("done"), Error: r.URL.Query().Get("error"), Data: data})
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func indent(b json.RawMessage) string {
	if len(b) == 0 {
		return ""
	}
	var v any
	if json.Unmarshal(b, &v) != nil {
		return string(b)
	}
	out, _ := json.MarshalIndent(v, "", "  ")
	return string(out)
}

// reasonOf is the form's reason, or why it is not one.
func reasonOf(r *http.Request) (string, error) {
	reason := strings.TrimSpace(r.PostForm.Get("reason"))
	switch {
	case reason == "":
		return "", errors.New("a reason is required: it goes into the saga's trail")
	case len([]rune(reason)) > 500:
		return "", errors.New("the reason is longer than 500 characters")
	}
	return reason, nil
}

// action replays or cancels one saga, then shows it again.
func (c *Console) action(what string) handler {
	return func(w http.ResponseWriter, r *http.Request, s session) {
		id, err := uuid.Parse(r.PathValue("id"))
		if err != nil {
			c.fail(w, s, http.StatusBadRequest, fmt.Errorf("%q is not a saga id", r.PathValue("id")))
			return
		}
		back := c.o.Prefix + "/sagas/" + id.String()
		reason, err := reasonOf(r)
		if err == nil {
			a := coordinator.Action{Operator: s.operator, Reason: reason}
			if what == "replay" {
				_, err = c.o.Coordinator.Replay(r.Context(), id, a)
			} else {
				_, err = c.o.Coordinator.Cancel(r.Context(), id, a)
			}
		}
		if err != nil {
			http.Redirect(w, r, back+"?error="+url.QueryEscape(what+" refused: "+err.Error()), http.StatusSeeOther)
			return
		}
		c.o.Log.Info().Str("operator", s.operator).Str("saga_id", id.String()).Str("reason", reason).Msg("console: operator " + what + "ed saga")
		http.Redirect(w, r, back+"?done="+url.QueryEscape(what+" done by "+s.operator), http.StatusSeeOther)
	}
}

type planned struct {
	row
	Plan  saga.ReplayPlan
	Error string
}

// bulkReplay shows the plan of a replay by filter (the first POST), then
// carries it out once confirmed (confirm=yes), rate-limited.
func (c *Console) bulkReplay(w http.ResponseWriter, r *http.Request, s session) {
	f, err := filterOf(r.PostForm)
	reason, rerr := reasonOf(r)
	p := page{Title: "Replay by filter", Operator: s.operator, CSRF: s.csrf}
	if err == nil && f.State == "" {
		err = errors.New("choose a state to replay (stuck, usually)")
	}
	if err == nil && saga.Phase(f.State).Terminal() {
		err = fmt.Errorf("sagas in %s have ended: nothing to replay", f.State)
	}
	var rows []row
	if err == nil {
		rows, _, err = c.selectSagas(r, f, MaxBulk, 20*MaxBulk)
	}
	if err != nil {
		p.Error = err.Error()
		c.render(w, http.StatusBadRequest, "plan", p)
		return
	}
	confirm := r.PostForm.Get("confirm") == "yes" && rerr == nil
	var act *coordinator.Action
	if confirm {
		release, ok := TryBulk()
		if !ok {
			p.Error = "another bulk replay is running: try again when it is done"
			c.render(w, http.StatusTooManyRequests, "plan", p)
			return
		}
		defer release()
		act = &coordinator.Action{Operator: s.operator, Reason: reason}
	}
	sagas := make([]saga.Instance, len(rows))
	for i := range rows {
		sagas[i] = rows[i].Instance
	}
	done, err := ReplayAll(r.Context(), c.o.Coordinator, sagas, act)
	if err != nil {
		return // the operator went away
	}
	out := make([]planned, len(done))
	for i, d := range done {
		out[i] = planned{row: rows[i], Plan: d.Plan, Error: errText(d.Err)}
	}
	if confirm {
		c.o.Log.Info().Str("operator", s.operator).Str("reason", reason).Int("sagas", len(out)).Msg("console: operator replayed sagas in bulk")
		p.Flash = fmt.Sprintf("replayed %d sagas", len(out))
	} else if rerr != nil {
		p.Error = rerr.Error()
	}
	p.Data = map[string]any{"Filter": f, "Reason": reason, "Rows": out, "Done": confirm}
	c.render(w, http.StatusOK, "plan", p)
}

func (c *Console) deadLetters(w http.ResponseWriter, r *http.Request, s session) {
	list, err := c.o.Bus.DeadLetters(r.Context(), 200)
	p := page{Title: "Dead letters", Operator: s.operator, CSRF: s.csrf, Flash: r.URL.Query().Get("done"), Error: r.URL.Query().Get("error")}
	if err != nil {
		p.Error = "saga.dead cannot be read: " + err.Error()
	}
	p.Data = map[string]any{"List": list}
	c.render(w, http.StatusOK, "dead", p)
}

// redrive sends one dead letter (message_id) or every one taken from a
// queue back to where it came from.
func (c *Console) redrive(w http.ResponseWriter, r *http.Request, s session) {
	back := c.o.Prefix + "/dead-letters"
	reason, err := reasonOf(r)
	id, queue := r.PostForm.Get("message_id"), r.PostForm.Get("queue")
	if err == nil && id == "" && queue == "" {
		err = errors.New("choose a message or a queue")
	}
	var done []amqpbus.DeadMessage
	if err == nil {
		release, ok := TryBulk()
		if !ok {
			err = errors.New("another bulk action is running: try again when it is done")
		} else {
			defer release()
			done, err = Redrive(r.Context(), c.o.Bus, c.o.Coordinator, coordinator.Action{Operator: s.operator, Reason: reason}, MaxBulk,
				func(m amqpbus.DeadMessage) bool {
					return (id != "" && m.MessageID == id) || (queue != "" && m.Queue == queue)
				}, c.o.Log)
		}
	}
	if err != nil {
		http.Redirect(w, r, back+"?error="+url.QueryEscape(err.Error()), http.StatusSeeOther)
		return
	}
	c.o.Log.Info().Str("operator", s.operator).Str("reason", reason).Int("messages", len(done)).Msg("console: operator re-drove dead letters")
	http.Redirect(w, r, back+"?done="+url.QueryEscape(fmt.Sprintf("re-drove %d messages", len(done))), http.StatusSeeOther)
}
