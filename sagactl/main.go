// Command sagactl is the operator's command line for sagaflow, on the
// orchestrator's admin API (its admin listener, ADMIN_ADDR):
//
//	sagactl sagas list [--state stuck] [--definition order] [--step S] [--older-than 1h] [--priority P] [--q TEXT] [--limit 50] [--cursor ID]
//	sagas get|events|ledger ID
//	sagas replay ID --reason "…"
//	sagas replay --state stuck --older-than 1h [--definition order] [--limit N] --reason "…" [--dry-run]
//	sagas cancel ID --reason "…"
//	dlq list [--limit N]
//	dlq redrive (MESSAGE_ID… | --queue Q | --all) --reason "…"
//	outbox inspect [--limit N]
//
// Global flags: --url (default $SAGAFLOW_URL, else http://127.0.0.1:8081),
// --token (default $SAGAFLOW_TOKEN; the operator's named admin token), and
// -o table|json: json prints what the admin API answered, as it answered
// it. Exit codes: 0 done, 1 the API refused or failed (its error is
// printed), 2 a bad command line.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sagaflow/sagaflow/internal/contract"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// cli is one invocation.
type cli struct {
	base, token, output string
	out, errw           io.Writer
	hc                  *http.Client
}

var errUsage = errors.New("usage")

const usage = `usage: sagactl [--url URL] [--token TOKEN] [-o table|json] COMMAND
  sagas list [--state S] [--definition D] [--step S] [--older-than 1h] [--priority P] [--q TEXT] [--limit N] [--cursor ID]
  sagas get ID | sagas events ID | sagas ledger ID
  sagas replay ID --reason R
  sagas replay --state S [--older-than 1h] [--definition D] [--limit N] --reason R [--dry-run]
  sagas cancel ID --reason R
  dlq list [--limit N]
  dlq redrive (MESSAGE_ID... | --queue Q | --all) --reason R
  outbox inspect [--limit N]
The admin listener's URL and the token come from --url and --token, or
SAGAFLOW_URL and SAGAFLOW_TOKEN.
`

func run(args []string, out, errw io.Writer) int {
	c := &cli{out: out, errw: errw, hc: &http.Client{Timeout: 5 * time.Minute}}
	fs := flag.NewFlagSet("sagactl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.base, "url", envOr("SAGAFLOW_URL", "http://127.0.0.1:8081"), "the orchestrator's admin listener")
	fs.StringVar(&c.token, "token", os.Getenv("SAGAFLOW_TOKEN"), "admin token")
	fs.StringVar(&c.output, "o", "table", "table or json")
	if err := fs.Parse(args); err != nil || (c.output != "table" && c.output != "json") || fs.NArg() < 2 {
		if err == nil && fs.NArg() >= 2 {
			err = fmt.Errorf("-o %q: want table or json", c.output)
		}
		if err != nil && !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(errw, "sagactl: %v\n", err)
		}
		fmt.Fprint(errw, usage)
		return 2
	}
	c.base = strings.TrimRight(c.base, "/")
	rest := fs.Args()
	var err error
	switch rest[0] + " " + rest[1] {
	case "sagas list":
		err = c.sagasList(rest[2:])
	case "sagas get":
		err = c.sagaShow(rest[2:], "", printSaga)
	case "sagas events":
		err = c.sagaShow(rest[2:], "/events", printEvents)
	case "sagas ledger":
		err = c.sagaLedger(rest[2:])
	case "sagas replay":
		err = c.sagaReplay(rest[2:])
	case "sagas cancel":
		err = c.sagaAction(rest[2:], "cancel")
	case "dlq list":
		err = c.dlqList(rest[2:])
	case "dlq redrive":
		err = c.dlqRedrive(rest[2:])
	case "outbox inspect":
		err = c.outboxInspect(rest[2:])
	default:
		err = fmt.Errorf("%w: unknown command %q", errUsage, strings.Join(rest[:2], " "))
	}
	var apiErr *apiError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(errw, "sagactl: %v\n%s", err, usage)
		return 2
	case errors.As(err, &apiErr):
		fmt.Fprintf(errw, "sagactl: %s\n", apiErr)
		return 1
	default:
		fmt.Fprintf(errw, "sagactl: %v\n", err)
		return 1
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// parse parses a command's flags, which may come before, between or after
// its positional arguments, and returns the positional ones.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// apiError is the admin API's {"error":{"code","message"}} with its status.
type apiError struct {
	Status  int
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message) }

// call sends a request and returns the answer's body, or the API's error.
func (c *cli) call(method, path string, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Error apiError `json:"error"`
		}
		if json.Unmarshal(b, &e) != nil || e.Error.Code == "" {
			e.Error = apiError{Code: "http", Message: strings.TrimSpace(string(b))}
		}
		e.Error.Status = resp.StatusCode
		return nil, &e.Error
	}
	return b, nil
}

