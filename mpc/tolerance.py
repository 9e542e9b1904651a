"""How far a secure result may lie from the plaintext one, derived from the fixed-point precision.

Nothing here is a picked threshold. Values in the ring carry f = 16 fractional bits, so one
unit in the last place is u = 2^-16: encoding a value errs by at most u/2, and each
truncation after a product by at most u (truncation pairs are exact to 1 ulp). The
sigmoid is an approximation whose largest error as evaluated, ``sigmoid_error``, is
measured under MPC in the tests (``tests/test_sigmoid.py``). From these:

1. **One forward pass** (:func:`forward_error_bound`). For a Linear/ReLU stack with the
   same weights on both sides, the secure output differs from the float one by
   e_0 = u/2 + 2^-24 max|x| (the input's encoding; float32 rounding of the scaled row),
   e_l = ||W_l||_inf e_(l-1) + 2u (the product's truncation, the ReLU's indicator product);
   ReLU is 1-Lipschitz, so it passes the error on unchanged.

2. **Training** (:func:`training_weight_bound`, logistic regression). One secure SGD step
   computes ``theta - X^T v`` with v_i = s_i (sigmoid(z_i) - y_i), s_i = lr w(y_i) / B. Its
   difference from the float step at the same (secure) weights is at most
   ||X||_F |dv|_2 + sqrt(p) u, where each |dv_i| <= s_i (eps_sigma + (|theta|_1 / 2 + 1) u / 4)
   + 2.5 u (the sigmoid; the logit's forward error through sigmoid' <= 1/4; the encoded and
   truncated s_i; the product's truncation) and sqrt(p) u is the gradient's truncation per
   parameter. The float step is a map with Lipschitz constant rho = max(1, lr L - 1),
   L = lambda_max(X^T W X) / (4 B) (the weighted BCE is convex and L-smooth), so the weight
   error obeys B_(t+1) = rho_t B_t + e_t from B_0 = u/2 (the initial weights' encoding).
   |theta_t|_1 is bounded along the way by |theta_0|_1 plus every step's largest move,
   lr sum_i w_i |x_i|_1 / B (|sigmoid - y| <= 1). For an MLP no such contraction argument
   holds, so no training bound is claimed (the verdicts are then ``None``).

3. **The held-out logits** (:func:`logit_bound`): delta = max_i |x_i|_2 B_T + the forward
   error of (1) at weights with |theta|_1 <= |theta_plain|_1 + sqrt(p) B_T.

4. **Metrics** (:func:`metric_tolerances`), from delta and the plaintext held-out logits z:
   accuracy can change only on rows with |z_i| <= delta; AUC only on positive/negative
   pairs with |z_p - z_n| <= 2 delta; average precision only through such pairs (and
   positive/positive ones), which bounds each positive's precision between the corners
   (a + q)/(a + q + b - m) and (a - q)/(a - q + b + m); the weighted BCE is Lipschitz in
   the logit with constant w_i (|sigmoid - y| <= 1), so the loss moves by at most
   mean(w) delta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from mpc.metrics import ClassWeights
from mpc.training import TrainConfig, batch_slices, epoch_order

FRACTIONAL_BITS = 16
ULP = 2.0 ** -FRACTIONAL_BITS
FLOAT32_EPS = 2.0 ** -24
METRICS = ("auc", "pr_auc", "accuracy", "loss")
# float64 rounding in the metrics themselves (sklearn sums, the mean loss)
_ARITHMETIC_SLACK = 1e-9


def _layer_error(row_sums: Sequence[float], max_abs_input: float) -> float:
    error = ULP / 2 + FLOAT32_EPS * max_abs_input
    for row_sum in row_sums:
        error = row_sum * error + 2 * ULP
    return error


def forward_error_bound(model: nn.Module, max_abs_input: float) -> float:
    """Part 1: the largest |secure - float| logit of ``model`` (Linear/ReLU) with the same
    weights on both sides, on inputs with |x| <= ``max_abs_input``."""
    return _layer_error([module.weight.detach().double().abs().sum(1).max().item()
                         for module in model.modules() if isinstance(module, nn.Linear)], max_abs_input)


@dataclass(frozen=True)
class TrainingBound:
    weight_error: float  # |theta_secure - theta_float|_2 after training
    parameters: int


def training_weight_bound(features: torch.Tensor, labels: torch.Tensor, initial: nn.Module,
                          config: TrainConfig, weights: ClassWeights, seed: int,
                          sigmoid_error: float) -> TrainingBound | None:
    """Part 2 of the module docstring; ``None`` for a model that is not a logistic regression."""
    if sum(isinstance(m, nn.Linear) for m in initial.modules()) != 1:
        return None
    rows = features.shape[0]
    design = torch.cat([features.double(), torch.ones(rows, 1, dtype=torch.float64)], dim=1)
    labels = labels.double().reshape(-1)
    parameters = design.shape[1]
    theta_l1 = sum(p.detach().double().abs().sum().item() for p in initial.parameters())
    bound = ULP / 2
    for epoch in range(config.epochs):
        order = epoch_order(rows, seed, epoch)
        x_all, y_all = design[order], labels[order]
        for batch in batch_slices(rows, config.batch_size):
            x, w = x_all[batch], weights.per_row(y_all[batch])
            size = len(w)
            step_scale = config.lr * w / size
            smoothness = torch.linalg.eigvalsh(x.T @ (w[:, None] * x)).max().item() / (4 * size)
            rho = max(1.0, config.lr * smoothness - 1.0)
            residual_error = ULP * (theta_l1 / 2 + 1) / 4 + sigmoid_error
            row_error = step_scale * residual_error + 2.5 * ULP
            step_error = x.norm().item() * row_error.norm().item() + math.sqrt(parameters) * ULP
            bound = rho * bound + step_error
            theta_l1 += (step_scale[:, None] * x.abs()).sum().item() + math.sqrt(parameters) * bound
    return TrainingBound(bound, parameters)


def logit_bound(test_features: torch.Tensor, trained: nn.Module, training: TrainingBound) -> float:
    """Part 3: the largest |secure - plaintext| held-out logit after secure training."""
    test = test_features.double()
    row_norms = torch.cat([test, torch.ones(len(test), 1, dtype=torch.float64)], dim=1).norm(dim=1)
    slack = math.sqrt(training.parameters) * training.weight_error
    linear = next(m for m in trained.modules() if isinstance(m, nn.Linear))
    weight_l1 = linear.weight.detach().double().abs().sum().item() + slack
    return row_norms.max().item() * training.weight_error + _layer_error([weight_l1], test.abs().max().item())


def metric_tolerances(plain_logits: torch.Tensor, labels: torch.Tensor, weights: ClassWeights,
                      delta: float) -> dict[str, float]:
    """Part 4: how far each metric may move when every logit moves by at most ``delta``."""
    z = plain_logits.reshape(-1).double().numpy()
    y = labels.reshape(-1).double().numpy() > 0.5
    positives, negatives = np.sort(z[y]), np.sort(z[~y])
    window = 2 * delta

    def within(sorted_values: np.ndarray, centres: np.ndarray) -> np.ndarray:
        return (np.searchsorted(sorted_values, centres + window, side="right")
                - np.searchsorted(sorted_values, centres - window, side="left"))

    near_negatives = within(negatives, positives)
    near_positives = within(positives, positives) - 1  # not the positive itself
    above_positives = len(positives) - np.searchsorted(positives, positives, side="left")
    above_negatives = len(negatives) - np.searchsorted(negatives, positives, side="left")
    a, b = above_positives.astype(np.float64), above_negatives.astype(np.float64)
    q, m = near_positives.astype(np.float64), near_negatives.astype(np.float64)
    precision = a / (a + b)
    high_a, low_b = np.minimum(a + q, len(positives)), np.maximum(b - m, 0)
    low_a, high_b = np.maximum(a - q, 1), np.minimum(b + m, len(negatives))
    highest = high_a / (high_a + low_b)
    lowest = low_a / (low_a + high_b)
    pr_auc = float(np.maximum(highest - precision, precision - lowest).mean())
    return {
        "auc": float(near_negatives.sum()) / max(len(positives) * len(negatives), 1) + _ARITHMETIC_SLACK,
        "pr_auc": pr_auc + _ARITHMETIC_SLACK,
        "accuracy": float((np.abs(z) <= delta).mean()) + _ARITHMETIC_SLACK,
        "loss": float(weights.per_row(labels.reshape(-1).double()).mean()) * delta + _ARITHMETIC_SLACK,
    }


def compare(secure: dict, plaintext: dict, tolerances: dict[str, float] | None) -> dict[str, dict]:
    """Signed gaps (secure - plaintext) and, where a bound exists, the verdict per metric."""
    verdicts = {}
    for metric in METRICS:
        gap = secure[metric] - plaintext[metric]
        tolerance = None if tolerances is None else tolerances[metric]
        verdicts[metric] = {"gap": gap, "tolerance": tolerance,
                            "within_tolerance": None if tolerance is None else abs(gap) <= tolerance}
    return verdicts


def out_of_tolerance(gaps: dict[str, dict] | None) -> list[str]:
    return [metric for metric, entry in (gaps or {}).items() if entry["within_tolerance"] is False]
