package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

var stderr io.Writer = os.Stderr

// Report is what a run measured; -json writes it for comparing commits.
type Report struct {
	Scenario           string         `json:"scenario"`
	Mix                string         `json:"mix"`
	Rate               float64        `json:"rate,omitempty"`
	Concurrency        int            `json:"concurrency"`
	StartedAt          time.Time      `json:"started_at"`
	Planned            int            `json:"planned"`
	Accepted           int            `json:"accepted"`
	Errors             int            `json:"errors"`
	ErrorSamples       []string       `json:"error_samples,omitempty"`
	AcceptSeconds      float64        `json:"accept_seconds"`
	AcceptRate         float64        `json:"accepted_per_second"`
	ScheduleSlipMS     float64        `json:"schedule_slip_ms"`
	AcceptLatencyMS    Percentiles    `json:"accept_latency_ms"`
	DrainSeconds       float64        `json:"drain_seconds"`
	WindowSeconds      float64        `json:"window_seconds"`
	SagasPerSecond     float64        `json:"sagas_per_second"`
	CompletedPerSecond float64        `json:"completed_per_second"`
	SagaLatencyMS      Percentiles    `json:"saga_latency_ms"`
	Outcomes           map[string]int `json:"outcomes"`
	NotTerminal        int            `json:"not_terminal"`
	Incorrect          int            `json:"incorrect"`
	Examples           []string       `json:"examples,omitempty"`
	Processes          []ProcessUsage `json:"processes"`
	// Flood counts the answers to the -flood clients, by status.
	Flood map[string]int `json:"flood,omitempty"`
}

func (r *Report) addExample(s string) {
	if len(r.Examples) < 10 {
		r.Examples = append(r.Examples, s)
	}
}

// String renders the mix as it is parsed.
func (m Mix) String() string {
	var parts []string
	for _, e := range m {
		parts = append(parts, fmt.Sprintf("%s=%d", e.Kind, e.Weight))
	}
	return strings.Join(parts, ",")
}

// Print writes the human-readable report.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "scenario %s, mix %s, %d clients", r.Scenario, r.Mix, r.Concurrency)
	if r.Scenario != "burst" {
		fmt.Fprintf(w, ", target %.0f orders/s", r.Rate)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "accepted     %d of %d in %.1fs: %.0f orders/s, %d errors", r.Accepted, r.Planned, r.AcceptSeconds, r.AcceptRate, r.Errors)
	if r.ScheduleSlipMS > 50 {
		fmt.Fprintf(w, " (schedule slipped up to %.0f ms)", r.ScheduleSlipMS)
	}
	fmt.Fprintln(w)
	for _, e := range r.ErrorSamples {
		fmt.Fprintf(w, "  error: %s\n", e)
	}
	a := r.AcceptLatencyMS
	fmt.Fprintf(w, "API accept   p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms\n", a.P50, a.P90, a.P99, a.Max)
	fmt.Fprintf(w, "sagas        %.0f terminal/s, %.0f completed/s sustained (first accept to last terminal: %.1fs)\n",
		r.SagasPerSecond, r.CompletedPerSecond, r.WindowSeconds)
	s := r.SagaLatencyMS
	fmt.Fprintf(w, "saga latency p50 %.0f ms, p90 %.0f ms, p99 %.0f ms, max %.0f ms (accepted to terminal)\n", s.P50, s.P90, s.P99, s.Max)
	fmt.Fprintf(w, "outcomes     %v; not terminal %d, incorrect %d\n", r.Outcomes, r.NotTerminal, r.Incorrect)
	for _, e := range r.Examples {
		fmt.Fprintf(w, "  %s\n", e)
	}
	if len(r.Flood) > 0 {
		fmt.Fprintf(w, "flood        GET /products/{sku} answers by status: %v\n", r.Flood)
	}
	fmt.Fprintf(w, "%-14s %5s %12s %10s %8s\n", "process", "procs", "peak RSS MB", "CPU s", "CPU %")
	for _, p := range r.Processes {
		fmt.Fprintf(w, "%-14s %5d %12.1f %10.1f %8.0f\n", p.Name, p.Processes, p.PeakRSSMB, p.CPUSec, p.CPUPercent)
	}
}
