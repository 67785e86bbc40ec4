package trip_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/sagaflow/sagaflow/examples/trip"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
	"github.com/sagaflow/sagaflow/saga/sagatest"
)

// The trip system end to end, as it runs in production: the four binaries
// of cmd/, built and started as processes on a fresh database and a fresh
// RabbitMQ vhost of the servers the main suite uses (DATABASE_URL,
// AMQP_URL, RABBITMQ_MANAGEMENT_URL, else sagaflow's .env), driven over
// HTTP, their effects read from the workers' tables.

func TestMain(m *testing.M) {
	sagatest.Main(m)
}

// system is a running trip deployment.
type system struct {
	api     string // http://127.0.0.1:port
	dbURL   string
	amqpURL string
}

var binaries = []string{"trip-orchestrator", "trip-hotel", "trip-flight", "trip-car"}

// build compiles the binaries into dir.
func build(t *testing.T, dir string) {
	t.Helper()
	args := []string{"build", "-o", dir + "/"}
	for _, b := range binaries {
		args = append(args, "./cmd/"+b)
	}
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// logs collects a process's output.
type logs struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// start builds and starts the four binaries and waits until each is
// ready; they are stopped (SIGTERM) when the test ends.
func start(t *testing.T) *system {
	t.Helper()
	dbURL := sagatest.NewDatabase(t)
	amqpURL := sagatest.NewVhost(t)
	dir := t.TempDir()
	build(t, dir)

	sys := &system{dbURL: dbURL, amqpURL: amqpURL}
	for _, name := range binaries {
		addr, admin := freeAddr(t), freeAddr(t)
		cmd := exec.Command(filepath.Join(dir, name))
		// A trip waits 8s for its check-in: long enough for the tests that
		// check in, short enough for the one that sees a trip stuck.
		cmd.Env = append(os.Environ(), "DATABASE_URL="+dbURL, "AMQP_URL="+amqpURL, "HTTP_ADDR="+addr, "METRICS_ADDR="+addr,
			"ADMIN_ADDR="+admin, "CHECKIN_TIMEOUT=8s")
		cmd.SysProcAttr = procAttr()
		out := &logs{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		t.Cleanup(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%s stopped with %v", name, err)
				}
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				<-done
				t.Errorf("%s did not stop within 30s of SIGTERM", name)
			}
			if t.Failed() {
				t.Logf("%s's log:\n%s", name, out.String())
			}
		})
		if name == "trip-orchestrator" {
			sys.api = "http://" + addr
		}
		waitReady(t, name, "http://"+addr+"/readyz", done, out)
	}
	return sys
}

func waitReady(t *testing.T, name, url string, done <-chan error, out *logs) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			t.Fatalf("%s exited at start (%v):\n%s", name, err, out.String())
		default:
		}
		if r, err := http.Get(url); err == nil {
			r.Body.Close()
			if r.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s not ready within 60s:\n%s", name, out.String())
}

// call sends a request to the API and decodes its JSON answer into out.
func (s *system) call(t *testing.T, method, path string, body any, header map[string]string, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.api+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		t.Fatal(err)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s = %d %s: %v", method, path, r.StatusCode, raw, err)
		}
	}
	return r.StatusCode
}

type view struct {
	TripID      string            `json:"trip_id"`
	State       string            `json:"state"`
	Reason      string            `json:"reason"`
	StuckReason string            `json:"stuck_reason"`
	Refs        map[string]string `json:"refs"`
}

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// book posts a trip and returns its id.
func (s *system) book(t *testing.T, city, from, to, car string) string {
	t.Helper()
	var v view
	req := map[string]any{
		"traveller": "Ada", "hotel": map[string]any{"city": city, "nights": 3},
		"flight": map[string]any{"from": from, "to": to}, "car": map[string]any{"class": car},
	}
	if code := s.call(t, http.MethodPost, "/trips", req, nil, &v); code != http.StatusAccepted || v.TripID == "" {
		t.Fatalf("POST /trips = %d %+v", code, v)
	}
	return v.TripID
}

