"""How far a secure result may lie from the plaintext one, derived from the fixed-point precision.

Nothing here is a picked threshold. Values in the ring carry f = 16 fractional bits, so one
unit in the last place is u = 2^-16: encoding a value errs by at most u/2, and each
truncation after a product by at most u (the suite's truncation part says so in its
``error_bound``: ``pairs`` and ``topbits`` give floor or one more, zero-mean; CrypTen's
``local`` rounds each of the n shares toward zero, up to n u either way, not known to be
zero-mean, so where that part runs every u below from a truncation is n u, and its
truncations enter part 2 at their worst, all of one sign, instead of through the
concentration bound). The
sigmoid is an approximation whose largest error as evaluated, ``sigmoid_error``, is
measured under MPC in the tests (``tests/test_sigmoid.py``). From these:

1. **One forward pass** (:func:`forward_error_bound`). For a Linear/ReLU stack with the
   same weights on both sides, the secure output differs from the float one by
   e_0 = u/2 + 2^-24 max|x| (the input's encoding; float32 rounding of the scaled row),
   e_l = ||W_l||_inf e_(l-1) + 2u (the product's truncation, the ReLU's indicator product);
   ReLU is 1-Lipschitz, so it passes the error on unchanged.

2. **Training** (:func:`training_weight_bound`, logistic regression). A secure SGD step
   computes ``theta - c X^T v`` with v_i = w_i r_i, r_i = sigmoid(z_i) - y_i, the class
   weight w_i = w(y_i) and the public c = lr / B applied to the summed gradient to 20
   significant bits (``mpc.approximations.multiply_precisely``). Against the float step at the same
   weights it errs by
   * deterministic parts, per row |dv_i| <= |dw_i| (|r_i| + eps_sigma) + w_i (eps_sigma +
     ((|theta|_1 / 2 + 1) u) / 4): w_i is two encoded constants and a truncation (|dw_i| <=
     2u), the sigmoid errs by eps_sigma, and the logit's encoding and truncation reach r_i
     through sigmoid' <= 1/4; taken at their worst, c sum_i |x_i|_2 |dv_i|, plus c's own
     rounding, 2^-20 of the update;
   * random parts: the truncations in each w_i r_i (``mpc.training.weighted_sigmoid_residual``:
     w_i t_i times |g| <= SIGMOID_FACTOR_BOUND, w_i (1/2 - y_i) and the last product, one ulp
     each; RESIDUAL_ULPS per row) and of each gradient entry (one ulp per parameter), both
     times c, and the truncation of c X^T v (one ulp per parameter). Truncation pairs round
     stochastically, so these errors are independent, zero-mean and at most u (the row's
     three enter the McDiarmid bound as one of range RESIDUAL_ULPS u, the root of the sum of
     their squared ranges).
   Both travel through the later steps, whose Jacobians J_t = I - X^T diag(s_i sigmoid'(z_i)) X
   are taken along the float run (replayed in float64 here: to first order in the error,
   the curvature between the two runs' logits is the float run's). So the weight error is
   at most sum_t ||J_T...J_(t+1)|| d_t (d_t the deterministic part, the float32 reference's
   own rounding, 2^-24 per operation, included) plus, with probability at least
   1 - CONFIDENCE over the truncations (McDiarmid on the norm of a sum of independent
   bounded vectors), (1 + sqrt(2 ln(1 / CONFIDENCE))) u sqrt(sum_t ||J_T...J_(t+1) [X_t^T, I]||_F^2).
   The initial weights' encoding adds sqrt(p) u/2 through all steps. For an MLP (a
   Linear/ReLU stack) :mod:`mpc.tolerance_mlp` makes the same analysis, with ReLU's kink
   bounded and every truncation at its worst; for any other network no training bound is
   claimed (the verdicts are then ``None``).

3. **The held-out logits** (:func:`logit_bounds`): delta_i = |x_i|_2 B_T + the forward
   error of (1) at weights with |theta|_1 <= |theta_plain|_1 + sqrt(p) B_T.

4. **Metrics** (:func:`metric_tolerances`), from delta and the plaintext held-out logits z:
   accuracy can change only on rows with |z_i| <= delta_i; AUC only on positive/negative
   pairs with |z_p - z_n| <= delta_p + delta_n; average precision only through such pairs
   (and positive/positive ones): with a positive's a positives and b negatives at or above
   it, q and m of them that close, its precision stays between (a + q)/(a + q + b - m)
   and (a - q)/(a - q + b + m); the weighted BCE is Lipschitz in the logit with constant
   w_i (|sigmoid - y| <= 1), so the loss moves by at most mean(w_i delta_i).

Every deterministic error is taken at its largest and with the same sign, so the bound is
loose, never tight; a gap outside it is a fault, not rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from mpc.metrics import ClassWeights
from mpc.approximations import PRECISE_FACTOR_BITS
from mpc.tolerance_mlp import FLOAT32_EPS, FRACTIONAL_BITS, ULP, mlp_logit_bounds, mlp_weight_bound, relu_stack
from mpc.training import SIGMOID_FACTOR_BOUND, TrainConfig, batch_slices, epoch_order
from protocols.truncation import TruncationError

METRICS = ("auc", "pr_auc", "accuracy", "loss")
# the truncations of one row's weighted residual as one range (module docstring, part 2): the
# root of the sum of their squared ranges where they are zero-mean, their sum where not
RESIDUAL_ULPS = math.sqrt(SIGMOID_FACTOR_BOUND**2 + 2)
BIASED_RESIDUAL_ULPS = SIGMOID_FACTOR_BOUND + 2
# pairs and topbits: floor(x / d) or one more, unbiased
ONE_ULP_UNBIASED = TruncationError(ulps=1.0, unbiased=True)
# the random part of the training bound holds with probability at least 1 - CONFIDENCE
CONFIDENCE = 1e-9
# float64 rounding in the metrics themselves (sklearn sums, the mean loss)
_ARITHMETIC_SLACK = 1e-9


def _layer_error(row_sums: Sequence[float], max_abs_input: float, truncation: TruncationError) -> float:
    error = ULP / 2 + FLOAT32_EPS * max_abs_input
    for row_sum in row_sums:
        error = row_sum * error + 2 * truncation.ulps * ULP
    return error


def forward_error_bound(model: nn.Module, max_abs_input: float,
                        truncation: TruncationError = ONE_ULP_UNBIASED) -> float:
    """Part 1: the largest |secure - float| logit of ``model`` (Linear/ReLU) with the same
    weights on both sides, on inputs with |x| <= ``max_abs_input``."""
    return _layer_error([module.weight.detach().double().abs().sum(1).max().item()
                         for module in model.modules() if isinstance(module, nn.Linear)], max_abs_input,
                        truncation)


@dataclass(frozen=True)
class TrainingBound:
    weight_error: float  # |theta_secure - theta_float|_2 after training
    parameters: int
    truncation: TruncationError


def training_weight_bound(features: torch.Tensor, labels: torch.Tensor, initial: nn.Module,
                          config: TrainConfig, weights: ClassWeights, seed: int,
                          sigmoid_error: float, truncation: TruncationError = ONE_ULP_UNBIASED) -> TrainingBound | None:
    """Part 2 of the module docstring (for a Linear/ReLU stack, :mod:`mpc.tolerance_mlp`'s);
    ``None`` for any other model.
    Truncations that are not zero-mean (``truncation.unbiased`` false) enter at their worst,
    all with the same sign, in place of the concentration bound."""
    if sum(isinstance(m, nn.Linear) for m in initial.modules()) != 1:
        mlp = mlp_weight_bound(features, labels, initial, config, weights, seed, sigmoid_error, truncation)
        return None if mlp is None else TrainingBound(*mlp, truncation)
    rows = features.shape[0]
    design = torch.cat([features.double(), torch.ones(rows, 1, dtype=torch.float64)], dim=1)
    labels = labels.double().reshape(-1)
    theta = torch.cat([p.detach().double().reshape(-1) for p in initial.parameters()])  # weights, then bias
    parameters = len(theta)
    identity = torch.eye(parameters, dtype=torch.float64)
    residual_ulps = RESIDUAL_ULPS if truncation.unbiased else BIASED_RESIDUAL_ULPS
    # per step: (its Jacobian, its deterministic error, the rows its random errors enter by)
    steps: list[tuple[torch.Tensor, float, torch.Tensor]] = []
    for epoch in range(config.epochs):
        order = epoch_order(rows, seed, epoch)
        x_all, y_all = design[order], labels[order]
        for batch in batch_slices(rows, config.batch_size):
            x, y = x_all[batch], y_all[batch]
            factor, row_weights = config.lr / len(y), weights.per_row(y)
            step_scale = factor * row_weights
            logits = x @ theta
            residual = torch.sigmoid(logits) - y
            curvature = torch.sigmoid(logits) * torch.sigmoid(-logits)
            jacobian = identity - x.T @ ((step_scale * curvature)[:, None] * x)
            steps.append((jacobian,
                          _deterministic_step_error(x, theta, factor, row_weights, residual, sigmoid_error, truncation),
                          torch.cat([factor * residual_ulps * x.T, factor * identity, identity], dim=1)))
            theta = theta - x.T @ (step_scale * residual)
    deterministic, random_square = 0.0, 0.0
    truncation_range = truncation.ulps * ULP
    later = identity  # J_T ... J_(t+1), built from the last step backwards
    for jacobian, error, entries in reversed(steps):
        deterministic += torch.linalg.matrix_norm(later, ord=2).item() * error
        reached = later @ entries  # one column per truncation: where its error lands
        if truncation.unbiased:
            random_square += reached.pow(2).sum().item() * truncation_range ** 2
        else:
            deterministic += reached.norm(dim=0).sum().item() * truncation_range
        later = later @ jacobian
    deterministic += torch.linalg.matrix_norm(later, ord=2).item() * math.sqrt(parameters) * ULP / 2
    spread = 1 + math.sqrt(2 * math.log(1 / CONFIDENCE))
    return TrainingBound(deterministic + spread * math.sqrt(random_square), parameters, truncation)


def _deterministic_step_error(x: torch.Tensor, theta: torch.Tensor, factor: float, row_weights: torch.Tensor,
                              residual: torch.Tensor, sigmoid_error: float, truncation: TruncationError) -> float:
    """Part 2's deterministic error of one step (``factor`` = lr / B, ``row_weights`` = w(y_i)),
    and the float32 reference's rounding."""
    logit_error = ULP * (theta.abs().sum().item() / 2 + truncation.ulps)
    # w_i: two encoded constants (u/2 each) and a truncation
    row_weight_error = (1 + truncation.ulps) * ULP
    row_error = row_weight_error * (residual.abs() + sigmoid_error) + row_weights * (sigmoid_error + logit_error / 4)
    update = factor * (x.abs().T @ (row_weights * residual.abs())).norm().item()
    secure = factor * (x.norm(dim=1) * row_error).sum().item() + 2.0 ** -PRECISE_FACTOR_BITS * update
    # float32: each entry of X^T v sums len(v) products; theta itself is rounded per step
    reference = FLOAT32_EPS * (theta.norm().item() + (len(row_weights) + 2) * update)
    return secure + reference


def logit_bounds(test_features: torch.Tensor, trained: nn.Module, training: TrainingBound) -> torch.Tensor:
    """Part 3: per held-out row, the largest |secure - plaintext| logit after secure training."""
    linears = relu_stack(trained)
    if linears is not None and len(linears) > 1:
        return mlp_logit_bounds(test_features, trained, training.weight_error, training.truncation)
    test = test_features.double()
    row_norms = torch.cat([test, torch.ones(len(test), 1, dtype=torch.float64)], dim=1).norm(dim=1)
    slack = math.sqrt(training.parameters) * training.weight_error
    linear = next(m for m in trained.modules() if isinstance(m, nn.Linear))
    weight_l1 = linear.weight.detach().double().abs().sum().item() + slack
    return row_norms * training.weight_error + _layer_error([weight_l1], test.abs().max().item(), training.truncation)


def metric_tolerances(plain_logits: torch.Tensor, labels: torch.Tensor, weights: ClassWeights,
                      delta: torch.Tensor) -> dict[str, float]:
    """Part 4: how far each metric may move when each logit z_i moves by at most ``delta[i]``."""
    z = plain_logits.reshape(-1).double().numpy()
    d = delta.reshape(-1).double().numpy()
    y = labels.reshape(-1).double().numpy() > 0.5
    z_pos, d_pos, z_neg, d_neg = z[y], d[y], z[~y], d[~y]
    near_negatives, near_positives = np.zeros(len(z_pos)), np.zeros(len(z_pos))
    above_negatives, above_positives = np.zeros(len(z_pos)), np.zeros(len(z_pos))
    for start in range(0, len(z_pos), 256):  # positives x everyone, in blocks
        zp, dp = z_pos[start:start + 256, None], d_pos[start:start + 256, None]
        near_negatives[start:start + 256] = (np.abs(zp - z_neg) <= dp + d_neg).sum(1)
        near_positives[start:start + 256] = (np.abs(zp - z_pos) <= dp + d_pos).sum(1) - 1  # not itself
        above_negatives[start:start + 256] = (z_neg >= zp).sum(1)
        above_positives[start:start + 256] = (z_pos >= zp).sum(1)
    a, b, q, m = above_positives, above_negatives, near_positives, near_negatives
    precision = a / (a + b)
    high_a, low_b = np.minimum(a + q, len(z_pos)), np.maximum(b - m, 0)
    low_a, high_b = np.maximum(a - q, 1), np.minimum(b + m, len(z_neg))
    pr_auc = float(np.maximum(high_a / (high_a + low_b) - precision, precision - low_a / (low_a + high_b)).mean())
    row_weights = weights.per_row(labels.reshape(-1).double()).numpy()
    return {
        "auc": float(near_negatives.sum()) / max(len(z_pos) * len(z_neg), 1) + _ARITHMETIC_SLACK,
        "pr_auc": pr_auc + _ARITHMETIC_SLACK,
        "accuracy": float((np.abs(z) <= d).mean()) + _ARITHMETIC_SLACK,
        "loss": float((row_weights * d).mean()) + _ARITHMETIC_SLACK,
    }


def compare(secure: dict, plaintext: dict, tolerances: dict[str, float] | None,
            metrics: Sequence[str] = METRICS) -> dict[str, dict]:
    """Signed gaps (secure - plaintext) and, where a bound exists, the verdict per metric
    (``metrics``: the task's; the bounds are derived for the binary ones)."""
    verdicts = {}
    for metric in metrics:
        gap = secure[metric] - plaintext[metric]
        tolerance = None if tolerances is None else tolerances[metric]
        verdicts[metric] = {"gap": gap, "tolerance": tolerance,
                            "within_tolerance": None if tolerance is None else abs(gap) <= tolerance}
    return verdicts


def out_of_tolerance(gaps: dict[str, dict] | None) -> list[str]:
    return [metric for metric, entry in (gaps or {}).items() if entry["within_tolerance"] is False]


# Fine-tuning a pre-trained network (the sequence job): the secure run may lose at most this
# much AUC against the plaintext one (the acceptance bound the job is held to)
FINE_TUNING_AUC_TOLERANCE = 0.02


def fine_tuning_tolerances(plain_logits: torch.Tensor, labels: torch.Tensor, weights: ClassWeights,
                           auc_tolerance: float = FINE_TUNING_AUC_TOLERANCE) -> tuple[float, dict[str, float]]:
    """For a network without a derived training bound: the largest uniform logit error delta
    under which the AUC can move by at most ``auc_tolerance`` (part 4, by bisection), and every
    metric's tolerance at that delta. The secure held-out logits are then checked to lie
    within delta of the plaintext ones, which makes every metric's tolerance hold."""
    def auc_at(delta: float) -> float:
        return metric_tolerances(plain_logits, labels, weights, torch.full((len(plain_logits),), delta))["auc"]

    low, high = 0.0, float(plain_logits.abs().max().item()) * 2 + 1.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if auc_at(middle) <= auc_tolerance else (low, middle)
    return low, metric_tolerances(plain_logits, labels, weights, torch.full((len(plain_logits),), low))
