# twinline — build, run, test.
#
#   make run    build and start the platform on embedded defaults with live demo data
#   make test   everything CI runs: format, vet, staticcheck, race tests, short fuzzing,
#               and the dashboard's unit and browser tests (web-test)
#   make soak   30 minutes under load: RSS, heap, goroutines, open files and stream lag every
#               10 s (docs/img/soak.csv, docs/img/soak.png), then every acknowledged event
#               counted back (SOAK_DURATION=2m for a quick check; not part of make test)
#   make export-soak  a 10 M-sample export (CSV, then Parquet) whose server RSS growth must
#               stay under 100 MB, with each export's rate (docs/export.md; not part of make test)
#   make chaos  5 minutes under load with kill -9, PostgreSQL/Redis cuts, a Kafka restart,
#               stalled sockets and slow readers, then every acknowledged event counted back
#   make bench-scale  the roles as separate processes (a kfake broker, a gateway, two
#               processors, an api replica) on PostgreSQL and Redis, then twinline bench
#               against them: the table with its per-leg breakdown, and each process's CPU
#               (SCALE_FLAGS, SCALE_BENCH; docs/benchmarks.md; not part of make test)
#   make trace-picture  docs/img/trace.png: one real trace from HTTP ingest to the
#               dashboard's render span, drawn in Chromium (docs/observability.md)
#   make web    build the React dashboard (web/) into internal/web/dist/app for go:embed
#   make generate  regenerate web/src/lib/wire.ts (the dashboard's wire types) from
#               internal/api/openapi.json and asyncapi.json (TestWireUpToDate fails when stale)

GO        ?= go
BIN       := bin/twinline
OTLPSINK  := bin/otlpsink
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
LISTEN    ?= 127.0.0.1:8080
DATA_DIR  ?= ./data
# Count-based: a duration races the fuzz coordinator's deadline in Go 1.26
# (golang/go#75804, fixed in 1.27) and fails spuriously on a loaded machine.
FUZZTIME  ?= 20000x
STATICCHECK_VERSION := v0.8.2

.PHONY: generate e2e-load export-soak soak chaos bench-scale trace-picture all build run test lint vet staticcheck fmt-check unit fuzz bench clean web web-test web-unit web-e2e web-screenshots web-bench

all: build

# The dashboard: built with npm when it is available, embedded by go:embed.
# Without npm the binary still builds and serves a fallback page saying how
# to build it (internal/web). SKIP_WEB=1 skips the dashboard build.
NPM       ?= $(shell command -v npm 2>/dev/null)
WEB_OUT   := internal/web/dist/app/index.html
WEB_DEPS  := web/node_modules/.package-lock.json
WEB_SRC   := $(shell find web/src web/index.html web/vite.config.ts web/docs-viewer.mjs web/tsconfig.json web/package.json -type f 2>/dev/null)
ifeq ($(SKIP_WEB),1)
BUILD_WEB :=
else
BUILD_WEB := $(if $(NPM),$(WEB_OUT))
endif

$(WEB_DEPS): web/package-lock.json web/package.json
	cd web && npm ci --no-audit --no-fund
	@touch $@

$(WEB_OUT): $(WEB_DEPS) $(WEB_SRC)
	cd web && npm run build

web: $(WEB_OUT)

# The dashboard's TypeScript wire types, generated from the API documents.
generate:
	$(GO) run ./tools/tsgen

build: $(BUILD_WEB)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/twinline

run: build
	@echo "twinline: open http://$(LISTEN)/ (dashboard), http://$(LISTEN)/docs (API); Ctrl-C to stop"
	$(BIN) serve --demo --listen $(LISTEN) --data-dir $(DATA_DIR)

test: fmt-check vet staticcheck unit fuzz web-test

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

staticcheck:
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

unit:
	$(GO) test -race -count=1 -timeout 20m ./...

# A short run of every fuzz target (go test runs one target per invocation).
fuzz:
	@set -e; grep -rho --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' --with-filename . | sed 's/:func / /' | \
	while read -r file target; do \
	  pkg=./$$(dirname $${file#./}); \
	  echo "fuzz $$pkg $$target ($(FUZZTIME))"; \
	  $(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

# The dashboard's tests: vitest units, then playwright-core driving Debian's
# Chromium against bin/twinline (the tracing test exports to bin/otlpsink,
# a collector that prints the spans it receives). Without npm (or Chromium) they are skipped,
# except under CI=true, where that is a failure.
web-test: web-unit web-e2e

