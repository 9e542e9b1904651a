"""DP-SGD with checkpoints under protocol=malicious, end to end: a run's checkpoints after its
first epoch are taken (as a crash would leave them) while it goes on to its end; a second run
resumes from them. Its privacy ledger continues the first run's, its MAC checks run, and its
model lies within a derived bound of the uninterrupted run's.

The bound. Both runs start the second epoch from the same shares and sample the same batches
(the sampling seed is in the checkpoint); they differ in their noise (drawn afresh on resume,
its keys are never saved) and in their fixed-point rounding. Per step, with s = lr / B the
update scale, b_i = C / r_i the exact clip bounds (r_i = |[x_i, 1]|):
* the exact clipped step theta -> theta - s X^T clamp_b(w (sigmoid(X theta) - y)) is Lipschitz
  with L = max(1, s lambda_max(X^T diag(w / 4) X) - 1): the clamped residual is monotone in the
  logit with slope in [0, w / 4], so between any two weights the step's mean Jacobian is
  I - s X^T D X with 0 <= D <= w / 4 (no linearization);
* each run's step errs from the exact one at its own weights by at most F: per row the
  residual's error (as mpc.tolerance part 2, at its worst: w's 2 u, the sigmoid's error,
  the logit's encoding and truncation through sigmoid' <= 1/4, the residual's truncations)
  plus the clip bound's shortfall (at most (2 (1 + C) + 2 C + 1) u, tests/test_dp.py), scaled
  by s (its encoding u/2 on |clamped| <= b_i, its truncation u), times r_i; the features'
  encoding in X^T (u/2 + float32's 2^-24 |x|) on s b_i; a truncation per parameter; each
  party's noise draw encoded within u;
* the two noises differ by N(0, 2 std^2 I_p): a norm at most sqrt(2) std (sqrt(p) + t) with
  probability 1 - exp(-t^2 / 2) (Gaussian concentration), t set for CONFIDENCE over all steps.
So |theta_resumed - theta_straight| <= sum_t L_(t+1)...L_T (2 F_t + N_t). The noise multiplier
is small (0.1, at a large epsilon) so that the noise does not swamp the bound: measured, the
models 5.5e-3 apart, the bound 9.8e-2 (noise 5.3e-2, fixed point 4.5e-2).
"""

from __future__ import annotations

import math
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mpc.checkpoint import checkpoint_path
from mpc.data.config import DataConfig
from mpc.dp import DpConfig, PrivacyPlan
from mpc.metrics import ClassWeights
from mpc.reference import pool_horizontal
from mpc.scoring import load_model_file
from mpc.tolerance import BIASED_RESIDUAL_ULPS, CONFIDENCE, FLOAT32_EPS, ULP
from mpc.training import SIGMOID_MAX_ERROR
from sessions import run_job

BANKS = ("bank0", "bank1", "bank2")
LR, BATCH, CLIP, SIGMA, EPSILON, EPOCHS = 0.5, 64, 1.0, 0.1, 1e5, 2
SETTINGS = ("protocol=malicious", "transport.heartbeat_timeout_s=30", "data.rows=100", "data.test_rows=200",
            f"train.epochs={EPOCHS}", f"train.batch_size={BATCH}", f"train.lr={LR}", f"train.dp.epsilon={EPSILON}",
            f"train.dp.noise_multiplier={SIGMA}", f"train.dp.clip={CLIP}", "train.checkpoint_every=1",
            "train.reveal_to=[bank0]")


def _take_first_epoch_checkpoints(run_dir: Path, to: Path, done: threading.Event) -> dict[str, int]:
    """Copy every bank's checkpoint as it shows epoch 1, and the dealer's, into ``to`` (laid
    out as a run folder) while the run goes on; the epochs taken, per process."""
    taken: dict[str, int] = {}
    while not done.is_set() and len(taken) < len(BANKS) + 1:
        for name in (*BANKS, "dealer"):
            source = checkpoint_path(run_dir, name)
            if name in taken or not source.is_file():
                continue
            epoch = torch.load(source, weights_only=True).get("epoch", 0)
            if name == "dealer" or epoch >= 1:
                checkpoint_path(to, name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, checkpoint_path(to, name))
                taken[name] = epoch
        time.sleep(0.02)
    return taken


