// Command bench is sagaflow's load generator. It stocks a catalog through
// the admin API, places orders through the REST API (a fixed rate for a
// fixed time, or as fast as the API takes them), waits until every order is
// terminal, checks each one, and reports throughput, latencies, the outcome
// mix and the resources each service used.
//
//	bench -scenario steady -rate 500 -duration 30s
//	bench -scenario burst -orders 50000
//	bench -scenario mixed -rate 300 -duration 20s -json out.json
//
// Run it against a deployment (make bench starts one).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	json "github.com/goccy/go-json"
)

// Options are the command line.
type Options struct {
	API         string
	AdminToken  string
	Admin       string
	Scenario    string
	Rate        float64
	Duration    time.Duration
	Orders      int
	Concurrency int
	Mix         Mix
	Drain       time.Duration
	JSON        string
	Procs       []string
	Quiet       bool
	Flood       int
}

func main() {
	var (
		o     Options
		mix   string
		procs string
	)
	flag.StringVar(&o.API, "api", envOr("BENCH_API", "http://localhost:8080"), "orchestrator API base URL")
	flag.StringVar(&o.Admin, "admin", envOr("BENCH_ADMIN", "http://localhost:8081"), "orchestrator admin listener base URL (ADMIN_ADDR), for stocking the catalog")
	flag.StringVar(&o.AdminToken, "admin-token", os.Getenv("ADMIN_TOKEN"), "admin bearer token (default $ADMIN_TOKEN)")
	flag.StringVar(&o.Scenario, "scenario", "steady", "steady (fixed rate for a fixed time), burst (orders as fast as accepted), mixed (steady with the failure mix)")
	flag.Float64Var(&o.Rate, "rate", 500, "orders per second (steady, mixed)")
	flag.DurationVar(&o.Duration, "duration", 30*time.Second, "how long to place orders (steady, mixed)")
	flag.IntVar(&o.Orders, "orders", 50000, "orders to place (burst)")
	flag.IntVar(&o.Concurrency, "concurrency", 64, "concurrent API clients")
	flag.StringVar(&mix, "mix", "", `order mix as kind=weight,... (kinds: good, decline, refused, oos, high); default "good=100" for steady and burst, "good=70,decline=10,refused=10,oos=5,high=5" for mixed`)
	flag.DurationVar(&o.Drain, "drain-timeout", 0, "how long to wait for every order to be terminal (default 10m, or 1s per 50 orders if longer)")
	flag.StringVar(&o.JSON, "json", "", "also write the report as JSON to this file")
	flag.StringVar(&procs, "procs", "orchestrator,inventory,payment,shipping,notification,audit,postgres,beam.smp", "processes whose peak RSS and CPU to report (matched by name)")
	flag.BoolVar(&o.Quiet, "quiet", false, "no progress line")
	flag.IntVar(&o.Flood, "flood", 0, "clients asking GET /products/{sku} as fast as answered while orders are placed (0: none)")
	flag.Parse()

	if mix == "" {
		mix = "good=100"
		if o.Scenario == "mixed" {
			mix = "good=70,decline=10,refused=10,oos=5,high=5"
		}
	}
	var err error
	if o.Mix, err = ParseMix(mix); err != nil {
		fatalf("-mix: %v", err)
	}
	switch o.Scenario {
	case "steady", "mixed":
		if o.Rate <= 0 || o.Duration <= 0 {
			fatalf("-rate and -duration must be positive")
		}
	case "burst":
		if o.Orders <= 0 {
			fatalf("-orders must be positive")
		}
	default:
		fatalf("-scenario: want steady, burst or mixed, got %q", o.Scenario)
	}
	if o.Drain <= 0 {
		n := o.Orders
		if o.Scenario != "burst" {
			n = int(o.Rate * o.Duration.Seconds())
		}
		o.Drain = max(10*time.Minute, time.Duration(n/50)*time.Second)
	}
	if o.AdminToken == "" {
		fatalf("an admin token is needed to stock the catalog: -admin-token or $ADMIN_TOKEN")
	}
	if procs != "" {
		o.Procs = strings.Split(procs, ",")
	}

	// The load generator shares the machine with what it measures: spend
	// as little of it as possible on garbage collection.
	debug.SetGCPercent(400)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := Run(ctx, o)
	if rep != nil {
		rep.Print(os.Stdout)
		if o.JSON != "" {
			b, _ := json.MarshalIndent(rep, "", "  ")
			if werr := os.WriteFile(o.JSON, append(b, '\n'), 0o644); werr != nil {
				fmt.Fprintf(os.Stderr, "bench: write %s: %v\n", o.JSON, werr)
			}
		}
	}
	if err != nil {
		fatalf("%v", err)
	}
	if rep.Incorrect > 0 || rep.NotTerminal > 0 || rep.Errors > 0 {
		os.Exit(2)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}
