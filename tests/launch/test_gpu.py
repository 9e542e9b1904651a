"""GPU placement: ``device=cuda`` puts each party on ``cuda:(local rank % GPUs)``; transports
stage CUDA tensors through host memory. Skips with a reason where there is no CUDA device."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from launch_helpers import (COTRAIN, MPIRUN, REPO, TORCHRUN, assert_close_to_plaintext, finish, start, summary,
                            tiny, unique_run_id)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this host"),
]
PYTHON = str(Path(COTRAIN).parent / "python")


def test_party_device_follows_the_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    from parties.devices import party_device

    count = torch.cuda.device_count()
    monkeypatch.setenv("LOCAL_RANK", str(count + 1))
    assert party_device("cuda", 0) == f"cuda:{(count + 1) % count}"
    assert torch.cuda.current_device() == (count + 1) % count
    assert party_device("cuda:0", 5) == "cuda:0"


def test_to_device_copies_without_waiting_and_keeps_the_values() -> None:
    from protocols.share_tensors import to_device

    busy = torch.randn(4096, 4096, device="cuda")
    for _ in range(8):  # kernels queued ahead of the copy
        busy = busy @ busy / 64
    host = torch.arange(1 << 20, dtype=torch.int64)
    moved = to_device(host, "cuda")
    host.zero_()  # the copy must not read the source after it returned
    assert moved.is_cuda and torch.equal(moved.cpu(), torch.arange(1 << 20, dtype=torch.int64))
    assert to_device(moved, "cuda") is moved and to_device(host, "cpu") is host


@pytest.mark.parametrize("parties", [2, 3])
def test_mpi_transport_moves_cuda_tensors(parties: int) -> None:
    script = str(REPO / "tests" / "launch" / "mpi_collectives.py")
    code, output = finish(start([MPIRUN, "-n", str(parties), PYTHON, script, str(parties), "cuda"]), 180)
    assert code == 0, output
    assert len(re.findall(r"OK \d+ sent=", output)) == parties, output


@pytest.mark.slow
def test_mpirun_trains_on_cuda(tmp_path: Path) -> None:
    run_id = unique_run_id("gpu-mpi")
    code, output = finish(start([MPIRUN, "-n", "2", COTRAIN, "run", "device=cuda", *tiny(2, tmp_path, run_id)]), 300)
    assert code == 0, output[-4000:]
    assert_close_to_plaintext(summary(tmp_path, run_id), 2, "mpi")


@pytest.mark.slow
def test_torchrun_trains_on_cuda_over_gloo(tmp_path: Path) -> None:
    run_id = unique_run_id("gpu-torchrun")
    command = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "launch", "run", "launch=torchrun",
               "device=cuda", *tiny(2, tmp_path, run_id)]
    code, output = finish(start(command), 300)
    assert code == 0, output[-4000:]
    assert_close_to_plaintext(summary(tmp_path, run_id), 2, "gloo")