def _difference_bound(features: torch.Tensor, labels: torch.Tensor, sampling_seed: int, theta_norm: float,
                      parties: int) -> float:
    """The module docstring's bound on |theta_resumed - theta_straight| after the last epoch."""
    rows = features.shape[0]
    plan = PrivacyPlan.for_run(DpConfig(epsilon=EPSILON, clip=CLIP, noise_multiplier=SIGMA), rows, BATCH, EPOCHS)
    scale = LR / (plan.sampling_rate * rows)
    std = scale * plan.noise_multiplier * CLIP
    design = torch.cat([features.double(), torch.ones(rows, 1, dtype=torch.float64)], dim=1)
    p = design.shape[1]
    row_norms = design.norm(dim=1)
    bounds = CLIP / row_norms
    weights = ClassWeights.balanced(rows, int(labels.sum())).per_row(labels.double().reshape(-1))
    sampler = np.random.default_rng([sampling_seed, EPOCHS - 1])
    batches = [torch.from_numpy(np.flatnonzero(sampler.random(rows) < plan.sampling_rate))
               for _ in range(plan.steps_per_epoch)]
    tail = math.sqrt(2 * math.log(2 * len(batches) / CONFIDENCE))
    noise = math.sqrt(2) * std * (math.sqrt(p) + tail)
    # |theta| along the epoch: the revealed end's, plus every later step's largest move (each
    # clamped row moves it by at most (s + u/2) C |x~_i| / r_i, |x~_i| <= 1.001 r_i, plus the
    # scaling's truncation u r_i; one run's noise; the truncations and noise encodings per entry)
    moves = [(scale + ULP / 2) * len(batch) * CLIP * 1.001 + ULP * row_norms[batch].sum().item()
             + std * (math.sqrt(p) + tail) + (parties + 1) * math.sqrt(p) * ULP for batch in batches]
    steps = []
    for index, batch in enumerate(batches):
        l1 = math.sqrt(p) * (theta_norm + sum(moves[index:]))
        x, r, b, w = design[batch], row_norms[batch], bounds[batch], weights[batch]
        encoding = ULP / 2 + FLOAT32_EPS * x[:, :-1].abs().max(1).values if len(batch) else torch.zeros(0)
        logit = encoding * l1 + ULP
        residual = 2 * ULP * (1 + SIGMOID_MAX_ERROR) + w * (SIGMOID_MAX_ERROR + logit / 4) + BIASED_RESIDUAL_ULPS * ULP
        clamped = residual + (2 * (1 + CLIP) + 2 * CLIP + 1) * ULP
        per_row = r * (scale * clamped + b * ULP / 2 + ULP) + scale * b * math.sqrt(p) * encoding
        error = per_row.sum().item() + math.sqrt(p) * ULP + parties * math.sqrt(p) * ULP
        curvature = scale * torch.linalg.eigvalsh(x.T @ ((w / 4)[:, None] * x)).max().item() if len(batch) else 0.0
        steps.append((max(1.0, curvature - 1), 2 * error + noise))
    bound = 0.0
    for lipschitz, error in steps:
        bound = lipschitz * bound + error
    return bound


@pytest.mark.slow
def test_a_private_malicious_run_resumed_mid_run_matches_the_uninterrupted_run(tmp_path):
    straight_dir, taken_dir = tmp_path / "straight", tmp_path / "taken" / "test"
    done = threading.Event()
    taken: dict[str, int] = {}
    watcher = threading.Thread(target=lambda: taken.update(_take_first_epoch_checkpoints(
        straight_dir / "test", taken_dir, done)))
    watcher.start()
    try:
        straight = run_job(straight_dir, *SETTINGS)
    finally:
        done.set()
        watcher.join()
    assert taken == {**dict.fromkeys(BANKS, 1), "dealer": 0}, taken  # caught mid-run, before epoch 2's
    resumed = run_job(tmp_path / "resumed", *SETTINGS, f"train.resume={taken_dir}")
    assert resumed["resumed"] == {"from": str(taken_dir), "after_epoch": 1}
    assert [e["epoch"] for e in resumed["per_epoch"]] == [2]

    # the ledger goes on from the checkpoint: the same steps and epsilon after each epoch
    ledger, resumed_ledger = straight["privacy"], resumed["privacy"]
    assert resumed_ledger["steps_taken"] == ledger["steps_taken"] == ledger["steps_planned"]
    assert resumed_ledger["epsilon_per_epoch"] == ledger["epsilon_per_epoch"]
    assert len(ledger["epsilon_per_epoch"]) == EPOCHS and ledger["epsilon_spent"] <= EPSILON

    # the malicious checks ran in the resumed run: shares read back MAC-checked, openings checked
    assert resumed["protocol"] == "malicious"
    for party in resumed["per_party"]:
        if party["name"] != "dealer":
            assert party["protocol_parts"]["check"]["calls"] > 0, party["protocol_parts"]

    # the resumed model within the derived bound of the uninterrupted one
    models = [torch.load(folder / "test" / "bank0" / "model.pt", weights_only=True)["state_dict"]
              for folder in (straight_dir, tmp_path / "resumed")]
    thetas = [torch.cat([m["0.weight"].reshape(-1), m["0.bias"]]).double() for m in models]
    _, record = load_model_file(straight_dir / "test" / "bank0" / "model.pt")
    run_dir = straight_dir / "test"
    data = pool_horizontal(DataConfig(), record.preprocessing, [str(run_dir / "data" / f"{b}.csv") for b in BANKS],
                           [str(run_dir / "data" / "heldout.csv")])
    seed = int.from_bytes(torch.load(checkpoint_path(taken_dir, "bank0"), weights_only=True)["dp"]["sampling_seed"],
                          "big")
    bound = _difference_bound(data.features, data.labels, seed, thetas[0].norm().item(), len(BANKS))
    difference = (thetas[0] - thetas[1]).norm().item()
    assert difference <= bound, (difference, bound)
    print(f"resumed vs uninterrupted: {difference:.2e} <= bound {bound:.2e}")
