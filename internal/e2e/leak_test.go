package e2e

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/orchestrator/order"
)

// leaks lists what must never reach a client: the driver's and the
// runtime's own words, users, hosts and databases.
func leaks(body string, s *testenv.System) []string {
	var found []string
	for _, w := range []string{"failed to connect", "user=", "database=", "127.0.0.1", "SQLSTATE", "amqpbus", "simulated", s.Name} {
		if strings.Contains(body, w) {
			found = append(found, w)
		}
	}
	return found
}

// TestErrorsTellWithoutLeaking: with the database away, the API and the
// health routes say so with a code and a sentence, not with the driver's
// text (which named the user, the database and the host); a worker's
// transient error does not become an order's reason, nor its email.
func TestErrorsTellWithoutLeaking(t *testing.T) {
	s := testenv.StartT(t, testenv.Options{
		Env: map[string]string{"STEP_TIMEOUT": "1s", "STEP_MAX_TIMEOUT": "1s", "STEP_ATTEMPTS": "2",
			"COMPENSATION_ATTEMPTS": "1000", "RETRY_BACKOFF": "10ms", "RETRY_MAX_BACKOFF": "200ms"},
		ServiceEnv: map[string]map[string]string{"payment": {"SIM_FAILURE_RATE": "1"}},
	})
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Kite", 1500, 5)
	id := s.Place(t, testenv.OrderSpec{Items: testenv.Items(sk, 1)})
	// The charge fails transiently until it is out of attempts; then payment
	// comes back sound, so that the refund and the release finish.
	for deadline := time.Now().Add(waitFor); s.Order(t, id).State != order.StateCompensating; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("order %s never compensated: %+v", id, s.Order(t, id))
		}
	}
	if _, err := s.Kill("payment", syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := s.StartService("payment", map[string]string{"SIM_FAILURE_RATE": "0"}); err != nil {
		t.Fatal(err)
	}
	v := s.WaitTerminal(t, []string{id}, waitFor)[id]
	if v.State != order.StateCancelled || v.Reason != "payment_unavailable: the payment service did not answer" {
		t.Errorf("order with payment failing: %s, reason %q; want cancelled, payment_unavailable", v.State, v.Reason)
	}
	raw := s.Call(t, http.MethodGet, "/orders/"+id, nil, nil)
	if l := leaks(string(raw.Body), s); len(l) > 0 {
		t.Errorf("GET /orders/{id} shows %v: %s", l, raw.Body)
	}
	var body string
	deadline := time.Now().Add(waitFor)
	for body == "" && time.Now().Before(deadline) {
		_ = s.Pool(t, "notification").QueryRow(context.Background(),
			`SELECT body FROM notifications WHERE order_id = $1 AND channel = 'email'`, id).Scan(&body)
		time.Sleep(50 * time.Millisecond)
	}
	if l := leaks(body, s); len(l) > 0 || body == "" {
		t.Errorf("the email says %q (leaks %v)", body, l)
	}

	// The database away: an orchestrator that reaches it through a proxy
	// the test takes down.
	dbURL, _ := url.Parse(s.DBURL)
	proxy := startTCPProxy(t, dbURL.Host)
	proxied := *dbURL
	proxied.Host = proxy.Addr()
	base := startOrchestrator(t, s, "orchestrator-2", map[string]string{"DATABASE_URL": proxied.String()})
	t.Cleanup(func() { _, _ = s.Kill("orchestrator-2", syscall.SIGKILL) })
	proxy.Down()
	for _, c := range []struct{ method, path string }{
		{http.MethodGet, "/readyz"}, {http.MethodGet, "/healthz"}, {http.MethodGet, "/orders"},
		{http.MethodGet, "/orders/" + id}, {http.MethodPost, "/orders"},
	} {
		r, err := testenv.Request(s.HTTP, base, c.method, c.path, testenv.OrderSpec{Items: testenv.Items(sk, 1)}.Body(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if l := leaks(string(r.Body), s); len(l) > 0 {
			t.Errorf("%s %s with the database away: %d shows %v: %s", c.method, c.path, r.Status, l, r.Body)
		}
		if c.path != "/healthz" && r.Status != http.StatusServiceUnavailable {
			t.Errorf("%s %s with the database away: %d, want 503", c.method, c.path, r.Status)
		}
		if r.Header.Get("X-Request-ID") == "" {
			t.Errorf("%s %s: no X-Request-ID", c.method, c.path)
		}
	}
}
