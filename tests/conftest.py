"""Shared helpers: tiny end-to-end jobs and multi-party sessions over real processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from sessions import run_job


@pytest.fixture
def job(tmp_path: Path):
    return lambda *overrides: run_job(tmp_path / "outputs", *overrides)
