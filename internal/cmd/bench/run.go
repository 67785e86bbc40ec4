package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	json "github.com/goccy/go-json"
)

// Kind is what an order is meant to do.
type Kind string

// Order kinds and the outcome each must reach.
const (
	Good    Kind = "good"    // completed
	Decline Kind = "decline" // cancelled: card declined
	Refused Kind = "refused" // cancelled: carrier refused, refunded
	OOS     Kind = "oos"     // rejected: out of stock
	High    Kind = "high"    // completed, priority high
)

var expected = map[Kind]string{Good: "completed", High: "completed", Decline: "cancelled", Refused: "cancelled", OOS: "rejected"}

// Mix is a weighted choice of kinds.
type Mix []struct {
	Kind   Kind
	Weight int
}

// ParseMix reads "good=70,decline=10,...".
func ParseMix(s string) (Mix, error) {
	var m Mix
	for _, part := range strings.Split(s, ",") {
		k, w, ok := strings.Cut(strings.TrimSpace(part), "=")
		n, err := strconv.Atoi(w)
		if !ok || err != nil || n < 0 {
			return nil, fmt.Errorf("bad entry %q", part)
		}
		if _, known := expected[Kind(k)]; !known {
			return nil, fmt.Errorf("unknown kind %q", k)
		}
		m = append(m, struct {
			Kind   Kind
			Weight int
		}{Kind(k), n})
	}
	if m.total() == 0 {
		return nil, errors.New("all weights are zero")
	}
	return m, nil
}

func (m Mix) total() int {
	t := 0
	for _, e := range m {
		t += e.Weight
	}
	return t
}

// Pick spreads kinds evenly over the sequence of orders.
func (m Mix) Pick(i int) Kind {
	t := m.total()
	r := (i * 7919) % t // a prime stride visits every residue
	for _, e := range m {
		if r < e.Weight {
			return e.Kind
		}
		r -= e.Weight
	}
	return m[len(m)-1].Kind
}

type order struct {
	id       string
	kind     Kind
	sku      string
	qty      int
	latency  time.Duration
	accepted bool
}

const skus = 8

