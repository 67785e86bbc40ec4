# sagaflow: `make help` lists the targets.
GO       ?= go
BIN      := bin
WORKERS  := inventory payment shipping notification audit

.PHONY: help build run services test test-short chaos bench bench-go vet clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build every binary into bin/ (the services and the load generator bench)
	$(GO) build -o $(BIN)/ ./orchestrator $(addprefix ./workers/,$(WORKERS)) ./internal/cmd/bench ./internal/cmd/brokerbench

run: ## start PostgreSQL and RabbitMQ if needed, create the database, run every service
	internal/scripts/run.sh

services: ## start PostgreSQL and RabbitMQ if they are not running
	internal/scripts/services.sh

bench: ## the standard benchmark (steady, 500 orders/s for 60 s) on a fresh deployment (BENCH_ARGS="-scenario burst -orders 50000" for others)
	internal/scripts/bench.sh

bench-go: ## the hot-path micro-benchmarks (go test -bench): decisions, envelopes, outbox codec, store batch write
	$(GO) test -run '^$$' -bench . -benchmem ./saga/ ./saga/pgstore/

vet: ## go vet and gofmt
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt needed"; exit 1; }

test: services vet ## the whole suite, against real PostgreSQL and RabbitMQ
	$(GO) test -count=1 -timeout 10m $$($(GO) list ./... | grep -v /internal/chaos)
	@echo "fault suite (stops and starts PostgreSQL and RabbitMQ, so it runs alone):"
	$(GO) test -count=1 -timeout 10m -v ./internal/chaos

chaos: services ## the long fault-injection run: 3000 orders, every process killed 6 times, a RabbitMQ restart
	CHAOS_ORDERS=3000 CHAOS_KILLS=6 $(GO) test -count=1 -timeout 30m -v -run TestChaos ./internal/chaos

test-short: services ## the suite without the slow end-to-end packages
	$(GO) test -count=1 -short ./...

clean: ## remove bin/ and tmp/
	rm -rf $(BIN) tmp
