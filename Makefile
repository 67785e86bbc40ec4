# sagaflow: `make help` lists the targets.
SHELL    := bash
GO       ?= go
BIN      := bin
WORKERS  := inventory payment shipping notification audit
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS  := -X github.com/sagaflow/sagaflow.version=$(VERSION)

.PHONY: help build run services test test-short test-race chaos bench bench-go vet clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build every binary into bin/ (the services, the operators' CLI sagactl, the load generator bench, createdb), stamped with VERSION
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./orchestrator $(addprefix ./workers/,$(WORKERS)) ./sagactl ./internal/cmd/bench ./internal/cmd/brokerbench ./internal/cmd/createdb

run: ## start PostgreSQL and RabbitMQ if needed, create the database, run every service
	internal/scripts/run.sh

services: ## start PostgreSQL and RabbitMQ if they are not running
	internal/scripts/services.sh

bench: ## the standard benchmark (steady, 500 orders/s for 60 s) on a fresh deployment (BENCH_ARGS="-scenario burst -orders 50000" for others)
	internal/scripts/bench.sh

bench-go: ## the hot-path micro-benchmarks (go test -bench): decisions, envelopes, outbox codec, store batch write
	$(GO) test -run '^$$' -bench . -benchmem ./saga/ ./saga/pgstore/

vet: ## go vet and gofmt (the repository and the trip example's module)
	$(GO) vet ./...
	cd examples/trip && $(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt needed"; exit 1; }

test: services vet ## the whole suite against real PostgreSQL and RabbitMQ (the trip example's module too), ending with one line of passed, skipped and failed tests
	set -o pipefail; { rc=0; $(GO) test -count=1 -timeout 12m -json ./... || rc=$$?; \
	  (cd examples/trip && $(GO) test -count=1 -timeout 5m -json ./...) || rc=$$?; exit $$rc; } \
	  | $(GO) run ./internal/cmd/testreport -log '^TestChaos$$'

chaos: services ## the long fault-injection run on private servers: 3000 orders, every process killed 6 times, a RabbitMQ restart
	CHAOS_ORDERS=3000 CHAOS_KILLS=6 $(GO) test -count=1 -timeout 30m -v -run TestChaos ./internal/chaos

test-race: services ## the suite under the race detector, in the tests and in the services they start (about twice as long as make test)
	set -o pipefail; SAGAFLOW_RACE=1 $(GO) test -race -count=1 -timeout 25m -json ./... | $(GO) run ./internal/cmd/testreport

test-short: services ## the suite without the end-to-end and fault-injection tests
	set -o pipefail; { rc=0; $(GO) test -count=1 -short -json ./... || rc=$$?; \
	  (cd examples/trip && $(GO) test -count=1 -short -json ./...) || rc=$$?; exit $$rc; } \
	  | $(GO) run ./internal/cmd/testreport

clean: ## remove bin/ and tmp/
	rm -rf $(BIN) tmp
