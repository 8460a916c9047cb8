# Flotilla. `make run` builds and starts the daemon; `make test` runs every test.
GO       ?= go
BIN      := $(CURDIR)/bin
# The semantic version every binary reports (--version, and the server
# version `ctr version` shows): VERSION's release, described by git
# (script/version says how).
VERSION  ?= $(shell script/version)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -X github.com/flotilla-project/flotilla/pkg/version.Version=$(VERSION) \
            -X github.com/flotilla-project/flotilla/pkg/version.Revision=$(REVISION)
# make install: DESTDIR stages, PREFIX is where the binaries end up (and
# what the installed unit runs).
DESTDIR  ?=
PREFIX   ?= /usr/local
BINDIR   ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR  ?= /etc/systemd/system
# Fuzz targets run briefly in `make test`; `make fuzz FUZZTIME=10m` runs them longer.
# A failing target runs once more: a real crasher is saved under testdata/fuzz
# and fails the second run first thing, while Go's fuzzing coordinator can
# time out spuriously on a loaded machine (golang/go#75804).
FUZZTIME ?= 10s
FUZZ     := $(shell grep -rl --include='*_test.go' '^func Fuzz' . 2>/dev/null | xargs -r -n1 dirname | sort -u)

# The Go version go.mod names, checked before any build with a clear message.
check-go:
	@GO=$(GO) script/check-go

.PHONY: check-go all build install run deps test-deps test unit integration lint fuzz bench clean

all: build

# One executable, flotillad, is the daemon and every service's process
# (pkg/roster lists them); flotilla-<service> links to it run one service by
# hand. The runtime v2 shim for io.containerd.runc.v2 is containerd's own,
# built from the containerd module version go.mod pins.
build: check-go
	@mkdir -p $(BIN)
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/flotillad ./cmd/flotillad
	@for s in $$($(BIN)/flotillad services); do ln -sfn flotillad $(BIN)/flotilla-$$s; done
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/flotilla ./cmd/flotilla
	$(GO) build -o $(BIN)/containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2

# Installs the binaries into $(BINDIR) (flotillad, a flotilla-<service> link
# per service, flotilla, containerd-shim-runc-v2), the systemd unit into
# $(UNITDIR) running them from there, and deploy/config.toml (every setting
# at its default) as $(SYSCONFDIR)/flotilla/config.toml unless one exists.
# `install` replaces a binary that is running (it unlinks it first).
install: build
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/flotilla
	install -m 0755 $(BIN)/flotillad $(BIN)/flotilla $(BIN)/containerd-shim-runc-v2 $(DESTDIR)$(BINDIR)/
	@for s in $$($(BIN)/flotillad services); do ln -sfn flotillad $(DESTDIR)$(BINDIR)/flotilla-$$s; done
	sed -e 's|/usr/local/bin/|$(BINDIR)/|g' -e 's|/etc/flotilla/|$(SYSCONFDIR)/flotilla/|g' \
		deploy/flotilla.service >$(DESTDIR)$(UNITDIR)/flotilla.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/flotilla.service
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/flotilla/config.toml ]; then \
		echo "keeping $(DESTDIR)$(SYSCONFDIR)/flotilla/config.toml"; \
	else \
		echo "install -m 0644 deploy/config.toml $(DESTDIR)$(SYSCONFDIR)/flotilla/config.toml"; \
		install -m 0644 deploy/config.toml $(DESTDIR)$(SYSCONFDIR)/flotilla/config.toml; \
	fi
	@echo "installed; now: systemctl daemon-reload && systemctl enable --now flotilla"

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

# What the integration tests drive and Debian lacks they build once from the
# Go module proxy and take from the user's cache directory afterwards:
# ~/.cache/flotilla-tests/ holds critest, containerd 2.4.2's ctr, nerdctl,
# runc 1.5.3 (for user namespaces) and the kubelet (13-20 minutes on 2 cores
# the first time). FLOTILLA_CRITEST, FLOTILLA_CTR2, FLOTILLA_NERDCTL,
# FLOTILLA_RUNC and FLOTILLA_KUBELET name prebuilt ones instead. The
# timeout leaves room for a cold cache.
integration: build
	FLOTILLA_BIN=$(BIN) $(GO) test -count=1 -timeout 60m ./integration/...

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
