# The two set-up commands: `make demo` (the main job) and `make test`.
# Each creates .venv if missing and installs everything; installing twice changes nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
CRYPTEN := crypten==0.4.1

.PHONY: demo test install clean

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

clean:
	rm -rf outputs .pytest_cache
