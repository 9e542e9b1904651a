"""Secure optimizers against torch.optim, and Adam's square root and division in the ring.

Tolerance for the optimizer runs (u = 2^-16), a linear model with squared error: at the
same weights the secure gradient is off by at most g_err (_gradient_error: the outputs'
encoding and truncation, and one truncation per row summed over the batch); a weight error e
adds L e sqrt(P) more (L the loss's smoothness, P the parameter count). SGD with momentum
carries these through its buffer exactly; Adam's step m / (sqrt(v) + eps) moves by at most
dg (1 + r) / (sqrt(v) + eps) for a gradient error dg (r = |m| / (sqrt(v) + eps)), plus the
measured errors of the secure square root and division; far from Lipschitz where v is small,
it is checked step by step from the secure run's own revealed weights and moments.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from mpc.training import TrainConfig
from sessions import run_parties

U = 2.0**-16
STEPS, ROWS, FEATURES = 6, 64, 4


def _wide_range_errors(crypten, rank):
    from mpc.approximations import secure_divide, secure_sqrt

    x = torch.cat([torch.zeros(1), torch.logspace(-4, 9, 6001)])
    root = secure_sqrt(crypten, crypten.cryptensor(x, src=0)).get_plain_text().double()
    exact = x.double().sqrt()
    d = torch.logspace(-0.6, 5, 3001)
    n = (torch.rand(3001, generator=torch.Generator().manual_seed(1)) - 0.5) * 2 * d
    quotient = secure_divide(crypten, crypten.cryptensor(n, src=0), crypten.cryptensor(d, src=0)).get_plain_text().double()
    return {"sqrt relative (x >= 1)": ((root - exact) / exact).abs()[x >= 1].max().item(),
            "sqrt absolute (x < 1)": (root - exact).abs()[x < 1].max().item(),
            "divide (|n| <= d)": (quotient - n.double() / d.double()).abs().max().item()}


@pytest.mark.slow
def test_sqrt_and_division_over_adams_ranges():
    from mpc.approximations import DIVIDE_MAX_ERROR, SQRT_MAX_ABSOLUTE_ERROR, SQRT_MAX_RELATIVE_ERROR

    errors = run_parties(_wide_range_errors, world=2, timeout_s=600)[0]
    print(errors)
    assert errors["sqrt relative (x >= 1)"] <= SQRT_MAX_RELATIVE_ERROR
    assert errors["sqrt absolute (x < 1)"] <= SQRT_MAX_ABSOLUTE_ERROR
    assert errors["divide (|n| <= d)"] <= DIVIDE_MAX_ERROR


def _problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(ROWS, FEATURES, generator=generator)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.3
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(FEATURES, 1)), x, y


def _secure_steps(config: TrainConfig, crypten, rank):
    from mpc.losses import MeanSquaredError
    from mpc.models import encrypt_model
    from mpc.training import SecureTrainer

    model, x, y = _problem()
    secure = encrypt_model(crypten, model, FEATURES)
    secure.train()
    loss = MeanSquaredError()
    trainer = SecureTrainer(crypten, secure, config, loss, seed=0, stats=None, show_progress=False)
    features, labels = crypten.cryptensor(x, src=0), crypten.cryptensor(y, src=0)
    trajectory = []
    for epoch in range(STEPS):
        trainer.step(features, labels, loss.row_scales(labels), epoch)
        weights = torch.cat([p.get_plain_text().reshape(-1) for p in secure.parameters()])
        moments = [m.get_plain_text() for m in trainer.optimizer.state()]
        trajectory.append([weights.tolist(), *(m.tolist() for m in moments)])
    return trajectory  # plain lists: a tensor would cross the queue as shared memory


def _plain_steps(config: TrainConfig) -> tuple[list[torch.Tensor], list[tuple]]:
    """The float trajectory, and Adam's bias-corrected moments (m, v) at each step."""
    from mpc.optim import lr_at, plaintext_optimizer

    model, x, y = _problem()
    optimizer = plaintext_optimizer(model.parameters(), config)
    trajectory, moments = [], []
    beta1, beta2 = config.betas
    for epoch in range(STEPS):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, epoch)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        trajectory.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
        if config.optimizer != "sgd":
            state = [optimizer.state[p] for p in model.parameters()]
            m = torch.cat([s["exp_avg"].reshape(-1) for s in state]).double() / (1 - beta1 ** (epoch + 1))
            v = torch.cat([s["exp_avg_sq"].reshape(-1) for s in state]).double() / (1 - beta2 ** (epoch + 1))
            moments.append((m, v))
    return trajectory, moments


def _gradient_error(x: torch.Tensor, theta: torch.Tensor) -> float:
    """Per element: each row's output error e_z = (|theta|_1 + 3) u and its label's u/2 are
    scaled by 2/B, then the product is truncated (u per row); the batch sum over B rows of
    |x| <= a turns that into a (2 (e_z + u/2) + B u), plus the sum's own truncation u."""
    features = torch.cat([x, torch.ones(ROWS, 1)], 1).double()
    output_error = (theta.abs().sum().item() + 3) * U
    return features.abs().max().item() * (2 * (output_error + U / 2) + ROWS * U) + U


