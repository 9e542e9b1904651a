"""End-to-end secure training against the plaintext reference, over real party processes.

Tolerances. Values are fixed-point with f = 16 fractional bits, so one unit in the last
place is u = 2^-16. Encoding a value errs by at most u/2, and each truncation after a
multiplication by at most u (the truncation pairs are exact to 1 ulp). The sigmoid is a
clipped polynomial approximation (mpc.training.secure_sigmoid), whose error eps_sigma on the
logits that occur is measured in a secure session below; it dominates u by an order of
magnitude, and is the reason the bound is not u alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mpc.data.config import DataConfig
from mpc.losses import WeightedBinaryCrossEntropy
from mpc.metrics import ClassWeights
from mpc.models import DEFAULT_MODEL, build_torch_model
from mpc.reference import pool_horizontal, train_plaintext
from mpc.training import TrainConfig, batch_slices, epoch_order
from sessions import run_parties

U = 2.0**-16
SMALL = ["data.rows=300", "data.test_rows=600", "train.epochs=2", "train.batch_size=64"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "parties, partition, model",
    [
        (2, "horizontal", "logreg"),
        (2, "vertical", "logreg"),
        (2, "horizontal", "mlp"),
        (2, "vertical", "mlp"),
        (3, "horizontal", "logreg"),
        (3, "vertical", "mlp"),
        (4, "horizontal", "mlp"),
        (4, "vertical", "logreg"),
    ],
)
def test_secure_training_matches_plaintext(job, parties, partition, model):
    summary = job(f"num_parties={parties}", f"data.partition={partition}", f"model={model}", *SMALL)
    secure, plain = summary["secure"], summary["plaintext"]
    assert summary["num_parties"] == parties and len(summary["parties"]) == parties
    assert summary["auc_gap"] <= 0.01, (secure["auc"], plain["auc"])
    assert len(secure["loss_curve"]) == len(plain["loss_curve"]) == 2
    for party in summary["per_party"]:
        assert party["bytes_sent"] > 0 and party["rounds"] > 0
    expected = "rows" if partition == "horizontal" else "columns"
    assert all(p[expected] > 0 for p in summary["parties"])


def _sigmoid_error(crypten, rank):
    from mpc.training import secure_sigmoid

    grid = torch.linspace(-12, 12, 4801)
    approx = secure_sigmoid(crypten.cryptensor(grid, src=0)).get_plain_text()
    return (approx.double() - torch.sigmoid(grid.double())).abs().max().item()


@pytest.fixture(scope="module")
def eps_sigma() -> float:
    """The training loop's sigmoid error over logits in [-12, 12], measured under MPC."""
    return max(run_parties(_sigmoid_error, world=2))


