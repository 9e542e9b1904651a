"""The CUDA share representation (CrypTen's ``CUDALongTensor``) through a whole job on a host
without CUDA (``cuda_wrapped_shares``): the transports, the default suite's dealer, truncation,
comparison, the sigmoid, releases, checkpoints and the summary take the wrapper where CrypTen
hands it out, and the model matches plaintext as it does on the CPU path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launch.local import free_port
from mpc.checkpoint import checkpoint_path
from launch_helpers import REPO, job_env, summary, unique_run_id

EMULATION = str(Path(__file__).with_name("cuda_wrapped_shares.py"))


@pytest.mark.slow
def test_a_job_with_shares_wrapped_as_on_cuda_matches_plaintext(tmp_path: Path) -> None:
    run_id, port, world = unique_run_id("wrapped"), free_port(), 3  # two banks and the dealer
    arguments = ["run", "launch=torchrun", "num_parties=2", "model=logreg", "data.rows=300", "data.test_rows=600",
                 "train.epochs=2", "train.batch_size=75", "train.checkpoint_every=1", f"output_dir={tmp_path}",
                 f"run_id={run_id}", "transport.timeout_s=60", "transport.connect_timeout_s=60"]
    ranks = {"WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(port)}
    processes = [subprocess.Popen([sys.executable, EMULATION, *arguments], cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True,
                                  env=job_env(RANK=str(rank), LOCAL_RANK=str(rank), **ranks))
                 for rank in range(world)]
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            raise AssertionError("the job did not finish within 240 s") from None
    assert [p.returncode for p in processes] == [0] * world, "\n".join(o[-3000:] for o in outputs)
    result = summary(tmp_path, run_id)
    assert result["protocol"] == "dealer" and result["num_parties"] == 2
    gaps = result["gaps"]
    assert set(gaps) == {"auc", "pr_auc", "accuracy", "loss"}
    assert all(entry["within_tolerance"] is True for entry in gaps.values()), gaps
    for bank in ("bank0", "bank1"):  # the shares kept on disk are plain host tensors that load safely
        shares = torch.load(checkpoint_path(tmp_path / run_id, bank), weights_only=True)["parameters"]
        assert shares and all(share.dtype == torch.int64 and share.device.type == "cpu" for share in shares.values())
