"""Checkpoints and DP-SGD's noise under protocol=malicious. Each party's shares are saved with
their MACs and its share of the MAC key, the dealer keeps the key's sharing, and a resumed run
takes both back exactly; a tampered share or a key from another run stops every party with a
clear error. DP-SGD's noise enters as each party's authenticated input."""

from __future__ import annotations

import dataclasses
import math
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from checkpoint_programs import resume, run_maker, train_and_save  # noqa: E402
from harness import run_ok, spawn  # noqa: E402

from launch.config import load_config  # noqa: E402
from mpc.checkpoint import run_settings  # noqa: E402

PARTIES, DRAWS, STD, UNIT = 2, 20_000, 0.5, 2.0**-16


def _config(base: Path, *extra: str):
    return load_config(["protocol=malicious", f"num_parties={PARTIES}", f"output_dir={base}", *extra])


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One epoch with a checkpoint at every party and the dealer, then the joint noise: the run
    folder and what each party returned."""
    base = tmp_path_factory.mktemp("malicious-checkpoints")
    run, config = base / "run", _config(base, "train.checkpoint_every=1")
    settings = run_settings(dataclasses.asdict(config))
    results = run_ok(train_and_save, PARTIES, settings=settings, run_dir=str(run), draws=DRAWS, std=STD,
                     dealer_type=run_maker, dealer_kwargs={"config": config, "directory": str(run / "dealer")},
                     timeout_s=300)
    return base, run, settings, results


def _resume(base: Path, run: Path, settings: dict, dealer_resumes: bool,
            tampered: Path | None = None) -> list[tuple[str, object]]:
    dealer = _config(base, f"train.resume={run}") if dealer_resumes else _config(base)  # else a key of its own
    collected, _ = spawn(resume, PARTIES, timeout_s=300, settings=settings, run_dir=str(run),
                         tampered_dir=tampered and str(tampered), dealer_type=run_maker,
                         dealer_kwargs={"config": dealer, "directory": str(base / "dealer")})
    return [collected.get(rank, ("missing", "no result")) for rank in range(PARTIES)]


@pytest.mark.slow
def test_dp_noise_enters_as_authenticated_inputs(written):
    """Each party's draw is its authenticated input: the opened sum passed the MAC check, has
    the Gaussian's moments and is each party's draw only in part (correlation 1/sqrt(parties))."""
    results = written[3]
    noise = torch.tensor(results[0]["noise"], dtype=torch.float64)
    assert all(party["noise"] == results[0]["noise"] for party in results)
    # mean ~ N(0, s^2/n), sample variance ~ s^2 (1 +- sqrt(2/n)): 4 standard errors each
    assert abs(noise.mean().item()) <= 4 * STD / math.sqrt(DRAWS)
    assert abs(noise.var().item() / STD**2 - 1) <= 4 * math.sqrt(2 / DRAWS)
    own = [torch.tensor(party["own"], dtype=torch.float64) for party in results]
    assert (sum(own) - noise).abs().max().item() <= PARTIES * UNIT  # each input encoded within half a unit
    for draw in own:
        correlation = np.corrcoef(draw.numpy(), noise.numpy())[0, 1]
        assert abs(correlation - 1 / math.sqrt(PARTIES)) <= 4 / math.sqrt(DRAWS)


@pytest.mark.slow
def test_a_resumed_run_takes_back_the_authenticated_state_and_refuses_a_tampered_or_foreign_one(written):
    base, run, settings, _ = written
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

    # one party's share of a weight, one unit higher on disk: its MAC no longer matches
    tampered = base / "tampered"
    shutil.copytree(run, tampered)
    path = tampered / "party1" / "checkpoint.pt"
    checkpoint = torch.load(path, weights_only=True)
    first = next(iter(checkpoint["parameters"]))
    checkpoint["parameters"][first][0].view(-1)[0] += 1  # the low limb of its value share
    torch.save(checkpoint, path)

    resumed = [value for _, value in _resume(base, run, settings, dealer_resumes=True, tampered=tampered)]
    for party in resumed:  # every party refused the tampered copy, naming where the shares came from
        assert party["tampered"].startswith("CheatDetected"), party
        assert "the shares read back from the checkpoints (train.resume) were altered" in party["tampered"]
    assert all(party["restored"] and party["epoch"] == 1 for party in resumed), resumed
    assert resumed[0]["weights"] == resumed[1]["weights"]  # revealed after the MAC check

    # a dealer that did not take the run's key back (another run's key): refused before any use
    for status, value in _resume(base, run, settings, dealer_resumes=False):
        assert status == "ok" and value["refused"].startswith("CheckpointError"), value
        assert "the MAC key share in the checkpoint of rank(s) [0, 1] is not the one the dealer holds" in value["refused"]
