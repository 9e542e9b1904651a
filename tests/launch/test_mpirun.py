"""Real ``mpirun`` jobs: MPI transport collectives, training, and parties that die mid-run."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from launch_helpers import (COTRAIN, MPIRUN, REPO, assert_close_to_plaintext, finish,
                            party_pid, start, stop_job, summary, tiny, unique_run_id, wait_for_training,
                            wait_until_gone)

COLLECTIVES = str(REPO / "tests" / "launch" / "mpi_collectives.py")
PYTHON = str(Path(COTRAIN).parent / "python")


@pytest.mark.parametrize("parties", [2, 3])
def test_mpi_transport_collectives_match_local_reference(parties: int) -> None:
    code, output = finish(start([MPIRUN, "-n", str(parties), PYTHON, COLLECTIVES, str(parties)]), 120)
    assert code == 0, output
    # ranks' lines can interleave in mpirun's output, so find the reports anywhere
    assert sorted(re.findall(r"OK (\d+) sent=", output)) == [str(rank) for rank in range(parties)], output


def test_world_size_must_match_num_parties(tmp_path: Path) -> None:
    run_id = unique_run_id("mpi-mismatch")
    code, output = finish(start([MPIRUN, "-n", "2", COTRAIN, "run", "transport=mpi",
                                 *tiny(3, tmp_path, run_id)]), 120)
    assert code != 0
    assert "mpirun started 2 processes but num_parties=3" in output, output


@pytest.mark.slow
@pytest.mark.parametrize("parties", [2, 3])
def test_mpirun_trains_like_plaintext(tmp_path: Path, parties: int) -> None:
    run_id = unique_run_id(f"mpi{parties}")
    # no transport given: under mpirun the MPI transport is the default
    code, output = finish(start([MPIRUN, "-n", str(parties), COTRAIN, "run", *tiny(parties, tmp_path, run_id)]), 240)
    assert code == 0, output[-4000:]
    result = summary(tmp_path, run_id)
    assert_close_to_plaintext(result, parties, "mpi")
    for rank in range(parties):  # one folder per party under the shared run id
        assert (tmp_path / run_id / f"bank{rank}" / "party.json").is_file()
    assert not wait_until_gone(run_id, 10)


@pytest.mark.slow
def test_stalled_party_becomes_a_transport_error(tmp_path: Path) -> None:
    """A peer that stops answering: the others name the operation, abort, and nothing hangs."""
    run_id = unique_run_id("mpi-stall")
    overrides = [*tiny(3, tmp_path, run_id, epochs=30), "transport.timeout_s=4"]
    job = start([MPIRUN, "-n", "3", COTRAIN, "run", "transport=mpi", *overrides])
    try:
        wait_for_training(tmp_path, run_id, "bank1")
        stalled = party_pid(run_id, "PMI_RANK", 1)
        os.kill(stalled, signal.SIGSTOP)
        code, output = finish(job, 90)
    finally:
        stop_job(job, run_id)  # normally mpirun has stopped every rank already
    assert code != 0, output[-3000:]
    assert "TransportError" in output and "did not complete within transport.timeout_s=4" in output, output[-3000:]
    assert not wait_until_gone(run_id), "orphan party processes were left behind"
