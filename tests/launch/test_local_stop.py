"""The local launcher, stopped from outside, leaves no party running."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from launch.processes import descendants
from launch_helpers import COTRAIN, finish, start, stop_job, tiny, unique_run_id, wait_for_training


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_stopped_local_launcher_leaves_no_party_running(tmp_path: Path, stop: signal.Signals) -> None:
    """SIGTERM: the launcher stops its parties and says why. SIGKILL (no chance to): each party
    ends with its launcher all the same (the forkserver goes, and the kernel signals the party)."""
    run_id = unique_run_id("stop")
    job = start([COTRAIN, "run", *tiny(3, tmp_path, run_id, epochs=200)])
    try:
        wait_for_training(tmp_path, run_id, "bank1")
        parties = [pid for pid, name in descendants([job.pid]).items() if name.startswith("cotrain:")]
        assert len(parties) == 3, descendants([job.pid])
        job.send_signal(stop)
        code, output = finish(job, 30)
        deadline = time.monotonic() + 20
        while (left := [pid for pid in parties if alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, (left, output[-3000:])
        if stop == signal.SIGTERM:
            assert code == 1 and "the launcher received SIGTERM; all parties were stopped" in output, output[-3000:]
    finally:
        stop_job(job, run_id)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
