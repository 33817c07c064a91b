# ferry: the two commands in the README are `make demo` and `make test`.
# Each installs what it needs first (scripts/deps.sh).

CARGO ?= cargo
FUZZ_SECONDS ?= 60

.PHONY: demo test deps lint unit fuzz bench soak clean

## make demo: a private MariaDB per site, the fixture, capture, a workload, status.
demo: deps
	scripts/demo.sh

## make test: everything CI runs: format, lints, unit and integration tests, fuzzing.
test: deps lint unit fuzz

deps:
	scripts/deps.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test

fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

## make bench: throughput and memory, against baselines run side by side. Runs every
## [[bench]] target (capture, bundle, wire, sync), each ending with its own summary.
## FERRY_BENCH_MAX_CHANGES=100000 skips the 1M-change step of benches/sync.rs.
bench: deps
	$(CARGO) bench --bench '*'

clean:
	$(CARGO) clean

## make soak: the randomized convergence test over many seeds (FERRY_SOAK_SEEDS, default 300).
FERRY_SOAK_SEEDS ?= 300
soak:
	FERRY_SOAK_SEEDS=$(FERRY_SOAK_SEEDS) $(CARGO) test --test convergence -- --nocapture
