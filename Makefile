# subgate developer targets. Variables can be set on the command line,
# e.g. `make bench-conns N=2000` or `make fuzz FUZZTIME=10s`.

GO       ?= go
BIN      ?= bin
FUZZTIME ?= 30s

# bench-conns: devices in total, device codec and auth (token | open), and
# the gateway's GOGC / GOMEMLIMIT (empty: Go's defaults); see docs/memory.md.
N             ?= 19000
CODEC         ?= binary
AUTH          ?= token
GW_GOGC       ?=
GW_GOMEMLIMIT ?=

# load: a short property-report run against a running `subgate -dev`.
LOAD_ADDR  ?= 127.0.0.1:8081
LOAD_CODEC ?= jsonl
LOAD_N     ?= 1000
LOAD_RATE  ?= 1
LOAD_HOLD  ?= 30s

.PHONY: build test bench fuzz load bench-conns

build:
	mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

test:
	$(GO) test -race ./...

bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./...

# Runs every Fuzz target of every package for FUZZTIME each. `go test -list`
# prints a package's target names followed by an "ok <package>" line.
fuzz:
	@set -e; \
	list=$$($(GO) test -list '^Fuzz' ./...); \
	echo "$$list" | awk '/^Fuzz/ { f[n++] = $$1; next } /^ok / { for (i = 0; i < n; i++) print $$2, f[i]; n = 0 }' | \
	while read -r pkg target; do \
		echo "fuzz: $$pkg $$target for $(FUZZTIME)"; \
		$(GO) test -run='^$$' -fuzz="^$$target$$" -fuzztime=$(FUZZTIME) "$$pkg"; \
	done

load: build
	./$(BIN)/devicesim -addr $(LOAD_ADDR) -codec $(LOAD_CODEC) -n $(LOAD_N) -msg-rate $(LOAD_RATE) -ack -hold $(LOAD_HOLD) -strict

bench-conns:
	N=$(N) CODEC=$(CODEC) AUTH=$(AUTH) GW_GOGC=$(GW_GOGC) GW_GOMEMLIMIT=$(GW_GOMEMLIMIT) \
		./cmd/devicesim/scripts/bench-conns.sh
