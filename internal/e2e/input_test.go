package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/orchestrator/api"
)

// footprint is what a request could have stored or sent.
type footprint struct {
	sagas, published, started float64
}

// measure waits until the deployment is quiet (no saga with a command in
// flight, nothing left in the outbox: earlier tests' messages are all
// published and counted), then reads its footprint.
func measure(t *testing.T, s *testenv.System) footprint {
	t.Helper()
	waitQuiet(t, s)
	var f footprint
	var n int64
	if err := s.Pool(t, "orchestrator").QueryRow(context.Background(), `SELECT count(*) FROM sagas`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	f.sagas = float64(n)
	m := metricValues(t, s)
	f.published = m[`sagaflow_messages_published_total{result="confirmed"}`]
	f.started = m["sagaflow_sagas_started_total"]
	return f
}

// waitQuiet waits until no saga has a command in flight or a retry
// waiting, and the outbox is empty.
func waitQuiet(t *testing.T, s *testenv.System) {
	t.Helper()
	db := s.Pool(t, "orchestrator")
	var busy int64
	for deadline := time.Now().Add(waitFor); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err := db.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM sagas WHERE deadline IS NOT NULL)
			+ (SELECT count(*) FROM outbox)`).Scan(&busy); err != nil {
			t.Fatal(err)
		}
		if busy == 0 {
			return
		}
	}
	t.Fatalf("the deployment never went quiet: %d sagas in flight and outbox rows", busy)
}

// metricValues scrapes the orchestrator's /metrics into name{labels} -> value.
func metricValues(t *testing.T, s *testenv.System) map[string]float64 {
	t.Helper()
	return parseMetrics(s.Call(t, http.MethodGet, "/metrics", nil, nil).Body)
}

// parseMetrics reads Prometheus text into name{labels} -> value.
func parseMetrics(body []byte) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

func TestBadOrdersAreRefusedAndChangeNothing(t *testing.T) {
	s := system(t)
	good := func() map[string]any {
		return testenv.OrderSpec{Items: testenv.Items(sku(t, "a"), 1)}.Body()
	}
	with := func(edit func(map[string]any)) []byte {
		b := good()
		edit(b)
		j, _ := json.Marshal(b)
		return j
	}
	many := make([]map[string]any, 10_000)
	for i := range many {
		many[i] = map[string]any{"sku": "sku-x", "quantity": 1}
	}
	huge := append([]byte(`{"customer_id":"`), bytes.Repeat([]byte("x"), 5<<20)...)
	huge = append(huge, `"}`...)

	cases := []struct {
		name        string
		body        []byte
		contentType string
		status      int
		code        string
		mention     string // the message names the problem
	}{
		{"invalid JSON", []byte(`{"customer_id": "c-1", "items": [`), "", 400, api.CodeInvalidRequest, "malformed"},
		{"not an object", []byte(`[1, 2]`), "", 400, api.CodeInvalidRequest, "malformed"},
		{"trailing data", append(with(func(map[string]any) {}), []byte(` {}`)...), "", 400, api.CodeInvalidRequest, "after"},
		{"quantity zero", with(func(b map[string]any) { b["items"] = []map[string]any{{"sku": "a", "quantity": 0}} }), "", 400, api.CodeInvalidRequest, "quantity"},
		{"quantity negative", with(func(b map[string]any) { b["items"] = []map[string]any{{"sku": "a", "quantity": -3}} }), "", 400, api.CodeInvalidRequest, "quantity"},
		{"quantity not a number", with(func(b map[string]any) { b["items"] = []map[string]any{{"sku": "a", "quantity": "2"}} }), "", 400, api.CodeInvalidRequest, "quantity"},
		{"quantity fractional", with(func(b map[string]any) { b["items"] = []map[string]any{{"sku": "a", "quantity": 1.5}} }), "", 400, api.CodeInvalidRequest, "quantity"},
		{"no items", with(func(b map[string]any) { b["items"] = []any{} }), "", 400, api.CodeInvalidRequest, "items"},
		{"items missing", with(func(b map[string]any) { delete(b, "items") }), "", 400, api.CodeInvalidRequest, "items"},
		{"10,000 items", with(func(b map[string]any) { b["items"] = many }), "", 400, api.CodeInvalidRequest, "items"},
		{"bad sku", with(func(b map[string]any) { b["items"] = []map[string]any{{"sku": "no spaces", "quantity": 1}} }), "", 400, api.CodeInvalidRequest, "sku"},
		{"5 MB body", huge, "", 413, api.CodePayloadTooLarge, "larger"},
		{"wrong content type", with(func(map[string]any) {}), "text/plain", 415, api.CodeUnsupportedMediaType, "Content-Type"},
		{"no content type", with(func(map[string]any) {}), "-", 415, api.CodeUnsupportedMediaType, "Content-Type"},
		{"customer missing", with(func(b map[string]any) { delete(b, "customer_id") }), "", 400, api.CodeInvalidRequest, "customer_id"},
		{"token missing", with(func(b map[string]any) { delete(b, "payment_token") }), "", 400, api.CodeInvalidRequest, "payment_token"},
		{"address missing", with(func(b map[string]any) { delete(b, "shipping_address") }), "", 400, api.CodeInvalidRequest, "shipping_address"},
		{"country missing", with(func(b map[string]any) { b["shipping_address"] = map[string]string{"line1": "x", "city": "y"} }), "", 400, api.CodeInvalidRequest, "country"},
		{"country invalid", with(func(b map[string]any) {
			b["shipping_address"] = map[string]string{"line1": "x", "city": "y", "country": "USA"}
		}), "", 400, api.CodeInvalidRequest, "country"},
		{"unknown priority", with(func(b map[string]any) { b["priority"] = "urgent" }), "", 400, api.CodeInvalidRequest, "priority"},
		{"unknown field", with(func(b map[string]any) { b["amount_cents"] = 1 }), "", 400, api.CodeInvalidRequest, "amount_cents"},
		{"every field missing", []byte(`{}`), "", 400, api.CodeInvalidRequest, "customer_id"},
		// Text that PostgreSQL, logs, emails and SMS cannot take.
		{"NUL in customer_id", with(func(b map[string]any) { b["customer_id"] = "c\x00-1" }), "", 400, api.CodeInvalidRequest, "customer_id"},
		{"BEL in payment_token", with(func(b map[string]any) { b["payment_token"] = "tok\avisa" }), "", 400, api.CodeInvalidRequest, "payment_token"},
		{"ESC in line1", with(func(b map[string]any) {
			b["shipping_address"] = map[string]string{"line1": "1 \x1b[31mMain", "city": "y", "country": "US"}
		}), "", 400, api.CodeInvalidRequest, "line1"},
		{"U+0001 in city", with(func(b map[string]any) {
			b["shipping_address"] = map[string]string{"line1": "x", "city": "Spring\x01field", "country": "US"}
		}), "", 400, api.CodeInvalidRequest, "city"},
		{"bytes that are not UTF-8", bytes.Replace(with(func(b map[string]any) { b["customer_id"] = "MARK" }),
			[]byte("MARK"), []byte{0xff, 0xfe}, 1), "", 400, api.CodeInvalidRequest, "UTF-8"},
		{"201 characters", with(func(b map[string]any) { b["customer_id"] = strings.Repeat("é", 201) }), "", 400, api.CodeInvalidRequest, "customer_id"},
	}
	before := measure(t, s)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := map[string]string{}
			switch tc.contentType {
			case "":
			case "-":
				h["Content-Type"] = ""
			default:
				h["Content-Type"] = tc.contentType
			}
			r := s.Call(t, http.MethodPost, "/orders", tc.body, h)
			var e testenv.ErrorBody
			if err := json.Unmarshal(r.Body, &e); err != nil {
				t.Fatalf("body is not a JSON error: %d %q", r.Status, r.Body)
			}
			if r.Status != tc.status || e.Error.Code != tc.code {
				t.Errorf("got %d %s, want %d %s (%s)", r.Status, e.Error.Code, tc.status, tc.code, e.Error.Message)
			}
			if !strings.Contains(e.Error.Message, tc.mention) {
				t.Errorf("message %q does not mention %q", e.Error.Message, tc.mention)
			}
		})
	}
	if after := measure(t, s); after != before {
		t.Errorf("bad input changed something: before %+v, after %+v", before, after)
	}
}