// Run places the scenario's orders, waits for them and checks them.
func Run(ctx context.Context, o Options) (*Report, error) {
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		MaxIdleConns: o.Concurrency * 2, MaxIdleConnsPerHost: o.Concurrency * 2, IdleConnTimeout: time.Minute,
	}}
	c := &client{hc: hc, api: strings.TrimRight(o.API, "/"), admin: strings.TrimRight(o.Admin, "/"), token: o.AdminToken}
	var rb [4]byte
	_, _ = rand.Read(rb[:])
	run := "bench-" + hex.EncodeToString(rb[:])
	prices := make([]int64, skus)
	for i := range skus {
		prices[i] = int64(1000 + 100*i)
		if err := c.putProduct(ctx, fmt.Sprintf("%s-%d", run, i), prices[i], 100_000_000); err != nil {
			return nil, fmt.Errorf("stock the catalog: %w", err)
		}
	}
	if err := c.putProduct(ctx, run+"-empty", 999, 0); err != nil {
		return nil, err
	}
	finished0, err := c.finished(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the orchestrator's metrics: %w", err)
	}

	sampler := newSampler(o.Procs)
	go sampler.run(ctx, 250*time.Millisecond)

	n := o.Orders
	if o.Scenario != "burst" {
		n = int(o.Rate * o.Duration.Seconds())
	}
	orders := make([]order, n)
	for i := range orders {
		k := o.Mix.Pick(i)
		orders[i] = order{kind: k, sku: fmt.Sprintf("%s-%d", run, i%skus), qty: 1 + i%2}
		if k == OOS {
			orders[i].sku = run + "-empty"
		}
	}

	var (
		accepted, failed atomic.Int64
		errMu            sync.Mutex
		firstErrs        []string
	)
	jobs := make(chan int, o.Concurrency)
	var wg sync.WaitGroup
	for range o.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				ord := &orders[i]
				start := time.Now()
				id, err := c.place(ctx, ord)
				ord.latency = time.Since(start)
				if err != nil {
					failed.Add(1)
					errMu.Lock()
					if len(firstErrs) < 5 {
						firstErrs = append(firstErrs, err.Error())
					}
					errMu.Unlock()
					continue
				}
				ord.id, ord.accepted = id, true
				accepted.Add(1)
			}
		}()
	}

	// A flood of the public product route, from clients of its own, while
	// the orders are placed: what it costs the sagas shows in their latency.
	floodCtx, stopFlood := context.WithCancel(ctx)
	flood := startFlood(floodCtx, o.Flood, c, run+"-0")

	start := time.Now()
	progress := make(chan struct{})
	go func() {
		defer close(progress)
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			f, _ := c.finished(ctx)
			el := time.Since(start).Seconds()
			if !o.Quiet {
				fmt.Fprintf(stderr, "\r%6.1fs  accepted %7d (%6.0f/s)  errors %d  terminal %7d (%6.0f/s)   ",
					el, accepted.Load(), float64(accepted.Load())/el, failed.Load(), int64(f-finished0), (f-finished0)/el)
			}
			if f-finished0 >= float64(n)-float64(failed.Load()) && accepted.Load()+failed.Load() == int64(n) {
				return
			}
			if time.Since(start) > o.Drain+o.Duration {
				return
			}
		}
	}()

	// Placement: open loop at the rate, or as fast as the API takes them.
	behind := time.Duration(0)
	for i := range orders {
		if o.Scenario != "burst" {
			due := start.Add(time.Duration(float64(i) / o.Rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			} else if -d > behind {
				behind = -d
			}
		}
		select {
		case jobs <- i:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(jobs)
	wg.Wait()
	stopFlood()
	acceptDone := time.Since(start)
	<-progress
	drainDone := time.Since(start)
	if !o.Quiet {
		fmt.Fprintln(stderr)
	}
	sampler.stop()

	rep := &Report{
		Scenario: o.Scenario, Planned: n, Accepted: int(accepted.Load()), Errors: int(failed.Load()),
		ErrorSamples: firstErrs, AcceptSeconds: acceptDone.Seconds(), DrainSeconds: drainDone.Seconds(),
		Concurrency: o.Concurrency, Rate: o.Rate, Mix: o.Mix.String(), StartedAt: start.UTC(),
		ScheduleSlipMS: float64(behind.Microseconds()) / 1000, Outcomes: map[string]int{},
		Processes: sampler.report(), Flood: flood(),
	}
	rep.AcceptRate = float64(rep.Accepted) / acceptDone.Seconds()
	var lat []time.Duration
	for _, ord := range orders {
		if ord.accepted {
			lat = append(lat, ord.latency)
		}
	}
	rep.AcceptLatencyMS = percentiles(lat)
	if err := verify(ctx, c, orders, prices, run, rep); err != nil {
		return rep, err
	}
	return rep, ctx.Err()
}

// verify reads every accepted order back and checks its outcome.
func verify(ctx context.Context, c *client, orders []order, prices []int64, run string, rep *Report) error {
	type result struct {
		State       string    `json:"state"`
		Reason      string    `json:"reason"`
		AmountCents int64     `json:"amount_cents"`
		Priority    string    `json:"priority"`
		CreatedAt   time.Time `json:"created_at"`
		UpdatedAt   time.Time `json:"updated_at"`
	}
	results := make([]result, len(orders))
	jobs := make(chan int)
	var wg sync.WaitGroup
	var readErr atomic.Value
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := c.get(ctx, "/orders/"+orders[i].id, &results[i]); err != nil {
					readErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	for i, ord := range orders {
		if ord.accepted {
			jobs <- i
		}
	}
	close(jobs)
	wg.Wait()
	if err, _ := readErr.Load().(error); err != nil {
		return fmt.Errorf("read orders back: %w", err)
	}
	var (
		e2e           []time.Duration
		first, last   time.Time
		completedLast time.Time
	)
	for i, ord := range orders {
		if !ord.accepted {
			continue
		}
		r := results[i]
		rep.Outcomes[r.State]++
		if r.State != "completed" && r.State != "cancelled" && r.State != "rejected" {
			rep.NotTerminal++
			rep.addExample(fmt.Sprintf("%s (%s) is %s", ord.id, ord.kind, r.State))
			continue
		}
		want := expected[ord.kind]
		ok := r.State == want
		if ok && r.State == "completed" {
			idx := 0
			fmt.Sscanf(strings.TrimPrefix(ord.sku, run+"-"), "%d", &idx)
			ok = r.AmountCents == prices[idx]*int64(ord.qty)
		}
		if ok && ord.kind == High {
			ok = r.Priority == "high"
		}
		if !ok {
			rep.Incorrect++
			rep.addExample(fmt.Sprintf("%s (%s) is %s, amount %d (%s)", ord.id, ord.kind, r.State, r.AmountCents, r.Reason))
		}
		e2e = append(e2e, r.UpdatedAt.Sub(r.CreatedAt))
		if first.IsZero() || r.CreatedAt.Before(first) {
			first = r.CreatedAt
		}
		if r.UpdatedAt.After(last) {
			last = r.UpdatedAt
		}
		if r.State == "completed" && r.UpdatedAt.After(completedLast) {
			completedLast = r.UpdatedAt
		}
	}
	rep.SagaLatencyMS = percentiles(e2e)
	if w := last.Sub(first).Seconds(); w > 0 {
		rep.WindowSeconds = w
		rep.SagasPerSecond = float64(len(e2e)) / w
		rep.CompletedPerSecond = float64(rep.Outcomes["completed"]) / w
	}
	return nil
}

// client talks to the orchestrator.
type client struct {
	hc    *http.Client
	api   string
	admin string // the admin listener, for /admin paths and /metrics
	token string
}

func (c *client) do(ctx context.Context, method, path string, body any, headers map[string]string) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		rd = bytes.NewReader(b)
	}
	base := c.api
	if strings.HasPrefix(path, "/admin/") || path == "/metrics" {
		base = c.admin // the operators' listener (ADMIN_ADDR)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func (c *client) putProduct(ctx context.Context, sku string, price, available int64) error {
	st, b, err := c.do(ctx, http.MethodPut, "/admin/products/"+sku,
		map[string]any{"name": "Bench " + sku, "price_cents": price, "available": available},
		map[string]string{"Authorization": "Bearer " + c.token})
	if err == nil && st != http.StatusOK {
		err = fmt.Errorf("PUT /admin/products/%s: %d %s", sku, st, b)
	}
	return err
}

func (c *client) place(ctx context.Context, o *order) (string, error) {
	body := map[string]any{
		"customer_id": "bench", "items": []map[string]any{{"sku": o.sku, "quantity": o.qty}},
		"payment_token":    "tok_visa",
		"shipping_address": map[string]string{"line1": "1 Main St", "city": "Springfield", "country": "US"},
		"priority":         "normal",
	}
	switch o.kind {
	case Decline:
		body["payment_token"] = "tok_decline"
	case Refused:
		body["shipping_address"] = map[string]string{"line1": "1 Main St", "city": "Nowhere", "country": "ZZ"}
	case High:
		body["priority"] = "high"
	}
	st, b, err := c.do(ctx, http.MethodPost, "/orders", body, nil)
	if err != nil {
		return "", err
	}
	if st != http.StatusAccepted {
		return "", fmt.Errorf("POST /orders: %d %s", st, bytes.TrimSpace(b))
	}
	var acc struct {
		OrderID string `json:"order_id"`
	}
	if err := json.Unmarshal(b, &acc); err != nil {
		return "", err
	}
	return acc.OrderID, nil
}

func (c *client) get(ctx context.Context, path string, out any) error {
	st, b, err := c.do(ctx, http.MethodGet, path, nil, nil)
	if err != nil {
		return err
	}
	if st != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", path, st, b)
	}
	return json.Unmarshal(b, out)
}

// finished sums sagaflow_sagas_finished_total over outcomes.
func (c *client) finished(ctx context.Context) (float64, error) {
	st, b, err := c.do(ctx, http.MethodGet, "/metrics", nil, nil)
	if err != nil {
		return 0, err
	}
	if st != http.StatusOK {
		return 0, fmt.Errorf("GET /metrics: %d", st)
	}
	total := 0.0
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "sagaflow_sagas_finished_total{") {
			continue
		}
		if v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil {
			total += v
		}
	}
	return total, nil
}

