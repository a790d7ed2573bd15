# twinline — build, run, test.
#
#   make run    build and start the platform on embedded defaults with live demo data
#   make test   everything CI runs: format, vet, staticcheck, race tests, short fuzzing

GO        ?= go
BIN       := bin/twinline
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
LISTEN    ?= 127.0.0.1:8080
DATA_DIR  ?= ./data
# Count-based: a duration races the fuzz coordinator's deadline in Go 1.26
# (golang/go#75804, fixed in 1.27) and fails spuriously on a loaded machine.
FUZZTIME  ?= 20000x
STATICCHECK_VERSION := v0.8.2

.PHONY: all build run test lint vet staticcheck fmt-check unit fuzz bench clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/twinline

run: build
	@echo "twinline: open http://$(LISTEN)/ (dashboard), http://$(LISTEN)/docs (API); Ctrl-C to stop"
	$(BIN) serve --demo --listen $(LISTEN) --data-dir $(DATA_DIR)

test: fmt-check vet staticcheck unit fuzz

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

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./internal/...

clean:
	rm -rf bin
