// Package console is sagaflow's operator console: server-rendered pages,
// embedded in the binary (no CDN, no external fonts or scripts), that any
// orchestrator can mount on its admin listener (RunOrchestrator mounts it
// at /ui/). Plain links and forms do everything; nothing needs script.
//
// An operator logs in at /ui/login with one of the admin tokens; the
// session is a random id in an HttpOnly, SameSite=Strict cookie (Secure
// over TLS), kept in memory for 12 hours. Every form that changes
// something carries the session's CSRF token, and every action (replay,
// cancel, bulk replay, re-drive) needs a reason and is recorded under the
// token's name.
package console

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"html/template"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/coordinator"
	"github.com/sagaflow/sagaflow/saga/pgstore"
)

//go:embed assets
var assets embed.FS

// TrailEvent is one event of a saga's audit trail, as Options.Trail
// returns it.
type TrailEvent struct {
	Seq      int       `json:"seq"`
	Type     string    `json:"type"`
	At       time.Time `json:"at"`
	State    string    `json:"state"`
	Step     string    `json:"step,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	Operator string    `json:"operator,omitempty"`
	Why      string    `json:"why,omitempty"`
}

// Options are what the console reads and acts through.
type Options struct {
	Coordinator *coordinator.Coordinator
	Store       *pgstore.Store
	// Bus reads and re-drives saga.dead.
	Bus *amqpbus.Bus
	// Tokens are the operators' admin tokens, by operator name.
	Tokens map[string]string
	// Trail returns a saga's audit trail (nil: the page has none).
	Trail func(ctx context.Context, id uuid.UUID) ([]TrailEvent, error)
	// Ledger returns what the workers recorded for a saga, as JSON (nil:
	// the page has none).
	Ledger func(ctx context.Context, id uuid.UUID) (json.RawMessage, error)
	Log    zerolog.Logger
	// Prefix is where the console is mounted (default "/ui").
	Prefix string
	// QueueOf names the queue a command type goes to, so that a saga stuck
	// for want of a reply can be told apart from one whose worker is not
	// there at all (nil: not told).
	QueueOf func(commandType string) string
}

// Console serves the pages.
type Console struct {
	o     Options
	pages map[string]*template.Template
	mux   *http.ServeMux

	mu       sync.Mutex
	sessions map[string]session
}

type session struct {
	operator, csrf string
	expires        time.Time
}

const (
	cookieName = "sagaflow_console"
	sessionTTL = 12 * time.Hour
)

// New returns the console; serve it at o.Prefix + "/".
func New(o Options) *Console {
	if o.Prefix == "" {
		o.Prefix = "/ui"
	}
	c := &Console{o: o, sessions: map[string]session{}, pages: map[string]*template.Template{}}
	funcs := template.FuncMap{
		"ts": func(t time.Time) string {
			if t.IsZero() {
				return "-"
			}
			return t.UTC().Format("2006-01-02 15:04:05Z")
		},
		"tsp": func(t *time.Time) string {
			if t == nil {
				return "-"
			}
			return t.UTC().Format("2006-01-02 15:04:05Z")
		},
		"since":  func(t time.Time) string { return time.Since(t).Round(time.Second).String() },
		"join":   strings.Join,
		"prefix": func() string { return o.Prefix },
		"key":    func(id uuid.UUID, r saga.StepRecord) string { return saga.MessageID(id, keyName(r)) },
		"cause":  func(in saga.Instance) string { c, _ := in.Cause(); return string(c) },
	}
	for _, p := range []string{"login", "overview", "sagas", "saga", "plan", "dead"} {
		c.pages[p] = template.Must(template.New("layout.html").Funcs(funcs).ParseFS(assets, "assets/layout.html", "assets/"+p+".html"))
	}
	m := http.NewServeMux()
	pre := o.Prefix
	m.HandleFunc("GET "+pre+"/login", c.loginPage)
	m.HandleFunc("POST "+pre+"/login", c.login)
	m.HandleFunc("GET "+pre+"/console.css", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/css; charset=utf-8")
		w.Header().Set("Cache-Control", "max-age=3600")
		b, _ := assets.ReadFile("assets/console.css")
		_, _ = w.Write(b)
	})
	m.Handle("POST "+pre+"/logout", c.auth(c.logout))
	m.Handle("GET "+pre+"/{$}", c.auth(c.overview))
	m.Handle("GET "+pre+"/sagas", c.auth(c.sagas))
	m.Handle("GET "+pre+"/sagas/{id}", c.auth(c.saga))
	m.Handle("POST "+pre+"/sagas/{id}/replay", c.auth(c.action("replay")))
	m.Handle("POST "+pre+"/sagas/{id}/cancel", c.auth(c.action("cancel")))
	m.Handle("POST "+pre+"/replay", c.auth(c.bulkReplay))
	m.Handle("GET "+pre+"/dead-letters", c.auth(c.deadLetters))
	m.Handle("POST "+pre+"/dead-letters/redrive", c.auth(c.redrive))
	m.HandleFunc(pre+"/", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) })
	c.mux = m
	return c
}

// ServeHTTP implements http.Handler, with the headers every page has.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	c.mux.ServeHTTP(w, r)
}

// page is what every template gets.
type page struct {
	Title    string
	Operator string
	CSRF     string
	Flash    string
	Error    string
	Data     any
}

func (c *Console) render(w http.ResponseWriter, status int, name string, p page) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := c.pages[name].Execute(w, p); err != nil {
		c.o.Log.Error().Err(err).Str("page", name).Msg("console: render")
	}
}

func newToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// operatorOf finds the operator whose token this is, each compared in
// constant time.
func (c *Console) operatorOf(token string) string {
	found := ""
	for name, t := range c.o.Tokens {
		if t != "" && subtle.ConstantTimeCompare([]byte(token), []byte(t)) == 1 {
			found = name
		}
	}
	return found
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	c.render(w, http.StatusOK, "login", page{Title: "Log in"})
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	op := ""
	if r.ParseForm() == nil {
		op = c.operatorOf(r.PostForm.Get("token"))
	}
	if op == "" {
		c.render(w, http.StatusUnauthorized, "login", page{Title: "Log in", Error: "That is not an admin token."})
		return
	}
	id := newToken()
	c.mu.Lock()
	now := time.Now()
	for k, s := range c.sessions { // forget the expired ones
		if now.After(s.expires) {
			delete(c.sessions, k)
		}
	}
	c.sessions[id] = session{operator: op, csrf: newToken(), expires: now.Add(sessionTTL)}
	c.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: id, Path: c.o.Prefix + "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil, MaxAge: int(sessionTTL.Seconds())})
	c.o.Log.Info().Str("operator", op).Msg("console: operator logged in")
	http.Redirect(w, r, c.o.Prefix+"/", http.StatusSeeOther)
}

type handler func(w http.ResponseWriter, r *http.Request, s session)

// auth lets a request with a live session through (and, for a POST, the
// session's CSRF token in the form); others go to the login page.
func (c *Console) auth(h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var s session
		ok := false
		if ck, err := r.Cookie(cookieName); err == nil {
			c.mu.Lock()
			s, ok = c.sessions[ck.Value]
			c.mu.Unlock()
			ok = ok && time.Now().Before(s.expires)
		}
		if !ok {
			if r.Method == http.MethodGet {
				http.Redirect(w, r, c.o.Prefix+"/login", http.StatusSeeOther)
				return
			}
			http.Error(w, "log in first", http.StatusUnauthorized)
			return
		}
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
			if r.ParseForm() != nil || subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(s.csrf)) != 1 {
				http.Error(w, "the form's CSRF token does not match this session: reload the page", http.StatusForbidden)
				return
			}
		}
		h(w, r, s)
	})
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, _ session) {
	if ck, err := r.Cookie(cookieName); err == nil {
		c.mu.Lock()
		delete(c.sessions, ck.Value)
		c.mu.Unlock()
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: c.o.Prefix + "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, c.o.Prefix+"/login", http.StatusSeeOther)
}

func (c *Console) fail(w http.ResponseWriter, s session, status int, err error) {
	c.o.Log.Warn().Err(err).Msg("console: page failed")
	c.render(w, status, "overview", page{Title: "Error", Operator: s.operator, CSRF: s.csrf, Error: err.Error()})
}

// keyName is the step or compensation name in a record's idempotency key.
func keyName(r saga.StepRecord) string {
	if r.Was != "" {
		return r.Was
	}
	return r.Name
}

func sortedRefs(m map[saga.StateRef]int64) []stateCount {
	out := make([]stateCount, 0, len(m))
	for ref, n := range m {
		out = append(out, stateCount{ref.Definition, ref.State, n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Definition != out[j].Definition {
			return out[i].Definition < out[j].Definition
		}
		return out[i].State < out[j].State
	})
	return out
}

type stateCount struct {
	Definition, State string
	N                 int64
}

// Diagnose is a stuck saga's cause, told finer where the broker can say
// more: a command that got no reply whose queue has no consumer is
// saga.CauseNoConsumer. "" for a saga that is not stuck.
func Diagnose(ctx context.Context, bus *amqpbus.Bus, queueOf func(string) string, def *saga.Definition, in *saga.Instance) (saga.StuckCause, string) {
	cause, detail := in.Cause()
	if cause != saga.CauseNoReply || bus == nil || queueOf == nil || def == nil {
		return cause, detail
	}
	k := def.For(in)
	if k == nil || in.Step < 0 || in.Step >= len(k.Steps) {
		return cause, detail
	}
	st := &k.Steps[in.Step]
	command := st.Command
	if in.StuckIn == saga.Compensating && st.Compensation != nil {
		command = st.Compensation.Command
	}
	if command == "" {
		return cause, detail
	}
	q := queueOf(command)
	if _, consumers, err := bus.Inspect(ctx, q); err == nil && consumers == 0 {
		return saga.CauseNoConsumer, "no consumer on " + q + ": " + detail
	}
	return cause, detail
}