// Percentiles in milliseconds.
type Percentiles struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func percentiles(d []time.Duration) Percentiles {
	if len(d) == 0 {
		return Percentiles{}
	}
	slices.Sort(d)
	at := func(q float64) float64 {
		i := int(q * float64(len(d)-1))
		return float64(d[i].Microseconds()) / 1000
	}
	return Percentiles{P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: at(1)}
}

// startFlood runs n clients that ask GET /products/{sku} as fast as they
// are answered until ctx is done, and returns a function that waits for
// them and counts their answers by status ("200", "429", "error", ...).
func startFlood(ctx context.Context, n int, c *client, sku string) func() map[string]int {
	if n <= 0 {
		return func() map[string]int { return nil }
	}
	fc := &client{hc: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		MaxIdleConns: n, MaxIdleConnsPerHost: n, IdleConnTimeout: time.Minute,
	}}, api: c.api}
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := map[string]int{}
			for ctx.Err() == nil {
				status, _, err := fc.do(ctx, http.MethodGet, "/products/"+sku, nil, nil)
				switch {
				case ctx.Err() != nil:
				case err != nil:
					local["error"]++
				default:
					local[strconv.Itoa(status)]++
				}
			}
			mu.Lock()
			for k, v := range local {
				counts[k] += v
			}
			mu.Unlock()
		}()
	}
	return func() map[string]int {
		wg.Wait()
		return counts
	}
}
