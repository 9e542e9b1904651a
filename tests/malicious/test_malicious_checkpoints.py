"""Checkpoints under protocol=malicious: each party's shares are saved with their MACs and its
share of the MAC key, the dealer keeps the key's sharing, and a resumed run takes both back
exactly; a tampered share or a key from another run stops every party with a clear error."""

from __future__ import annotations

import shutil
import stat
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from checkpoint_programs import resume, run_maker, train_and_save  # noqa: E402
from harness import run_ok, spawn  # noqa: E402

PARTIES = 2


def _overrides(tmp_path: Path, *extra: str) -> list[str]:
    return ["protocol=malicious", f"num_parties={PARTIES}", f"output_dir={tmp_path}", *extra]


def _resume(tmp_path: Path, run: Path, dealer_resumes: bool) -> list[tuple[str, object]]:
    overrides = _overrides(tmp_path, f"train.resume={run}")
    dealer = overrides if dealer_resumes else _overrides(tmp_path)  # a fresh dealer: a key of its own
    collected, _ = spawn(resume, PARTIES, timeout_s=300, overrides=overrides, run_dir=str(run),
                         dealer_type=run_maker, dealer_kwargs={"overrides": dealer, "directory": str(tmp_path / "dealer")})
    return [collected[rank] for rank in range(PARTIES)]


@pytest.mark.slow
def test_a_resumed_run_takes_back_the_authenticated_state_and_refuses_a_tampered_or_foreign_one(tmp_path):
    run = tmp_path / "run"
    writing = _overrides(tmp_path, "train.checkpoint_every=1")
    run_ok(train_and_save, PARTIES, overrides=writing, run_dir=str(run), dealer_type=run_maker,
           dealer_kwargs={"overrides": writing, "directory": str(run / "dealer")})
    # every party's shares carry their MACs (4 limbs) and its share of the MAC key; the dealer
    # keeps the key's sharing; all of them readable by their owner only
    saved = [torch.load(run / f"party{rank}" / "checkpoint.pt", weights_only=True) for rank in range(PARTIES)]
    dealer = torch.load(run / "dealer" / "checkpoint.pt", weights_only=True)
    for rank, checkpoint in enumerate(saved):
        assert all(share.shape[0] == 4 for share in checkpoint["parameters"].values())
        assert all(share.shape[0] == 4 for share in checkpoint["optimizer"].values())  # the momentum buffers
        assert torch.equal(checkpoint["mac_key"], dealer["dealer"]["mac_key_shares"][rank])
    for name in [f"party{rank}" for rank in range(PARTIES)] + ["dealer"]:
        assert stat.S_IMODE((run / name / "checkpoint.pt").stat().st_mode) == 0o600

    resumed = [value for status, value in _resume(tmp_path, run, dealer_resumes=True)]
    assert all(party["restored"] and party["epoch"] == 1 for party in resumed), resumed
    assert resumed[0]["weights"] == resumed[1]["weights"]  # revealed after the MAC check

    # one party's share of a weight, one unit higher on disk: its MAC no longer matches
    tampered = tmp_path / "tampered"
    shutil.copytree(run, tampered)
    path = tampered / "party1" / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=True)
    first = next(iter(checkpoint["parameters"]))
    checkpoint["parameters"][first][0].view(-1)[0] += 1  # the low limb of its value share
    torch.save(checkpoint, path)
    for status, value in _resume(tmp_path, tampered, dealer_resumes=True):
        assert status == "ok" and value["refused"].startswith("CheatDetected"), value
        assert "the shares read back from the checkpoints (train.resume) were altered" in value["refused"]

    # a dealer that did not take the run's key back (another run's key): refused before any use
    for status, value in _resume(tmp_path, run, dealer_resumes=False):
        assert status == "ok" and value["refused"].startswith("CheckpointError"), value
        assert "the MAC key share in the checkpoint of rank(s) [0, 1] is not the one the dealer holds" in value["refused"]
