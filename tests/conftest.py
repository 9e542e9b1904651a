"""Shared helpers: tiny end-to-end jobs and multi-party sessions over real processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.cli import run


def run_job(output_dir: Path, *overrides: str) -> dict:
    """Run a full local job (real party processes) and return its summary.json."""
    settings = [f"output_dir={output_dir}", "run_id=test", "transport.connect_timeout_s=60",
                "transport.timeout_s=60", "launch.timeout_s=600", *overrides]
    assert run(settings) == 0
    return json.loads((output_dir / "test" / "summary.json").read_text())


@pytest.fixture
def job(tmp_path: Path):
    return lambda *overrides: run_job(tmp_path / "outputs", *overrides)