func TestAdminProductValidation(t *testing.T) {
	s := system(t)
	for _, tc := range []struct {
		name string
		body any
	}{
		{"negative price", map[string]any{"name": "x", "price_cents": -1, "available": 1}},
		{"negative stock", map[string]any{"name": "x", "price_cents": 1, "available": -1}},
		{"no name", map[string]any{"price_cents": 1, "available": 1}},
		{"unknown field", map[string]any{"name": "x", "price_cents": 1, "available": 1, "sold": 3}},
	} {
		r := s.Admin(t, http.MethodPut, "/admin/products/"+sku(t, "p"), tc.body)
		if r.Status != http.StatusBadRequest || !strings.Contains(string(r.Body), api.CodeInvalidRequest) {
			t.Errorf("%s: %d %s, want 400 invalid_request", tc.name, r.Status, r.Body)
		}
	}
	if r := s.Call(t, http.MethodGet, "/products/"+sku(t, "p"), nil, nil); r.Status != http.StatusNotFound {
		t.Errorf("a refused product exists: %d %s", r.Status, r.Body)
	}
}

// TestBadIdempotencyKeyFailsOnlyItsRequest: a key whose bytes are not
// UTF-8, sent together with 50 good orders, is refused with 400 alone;
// every good order is accepted. (It reached PostgreSQL inside the group
// commit before, and failed good orders of the same batch with 500.)
func TestBadIdempotencyKeyFailsOnlyItsRequest(t *testing.T) {
	s := system(t)
	sk := sku(t, "a")
	s.PutProduct(t, sk, "Pen", 100, 1000)
	for round := range 3 {
		var wg sync.WaitGroup
		statuses := make([]int, 51)
		start := make(chan struct{})
		for i := range statuses {
			wg.Add(1)
			go func() {
				defer wg.Done()
				h := map[string]string{"Idempotency-Key": fmt.Sprintf("good-%d-%d-%s", round, i, uuid.NewString())}
				if i == 25 {
					h["Idempotency-Key"] = string([]byte{'k', 0xff, 0xfe})
				}
				<-start
				r, err := s.Do(http.MethodPost, "/orders", testenv.OrderSpec{Items: testenv.Items(sk, 1)}.Body(), h)
				if err != nil {
					t.Error(err)
					return
				}
				statuses[i] = r.Status
			}()
		}
		close(start)
		wg.Wait()
		for i, st := range statuses {
			want := http.StatusAccepted
			if i == 25 {
				want = http.StatusBadRequest
			}
			if st != want {
				t.Errorf("round %d, order %d: %d, want %d", round, i, st, want)
			}
		}
	}
	for _, key := range []string{"has space", "tab\tkey", strings.Repeat("k", 256)} {
		r := s.Call(t, http.MethodPost, "/orders", testenv.OrderSpec{Items: testenv.Items(sk, 1)}.Body(), map[string]string{"Idempotency-Key": key})
		if r.Status != http.StatusBadRequest || !strings.Contains(string(r.Body), "Idempotency-Key") {
			t.Errorf("key %q: %d %s, want 400 naming Idempotency-Key", key, r.Status, r.Body)
		}
	}
}
