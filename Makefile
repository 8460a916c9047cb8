# Flotilla. `make run` builds and starts the daemon; `make test` runs every test.
GO       ?= go
BIN      := $(CURDIR)/bin
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -X github.com/flotilla-project/flotilla/gateway/version.Version=$(VERSION) \
            -X github.com/flotilla-project/flotilla/gateway/version.Revision=$(REVISION)
# Fuzz targets run briefly in `make test`; `make fuzz FUZZTIME=10m` runs them longer.
# A failing target runs once more: a real crasher is saved under testdata/fuzz
# and fails the second run first thing, while Go's fuzzing coordinator can
# time out spuriously on a loaded machine (golang/go#75804).
FUZZTIME ?= 10s
FUZZ     := $(shell grep -rl --include='*_test.go' '^func Fuzz' . 2>/dev/null | xargs -r -n1 dirname | sort -u)

.PHONY: all build run deps test-deps test unit integration lint fuzz bench clean

all: build

# One executable, flotillad, is the daemon and every service's process
# (pkg/roster lists them); flotilla-<service> links to it run one service by
# hand. The runtime v2 shim for io.containerd.runc.v2 is containerd's own,
# built from the containerd module version go.mod pins.
build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/flotillad ./cmd/flotillad
	@for s in $$($(BIN)/flotillad services); do ln -sfn flotillad $(BIN)/flotilla-$$s; done
	$(GO) build -o $(BIN)/flotilla ./cmd/flotilla
	$(GO) build -o $(BIN)/containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2

# Installs what the daemon needs at run time (through apt, only if missing).
deps:
	@script/install-deps run

# Installs what the tests drive Flotilla with: Debian's ctr, busybox-static.
test-deps:
	@script/install-deps test

run: deps build
	$(BIN)/flotillad $(ARGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Unit tests that run a real shim take it from bin/.
unit: build
	FLOTILLA_BIN=$(BIN) $(GO) test -count=1 $$($(GO) list ./... | grep -v /integration)

integration: build
	FLOTILLA_BIN=$(BIN) $(GO) test -count=1 -timeout 30m ./integration/...

fuzz:
	@for d in $(FUZZ); do \
		for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$d/*_test.go | sed 's/^func //'); do \
			echo "fuzz $$d $$f ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$d || \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$d || exit 1; \
		done; \
	done

test: deps test-deps lint unit integration fuzz

bench: deps test-deps build
	$(GO) run ./bench/cmd/flotilla-bench -flotilla $(BIN) $(ARGS)

clean:
	rm -rf $(BIN)