def _float_gradient(theta: torch.Tensor) -> torch.Tensor:
    model, x, y = _problem()
    with torch.no_grad():
        model[0].weight.copy_(theta[:FEATURES].reshape(1, -1))
        model[0].bias.copy_(theta[FEATURES:])
    nn.functional.mse_loss(model(x), y).backward()
    return torch.cat([model[0].weight.grad.reshape(-1), model[0].bias.grad]).double()


@pytest.mark.slow
def test_secure_sgd_with_momentum_follows_torch():
    """SGD with momentum is linear in the gradients: the error of T steps is at most the sum of
    each step's gradient error g_err carried through the buffer, plus its feedback through the
    loss's smoothness L (float weights vs secure weights)."""
    from mpc.optim import lr_at

    config = TrainConfig(epochs=STEPS, lr=0.05, momentum=0.9, weight_decay=0.01, schedule="step", lr_step=2,
                         lr_gamma=0.5)
    secure = [torch.tensor(step[0]).double() for step in run_parties(partial(_secure_steps, config), world=2,
                                                                      timeout_s=600)[0]]
    plain, _ = _plain_steps(config)
    _, x, _ = _problem()
    features = torch.cat([x, torch.ones(ROWS, 1)], 1).double()
    smoothness = 2 * torch.linalg.eigvalsh(features.T @ features).max().item() / ROWS
    error, buffer = U / 2, 0.0
    for step in range(STEPS):
        dg = _gradient_error(x, plain[step]) + smoothness * error * features.shape[1] ** 0.5
        buffer = config.momentum * buffer + dg + config.weight_decay * error
        error += lr_at(config, step) * buffer
        assert (secure[step] - plain[step].double()).abs().max().item() <= error
    assert (plain[-1] - plain[0]).abs().max() > 10 * error  # the weights did move


@pytest.mark.slow
@pytest.mark.parametrize("optimizer, extra", [("adam", {"weight_decay": 0.01, "schedule": "cosine"}),
                                               ("adamw", {"weight_decay": 0.1})])
def test_secure_adam_step_follows_torch(optimizer, extra):
    """Each secure Adam step against the float step from the same (revealed) weights and
    moments. With den = sqrt(v) + eps and r = |m| / den (bias-corrected), the step
    m / den is off by at most dm / den + r dden / den + the division's error (max(1, r) times
    its bound for |n| <= d), where dm <= dg + the stored moment's truncation, and dden <= dg
    + the square root's error (relative above one scaled unit, absolute below) + the effect
    of the second moment's truncations (a few units of the scaled v, times 1/(1 - beta2^t));
    plus the update's own truncations (2u)."""
    from mpc.approximations import DIVIDE_MAX_ERROR, SQRT_MAX_ABSOLUTE_ERROR, SQRT_MAX_RELATIVE_ERROR
    from mpc.optim import ADAM_GRADIENT_SCALE, lr_at

    config = TrainConfig(epochs=STEPS, lr=0.05, optimizer=optimizer, **extra)
    steps = run_parties(partial(_secure_steps, config), world=2, timeout_s=600)[0]
    plain, _ = _plain_steps(config)
    beta1, beta2 = config.betas
    model, x, _ = _problem()
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    m = v = torch.zeros_like(theta)
    for step, (weights, moments) in enumerate(steps):
        lr, decay = lr_at(config, step), config.weight_decay
        gradient = _float_gradient(theta) + (decay * theta if optimizer == "adam" else 0)
        m, v = beta1 * m + (1 - beta1) * gradient, beta2 * v + (1 - beta2) * gradient**2
        m_hat, v_hat = m / (1 - beta1 ** (step + 1)), v / (1 - beta2 ** (step + 1))
        denominator = v_hat.sqrt() + config.eps
        ratio = m_hat.abs() / denominator
        expected = theta - lr * (m_hat / denominator) - (lr * decay * theta if optimizer == "adamw" else 0)
        dg = _gradient_error(x, theta) * (1 + decay)
        scale, correction = ADAM_GRADIENT_SCALE, 1 / (1 - beta2 ** (step + 1))
        v_scaled = v_hat * scale**2
        truncated = 4 * U * correction + U  # in units of the scaled v
        dv_root = torch.minimum(torch.full_like(v_scaled, truncated**0.5), truncated / (2 * v_scaled.sqrt())) / scale
        root_error = torch.where(v_scaled >= 1, SQRT_MAX_RELATIVE_ERROR * v_hat.sqrt(),
                                 torch.full_like(v_hat, SQRT_MAX_ABSOLUTE_ERROR / scale))
        dm = dg + 2 * U / scale / (1 - beta1 ** (step + 1))
        step_error = (dm / denominator + ratio * (dg + dv_root + root_error) / denominator
                      + DIVIDE_MAX_ERROR * ratio.clamp(min=1))
        bound = lr * step_error + 2 * U
        difference = (torch.tensor(weights).double() - expected).abs()
        assert (difference <= bound).all(), (step, difference.tolist(), bound.tolist())
        # continue from the secure state, as the secure run does
        theta = torch.tensor(weights).double()
        scaled = torch.tensor(moments).double()
        m, v = scaled[0] / ADAM_GRADIENT_SCALE, scaled[1] / ADAM_GRADIENT_SCALE**2
    assert (plain[-1] - plain[0]).abs().max() > 0.05  # the weights did move