@pytest.mark.slow
def test_logreg_weights_within_bound_derived_from_fixed_point(tmp_path, job, eps_sigma):
    """Per step, the secure gradient differs from the float gradient at the secure weights by
    e_t = X^T (w * delta) / B, where |delta_i| <= eps = eps_sigma + (|theta|_1 + 3) u / 4 + 2u
    (the sigmoid, the logit's encoding and truncation error through sigmoid' <= 1/4, the
    weighted-residual product and the division by B). By Cauchy-Schwarz over the batch,
    |e_t| <= eps * sqrt(mean w_i^2) * sqrt(sum_j mean_i x_ij^2). A logistic-regression SGD
    step is non-expansive when lr <= 2/L (L = the batch loss's smoothness, checked below), so
    the final weight error is at most lr * sum_t |e_t| plus the weights' own encoding u/2.
    """
    # lr = 0.1 keeps every batch's step non-expansive (2/L >= 0.3 on this data; checked below)
    summary = job("num_parties=2", "model=logreg", "train.reveal_to=[bank0]", "train.lr=0.1", *SMALL)
    directory = tmp_path / "outputs" / "test"
    secure_state = torch.load(directory / "bank0" / "model.pt")
    secure_theta = torch.cat([secure_state["0.weight"].reshape(-1), secure_state["0.bias"]]).double()

    config = TrainConfig(epochs=2, batch_size=64, lr=0.1)
    train_paths = [str(directory / "data" / f"bank{i}.csv") for i in range(2)]
    data = pool_horizontal(DataConfig(), train_paths, [str(directory / "data" / "heldout.csv")])
    rows = data.features.shape[0]
    weights = ClassWeights.balanced(rows, int(data.labels.sum()))
    model = build_torch_model(DEFAULT_MODEL, data.features.shape[1], seed=0)
    plain_model, _ = train_plaintext(model, data, config, WeightedBinaryCrossEntropy(weights), seed=0)
    plain_theta = torch.cat([p.detach().reshape(-1) for p in plain_model.parameters()]).double()

    bound = U / 2
    theta_l1 = plain_theta.abs().sum().item() + 1.0
    eps = eps_sigma + (theta_l1 + 3) * U / 4 + 2 * U
    for epoch in range(config.epochs):
        order = epoch_order(rows, 0, epoch)
        x = torch.cat([data.features[order], torch.ones(rows, 1)], dim=1).double()
        y = data.labels[order].double()
        for batch in batch_slices(rows, config.batch_size):
            xb, wb = x[batch], weights.per_row(y[batch]).reshape(-1)
            smoothness = torch.linalg.eigvalsh(xb.T @ (wb[:, None] * xb)).max().item() / (4 * len(wb))
            assert config.lr <= 2 / smoothness, "the non-expansive step condition must hold"
            column_rms = xb.pow(2).mean(0).sum().sqrt().item()
            bound += config.lr * eps * math.sqrt(wb.pow(2).mean().item()) * column_rms
    error = (secure_theta - plain_theta).norm().item()
    assert error <= bound, (error, bound)
    # the held-out losses then differ by at most mean(w) * max|x| * |dtheta| (BCE is
    # 1-Lipschitz in the logit per unit weight)
    test_x = torch.cat([data.test_features, torch.ones(len(data.test_features), 1)], dim=1).double()
    loss_bound = weights.per_row(data.test_labels).mean().item() * test_x.norm(dim=1).max().item() * bound
    assert abs(summary["secure"]["loss"] - summary["plaintext"]["loss"]) <= loss_bound
    print(f"eps_sigma={eps_sigma:.2e} weight error {error:.2e} <= bound {bound:.2e}")


@pytest.mark.slow
def test_outputs_and_reveal(tmp_path, job):
    summary = job("num_parties=3", "train.reveal_to=[bank1]", "data.rows=100", "data.test_rows=300",
                  "train.epochs=1", "train.batch_size=100")
    root = tmp_path / "outputs" / "test"
    for required in ("run_id", "num_parties", "parties", "transport", "protocol", "model", "epochs",
                     "secure", "plaintext", "wall_s", "per_party"):
        assert required in summary
    for metrics in (summary["secure"], summary["plaintext"]):
        assert set(metrics) >= {"auc", "pr_auc", "accuracy", "loss"}
    assert summary["testing_only_protocol"] is True
    for rank in range(3):
        party = root / f"bank{rank}"
        assert (party / "model_shares.pt").is_file() and (party / "party.log").is_file()
        assert (party / "model.pt").is_file() == (rank == 1)
        assert json.loads((party / "party.json").read_text())["name"] == f"bank{rank}"
    assert "for testing only" in (root / "bank0" / "party.log").read_text()
    shares = [torch.load(root / f"bank{rank}" / "model_shares.pt") for rank in range(3)]
    revealed = torch.load(root / "bank1" / "model.pt")
    for name, total in zip(revealed, (sum(s[k] for s in shares) for k in shares[0])):
        decoded = total.double() / 2**16  # shares add up (mod 2^64) to the encoded weights
        assert torch.allclose(decoded, revealed[name].double(), atol=U)