web-unit:
	@if [ -z "$(NPM)" ]; then \
	  if [ "$$CI" = true ]; then echo "web-unit: npm not found (CI=true)"; exit 1; fi; \
	  echo "web-unit: SKIP (npm not found)"; exit 0; fi; \
	$(MAKE) --no-print-directory $(WEB_DEPS) && cd web && npm run typecheck && npm test

web-e2e:
	@if [ -z "$(NPM)" ]; then \
	  if [ "$$CI" = true ]; then echo "web-e2e: npm not found (CI=true)"; exit 1; fi; \
	  echo "web-e2e: SKIP (npm not found)"; exit 0; fi; \
	$(MAKE) --no-print-directory build && $(GO) build -o $(OTLPSINK) ./tools/otlpsink && \
	cd web && TWINLINE_BIN=$(abspath $(BIN)) OTLPSINK_BIN=$(abspath $(OTLPSINK)) npm run e2e

# Screenshots for docs/img: fleet, machine and alarms, then the twin control's
# (twin, oee, fleet-states; about two minutes of demo run time for the OEE).
web-screenshots: build
	cd web && TWINLINE_BIN=$(abspath $(BIN)) npm run screenshots && TWINLINE_BIN=$(abspath $(BIN)) npm run screenshots:control

# docs/img/trace.png: one real trace, HTTP ingest to the dashboard's render
# span, drawn from the spans the collector received (web/e2e/tracing.test.mjs).
trace-picture: build
	$(GO) build -o $(OTLPSINK) ./tools/otlpsink
	cd web && TWINLINE_BIN=$(abspath $(BIN)) OTLPSINK_BIN=$(abspath $(OTLPSINK)) TRACE_PICTURE=$(abspath docs/img/trace.png) \
	  node --test --test-name-pattern="follows the server's trace" e2e/tracing.test.mjs

# The dashboard benchmark (docs/dashboard-benchmarks.md).
web-bench: build
	cd web && TWINLINE_BIN=$(abspath $(BIN)) npm run bench

# Soak and chaos (tools/soak): the real binary on a temporary data directory.
# Neither is part of make test. SOAK_FLAGS / CHAOS_FLAGS pass further flags,
# e.g. CHAOS_FLAGS='--faults kill --kills 3'.
SOAK_DURATION  ?= 30m
SOAK_RATE      ?= 20000
SOAK_FLAGS     ?=
CHAOS_DURATION ?= 5m
CHAOS_FLAGS    ?=

# Load tests of the end-to-end suite, apart from make test (they need the
# machine to themselves): the stream fairness test (issue 13).
e2e-load:
	TWINLINE_E2E_LOAD=1 $(GO) test -count=1 -run 'TestStreamFair' -v ./e2e/

# The export's memory at scale (docs/export.md): 10 M samples in an embedded
# store, exported as CSV then Parquet by a server process whose RSS growth
# must stay under 100 MB; prints each export's rate. make test runs the
# same test with 1 M samples. EXPORT_STORE=postgres measures the PostgreSQL
# store (a schema of its own on TWINLINE_TEST_POSTGRES_URL).
EXPORT_SAMPLES ?= 10000000
EXPORT_STORE   ?= embedded
export-soak:
	TWINLINE_EXPORT_SAMPLES=$(EXPORT_SAMPLES) TWINLINE_EXPORT_STORE=$(EXPORT_STORE) $(GO) test -count=1 -timeout 30m -run '^TestExportMemory$$' -v ./internal/api/

soak: build
	$(GO) run ./tools/soak soak --bin $(BIN) --duration $(SOAK_DURATION) --rate $(SOAK_RATE) $(SOAK_FLAGS)

chaos: build
	$(GO) run ./tools/soak chaos --bin $(BIN) --duration $(CHAOS_DURATION) --rate $(SOAK_RATE) $(CHAOS_FLAGS)

# The roles as separate processes (tools/soak scale, tools/kfakebroker): a
# database and a Redis key prefix of the run's own, created and removed.
# SCALE_FLAGS configure the setup (--gateways, --processors 1,2 for the
# scale-out ratio, --apis, --partitions, --drain 20s for the processors
# alone, --server-arg=--kafka-linger=5ms …), SCALE_BENCH are the flags of
# twinline bench (empty with --drain).
SCALE_FLAGS ?= --gateways 1 --processors 2 --apis 1
SCALE_BENCH ?= --scenario latency --duration 10s
bench-scale: build
	$(GO) build -o bin/kfakebroker ./tools/kfakebroker
	$(GO) run ./tools/soak scale --bin $(BIN) --kfake-bin bin/kfakebroker $(SCALE_FLAGS) -- $(SCALE_BENCH)

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./internal/...

clean:
	rm -rf bin internal/web/dist/app
