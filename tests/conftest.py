"""Shared helpers: tiny end-to-end jobs and multi-party sessions over real processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from protocols.prg import TEST_SUITE_VARIABLE
from sessions import run_job

# The test suite's marker: only with it does a party honour COTRAIN_INSECURE_TEST_SEED
# (protocols.prg.insecure_test_seed). Party processes inherit it from this environment.
os.environ[TEST_SUITE_VARIABLE] = str(Path(__file__).resolve())


@pytest.fixture
def job(tmp_path: Path):
    return lambda *overrides: run_job(tmp_path / "outputs", *overrides)
