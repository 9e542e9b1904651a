"""Real ``torchrun`` jobs over torch.distributed (gloo), and parties that fail under it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from launch_helpers import (TORCHRUN, assert_close_to_plaintext, finish, kill_rank_mid_training, start, summary,
                            tiny, unique_run_id, wait_until_gone)
from mpc.data.synthetic import write_horizontal


def torchrun(parties: int, *overrides: str) -> list[str]:
    # --standalone: torchrun's own rendezvous on a free port (parallel jobs never collide)
    return [TORCHRUN, "--standalone", "--nproc_per_node", str(parties), "-m", "launch", "run", "launch=torchrun",
            *overrides]


@pytest.mark.slow
@pytest.mark.parametrize("parties", [2, 3])
def test_torchrun_trains_like_plaintext(tmp_path: Path, parties: int) -> None:
    run_id = unique_run_id(f"torchrun{parties}")
    code, output = finish(start(torchrun(parties, *tiny(parties, tmp_path, run_id))), 240)
    assert code == 0, output[-4000:]
    assert_close_to_plaintext(summary(tmp_path, run_id), parties, "gloo")
    assert not wait_until_gone(run_id, 10)


@pytest.mark.slow
def test_bad_data_file_stops_the_torchrun_job_with_a_clear_error(tmp_path: Path) -> None:
    files = write_horizontal(tmp_path / "data", 3, 150, 300, seed=0)
    table = pd.read_csv(files.train[1])
    table.loc[4, "is_fraud"] = 7
    table.to_csv(files.train[1], index=False)
    parties = ",".join(
        f"{{name:bank{rank},data:{path}" + (f",test_data:{files.test[0]}}}" if rank == 0 else "}")
        for rank, path in enumerate(files.train))
    run_id = unique_run_id("torchrun-bad")
    code, output = finish(start(torchrun(3, *tiny(3, tmp_path, run_id), f"parties=[{parties}]",
                                         "protocol.allow_insecure=true")), 180)
    assert code != 0
    assert "label column 'is_fraud' must hold only 0 and 1" in output, output[-3000:]
    assert not wait_until_gone(run_id), "orphan party processes were left behind"


@pytest.mark.slow
def test_killed_party_stops_the_torchrun_job(tmp_path: Path) -> None:
    run_id = unique_run_id("torchrun-kill")
    job = start(torchrun(3, *tiny(3, tmp_path, run_id, epochs=30)))
    code, output = kill_rank_mid_training(job, tmp_path, run_id, "RANK", 90)
    assert code != 0
    assert "ChildFailedError" in output or "failed" in output, output[-3000:]
    assert not wait_until_gone(run_id), "orphan party processes were left behind"
