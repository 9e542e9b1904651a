"""Part 2 and 3 of :mod:`mpc.tolerance` for a Linear/ReLU stack (``mpc.zoo.MLP``, or any
``nn.Sequential`` alternating Linear and ReLU) trained by plain SGD on the binary loss.

Notation as there: u = 2^-16, c = lr / B, w_i = w(y_i), r_i = sigmoid(z_i) - y_i, t = the
truncation part's ulps. Float32 arithmetic errs by eps = 2^-24 per operation; a sum of n
products by at most gamma_n = n eps / (1 - n eps) of the sum of their absolute values.

**One step at the same weights.** Against the exact step (float64 replay), the secure one and
the float32 reference each err; both are bounded together by one recursion whose local terms
are the sum of theirs (the triangle inequality), per row and per entry, every term at its
worst (no concentration bound: truncations enter at t u each, all one sign, so this is looser
than part 2's logistic bound, never tighter):
* forward: e_0 = u/2 + 2 eps |x|_inf (encoding; each side's float32 row);
  e_l = (|W_l|_inf + sqrt(n_(l-1)) E) e_(l-1) + 2 t u + gamma_(n_(l-1)+1) max_j (|W_l| |a_(l-1)| + |b_l|)_j,
  ReLU being 1-Lipschitz, as long as no unit changes side (below);
* the output gradient: |dv_i| <= |dw_i| (|r_i| + eps_sigma + e_L / 4) + w_i (eps_sigma + e_L / 4)
  + (SIGMOID_FACTOR_BOUND + 2) t u + 4 eps w_i (sigmoid is 1/4-Lipschitz; part 2's residual
  truncations at their worst; float32's sigmoid, difference and weighting);
* backward: dg_l = (|W_(l+1)^T|_inf + sqrt(n_(l+1)) E) dg_(l+1) + 2 t u + gamma_(n_(l+1)) max_j (|g_(l+1)| |W_(l+1)|)_j
  (the product's truncation and the mask's);
* the summed gradient, per entry: sum_i dg_i (|a_i| + e_i) + |g_i| e_i + t u + gamma_B |g_i| |a_i|,
  then c's rounding (2^-20 of it) and its truncation, t u, and float32's update, eps (|theta| + 2 c |G|).
  Its 2-norm over all parameters is the step's d_t.

**ReLU's kink.** The masks above are the exact run's. A unit may switch side in the secure or
the float32 run only where |z_(l,j)| <= e_l + D_l: e_l the forward error above, D_l how far
weights E away (E_t, the running bound below) can move it: D_0 = 0,
D_l = (|W_l|_2 + E) D_(l-1) + E (|a_(l-1)|_2 + 1). Where some row has such a unit, no bound
is claimed (``None``). Bounding the switch instead is sound but no use: the switched unit's
gradient changes by c |(W_(l+1)^T g_(l+1))_j| (|a_(l-1)| + 1), some 10^-3 to 10^-2 at the
default lr, and weights that far off put dozens of units per later batch within reach of the
kink; measured on the tests' tables ([16, 8], lr 0.5, batch 64), taking each such row whole
made the bound 10^107 after 20 steps. So the bound holds for short runs or small steps,
where the secure run is then held to it; longer runs keep verdicts of ``None``.

**Through the steps**, as part 2: the Jacobian of the step, J_t = I - c H_t (H_t the Hessian
of the batch's weighted loss at the exact run's weights, in float64, each ReLU's
derivative its mask), carries each step's error on; to first order in the error the later
curvature is the exact run's. E_(t+1) = |J_t| E_t + d_t gives the running bound (for
the kink); the weight error after training is at most
sum_t |J_T...J_(t+1)| d_t + |J_T...J_1| sqrt(p) u / 2 (the initial weights' encoding).

**The held-out logits** (part 3): weights within B of the float32 model's move a row's logit by
at most D_L with E = B (the recursion above, which needs no linearization: ReLU is
1-Lipschitz), plus part 1's forward error at weights whose row sums grow by sqrt(n) B.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mpc.approximations import PRECISE_FACTOR_BITS
from mpc.metrics import ClassWeights
from mpc.training import SIGMOID_FACTOR_BOUND, TrainConfig, batch_slices, epoch_order
from protocols.truncation import TruncationError

FRACTIONAL_BITS = 16
ULP = 2.0 ** -FRACTIONAL_BITS
FLOAT32_EPS = 2.0 ** -24
# the Jacobians are p x p in float64 (4096 parameters: 128 MB each); larger stacks get no bound
MAX_PARAMETERS = 4096


def relu_stack(model: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of an ``nn.Sequential`` of Linear, ReLU, ..., Linear (with biases);
    None for any other model."""
    modules = list(model.children()) if isinstance(model, nn.Sequential) else []
    if len(modules) % 2 == 0:
        return None
    for index, module in enumerate(modules):
        if not isinstance(module, nn.ReLU if index % 2 else nn.Linear):
            return None
    linears = modules[::2]
    return linears if all(linear.bias is not None for linear in linears) else None