// show prints body as the API answered it (-o json), or as print renders
// it into a table.
func (c *cli) show(body []byte, v any, print func(w *tabwriter.Writer, v any)) error {
	if c.output == "json" {
		var buf bytes.Buffer
		if err := json.Indent(&buf, body, "", "  "); err != nil {
			return err
		}
		buf.WriteByte('\n')
		_, err := c.out.Write(buf.Bytes())
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return err
	}
	w := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	print(w, v)
	return w.Flush()
}

func (c *cli) sagasList(args []string) error {
	fs := flag.NewFlagSet("sagas list", flag.ContinueOnError)
	state := fs.String("state", "stuck", "state (\"\" for every state)")
	def := fs.String("definition", "", "saga type")
	limit := fs.Int("limit", 50, "page size")
	cursor := fs.String("cursor", "", "next_cursor of the previous page")
	step := fs.String("step", "", "only sagas at this step")
	older := fs.String("older-than", "", "only sagas unchanged for this long (30m, 2h)")
	prio := fs.String("priority", "", "only sagas of this priority")
	text := fs.String("q", "", "only sagas whose reason, errors or data hold this text (a customer, a SKU)")
	if pos, err := parse(fs, args); err != nil || len(pos) > 0 {
		return usageErr(err, "sagas list takes no argument")
	}
	q := url.Values{"state": {*state}, "limit": {strconv.Itoa(*limit)}}
	for k, v := range map[string]string{"step": *step, "older_than": *older, "priority": *prio, "q": *text} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if *def != "" {
		q.Set("definition", *def)
	}
	if *cursor != "" {
		q.Set("cursor", *cursor)
	}
	body, err := c.call(http.MethodGet, "/admin/sagas?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	return c.show(body, &contract.SagaList{}, func(w *tabwriter.Writer, v any) {
		l := v.(*contract.SagaList)
		fmt.Fprintln(w, "SAGA\tDEFINITION\tSTATE\tSTEP\tATTEMPT\tUPDATED\tREASON")
		for _, s := range l.Sagas {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", s.SagaID, s.Definition, s.State, s.Step, s.Attempt,
				s.UpdatedAt.Format(time.RFC3339), s.Reason)
		}
		if l.NextCursor != nil {
			fmt.Fprintf(w, "(more: --cursor %s)\n", *l.NextCursor)
		}
	})
}

func usageErr(err error, msg string) error {
	if err != nil {
		return err
	}
	return fmt.Errorf("%w: %s", errUsage, msg)
}

// oneID parses a command that takes exactly one saga id.
func oneID(name string, args []string, fs *flag.FlagSet) (string, error) {
	pos, err := parse(fs, args)
	if err != nil || len(pos) != 1 {
		return "", usageErr(err, name+" takes one saga id")
	}
	return url.PathEscape(pos[0]), nil
}

func (c *cli) sagaShow(args []string, suffix string, print func(*tabwriter.Writer, any)) error {
	id, err := oneID("sagas get|events", args, flag.NewFlagSet("sagas", flag.ContinueOnError))
	if err != nil {
		return err
	}
	body, err := c.call(http.MethodGet, "/admin/sagas/"+id+suffix, nil)
	if err != nil {
		return err
	}
	if suffix == "" {
		return c.show(body, &contract.SagaView{}, print)
	}
	return c.show(body, &struct {
		Events []event `json:"events"`
	}{}, print)
}

func printSaga(w *tabwriter.Writer, v any) {
	s := v.(*contract.SagaView)
	fmt.Fprintf(w, "saga\t%s\ndefinition\t%s (version %d)\nstate\t%s (phase %s)\nstep\t%s, attempt %d\n",
		s.SagaID, s.Definition, s.Version, s.State, s.Phase, s.Step, s.Attempt)
	if s.Reason != "" {
		fmt.Fprintf(w, "reason\t%s\n", s.Reason)
	}
	if s.Deadline != nil {
		fmt.Fprintf(w, "deadline\t%s\n", s.Deadline.Format(time.RFC3339))
	}
	fmt.Fprintf(w, "created\t%s\nupdated\t%s\n\n", s.CreatedAt.Format(time.RFC3339), s.UpdatedAt.Format(time.RFC3339))
	fmt.Fprintln(w, "STEP\tKIND\tSTATUS\tATTEMPTS\tSTARTED\tFINISHED\tERROR")
	for _, r := range s.History {
		finished := "-"
		if r.FinishedAt != nil {
			finished = r.FinishedAt.Format(time.RFC3339)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", r.Name, r.Kind, r.Status, r.Attempts,
			r.StartedAt.Format(time.RFC3339), finished, r.Error)
	}
}

