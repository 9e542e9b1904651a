# The two set-up commands: `make demo` (the main job) and `make test`.
# Each creates .venv if missing and installs everything; installing twice changes nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
CRYPTEN := crypten==0.4.1

.PHONY: demo test install clean gpu-check wan-bench bench conformance

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned, so nothing can pull a CUDA build; crypten without its stale deps.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet --no-deps $(CRYPTEN)
	$(BIN)/pip install --quiet -e '.[test]' $(TORCH)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cotrain run

test: $(STAMP)
	$(BIN)/python -m pytest

# Every workload on plaintext torch, plain CrypTen and each transport x protocol suite, side
# by side (< 20 min on 2 cores, plus <= 15 for protocol=malicious): prints a table, writes
# bench/results/<date>.json.
bench: $(STAMP)
	$(BIN)/python -m bench

# CrypTen's own upstream tests over every transport x suite x party count: a table of
# passed/failed/skipped per cell, every skip with its reason (long: hours on 2 busy cores;
# narrow it with ARGS, e.g. ARGS='--cells zmq/tfp/2p --files test_mpc').
conformance: $(STAMP)
	$(BIN)/python tests/conformance/matrix.py $(ARGS)

# On a GPU machine: GPU-marked tests plus a short CPU-vs-CUDA benchmark (< 5 min).
gpu-check: $(STAMP)
	bash launch/gpu_check.sh

# Needs root (network namespaces): seconds per epoch over simulated WAN links.
wan-bench: $(STAMP)
	$(BIN)/python bench/wan_bench.py

clean:
	rm -rf outputs .pytest_cache