def _gamma(terms: int) -> float:
    return terms * FLOAT32_EPS / (1 - terms * FLOAT32_EPS)


def _unflatten(theta: torch.Tensor, shapes: list[tuple[torch.Size, torch.Size]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layers, offset = [], 0
    for weight_shape, bias_shape in shapes:
        weight_size, bias_size = math.prod(weight_shape), math.prod(bias_shape)
        layers.append((theta[offset:offset + weight_size].reshape(weight_shape),
                       theta[offset + weight_size:offset + weight_size + bias_size]))
        offset += weight_size + bias_size
    return layers


def _forward(layers: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor) -> tuple[list, list]:
    """Pre-activations z_1..z_L and activations a_0..a_(L-1)."""
    pre, post = [], [x]
    for index, (weight, bias) in enumerate(layers):
        z = post[-1] @ weight.T + bias
        pre.append(z)
        if index < len(layers) - 1:
            post.append(torch.relu(z))
    return pre, post


def _weighted_loss(theta: torch.Tensor, shapes: list, x: torch.Tensor, y: torch.Tensor,
                   row_weights: torch.Tensor) -> torch.Tensor:
    logits = _forward(_unflatten(theta, shapes), x)[0][-1].reshape(-1)
    return (row_weights * nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()


def forward_errors(layers: list[tuple[torch.Tensor, torch.Tensor]], post: list[torch.Tensor], drift: float,
                   truncation: TruncationError) -> list[torch.Tensor]:
    """Per row, e_0..e_L of the module docstring (secure and float32 together)."""
    x = post[0]
    errors = [ULP / 2 + 2 * FLOAT32_EPS * x.abs().max(1).values]
    for (weight, bias), a in zip(layers, post):
        row_sum = weight.abs().sum(1).max().item() + math.sqrt(weight.shape[1]) * drift
        rounding = _gamma(weight.shape[1] + 1) * (a.abs() @ weight.abs().T + bias.abs()).max(1).values
        errors.append(row_sum * errors[-1] + 2 * truncation.ulps * ULP + rounding)
    return errors


def weight_drift(layers: list[tuple[torch.Tensor, torch.Tensor]], post: list[torch.Tensor],
                 drift: float) -> list[torch.Tensor]:
    """Per row, D_1..D_L: how far weights ``drift`` away can move each layer's pre-activations."""
    moved = torch.zeros(post[0].shape[0], dtype=torch.float64)
    out = []
    for (weight, _), a in zip(layers, post):
        moved = (torch.linalg.matrix_norm(weight, ord=2).item() + drift) * moved + drift * (a.norm(dim=1) + 1)
        out.append(moved)
    return out


def _flagged_rows(pre: list[torch.Tensor], errors: list[torch.Tensor], moved: list[torch.Tensor]) -> torch.Tensor:
    """Rows with a hidden unit that may be on the other side of ReLU's kink in either run."""
    flagged = torch.zeros(pre[0].shape[0], dtype=torch.bool)
    for z, error, shift in zip(pre[:-1], errors[1:-1], moved[:-1]):
        flagged |= (z.abs() <= (error + shift)[:, None]).any(1)
    return flagged


def mlp_step(theta: torch.Tensor, shapes: list, x: torch.Tensor, y: torch.Tensor, row_weights: torch.Tensor,
             factor: float, drift: float, sigmoid_error: float,
             truncation: TruncationError) -> tuple[torch.Tensor, float, torch.Tensor] | None:
    """One step of the exact run: its Jacobian, its error d_t at the same weights and the next
    weights; None where a unit may be on the other side of ReLU's kink in either run."""
    layers = _unflatten(theta, shapes)
    pre, post = _forward(layers, x)
    errors = forward_errors(layers, post, drift, truncation)
    if _flagged_rows(pre, errors, weight_drift(layers, post, drift)).any():
        return None
    truncation_error = truncation.ulps * ULP
    # the output gradient and its error
    logits = pre[-1].reshape(-1)
    residual = torch.sigmoid(logits) - y
    quarter = errors[-1] / 4
    row_weight_error = (1 + truncation.ulps) * ULP
    output_error = (row_weight_error * (residual.abs() + sigmoid_error + quarter) + row_weights * (sigmoid_error + quarter)
                    + (SIGMOID_FACTOR_BOUND + 2) * truncation_error + 4 * FLOAT32_EPS * row_weights)
    gradient = (row_weights * residual)[:, None]
    gradient_error = output_error
    squares = 0.0
    for index in reversed(range(len(layers))):
        weight, bias = layers[index]
        a, a_error, g, g_error = post[index], errors[index], gradient, gradient_error
        weight_bound = ((g_error[:, None] * (a.abs() + a_error[:, None])).sum(0)[None, :]
                        + (g.abs() * a_error[:, None]).sum(0)[:, None]
                        + truncation_error + _gamma(len(a)) * (g.abs().T @ a.abs()))
        bias_bound = g_error.sum() + _gamma(len(a)) * g.abs().sum(0)  # a sum of shares: no truncation
        for bound, value, parameter in ((weight_bound, g.T @ a, weight), (bias_bound, g.sum(0), bias)):
            update = factor * value.abs()
            entry = (factor * bound + 2.0 ** -PRECISE_FACTOR_BITS * update + truncation_error
                     + FLOAT32_EPS * (parameter.abs() + 2 * update))
            squares += entry.pow(2).sum().item()
        if index:
            column_sum = weight.abs().sum(0).max().item() + math.sqrt(weight.shape[0]) * drift
            gradient_error = (column_sum * gradient_error + 2 * truncation_error
                              + _gamma(weight.shape[0]) * (gradient.abs() @ weight.abs()).max(1).values)
            gradient = (gradient @ weight) * (pre[index - 1] > 0)
    hessian = torch.func.hessian(_weighted_loss)(theta, shapes, x, y, row_weights)
    jacobian = torch.eye(len(theta), dtype=torch.float64) - factor * hessian
    step = torch.func.grad(_weighted_loss)(theta, shapes, x, y, row_weights)
    return jacobian, math.sqrt(squares), theta - factor * step


def mlp_weight_bound(features: torch.Tensor, labels: torch.Tensor, initial: nn.Module, config: TrainConfig,
                     weights: ClassWeights, seed: int, sigmoid_error: float,
                     truncation: TruncationError) -> tuple[float, int] | None:
    """The module docstring's bound on |theta_secure - theta_float32|_2 after training, and the
    parameter count; None for a model that is not a Linear/ReLU stack of at most
    MAX_PARAMETERS parameters, and where a ReLU may have switched side in some step (no bound
    is then claimed)."""
    linears = relu_stack(initial)
    if linears is None or sum(p.numel() for p in initial.parameters()) > MAX_PARAMETERS:
        return None
    shapes = [(linear.weight.shape, linear.bias.shape) for linear in linears]
    theta = torch.cat([torch.cat([linear.weight.detach().double().reshape(-1), linear.bias.detach().double()])
                       for linear in linears])
    rows, parameters = features.shape[0], len(theta)
    x_all, y_all = features.double(), labels.double().reshape(-1)
    encoding = math.sqrt(parameters) * ULP / 2
    drift = encoding
    steps: list[tuple[torch.Tensor, float]] = []
    for epoch in range(config.epochs):
        order = epoch_order(rows, seed, epoch)
        x_epoch, y_epoch = x_all[order], y_all[order]
        for batch in batch_slices(rows, config.batch_size):
            x, y = x_epoch[batch], y_epoch[batch]
            step = mlp_step(theta, shapes, x, y, weights.per_row(y), config.lr / len(y), drift, sigmoid_error,
                            truncation)
            if step is None:
                return None
            jacobian, error, theta = step
            steps.append((jacobian, error))
            drift = torch.linalg.matrix_norm(jacobian, ord=2).item() * drift + error
    bound, later = 0.0, torch.eye(parameters, dtype=torch.float64)
    for jacobian, error in reversed(steps):
        bound += torch.linalg.matrix_norm(later, ord=2).item() * error
        later = later @ jacobian
    return bound + torch.linalg.matrix_norm(later, ord=2).item() * encoding, parameters


def mlp_logit_bounds(test_features: torch.Tensor, trained: nn.Module, weight_error: float,
                     truncation: TruncationError) -> torch.Tensor:
    """Part 3 for a Linear/ReLU stack: per held-out row, the largest |secure - float32| logit."""
    linears = relu_stack(trained)
    layers = [(linear.weight.detach().double(), linear.bias.detach().double()) for linear in linears]
    _, post = _forward(layers, test_features.double())
    return weight_drift(layers, post, weight_error)[-1] + forward_errors(layers, post, weight_error, truncation)[-1]