type event struct {
	Seq    int       `json:"seq"`
	Type   string    `json:"type"`
	At     time.Time `json:"at"`
	State  string    `json:"state"`
	Step   string    `json:"step"`
	Reason string    `json:"reason"`
	Data   *struct {
		Operator string `json:"operator"`
		Reason   string `json:"reason"`
	} `json:"data"`
}

func printEvents(w *tabwriter.Writer, v any) {
	fmt.Fprintln(w, "SEQ\tAT\tTYPE\tSTATE\tSTEP\tDETAIL")
	for _, e := range v.(*struct {
		Events []event `json:"events"`
	}).Events {
		detail := e.Reason
		if e.Data != nil {
			detail = fmt.Sprintf("by %s: %s", e.Data.Operator, e.Data.Reason)
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.At.Format(time.RFC3339), e.Type, e.State, e.Step, detail)
	}
}

func (c *cli) sagaLedger(args []string) error {
	id, err := oneID("sagas ledger", args, flag.NewFlagSet("sagas ledger", flag.ContinueOnError))
	if err != nil {
		return err
	}
	body, err := c.call(http.MethodGet, "/admin/orders/"+id+"/ledger", nil)
	if err != nil {
		return err
	}
	return c.show(body, &map[string]any{}, func(w *tabwriter.Writer, v any) {
		m := *v.(*map[string]any)
		for _, k := range slices.Sorted(maps.Keys(m)) {
			b, _ := json.Marshal(m[k])
			fmt.Fprintf(w, "%s\t%s\n", k, b)
		}
	})
}

// sagaAction replays or cancels one saga.
func (c *cli) sagaAction(args []string, action string) error {
	fs := flag.NewFlagSet("sagas "+action, flag.ContinueOnError)
	reason := fs.String("reason", "", "why (required: it goes into the saga's trail)")
	id, err := oneID("sagas "+action, args, fs)
	if err != nil {
		return err
	}
	body, err := c.call(http.MethodPost, "/admin/sagas/"+id+"/"+action, map[string]string{"reason": *reason})
	if err != nil {
		return err
	}
	return c.show(body, &contract.SagaView{}, printSaga)
}

func (c *cli) sagaReplay(args []string) error {
	fs := flag.NewFlagSet("sagas replay", flag.ContinueOnError)
	reason := fs.String("reason", "", "why (required: it goes into each saga's trail)")
	state := fs.String("state", "", "replay every saga in this state (with --older-than, --definition, --limit)")
	def := fs.String("definition", "", "saga type")
	older := fs.String("older-than", "", "only sagas unchanged for this long (30m, 2h)")
	limit := fs.Int("limit", 0, "at most this many (default and most 1000)")
	dry := fs.Bool("dry-run", false, "print the plan and change nothing")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *state == "" {
		if len(pos) != 1 || *dry {
			return fmt.Errorf("%w: sagas replay takes one saga id, or --state (and --dry-run) for many", errUsage)
		}
		return c.sagaAction([]string{pos[0], "--reason", *reason}, "replay")
	}
	if len(pos) != 0 {
		return fmt.Errorf("%w: sagas replay --state takes no saga id", errUsage)
	}
	body, err := c.call(http.MethodPost, "/admin/replays", map[string]any{
		"state": *state, "definition": *def, "older_than": *older, "limit": *limit, "reason": *reason, "dry_run": *dry})
	if err != nil {
		return err
	}
	type planned struct {
		SagaID        string   `json:"saga_id"`
		State         string   `json:"state"`
		After         string   `json:"after"`
		Forward       bool     `json:"forward"`
		Compensations []string `json:"compensations"`
		Queues        []string `json:"queues"`
		Waits         string   `json:"waits"`
		Error         string   `json:"error"`
		Commands      []struct {
			Type string `json:"type"`
			Key  string `json:"key"`
		} `json:"commands"`
	}
	var res struct {
		DryRun bool      `json:"dry_run"`
		Sagas  []planned `json:"sagas"`
	}
	return c.show(body, &res, func(w *tabwriter.Writer, _ any) {
		if res.DryRun {
			fmt.Fprintf(w, "plan (dry run: nothing was changed): %d sagas\n", len(res.Sagas))
		} else {
			fmt.Fprintf(w, "replayed %d sagas\n", len(res.Sagas))
		}
		fmt.Fprintln(w, "SAGA\tFROM\tTO\tSENDS (queue, idempotency key)\tTHEN COMPENSATES\tNOTE")
		for _, p := range res.Sagas {
			var sends []string
			for i, c := range p.Commands {
				q := ""
				if i < len(p.Queues) {
					q = p.Queues[i]
				}
				sends = append(sends, fmt.Sprintf("%s to %s (key %s)", c.Type, q, c.Key))
			}
			if p.Waits != "" {
				sends = append(sends, "waits again for "+p.Waits)
			}
			note := ""
			switch {
			case p.Error != "":
				note = "not replayed: " + p.Error
			case p.Forward:
				note = "past its pivot: only goes forward"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", p.SagaID, p.State, p.After, strings.Join(sends, "; "),
				strings.Join(p.Compensations, ", "), note)
		}
	})
}

