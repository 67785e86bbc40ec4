# sagaflow — `make help` lists the targets.
GO      ?= go
BIN     := bin
SERVICES := orchestrator inventory payment shipping

.PHONY: help build test run clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build every binary into bin/
	$(GO) build -o $(BIN)/ ./orchestrator $(addprefix ./workers/,$(filter-out orchestrator,$(SERVICES)))

clean: ## remove bin/
	rm -rf $(BIN)