// wait polls a trip until it ends, or waits for its check-in.
func (s *system) wait(t *testing.T, id string) view {
	t.Helper()
	return s.waitFor(t, id, "completed", "rejected", "cancelled", "stuck", "awaiting_checkin")
}

// waitFor polls a trip until it is in one of states.
func (s *system) waitFor(t *testing.T, id string, states ...string) view {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var v view
		s.call(t, http.MethodGet, "/trips/"+id, nil, nil, &v)
		for _, st := range states {
			if v.State == st {
				return v
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("trip %s still %s after 60s, want %v", id, v.State, states)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkIn posts the traveller's check-in and returns the status and the
// state answered.
func (s *system) checkIn(t *testing.T, id string) (int, string) {
	t.Helper()
	var v view
	code := s.call(t, http.MethodPost, "/trips/"+id+"/checkin", nil, nil, &v)
	return code, v.State
}

// publishCheckIn publishes the check-in as the hotel's system would: a
// signal hotel.checked_in for the trip, on the signal exchange.
func (s *system) publishCheckIn(t *testing.T, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	bus, err := amqpbus.Dial(ctx, amqpbus.Config{URL: s.amqpURL, Name: "hotel front desk"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	sig := saga.Signal{Name: trip.CheckedIn, Key: "desk:" + id, Payload: json.RawMessage(`{"room":"204"}`)}
	msgs := []saga.Message{saga.SignalMessage(id, sig, time.Now())}
	if ok, err := bus.Publish(ctx, msgs); err != nil || len(ok) != 1 {
		t.Fatalf("publish the check-in: %d confirmed, %v", len(ok), err)
	}
}

// bookings reads each desk's booking of a trip: "hotel" → its status.
func (s *system) bookings(t *testing.T, id string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	out := map[string]string{}
	for _, desk := range []string{"hotel", "flight", "car"} {
		var st string
		// An identifier cannot be a parameter: pgx quotes it.
		err := conn.QueryRow(ctx, `SELECT status FROM `+pgx.Identifier{desk, "bookings"}.Sanitize()+` WHERE trip_id = $1`, id).Scan(&st)
		if err == nil {
			out[desk] = st
		} else if err != pgx.ErrNoRows {
			t.Fatal(err)
		}
	}
	return out
}

func TestTrips(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	sys := start(t)

	t.Run("booked, confirmed, checked in", func(t *testing.T) {
		t.Parallel()
		id := sys.book(t, "Lisbon", "LHR", "LIS", "compact")
		v := sys.wait(t, id)
		if v.State != "awaiting_checkin" || len(v.Refs) != 3 {
			t.Fatalf("trip = %+v, want awaiting_checkin with three references", v)
		}
		if diff := cmp.Diff(map[string]string{"hotel": "confirmed", "flight": "booked", "car": "booked"}, sys.bookings(t, id)); diff != "" {
			t.Errorf("bookings (-want +got):\n%s", diff)
		}
		if code, state := sys.checkIn(t, id); code != http.StatusAccepted || state != "completed" {
			t.Errorf("check-in = %d %s, want 202 completed", code, state)
		}
		if code, state := sys.checkIn(t, id); code != http.StatusAccepted || state != "completed" {
			t.Errorf("the same check-in again = %d %s, want 202 completed (no second effect)", code, state)
		}
	})

	t.Run("checked in over the bus, early or not", func(t *testing.T) {
		t.Parallel()
		id := sys.book(t, "Porto", "LHR", "OPO", "compact")
		sys.publishCheckIn(t, id) // most likely before the trip waits: kept until it does
		if v := sys.waitFor(t, id, "completed", "stuck"); v.State != "completed" {
			t.Errorf("trip = %+v, want completed by the check-in from the bus", v)
		}
	})

	t.Run("a traveller who never checks in leaves the trip stuck", func(t *testing.T) {
		t.Parallel()
		id := sys.book(t, "Faro", "LHR", "FAO", "compact")
		v := sys.waitFor(t, id, "stuck", "completed", "cancelled", "rejected")
		if v.State != "stuck" || v.StuckReason != "the traveller did not check in" {
			t.Fatalf("trip = %+v, want stuck: the traveller did not check in", v)
		}
		// Late after all: the stuck trip takes it and completes.
		if code, state := sys.checkIn(t, id); code != http.StatusAccepted || state != "completed" {
			t.Errorf("a late check-in = %d %s, want 202 completed", code, state)
		}
	})

	t.Run("a refused car cancels the flight and the hotel", func(t *testing.T) {
		t.Parallel()
		id := sys.book(t, "Lisbon", "LHR", "LIS", "tank")
		v := sys.wait(t, id)
		if v.State != "cancelled" || !strings.Contains(v.Reason, "unavailable") {
			t.Errorf("trip = %+v, want cancelled because of the car", v)
		}
		if diff := cmp.Diff(map[string]string{"hotel": "cancelled", "flight": "cancelled", "car": "refused"}, sys.bookings(t, id)); diff != "" {
			t.Errorf("bookings (-want +got):\n%s", diff)
		}
	})

	t.Run("a refused hotel rejects the trip, nothing booked", func(t *testing.T) {
		t.Parallel()
		id := sys.book(t, "Atlantis", "LHR", "LIS", "compact")
		if v := sys.wait(t, id); v.State != "rejected" {
			t.Errorf("trip = %+v, want rejected", v)
		}
		var e errorBody
		if code := sys.call(t, http.MethodPost, "/trips/"+id+"/checkin", nil, nil, &e); code != http.StatusConflict || e.Error.Code != "not_waiting" {
			t.Errorf("check-in of a rejected trip = %d %+v, want 409 not_waiting", code, e)
		}
		if diff := cmp.Diff(map[string]string{"hotel": "refused"}, sys.bookings(t, id)); diff != "" {
			t.Errorf("bookings (-want +got):\n%s", diff)
		}
	})

	t.Run("one trip per idempotency key", func(t *testing.T) {
		t.Parallel()
		req := map[string]any{
			"traveller": "Grace", "hotel": map[string]any{"city": "Oslo", "nights": 1},
			"flight": map[string]any{"from": "CDG", "to": "OSL"}, "car": map[string]any{"class": "van"},
		}
		key := map[string]string{"Idempotency-Key": "grace-oslo"}
		var first, again view
		if code := sys.call(t, http.MethodPost, "/trips", req, key, &first); code != http.StatusAccepted {
			t.Fatalf("first POST = %d", code)
		}
		if code := sys.call(t, http.MethodPost, "/trips", req, key, &again); code != http.StatusOK || again.TripID != first.TripID {
			t.Errorf("same key again = %d %s, want 200 with trip %s", code, again.TripID, first.TripID)
		}
		sys.wait(t, first.TripID)
	})

	t.Run("bad requests are refused with a reason", func(t *testing.T) {
		t.Parallel()
		for _, tc := range []struct {
			method, path string
			body         any
			status       int
			code         string
		}{
			{http.MethodPost, "/trips", map[string]any{"traveller": "Ada"}, http.StatusBadRequest, "invalid_request"},
			{http.MethodPost, "/trips", map[string]any{"traveller": "Ada", "boat": true}, http.StatusBadRequest, "invalid_request"},
			{http.MethodGet, "/trips/not-a-uuid", nil, http.StatusBadRequest, "invalid_request"},
			{http.MethodGet, "/trips/0190f3c4-0000-7000-8000-000000000001", nil, http.StatusNotFound, "not_found"},
			{http.MethodPost, "/trips/not-a-uuid/checkin", nil, http.StatusBadRequest, "invalid_request"},
			{http.MethodPost, "/trips/0190f3c4-0000-7000-8000-000000000001/checkin", nil, http.StatusNotFound, "not_found"},
		} {
			var e errorBody
			if code := sys.call(t, tc.method, tc.path, tc.body, nil, &e); code != tc.status || e.Error.Code != tc.code || e.Error.Message == "" {
				t.Errorf("%s %s = %d %+v, want %d %s", tc.method, tc.path, code, e, tc.status, tc.code)
			}
		}
	})
}
