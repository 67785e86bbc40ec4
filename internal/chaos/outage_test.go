package chaos

import (
	"encoding/json"
	"maps"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/orchestrator/api"
	"github.com/sagaflow/sagaflow/orchestrator/order"
	"github.com/sagaflow/sagaflow/saga/service"
)

// TestPostgresOutage: while PostgreSQL is down the API answers 503 with a
// JSON error and /readyz says why; nobody crashes, and once it is back
// orders flow again, including the ones accepted just before.
func TestPostgresOutage(t *testing.T) {
	priv := privateServers(t)
	s := testenv.StartT(t, testenv.Options{Env: faultEnv, Servers: priv.Servers()})
	s.PutProduct(t, "pg-a", "Mug", 800, 100)
	var before []string
	for range 20 {
		before = append(before, s.Place(t, testenv.OrderSpec{Items: testenv.Items("pg-a", 1)}))
	}

	if err := priv.Postgres.Stop("fast"); err != nil {
		t.Fatal(err)
	}
	for _, req := range []struct{ method, path string }{
		{http.MethodPost, "/orders"},
		{http.MethodGet, "/orders/" + before[0]},
		{http.MethodGet, "/orders"},
	} {
		r := s.Call(t, req.method, req.path, testenv.OrderSpec{Items: testenv.Items("pg-a", 1)}.Body(), nil)
		var e testenv.ErrorBody
		if err := json.Unmarshal(r.Body, &e); err != nil || r.Status != http.StatusServiceUnavailable || e.Error.Code != api.CodeUnavailable {
			t.Errorf("%s %s with PostgreSQL down: %d %s, want 503 unavailable", req.method, req.path, r.Status, r.Body)
		}
	}
	r := s.Call(t, http.MethodGet, "/readyz", nil, nil)
	var st service.Status
	r.Decode(t, &st)
	if r.Status != http.StatusServiceUnavailable || st.Postgres == "ok" || st.RabbitMQ != "ok" {
		t.Errorf("/readyz with PostgreSQL down: %d %+v, want 503 naming postgres", r.Status, st)
	}
	time.Sleep(2 * time.Second) // long enough for every loop to hit the outage
	for _, name := range testenv.Services {
		if !s.Running(name) {
			t.Errorf("%s exited while PostgreSQL was down:\n%s", name, s.Logs(name, 10))
		}
	}

	if err := priv.Postgres.Start(); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitReady(time.Minute); err != nil {
		t.Fatal(err)
	}
	after := s.Place(t, testenv.OrderSpec{Items: testenv.Items("pg-a", 1)})
	outcomes := map[string]int{}
	for _, v := range s.WaitTerminal(t, append(before, after), 2*time.Minute) {
		outcomes[v.State]++
	}
	if outcomes[order.StateCompleted] != len(before)+1 {
		t.Errorf("outcomes %v, want all %d completed", outcomes, len(before)+1)
	}
	if p := s.Product(t, "pg-a"); p.Sold != int64(len(before)+1) || p.Reserved != 0 || p.Available+p.Sold != 100 {
		t.Errorf("stock %+v", p)
	}
}

// TestBrokerOutage: while RabbitMQ is down the API keeps accepting orders;
// they wait in the outbox and complete once the broker is back.
func TestBrokerOutage(t *testing.T) {
	priv := privateServers(t)
	// Sagas keep retrying while the broker is away; the budget must outlast
	// a slow broker start (STEP_MAX_TIMEOUT × attempts: several minutes).
	env := maps.Clone(faultEnv)
	env["STEP_ATTEMPTS"], env["RETRIABLE_ATTEMPTS"] = "60", "60"
	s := testenv.StartT(t, testenv.Options{Env: env, Servers: priv.Servers()})
	s.PutProduct(t, "mq-a", "Kettle", 2500, 100)

	if err := priv.RabbitMQ.Stop(); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range 25 {
		ids = append(ids, s.Place(t, testenv.OrderSpec{Items: testenv.Items("mq-a", 2)}))
	}
	r := s.Call(t, http.MethodGet, "/readyz", nil, nil)
	var st service.Status
	r.Decode(t, &st)
	if r.Status != http.StatusServiceUnavailable || st.RabbitMQ == "ok" {
		t.Errorf("/readyz with RabbitMQ down: %d %+v, want 503 naming rabbitmq", r.Status, st)
	}
	if v := s.Order(t, ids[0]); v.State != order.StatePending && v.State != order.StateReservingStock {
		t.Errorf("an order accepted with the broker down is %s, want pending or reserving_stock", v.State)
	}
	var backlog float64
	for _, line := range strings.Split(string(s.Call(t, http.MethodGet, "/metrics", nil, nil).Body), "\n") {
		if v, ok := strings.CutPrefix(line, "sagaflow_outbox_backlog "); ok {
			_ = json.Unmarshal([]byte(v), &backlog)
		}
	}
	if backlog < float64(len(ids)) {
		t.Errorf("sagaflow_outbox_backlog = %v, want at least %d messages waiting", backlog, len(ids))
	}

	if err := priv.RabbitMQ.Start(); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitReady(time.Minute); err != nil {
		t.Fatal(err)
	}
	outcomes := map[string]int{}
	for _, v := range s.WaitTerminal(t, ids, 2*time.Minute) {
		outcomes[v.State]++
	}
	if outcomes[order.StateCompleted] != len(ids) {
		t.Errorf("outcomes %v, want all %d completed", outcomes, len(ids))
	}
	if p := s.Product(t, "mq-a"); p.Sold != int64(2*len(ids)) || p.Reserved != 0 {
		t.Errorf("stock %+v, want %d sold", p, 2*len(ids))
	}
}
