# Ursa: build, test and run. `make help` lists the targets.
GO      ?= go
BIN     := bin
TESTFLAGS ?= -race -count=1
PKGS    := ./...

.PHONY: help build test lint run fuzz bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

build: ## build bin/ursa-cp and bin/ursactl
	$(GO) build -o $(BIN)/ursa-cp ./cmd/ursa-cp
	$(GO) build -o $(BIN)/ursactl ./cmd/ursactl

test: lint ## vet, format check and every test (PostgreSQL tests start a throwaway server)
	$(GO) test $(TESTFLAGS) $(PKGS)

lint: ## go vet and a gofmt check
	$(GO) vet $(PKGS)
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

run: build ## a global CP on the memory store, API on :5681
	$(BIN)/ursa-cp global --store memory

fuzz: ## run each fuzz target for 30s
	$(GO) test ./pkg/api -run '^$$' -fuzz FuzzDecode -fuzztime 30s

bench: ## store benchmarks (memory and PostgreSQL)
	$(GO) test ./pkg/store/... -run '^$$' -bench . -benchtime 2000x

clean:
	rm -rf $(BIN)
