"""Bounds that follow from 16-bit fixed point, for comparing a secure run with float training.

Values are fixed-point with f = 16 fractional bits, so one unit in the last place is
u = 2^-16. Encoding a value errs by at most u/2, and each truncation after a multiplication by
at most u (the truncation pairs are exact to 1 ulp). The sigmoid is a clipped polynomial
approximation (mpc.training.secure_sigmoid), whose error eps_sigma on the logits that occur
is measured in a secure session; it dominates u by an order of magnitude.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pytest
import torch

from mpc.metrics import ClassWeights
from mpc.reference import PooledData
from mpc.training import TrainConfig, batch_slices, epoch_order
from sessions import run_parties

U = 2.0**-16


def _sigmoid_error(crypten, rank):
    from mpc.training import secure_sigmoid

    grid = torch.linspace(-12, 12, 4801)
    approx = secure_sigmoid(crypten.cryptensor(grid, src=0)).get_plain_text()
    return (approx.double() - torch.sigmoid(grid.double())).abs().max().item()


@pytest.fixture(scope="session")
def eps_sigma() -> float:
    """The training loop's sigmoid error over logits in [-12, 12], measured under MPC."""
    return max(run_parties(_sigmoid_error, world=2, timeout_s=600))


StepScales = Callable[[torch.Tensor, int], torch.Tensor]  # (batch labels, batch size) -> per-row step scale


def exact_scales(config: TrainConfig, weights: ClassWeights) -> StepScales:
    """lr * w(y) / B per row, as float SGD on the class-weighted mean loss takes it."""
    return lambda labels, batch: config.lr * weights.per_row(labels).reshape(-1).double() / batch


def encoded_scales(config: TrainConfig, weights: ClassWeights) -> StepScales:
    """The step scales as the secure trainer holds them (``WeightedBinaryCrossEntropy.row_scales``): the
    public constants lr*w_neg/B and lr*(w_pos - w_neg)/B encoded by CrypTen (truncated to
    multiples of u), then labels * the second plus the first."""
    def encode(value: float) -> float:
        return math.trunc(value / U) * U

    def scales(labels: torch.Tensor, batch: int) -> torch.Tensor:
        negative = encode(config.lr * weights.negative / batch)
        difference = encode(config.lr * (weights.positive - weights.negative) / batch)
        return negative + difference * labels.reshape(-1).double()
    return scales


def logreg_sgd(data: PooledData, config: TrainConfig, scales: StepScales, seed: int) -> torch.Tensor:
    """Float64 logistic-regression SGD (weights then bias) from zero-free initial weights of
    ``build_torch_model``'s logreg, each step theta -= X^T (s * (sigmoid(X theta) - y))."""
    from mpc.models import DEFAULT_MODEL, build_torch_model

    model = build_torch_model(DEFAULT_MODEL, data.features.shape[1], seed)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    rows = data.features.shape[0]
    for epoch in range(config.epochs):
        order = epoch_order(rows, seed, epoch)
        x = torch.cat([data.features[order], torch.ones(rows, 1)], dim=1).double()
        y = data.labels[order].double().reshape(-1)
        for batch in batch_slices(rows, config.batch_size):
            residual = torch.sigmoid(x[batch] @ theta) - y[batch]
            theta = theta - x[batch].T @ (scales(y[batch], len(residual)) * residual)
    return theta


def logreg_weight_bound(data: PooledData, config: TrainConfig, scales: StepScales, plain_theta: torch.Tensor,
                        eps_sigma: float, seed: int) -> float:
    """A bound on |theta_secure - theta_float| after logistic-regression SGD on ``data``, each
    step theta -= X^T (s * (sigmoid(X theta) - y)) with per-row step scales s.

    Per step, the secure update differs from the float update at the secure weights by
    e_t = X^T (s * delta), where |delta_i| <= eps = eps_sigma + (|theta|_1 + 3) u / 4 + 2u
    (the sigmoid, the logit's encoding and truncation error through sigmoid' <= 1/4, the
    scaled-residual product and its truncation). By Cauchy-Schwarz over the batch,
    |e_t| <= eps * |s|_2 * sqrt(sum_i |x_i|^2). A logistic-regression SGD step is
    non-expansive when its smoothness lambda_max(X^T diag(s) X) / 4 is at most 2 (asserted
    here), so the final weight error is at most sum_t |e_t| plus the weights' encoding u/2.
    """
    rows = data.features.shape[0]
    bound = U / 2
    theta_l1 = plain_theta.abs().sum().item() + 1.0
    eps = eps_sigma + (theta_l1 + 3) * U / 4 + 2 * U
    for epoch in range(config.epochs):
        order = epoch_order(rows, seed, epoch)
        x = torch.cat([data.features[order], torch.ones(rows, 1)], dim=1).double()
        y = data.labels[order].double()
        for batch in batch_slices(rows, config.batch_size):
            xb, sb = x[batch], scales(y[batch], len(y[batch]))
            smoothness = torch.linalg.eigvalsh(xb.T @ (sb[:, None] * xb)).max().item() / 4
            assert smoothness <= 2, "the non-expansive step condition must hold"
            bound += eps * sb.norm().item() * xb.pow(2).sum().sqrt().item()
    return bound


def logit_errors(test_features: torch.Tensor, theta: torch.Tensor, weight_bound: float) -> np.ndarray:
    """Per held-out row, a bound on |secure logit - float logit| for a logistic regression:
    |x| * weight_bound from the weights, (|theta|_1 + 1) u/2 from encoding x, u from the
    product's truncation, and float32 rounding of the float logit."""
    x = torch.cat([test_features, torch.ones(len(test_features), 1)], dim=1).double()
    logits = x @ theta.double()
    return (x.norm(dim=1) * weight_bound + (theta.abs().sum() + 1) * U / 2 + U
            + 2.0**-22 * logits.abs()).numpy()


def metric_bounds(logits: np.ndarray, labels: np.ndarray, errors: np.ndarray, weights: ClassWeights) -> dict:
    """How far each held-out metric can move when every logit moves by at most ``errors``.

    Accuracy: only rows within their error of the threshold (logit 0) can flip. AUC: only
    (positive, negative) pairs closer than the sum of their errors can change order. PR-AUC
    (average precision) depends only on the labels' order, and a positive's precision changes
    only if a negative crosses it, so only positives with such a negative can change, each by
    at most 1/P. Loss: weighted BCE is w-Lipschitz in the logit.
    """
    positive, negative = labels > 0.5, labels <= 0.5
    close = (np.abs(logits[positive][:, None] - logits[negative][None, :])
             <= errors[positive][:, None] + errors[negative][None, :])
    row_weights = weights.per_row(torch.tensor(labels)).numpy()
    return {
        "accuracy": float((np.abs(logits) <= errors).mean()),
        "auc": float(close.sum() / close.size),
        "pr_auc": float(close.any(axis=1).sum() / positive.sum()),
        "loss": float((row_weights * errors).mean()),
    }
