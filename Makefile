# Two commands do all the set-up on a fresh machine (see README.md and docs/quick-start.md):
#   make demo       the worker on the local Kafka broker, with the seed's example
#   make test       the whole test suite, Kafka integration tests included
# and one gives a fast signal while developing:
#   make test-unit  tests/unit only: no broker, no jars, under a minute
# Everything else here is a building block of those.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# quixstreams and matplotlib, for bench-compare only: quixstreams pins older confluent-kafka
# and pydantic than .venv has, so they get a virtualenv of their own (see pyproject.toml)
BENCH_VENV  ?= .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: debs jars demo test test-unit lint docs bench bench-store bench-compare bench-memory bench-scale bench-processes faults schemas worker broker-start broker-stop clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

# Debian's kcat is the "plain Kafka client" of the interop test; Debian's docker-compose
# validates docker-compose.yml (no Docker engine runs on our machines).
debs:
	@command -v kcat >/dev/null 2>&1 && command -v docker-compose >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq kcat docker-compose >/dev/null; }

# the default Kafka (4.1.x) and 3.9.1, which tests/integration/test_kafka_3.py runs beside it
KAFKA_3_VERSION ?= 3.9.1
jars: $(STAMP)
	$(BIN)/dyno-stream broker fetch >/dev/null
	$(BIN)/dyno-stream broker fetch --kafka-version $(KAFKA_3_VERSION) >/dev/null

demo: $(STAMP) jars
	$(BIN)/dyno-stream demo

# The suite mostly waits (brokers starting, sessions timing out, workers catching up), so it
# runs in TEST_PROCS processes (pytest-xdist) sharing one broker; the tests of one extra
# broker stay in one process (--dist loadgroup, see tests/conftest.py). The 15 slowest tests
# are printed, so the next slow one is seen the day it lands. Measured on our 2-core VM
# beside other suites: 2 processes 10:18, 3 processes 7:00 (a broker each) and 5:52 (shared);
# alone, shared, in a fresh clone: 3 processes 6:32, 4 processes 6:04 (795 tests).
TEST_PROCS ?= 4

test: $(STAMP) jars debs lint docs
	$(BIN)/pytest -n $(TEST_PROCS) --dist loadgroup --durations=15

# docker-compose (debs) validates docker-compose.yml in tests/unit/test_compose.py
test-unit: $(STAMP) debs
	$(BIN)/pytest tests/unit

lint: $(STAMP)
	$(BIN)/ruff check dyno_stream tests bench docs/hooks.py
	$(BIN)/ruff format --check dyno_stream tests bench docs/hooks.py
	$(BIN)/mypy dyno_stream
	$(BIN)/lint-imports

# The documentation site: docs/ with the CLI and settings references generated from the code
# and every benchmark figure read from bench/results/ (docs/hooks.py); --strict makes a
# warning (a broken link, a figure missing from its results file) fail. Output: site/
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

worker: $(STAMP) jars
	$(BIN)/dyno-stream broker start
	$(BIN)/dyno-stream worker

broker-start: $(STAMP) jars
	$(BIN)/dyno-stream broker start

broker-stop: $(STAMP)
	$(BIN)/dyno-stream broker stop

bench-store: $(STAMP)
	$(BIN)/python bench/bench_store.py

bench: $(STAMP) $(BENCH_STAMP) jars
	$(BIN)/python bench/bench_store.py --json bench/results/store.json
	$(BIN)/python bench/bench_limits.py --json bench/results/limits.json
	$(BIN)/python bench/bench_worker.py --json bench/results/worker.json
	$(BIN)/python bench/bench_compaction.py --json bench/results/compaction.json
	$(BIN)/python bench/bench_restore.py --json bench/results/restore.json
	$(BIN)/python bench/bench_compare.py --quix-python $(BENCH_VENV)/bin/python

# dyno-stream beside quixstreams, a plain confluent-kafka floor and the machine's limits:
# throughput, CPU per op and latency at 1k/5k/10k ops/s, 5 alternated runs each, each goal's
# figure (bench/results/compare.json, .png; ~30 min; ARGS=--quick for a short run)
bench-compare: $(STAMP) $(BENCH_STAMP) jars
	$(BIN)/python bench/bench_compare.py --quix-python $(BENCH_VENV)/bin/python $(ARGS)

# One worker's RSS under memory_mb=256 with 1, 16 and 64 partitions over 1,000,000 items, the
# time to open 64 partitions, 64 partitions against 4 (bench/results/memory.json; ~5-8 min)
bench-memory: $(STAMP) jars
	$(BIN)/python bench/bench_memory.py $(ARGS)

# Workers 1 -> 2 -> 3 -> 2 -> 1 under 8,000 ops/s, each on its own disk, then on one shared
# disk (bench/results/scale-separate.json, scale-shared.json; the benchmarks page's scale-out figures)
bench-scale: $(STAMP) jars
	$(BIN)/python bench/bench_scale.py --disks separate $(ARGS)
	$(BIN)/python bench/bench_scale.py --disks shared $(ARGS)

# one worker as 1 and 2 member processes (--processes), 5 runs each in turns
bench-processes: $(STAMP) jars
	$(BIN)/python bench/bench_processes.py --json bench/results/processes.json $(ARGS)

# The fault suite at full size (CI runs it reduced, within `make test`): 200,000 ops with 20
# SIGKILLs, 3 broker restarts, failing disks, 50,000 poison events (random seed, printed).
# The figures land in bench/results/faults.json (the benchmarks page's faults section).
faults: $(STAMP) jars
	rm -f bench/results/faults.json
	DYNO_FAULTS_FULL=1 DYNO_FAULTS_REPORT=bench/results/faults.json \
	  $(BIN)/pytest -m faults -v -s --timeout 1800
	cat bench/results/faults.json

schemas: $(STAMP)
	$(BIN)/dyno-stream schemas export

clean:
	rm -rf $(VENV) $(BENCH_VENV) .dyno .pytest_cache .mypy_cache .ruff_cache site
