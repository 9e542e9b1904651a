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
from harness import run_ok  # noqa: E402

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


def _altered(run: Path, to: Path, party: str, change) -> Path:
    """A copy of the run folder with one party's checkpoint changed by ``change``."""
    shutil.copytree(run, to)
    checkpoint = torch.load(to / party / "checkpoint.pt", weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, to / party / "checkpoint.pt")
    return to


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

    def one_unit_more(checkpoint):  # one party's share of a weight, one unit higher: its MAC no longer matches
        checkpoint["parameters"][next(iter(checkpoint["parameters"]))][0].view(-1)[0] += 1

    def another_key(checkpoint):  # the share of another key (as a party of another run holds)
        checkpoint["mac_key"][0] += 1

    refused = [_altered(run, base / "foreign", "party0", another_key),
               _altered(run, base / "tampered", "party1", one_unit_more)]
    resuming = _config(base, f"train.resume={run}")
    resumed = run_ok(resume, PARTIES, timeout_s=300, settings=settings, run_dir=str(run),
                     refused_dirs=[str(folder) for folder in refused], dealer_type=run_maker,
                     dealer_kwargs={"config": resuming, "directory": str(base / "dealer")})
    for party in resumed:  # every party refused both copies, saying why
        foreign, tampered = party["refusals"]
        assert foreign.startswith("CheckpointError") and "the MAC key share saved by rank(s) [0] is not " \
            "the one the dealer holds" in foreign, foreign
        assert tampered.startswith("CheatDetected") and \
            "the shares read back from the checkpoints (train.resume) were altered" in tampered, tampered
    # then took the run's own checkpoints back exactly, trained on and opened the same weights
    assert all(party["restored"] and party["epoch"] == 1 for party in resumed), resumed
    assert resumed[0]["weights"] == resumed[1]["weights"]
