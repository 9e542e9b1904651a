"""A party process's entry point: run, report a failure in one clear line, exit non-zero at once."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from parties.config import RunConfig
from parties.failure_line import print_failure
from parties.memory import keep_freed_memory
from parties.dealer import process_names
from parties.party import run_party


def _show_name(name: str) -> None:
    """``ps``/``top``/``pgrep`` show which party a process is (Linux; elsewhere nothing)."""
    try:
        Path("/proc/self/comm").write_text(f"cotrain:{name}"[:15])
    except OSError:
        pass


def party_main(config: RunConfig, rank: int) -> None:
    name = process_names(config)[rank]
    _show_name(name)
    keep_freed_memory()
    try:
        run_party(config, rank)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as error:  # the process boundary: report, never hang or half-succeed
        logging.getLogger("cotrain.party").debug("party %s failed", name, exc_info=True)
        print_failure(name, error.__class__.__name__, str(error))
        exit_now(1)


def exit_now(code: int) -> None:
    """End a failed process at once: its transport is closed and nothing is left to save, and
    the interpreter's teardown (torch and all) takes seconds on a loaded machine."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