func (c *cli) dlqList(args []string) error {
	fs := flag.NewFlagSet("dlq list", flag.ContinueOnError)
	limit := fs.Int("limit", 100, "at most this many")
	if pos, err := parse(fs, args); err != nil || len(pos) > 0 {
		return usageErr(err, "dlq list takes no argument")
	}
	body, err := c.call(http.MethodGet, "/admin/dead-letters?limit="+strconv.Itoa(*limit), nil)
	if err != nil {
		return err
	}
	return c.show(body, &deadList{}, func(w *tabwriter.Writer, v any) { printDead(w, v.(*deadList).DeadLetters) })
}

type (
	dead struct {
		MessageID  string `json:"message_id"`
		Type       string `json:"type"`
		Reason     string `json:"reason"`
		Queue      string `json:"queue"`
		Exchange   string `json:"exchange"`
		RoutingKey string `json:"routing_key"`
		Deliveries int    `json:"deliveries"`
		DeadAt     string `json:"dead_at"`
	}
	deadList struct {
		DeadLetters []dead `json:"dead_letters"`
		Redriven    []dead `json:"redriven"`
	}
)

func printDead(w *tabwriter.Writer, list []dead) {
	fmt.Fprintln(w, "MESSAGE\tTYPE\tFROM QUEUE\tBACK TO\tCOUNT\tDEAD AT\tREASON")
	for _, d := range list {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s %s\t%d\t%s\t%s\n", d.MessageID, d.Type, d.Queue, d.Exchange, d.RoutingKey,
			d.Deliveries, d.DeadAt, d.Reason)
	}
}

func (c *cli) dlqRedrive(args []string) error {
	fs := flag.NewFlagSet("dlq redrive", flag.ContinueOnError)
	reason := fs.String("reason", "", "why (required)")
	queue := fs.String("queue", "", "every dead letter taken from this queue")
	all := fs.Bool("all", false, "every dead letter")
	limit := fs.Int("limit", 0, "at most this many")
	ids, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(ids) == 0 && *queue == "" && !*all {
		return fmt.Errorf("%w: dlq redrive takes message ids, --queue or --all", errUsage)
	}
	body, err := c.call(http.MethodPost, "/admin/dead-letters/redrive", map[string]any{
		"message_ids": ids, "queue": *queue, "all": *all, "limit": *limit, "reason": *reason})
	if err != nil {
		return err
	}
	return c.show(body, &deadList{}, func(w *tabwriter.Writer, v any) {
		l := v.(*deadList).Redriven
		fmt.Fprintf(w, "re-drove %d messages\n", len(l))
		printDead(w, l)
	})
}

func (c *cli) outboxInspect(args []string) error {
	fs := flag.NewFlagSet("outbox inspect", flag.ContinueOnError)
	limit := fs.Int("limit", 100, "at most this many rows")
	if pos, err := parse(fs, args); err != nil || len(pos) > 0 {
		return usageErr(err, "outbox inspect takes no argument")
	}
	body, err := c.call(http.MethodGet, "/admin/outbox?limit="+strconv.Itoa(*limit), nil)
	if err != nil {
		return err
	}
	type msg struct {
		Kind, Type string
		MessageID  string `json:"message_id"`
		SagaID     string `json:"saga_id"`
		Bytes      int
	}
	var res struct {
		Rows []struct {
			ID          string    `json:"id"`
			CreatedAt   time.Time `json:"created_at"`
			LeasedUntil time.Time `json:"leased_until"`
			Quarantine  string    `json:"quarantine"`
			Error       string    `json:"error"`
			Messages    []msg     `json:"messages"`
		} `json:"rows"`
	}
	return c.show(body, &res, func(w *tabwriter.Writer, _ any) {
		fmt.Fprintf(w, "%d outbox rows\n", len(res.Rows))
		fmt.Fprintln(w, "ROW\tCREATED\tLEASED UNTIL\tKIND\tTYPE\tMESSAGE\tSAGA\tBYTES")
		for _, r := range res.Rows {
			lease := r.LeasedUntil.Format(time.RFC3339)
			if r.Quarantine != "" {
				lease = "quarantined: " + r.Quarantine
			}
			if r.Error != "" {
				fmt.Fprintf(w, "%s\t%s\t%s\t-\t-\t-\t-\t%s\n", r.ID, r.CreatedAt.Format(time.RFC3339), lease, r.Error)
			}
			for _, m := range r.Messages {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", r.ID, r.CreatedAt.Format(time.RFC3339), lease,
					m.Kind, m.Type, m.MessageID, m.SagaID, m.Bytes)
			}
		}
	})
}
