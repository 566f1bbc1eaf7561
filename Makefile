# fraudstream — `make run` shows fraud being caught live; `make test` runs every test.
SHELL := /bin/bash
# the system's python3 if 3.11+ (an optimised build on Debian), else python3 on PATH
PYTHON ?= $(shell bash scripts/python.sh)
VENV := .venv
BIN := $(VENV)/bin
export FRAUDSTREAM_CACHE ?= $(CURDIR)/.cache
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
KAFKA_BROKER_URL ?= localhost:9092
TOPIC ?= streaming.transactions.fraud
IDLE_MS ?= 10000

.PHONY: help setup setup-test run test lint format bench chaos consume clean eval model compare reset screenshots

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

setup: $(VENV)/.installed $(FRAUDSTREAM_CACHE)/.kafka  ## virtualenv, pinned Python deps, Kafka jars

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(FRAUDSTREAM_CACHE)/.kafka: $(VENV)/.installed
	$(BIN)/fraudstream broker fetch
	touch $@

setup-test: setup  ## setup, plus Chromium, kcat, openssl (test certificates), the docker compose plugin and Kafka 3.9's jars
	@if ! command -v chromium >/dev/null || ! command -v kcat >/dev/null \
	    || ! command -v openssl >/dev/null; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium kcat openssl; fi
	@bash scripts/install-compose.sh
	@$(BIN)/python -c "from fraudstream.broker.artifacts import OLDER_KAFKA_VERSION as v, ensure_kafka; ensure_kafka(version=v)"

run: setup  ## start broker, generator, detector and dashboard; Ctrl-C stops them all
	$(BIN)/fraudstream run

test: setup-test  ## the whole test suite against a real Kafka broker (two workers: the fault scenarios beside the rest)
	$(BIN)/pytest -n 2 --dist loadgroup

lint: setup  ## ruff format --check, ruff check, mypy --strict
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

format: setup  ## apply ruff's formatting and fixes
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

screenshots: setup-test  ## retake the README's screenshots (docs/images/) with the browser tests
	mkdir -p docs/images
	FRAUDSTREAM_SCREENSHOTS=$(CURDIR)/docs/images $(BIN)/pytest -p no:xdist tests/e2e -k simulated_run

chaos: setup-test  ## only the fault scenarios (also part of make test)
	$(BIN)/pytest tests/chaos

BENCH_VENV := .venv-bench
bench: setup $(BENCH_VENV)/.installed  ## fraudstream vs the tutorial loop, Quix Streams, a passthrough; latency (BENCH_ARGS="--count N --only NAME,...")
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

$(BENCH_VENV)/.installed: benchmarks/requirements.lock  # kafka-python, quixstreams, matplotlib
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q -r benchmarks/requirements.lock
	touch $@

consume: setup  ## read TOPIC with Kafka's own console consumer (read_committed); ends after IDLE_MS (10 s) without a record
	$(BIN)/fraudstream broker tool console-consumer --bootstrap-server $(KAFKA_BROKER_URL) \
	  --topic $(TOPIC) --from-beginning --isolation-level read_committed --timeout-ms $(IDLE_MS)

reset: setup  ## wipe the local broker's data (.fraudstream/broker) after a confirmation
	$(BIN)/fraudstream reset

clean:  ## remove the virtualenvs and caches (not the Kafka data in .fraudstream/)
	rm -rf $(VENV) $(BENCH_VENV) $(GEN_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

DATA := data
eval: setup  ## simulate 1,000,000 labelled transactions, train on the first days, report on the later ones (~4 min)
	$(BIN)/fraudstream generate --profile sim --seed 7 --count 1000000 \
	  --output $(DATA)/sim.jsonl --labels-output $(DATA)/sim-labels.jsonl
	$(BIN)/fraudstream train --rules rules/with-model.yaml --input $(DATA)/sim.jsonl \
	  --labels $(DATA)/sim-labels.jsonl --out models/default.model

model: eval  ## the same: models/default.model, used by rules/with-model.yaml

GEN_VENV := .venv-gen
compare: eval $(GEN_VENV)/.installed  ## the model against the standard baselines: on the simulator and on finforge's and synccfd's streams (~45 min)
	$(GEN_VENV)/bin/python benchmarks/finforge_stream.py --out-dir $(DATA) --count 500000 --seed 7
	$(GEN_VENV)/bin/python benchmarks/synccfd_stream.py --out-dir $(DATA) --count 500000 --seed 7
	$(BIN)/python benchmarks/baselines.py --input $(DATA)/sim.jsonl --labels $(DATA)/sim-labels.jsonl \
	  --fraudstream-model models/default.model --rules rules/with-model.yaml
	set -e; for g in finforge synccfd; do \
	  $(BIN)/fraudstream train --rules rules/with-model.yaml --input $(DATA)/$$g.jsonl \
	    --labels $(DATA)/$$g-labels.jsonl --out $(DATA)/$$g.model; \
	  $(BIN)/python benchmarks/baselines.py --input $(DATA)/$$g.jsonl \
	    --labels $(DATA)/$$g-labels.jsonl --fraudstream-model $(DATA)/$$g.model \
	    --rules rules/with-model.yaml; \
	done

$(GEN_VENV)/.installed: benchmarks/generators.lock  # finforge, synccfd (pandas, geopandas)
	$(PYTHON) -m venv $(GEN_VENV)
	$(GEN_VENV)/bin/pip install -q --upgrade pip
	$(GEN_VENV)/bin/pip install -q -r benchmarks/generators.lock
	touch $@
