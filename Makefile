# Ursa: build, test and run. `make help` lists the targets.
GO      ?= go
BIN     := bin
TESTFLAGS ?= -race -count=1
PKGS    := ./...

.PHONY: help deps build test lint run demo fuzz bench bench-xds bench-xds-tls bench-tproxy clean generate crds k8s-tools

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

deps: ## apt-get install the Debian packages `make test` needs (list: deploy/deps.sh --list)
	bash deploy/deps.sh

build: ## build bin/ursa-cp, bin/ursactl, bin/ursa-dp and bin/ursa-demo
	$(GO) build -o $(BIN)/ursa-cp ./cmd/ursa-cp
	$(GO) build -o $(BIN)/ursactl ./cmd/ursactl
	$(GO) build -o $(BIN)/ursa-dp ./cmd/ursa-dp
	$(GO) build -o $(BIN)/ursa-demo ./cmd/ursa-demo

k8s-tools: ## build the Kubernetes tests' kube-apiserver, etcd, kubectl, helm, controller-gen (~20 min once, then cached)
	bash test/k8srig/tools.sh

test: lint ## vet, format check and every test (PostgreSQL tests start a throwaway server)
	$(GO) test $(TESTFLAGS) $(PKGS)

lint: ## go vet and a gofmt check
	$(GO) vet $(PKGS)
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

demo: build ## a live two-zone mesh on this machine (Ctrl-C stops it)
	bash deploy/demo.sh

run: build ## a global CP on the memory store, API on :5681
	$(BIN)/ursa-cp global --store memory

fuzz: ## run every fuzz target (each func Fuzz… in the tree) for FUZZTIME (30s); test/fuzz/run.sh
	GO=$(GO) bash test/fuzz/run.sh

bench: ## store and KDS benchmarks (figures go in test/BENCHMARKS.md)
	$(GO) test ./pkg/store/... -run '^$$' -bench . -benchtime 2000x
	$(GO) test ./test/bench -run '^$$' -bench Propagation -benchtime 300x
	$(GO) test ./test/bench -run '^$$' -bench Reconnect -benchtime 20x

bench-xds: ## the xDS full push (beside SimpleCache) and one endpoint change, at 10k proxies (minutes)
	GOMEMLIMIT=15GiB $(GO) test ./test/bench -run '^$$' -bench 'FullPush(Delta)?(SimpleCache)?$$/proxies=10000$$' -benchtime 1x -timeout 45m
	GOMEMLIMIT=15GiB $(GO) test ./test/bench -run '^$$' -bench 'EndpointChange//proxies=10000$$' -benchtime 10x -timeout 45m

bench-xds-tls: ## the 10k full push (SotW, delta) and the 10k resync after every connection drops, plaintext and TLS in one run (2–5 min)
	GOMEMLIMIT=15GiB $(GO) test ./test/bench -run '^$$' -bench '(FullPush|FullPushDelta|Resync)(TLS)?$$/proxies=10000$$' -benchtime 1x -timeout 30m

bench-tproxy: ## root: the transparent proxy's outbound path against an explicit outbound listener, connection latency (~1 min)
	bash test/tpbench/run.sh

generate: ## regenerate kds/kdspb from kds/kds.proto (needs protoc: apt-get install protobuf-compiler)
	GOBIN=$(CURDIR)/$(BIN)/tools $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	GOBIN=$(CURDIR)/$(BIN)/tools $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
	$(GO) run ./kds/gen $(BIN)/kds-deps.pb
	PATH=$(CURDIR)/$(BIN)/tools:$$PATH protoc --descriptor_set_in=$(BIN)/kds-deps.pb -I kds \
		--go_out=kds/kdspb --go_opt=paths=source_relative \
		--go-grpc_out=kds/kdspb --go-grpc_opt=paths=source_relative kds.proto

crds: ## regenerate deploy/crds/ and the Helm chart's crds/ (the Kubernetes CRDs) from pkg/api's types
	$(GO) generate ./pkg/api/crd

clean:
	rm -rf $(BIN)
